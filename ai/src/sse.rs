//! Incremental Server-Sent Events parsing and writing, per the WHATWG HTML
//! "Server-sent events" section (the `text/event-stream` format).
//!
//! How it works:
//! 1. [`SseParser::push`] appends bytes exactly as they came off the socket; an event,
//!    a line or a UTF-8 sequence may be split at any byte.
//! 2. [`SseParser::next_event`] consumes complete lines (ending in CRLF, LF or CR) and
//!    returns an [`SseEvent`] at each blank line; call it until it returns `Ok(None)`.
//!    `data:` lines are joined with `\n`, comment lines (`:`) are skipped, `id:` and
//!    `retry:` are accepted and ignored, a leading byte order mark is dropped.
//! 3. What one event may hold in memory (its fields plus its unfinished line) is
//!    bounded; past the bound the parser fails with [`SseError::EventTooLarge`].
//! 4. [`SseParser::finish`] ends the stream: like the spec, it discards an event that
//!    never saw its blank line, and says whether it did, so a truncated upstream
//!    stream can be told apart from a clean end.
//!
//! [`write_event`] is the other direction: it frames one event for a client;
//! [`write_json_event`] frames a JSON value without building its text first.

use std::mem;

/// The UTF-8 byte order mark, which the spec strips from the start of a stream.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One dispatched event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field; `None` when absent or empty (the spec's default type, "message").
    pub event: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// Why the parser gave up on a stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// One event grew past the parser's bound without being terminated.
    #[error("SSE event exceeds the limit of {limit} bytes")]
    EventTooLarge {
        /// The bound given to [`SseParser::new`].
        limit: usize,
    },
}

/// The fields of the event being assembled.
#[derive(Debug, Default)]
struct PendingEvent {
    /// The last `event:` value seen.
    event_type: String,
    /// `data:` values joined with `\n`.
    data: String,
    /// Whether a `data:` line was seen (an event with `data:` and no value has data "").
    has_data: bool,
    /// Whether any field line was seen since the last blank line.
    started: bool,
}

impl PendingEvent {
    /// Bytes held for this event.
    fn held_bytes(&self) -> usize {
        self.event_type.len() + self.data.len()
    }

    /// Applies one complete line (without its terminator); returns an event at a blank line.
    fn apply_line(&mut self, line: &[u8]) -> Option<SseEvent> {
        if line.is_empty() {
            self.started = false;
            let has_data = mem::take(&mut self.has_data);
            let event_type = mem::take(&mut self.event_type);
            if !has_data {
                return None;
            }
            return Some(SseEvent {
                event: (!event_type.is_empty()).then_some(event_type),
                data: mem::take(&mut self.data),
            });
        }
        if line[0] == b':' {
            return None;
        }
        self.started = true;
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match field {
            b"event" => {
                self.event_type.clear();
                push_lossy(&mut self.event_type, value);
            }
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.has_data = true;
                push_lossy(&mut self.data, value);
            }
            // `id`, `retry` and unknown fields do not change the dispatched event.
            _ => {}
        }
        None
    }
}

/// Appends `bytes` to `text`, invalid UTF-8 replaced by U+FFFD (the checked
/// conversion first: it is much faster on the valid text providers send).
fn push_lossy(text: &mut String, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(valid) => text.push_str(valid),
        Err(_) => text.push_str(&String::from_utf8_lossy(bytes)),
    }
}

/// Push-style incremental SSE parser; see the module docs for the protocol.
#[derive(Debug)]
pub struct SseParser {
    /// Bytes received and not yet consumed as lines, from `consumed` on.
    buffer: Vec<u8>,
    /// Start of the first unconsumed byte in `buffer`.
    consumed: usize,
    /// `buffer[..scanned]` holds no line terminator past `consumed`.
    scanned: usize,
    /// The event being assembled.
    pending: PendingEvent,
    /// The previous line ended in CR, so a leading LF belongs to it.
    skip_lf: bool,
    /// Whether the start of the stream was checked for a byte order mark.
    bom_checked: bool,
    /// Set once an event outgrew the bound; the stream is unusable after that.
    overflowed: bool,
    /// Bound on the bytes one event may hold.
    max_event_bytes: usize,
}

impl SseParser {
    /// A parser for one stream, refusing events that hold more than `max_event_bytes`
    /// (the `event` and `data` values plus the unfinished line).
    pub fn new(max_event_bytes: usize) -> Self {
        SseParser {
            buffer: Vec::new(),
            consumed: 0,
            scanned: 0,
            pending: PendingEvent::default(),
            skip_lf: false,
            bom_checked: false,
            overflowed: false,
            max_event_bytes,
        }
    }

    /// Appends bytes received from the stream. Cheap: parsing happens in
    /// [`next_event`](Self::next_event). Ignored once the parser has failed.
    pub fn push(&mut self, bytes: &[u8]) {
        if !self.overflowed {
            self.buffer.extend_from_slice(bytes);
        }
    }

    /// The next complete event, or `Ok(None)` when more bytes are needed.
    ///
    /// Drain it after each [`push`](Self::push) so that at most one unfinished event
    /// stays buffered. After an error every call fails again until [`finish`](Self::finish).
    pub fn next_event(&mut self) -> Result<Option<SseEvent>, SseError> {
        if self.overflowed {
            return Err(self.too_large());
        }
        loop {
            if self.skip_lf && self.consumed < self.buffer.len() {
                if self.buffer[self.consumed] == b'\n' {
                    self.consumed += 1;
                }
                self.skip_lf = false;
            }
            if !self.bom_checked {
                let rest = &self.buffer[self.consumed..];
                if rest.len() < BOM.len() && BOM.starts_with(rest) {
                    // Too few bytes to tell a byte order mark from content.
                    return Ok(None);
                }
                if rest.starts_with(BOM) {
                    self.consumed += BOM.len();
                }
                self.bom_checked = true;
            }
            let search_from = self.scanned.max(self.consumed);
            let Some(offset) = memchr::memchr2(b'\n', b'\r', &self.buffer[search_from..]) else {
                self.scanned = self.buffer.len();
                let unfinished = self.buffer.len() - self.consumed;
                if self.pending.held_bytes() + unfinished > self.max_event_bytes {
                    return Err(self.overflow());
                }
                self.compact();
                return Ok(None);
            };
            let line_end = search_from + offset;
            self.skip_lf = self.buffer[line_end] == b'\r';
            let event = self
                .pending
                .apply_line(&self.buffer[self.consumed..line_end]);
            self.consumed = line_end + 1;
            if self.pending.held_bytes() > self.max_event_bytes {
                return Err(self.overflow());
            }
            if event.is_some() {
                return Ok(event);
            }
        }
    }

    /// Ends the stream and resets the parser for reuse. Call it once
    /// [`next_event`](Self::next_event) has returned `Ok(None)`.
    ///
    /// Returns `true` when bytes of an unterminated event were discarded (a field line
    /// without the closing blank line, or an unfinished line): the stream was cut short.
    /// Trailing comment lines do not count.
    pub fn finish(&mut self) -> bool {
        let truncated = self.pending.started || self.consumed < self.buffer.len();
        *self = SseParser::new(self.max_event_bytes);
        truncated
    }

    /// Drops consumed bytes from the front of the buffer.
    fn compact(&mut self) {
        if self.consumed > 0 {
            self.buffer.drain(..self.consumed);
            self.scanned -= self.consumed;
            self.consumed = 0;
        }
    }

    /// Marks the stream failed and frees what it held.
    fn overflow(&mut self) -> SseError {
        self.overflowed = true;
        self.buffer = Vec::new();
        self.pending = PendingEvent::default();
        self.consumed = 0;
        self.scanned = 0;
        self.too_large()
    }

    fn too_large(&self) -> SseError {
        SseError::EventTooLarge {
            limit: self.max_event_bytes,
        }
    }
}

/// Appends one event to `out` as `event: NAME\n`, one `data: LINE\n` per line of
/// `data` (split at CRLF, LF and CR, so the parser gives `data` back with `\n`), and
/// the closing blank line. Line breaks in `event` are dropped: they would end the field.
pub fn write_event(out: &mut Vec<u8>, event: Option<&str>, data: &str) {
    if let Some(name) = event {
        out.extend_from_slice(b"event: ");
        out.extend(name.bytes().filter(|&b| b != b'\n' && b != b'\r'));
        out.push(b'\n');
    }
    let mut rest = data;
    loop {
        out.extend_from_slice(b"data: ");
        match rest.bytes().position(|b| b == b'\r' || b == b'\n') {
            Some(at) => {
                out.extend_from_slice(&rest.as_bytes()[..at]);
                out.push(b'\n');
                let terminator = if rest[at..].starts_with("\r\n") { 2 } else { 1 };
                rest = &rest[at + terminator..];
            }
            None => {
                out.extend_from_slice(rest.as_bytes());
                out.push(b'\n');
                break;
            }
        }
    }
    out.push(b'\n');
}

/// Appends one event whose data is `data` as compact JSON: what [`write_event`]
/// writes for `data.to_string()`, serialized straight into `out` (compact JSON
/// has no line breaks, so it is one `data:` line).
pub fn write_json_event(out: &mut Vec<u8>, event: Option<&str>, data: &serde_json::Value) {
    if let Some(name) = event {
        out.extend_from_slice(b"event: ");
        out.extend(name.bytes().filter(|&b| b != b'\n' && b != b'\r'));
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    // Serializing a `Value` into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut *out, data);
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: name.map(str::to_owned),
            data: data.to_owned(),
        }
    }

    /// Feeds `chunks` one push at a time, draining after each.
    fn parse_chunks<'a>(
        parser: &mut SseParser,
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Vec<SseEvent>, SseError> {
        let mut events = Vec::new();
        for chunk in chunks {
            parser.push(chunk);
            while let Some(event) = parser.next_event()? {
                events.push(event);
            }
        }
        Ok(events)
    }

    fn parse_all(input: &[u8]) -> Vec<SseEvent> {
        let mut parser = SseParser::new(1 << 20);
        let events = parse_chunks(&mut parser, [input]).unwrap();
        assert!(!parser.finish(), "stream should end cleanly");
        events
    }

    const ANTHROPIC_STREAM: &[u8] = b"event: message_start\r\n\
data: {\"type\":\"message_start\"}\r\n\
\r\n\
: keep-alive comment\n\
\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\n\
data: \"delta\":\"h\xC3\xA9llo\"}\n\
\n\
event: ping\r\
data: {\"type\": \"ping\"}\r\
\r\
data: [DONE]\n\n";

    fn anthropic_stream_events() -> Vec<SseEvent> {
        vec![
            event(Some("message_start"), r#"{"type":"message_start"}"#),
            event(
                Some("content_block_delta"),
                "{\"type\":\"content_block_delta\",\n\"delta\":\"h\u{e9}llo\"}",
            ),
            event(Some("ping"), r#"{"type": "ping"}"#),
            event(None, "[DONE]"),
        ]
    }

    #[test]
    fn json_event_is_the_event_of_the_json_text() {
        let data = serde_json::json!({"b": "line\nbreak\r", "a": [1, null, 2.5], "c": {"d": "é"}});
        for name in [None, Some("message_start"), Some("bad\nname")] {
            let (mut direct, mut text) = (Vec::new(), Vec::new());
            write_json_event(&mut direct, name, &data);
            write_event(&mut text, name, &data.to_string());
            assert_eq!(direct, text);
        }
    }

    #[test]
    fn parses_fields_comments_and_all_line_endings() {
        assert_eq!(parse_all(ANTHROPIC_STREAM), anthropic_stream_events());
    }

    #[test]
    fn byte_by_byte_feeding_gives_the_same_events() {
        let mut parser = SseParser::new(1 << 20);
        let events = parse_chunks(&mut parser, ANTHROPIC_STREAM.chunks(1)).unwrap();
        assert_eq!(events, anthropic_stream_events());
        assert!(!parser.finish());
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        for split in 0..=ANTHROPIC_STREAM.len() {
            let (head, tail) = ANTHROPIC_STREAM.split_at(split);
            let mut parser = SseParser::new(1 << 20);
            let events = parse_chunks(&mut parser, [head, tail]).unwrap();
            assert_eq!(events, anthropic_stream_events(), "split at {split}");
        }
    }

    #[test]
    fn field_edge_cases_follow_the_spec() {
        // No space after the colon, only one space stripped, empty data line, a field
        // without a colon, empty event name, id/retry/unknown fields ignored.
        let input = b"data:a\ndata:  b\n\n\
data\n\n\
event:\ndata: x\n\n\
id: 7\nretry: 100\nfoo: bar\ndata: y\n\n\
event: only-type\n\n\
data: z\n\n";
        assert_eq!(
            parse_all(input),
            vec![
                event(None, "a\n b"),
                event(None, ""),
                event(None, "x"),
                event(None, "y"),
                event(None, "z"),
            ],
            "an event without data is not dispatched and its type does not leak"
        );
    }

    #[test]
    fn leading_byte_order_mark_is_dropped_even_when_split() {
        let input = b"\xEF\xBB\xBFdata: a\n\n";
        let mut parser = SseParser::new(64);
        let events = parse_chunks(&mut parser, input.chunks(1)).unwrap();
        assert_eq!(events, vec![event(None, "a")]);
        // Only at the very start: later it is content.
        assert_eq!(
            parse_all(b"data: a\n\n\xEF\xBB\xBFdata: b\n\n"),
            vec![event(None, "a")],
            "a BOM-prefixed field name is an unknown field"
        );
    }

    #[test]
    fn crlf_split_between_cr_and_lf_is_one_line_break() {
        let mut parser = SseParser::new(64);
        let events = parse_chunks(
            &mut parser,
            [&b"data: a\r"[..], b"\ndata: b\r", b"\n\r", b"\n"],
        )
        .unwrap();
        assert_eq!(events, vec![event(None, "a\nb")]);
    }

    #[test]
    fn finish_reports_a_truncated_event() {
        let mut parser = SseParser::new(64);
        let events = parse_chunks(&mut parser, [&b"data: a\n\ndata: partial\n"[..]]).unwrap();
        assert_eq!(events, vec![event(None, "a")]);
        assert!(parser.finish(), "field line without its blank line");

        parser.push(b"data: unfinished line");
        assert_eq!(parser.next_event(), Ok(None));
        assert!(parser.finish(), "line without terminator");

        parser.push(b"data: a\n\n: trailing comment\n");
        assert_eq!(parser.next_event(), Ok(Some(event(None, "a"))));
        assert_eq!(parser.next_event(), Ok(None));
        assert!(!parser.finish(), "comments are not an event");
    }

    #[test]
    fn event_larger_than_the_bound_fails_and_stays_failed() {
        let mut parser = SseParser::new(16);
        // Within the bound: fields plus unfinished line <= 16.
        let events = parse_chunks(&mut parser, [&b"data: 0123456789abcdef\n\n"[..]]).unwrap();
        assert_eq!(events, vec![event(None, "0123456789abcdef")]);

        // Many short data lines add up.
        let mut parser = SseParser::new(16);
        let error = parse_chunks(&mut parser, [&b"data: 01234567\ndata: 89abcdef\n"[..]]);
        assert_eq!(error, Err(SseError::EventTooLarge { limit: 16 }));
        assert_eq!(
            parser.next_event(),
            Err(SseError::EventTooLarge { limit: 16 })
        );
        parser.push(b"\n\ndata: ok\n\n");
        assert!(
            parser.next_event().is_err(),
            "still failed after more input"
        );
        parser.finish();
        assert_eq!(
            parse_chunks(&mut parser, [&b"data: ok\n\n"[..]]),
            Ok(vec![event(None, "ok")]),
            "finish resets the parser"
        );

        // One endless line, fed byte by byte.
        let mut parser = SseParser::new(16);
        let line = [b'x'; 64];
        let error = parse_chunks(&mut parser, line.chunks(1));
        assert_eq!(error, Err(SseError::EventTooLarge { limit: 16 }));
        assert!(parser.buffer.is_empty(), "memory is released on failure");
    }

    #[test]
    fn consumed_bytes_do_not_accumulate() {
        let mut parser = SseParser::new(64);
        for _ in 0..1000 {
            let events = parse_chunks(&mut parser, [&b"data: a\n\nda"[..], b"ta: b\n"]).unwrap();
            assert_eq!(events, vec![event(None, "a")]);
            parser.push(b"\n");
            assert_eq!(parser.next_event(), Ok(Some(event(None, "b"))));
            assert_eq!(parser.next_event(), Ok(None));
        }
        assert!(
            parser.buffer.len() < 16,
            "buffer len {}",
            parser.buffer.len()
        );
    }

    #[test]
    fn writer_frames_events_and_round_trips_through_the_parser() {
        let mut out = Vec::new();
        write_event(&mut out, Some("message_delta"), r#"{"a":1}"#);
        write_event(&mut out, None, "line one\nline two\r\nthree\rfour");
        write_event(&mut out, Some("bad\nname"), "");
        write_event(&mut out, None, "[DONE]");
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "event: message_delta\ndata: {\"a\":1}\n\n\
data: line one\ndata: line two\ndata: three\ndata: four\n\n\
event: badname\ndata: \n\n\
data: [DONE]\n\n"
        );
        assert_eq!(
            parse_all(&out),
            vec![
                event(Some("message_delta"), r#"{"a":1}"#),
                event(None, "line one\nline two\nthree\nfour"),
                event(Some("badname"), ""),
                event(None, "[DONE]"),
            ]
        );
    }
}
