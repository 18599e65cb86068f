//! Fuzz target: the SSE parser and the Anthropic-to-OpenAI stream translator
//! (`hypergate_ai::sse::SseParser`, `hypergate_ai::translate::AnthropicStreamToOpenAi`).
//!
//! Provider streams are untrusted bytes that the gateway parses as they arrive,
//! in whatever pieces TCP delivers. So:
//! 1. The first input byte seeds the piece sizes; the rest is the stream.
//! 2. The stream is parsed all at once and piece by piece: both must give the
//!    same events (or the same error) and agree on whether a truncated event was
//!    left over.
//! 3. Every event is fed to the stream translator, which must never panic and
//!    must produce JSON objects only.
#![no_main]

use hypergate_ai::sse::{SseEvent, SseParser};
use hypergate_ai::translate::AnthropicStreamToOpenAi;
use libfuzzer_sys::fuzz_target;

const MAX_EVENT: usize = 4096;

fn parse(pieces: &mut dyn Iterator<Item = &[u8]>) -> (Vec<SseEvent>, bool, bool) {
    let mut p = SseParser::new(MAX_EVENT);
    let mut events = Vec::new();
    let mut failed = false;
    for piece in pieces {
        p.push(piece);
        loop {
            match p.next_event() {
                Ok(Some(e)) => events.push(e),
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            break;
        }
    }
    let leftover = !failed && p.finish();
    (events, failed, leftover)
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let whole = parse(&mut std::iter::once(stream));
    let max = usize::from(seed % 16) + 1;
    let mut rest = stream;
    let mut i = 0usize;
    let mut pieces = std::iter::from_fn(|| {
        if rest.is_empty() {
            return None;
        }
        i += 1;
        let n = ((i * 7 + usize::from(seed)) % max + 1).min(rest.len());
        let (a, b) = rest.split_at(n);
        rest = b;
        Some(a)
    });
    let split = parse(&mut pieces);
    assert_eq!(whole.1, split.1, "error depends on segmentation");
    if !whole.1 {
        assert_eq!(whole.0.len(), split.0.len(), "events depend on segmentation");
        for (a, b) in whole.0.iter().zip(&split.0) {
            assert_eq!(a.event, b.event);
            assert_eq!(a.data, b.data);
        }
        assert_eq!(whole.2, split.2, "truncation verdict depends on segmentation");
    }
    let mut tr = AnthropicStreamToOpenAi::new("fuzz", 0);
    for e in &whole.0 {
        if let Ok(chunks) = tr.push(e) {
            assert!(chunks.iter().all(|c| c.is_object()));
        }
    }
});
