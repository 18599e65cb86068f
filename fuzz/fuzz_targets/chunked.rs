//! Fuzz target: the incremental chunked decoder, `hypergate::http::chunked::ChunkedDecoder`.
//!
//! The proxy feeds the decoder whatever each socket read returned, keeping the
//! unconsumed bytes and appending the next read (`proxy/io.rs`, `pump`). What
//! it forwards must not depend on how TCP happened to segment the body, or a
//! client could make the gateway and the upstream disagree about where a body
//! ends. So:
//! 1. The first input byte seeds the sizes of the pieces; the rest is the body.
//! 2. The body is decoded all at once, and piece by piece the way `pump` does.
//! 3. Both runs must agree on the payload, on the outcome (done, needs more
//!    input, or the error kind) and, when done, on where the body ended (the
//!    next pipelined request starts there).
//! 4. Each step must make progress and return ranges inside its input.
#![no_main]

use hypergate::http::chunked::{ChunkError, ChunkedDecoder, Step};
use libfuzzer_sys::fuzz_target;

/// How a decode ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The last chunk and trailers were seen; the body took `end` input bytes.
    Done { end: usize },
    /// The input ran out first.
    Incomplete,
    /// Framing error.
    Failed(ChunkError),
}

/// Largest piece for each value of the seed's top three bits: from byte-by-byte
/// to pieces larger than the decoder's 4 KiB chunk-size-line bound.
const SPANS: [usize; 8] = [1, 2, 3, 7, 16, 64, 512, 6000];

fuzz_target!(|data: &[u8]| {
    let Some((&seed, body)) = data.split_first() else {
        return;
    };
    let whole = decode(body, &mut || usize::MAX);
    let span = SPANS[usize::from(seed >> 5)];
    let mut state = u64::from(seed) << 32 | 0x9E37_79B9;
    let mut next_piece = || {
        // xorshift64: cheap, deterministic piece sizes in 1..=span.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        1 + (state % span as u64) as usize
    };
    let pieces = decode(body, &mut next_piece);
    assert_eq!(
        whole.1, pieces.1,
        "outcome depends on segmentation (seed {seed:#04x}, pieces up to {span} bytes)"
    );
    assert!(
        whole.0 == pieces.0,
        "payload depends on segmentation (seed {seed:#04x}): {} vs {} bytes",
        whole.0.len(),
        pieces.0.len()
    );
});

/// Decodes `input` as `pump` does: append a piece, step until the decoder needs more.
fn decode(input: &[u8], piece: &mut dyn FnMut() -> usize) -> (Vec<u8>, Outcome) {
    let mut decoder = ChunkedDecoder::default();
    let mut payload = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let (mut fed, mut consumed_total) = (0usize, 0usize);
    while fed < input.len() {
        let n = piece().clamp(1, input.len() - fed);
        buf.extend_from_slice(&input[fed..fed + n]);
        fed += n;
        loop {
            match decoder.step(&buf) {
                Err(e) => return (payload, Outcome::Failed(e)),
                Ok(Step::NeedMore) => {
                    assert!(!decoder.is_done());
                    break;
                }
                Ok(Step::Progress { consumed, data }) => {
                    assert!(
                        consumed > 0,
                        "Progress that consumes nothing would spin the pump"
                    );
                    assert!(
                        consumed <= buf.len(),
                        "consumed {consumed} of {}",
                        buf.len()
                    );
                    assert!(
                        data.start <= data.end && data.end <= consumed,
                        "data {data:?}"
                    );
                    payload.extend_from_slice(&buf[data]);
                    buf.drain(..consumed);
                    consumed_total += consumed;
                }
                Ok(Step::Done { consumed }) => {
                    assert!(consumed <= buf.len());
                    assert!(decoder.is_done());
                    return (
                        payload,
                        Outcome::Done {
                            end: consumed_total + consumed,
                        },
                    );
                }
            }
        }
    }
    (payload, Outcome::Incomplete)
}
