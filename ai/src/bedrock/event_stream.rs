//! The AWS event-stream binary framing (`application/vnd.amazon.eventstream`), which
//! Bedrock's `converse-stream` answers in.
//!
//! Depends on `crc32fast` only. A message is:
//! `total length (u32) | headers length (u32) | prelude CRC32 | headers | payload |
//! message CRC32`, big-endian, the prelude CRC over the first 8 bytes and the message
//! CRC over everything before it. A header is `name length (u8) | name | type (u8) |
//! value`; strings (type 7) have a u16 length.
//!
//! [`EventStreamDecoder`] is push-style like [`crate::sse::SseParser`]: feed it bytes
//! as they arrive and call [`EventStreamDecoder::next_message`] until it returns
//! `Ok(None)`. It holds at most one incomplete message, and a message whose prelude
//! announces more than [`MAX_MESSAGE_BYTES`] is refused before it is buffered, so
//! memory is bounded. [`encode_message`] is the other direction, for the mock and tests.

use crate::translate::TranslateError;

/// The largest message the decoder accepts (AWS caps messages at 16 MiB).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Prelude (total length, headers length, prelude CRC) plus the message CRC.
const OVERHEAD: usize = 16;

/// One decoded message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// The string-valued headers (`:event-type`, `:message-type`, `:content-type`,
    /// `:exception-type`, …), in order; headers of other types are checked and skipped.
    pub headers: Vec<(String, String)>,
    /// The payload (JSON for Bedrock).
    pub payload: Vec<u8>,
}

impl Message {
    /// The value of a string header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| header == name)
            .map(|(_, value)| value.as_str())
    }
}

/// An incremental decoder of event-stream messages.
#[derive(Debug, Default)]
pub struct EventStreamDecoder {
    buffer: Vec<u8>,
}

/// A framing error, as a [`TranslateError`].
fn malformed(reason: impl Into<String>) -> TranslateError {
    TranslateError::MalformedEvent {
        event: "event-stream".to_owned(),
        reason: reason.into(),
    }
}

/// The big-endian u32 at `offset` of `bytes` (which must hold it).
fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_be_bytes(word)
}

impl EventStreamDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        EventStreamDecoder::default()
    }

    /// Appends bytes as they came off the socket.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete message, `Ok(None)` when more bytes are needed. Fails on a
    /// bad CRC, an impossible length or a message over [`MAX_MESSAGE_BYTES`]; the
    /// stream cannot be resynchronised after an error.
    pub fn next_message(&mut self) -> Result<Option<Message>, TranslateError> {
        if self.buffer.len() < 12 {
            return Ok(None);
        }
        let total = read_u32(&self.buffer, 0) as usize;
        let headers_len = read_u32(&self.buffer, 4) as usize;
        let prelude_crc = read_u32(&self.buffer, 8);
        if crc32fast::hash(&self.buffer[..8]) != prelude_crc {
            return Err(malformed("prelude CRC mismatch"));
        }
        if total > MAX_MESSAGE_BYTES {
            return Err(malformed(format!(
                "message of {total} bytes exceeds the limit of {MAX_MESSAGE_BYTES}"
            )));
        }
        if total < OVERHEAD || headers_len > total - OVERHEAD {
            return Err(malformed(format!(
                "impossible lengths: total {total}, headers {headers_len}"
            )));
        }
        if self.buffer.len() < total {
            return Ok(None);
        }
        let message_crc = read_u32(&self.buffer, total - 4);
        if crc32fast::hash(&self.buffer[..total - 4]) != message_crc {
            return Err(malformed("message CRC mismatch"));
        }
        let headers = parse_headers(&self.buffer[12..12 + headers_len])?;
        let payload = self.buffer[12 + headers_len..total - 4].to_vec();
        self.buffer.drain(..total);
        Ok(Some(Message { headers, payload }))
    }

    /// Ends the stream and resets the decoder, like [`crate::sse::SseParser::finish`]:
    /// returns `true` when bytes of an unfinished message were discarded (the stream
    /// was cut in the middle of a message).
    pub fn finish(&mut self) -> bool {
        let truncated = !self.buffer.is_empty();
        self.buffer.clear();
        truncated
    }
}

/// Parses a headers section, keeping the string headers.
fn parse_headers(mut bytes: &[u8]) -> Result<Vec<(String, String)>, TranslateError> {
    let mut headers = Vec::new();
    let take = |bytes: &mut &[u8], count: usize| -> Result<Vec<u8>, TranslateError> {
        if bytes.len() < count {
            return Err(malformed("truncated header"));
        }
        let (taken, rest) = bytes.split_at(count);
        *bytes = rest;
        Ok(taken.to_vec())
    };
    while !bytes.is_empty() {
        let name_len = take(&mut bytes, 1)?[0] as usize;
        let name = String::from_utf8(take(&mut bytes, name_len)?)
            .map_err(|_| malformed("header name is not UTF-8"))?;
        let kind = take(&mut bytes, 1)?[0];
        let fixed = match kind {
            0 | 1 => 0,
            2 => 1,
            3 => 2,
            4 => 4,
            5 | 8 => 8,
            9 => 16,
            6 | 7 => {
                let length = take(&mut bytes, 2)?;
                let length = usize::from(u16::from_be_bytes([length[0], length[1]]));
                let value = take(&mut bytes, length)?;
                if kind == 7 {
                    let value = String::from_utf8(value)
                        .map_err(|_| malformed(format!("header {name} is not UTF-8")))?;
                    headers.push((name, value));
                }
                continue;
            }
            other => return Err(malformed(format!("unknown header type {other}"))),
        };
        take(&mut bytes, fixed)?;
    }
    Ok(headers)
}

/// Encodes one message with string headers (the names and values must each fit
/// their length fields: 255 and 65,535 bytes).
pub fn encode_message(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut encoded_headers = Vec::new();
    for (name, value) in headers {
        let name = &name.as_bytes()[..name.len().min(255)];
        let value = &value.as_bytes()[..value.len().min(usize::from(u16::MAX))];
        encoded_headers.push(name.len() as u8);
        encoded_headers.extend_from_slice(name);
        encoded_headers.push(7);
        encoded_headers.extend_from_slice(&(value.len() as u16).to_be_bytes());
        encoded_headers.extend_from_slice(value);
    }
    let total = OVERHEAD + encoded_headers.len() + payload.len();
    let mut message = Vec::with_capacity(total);
    message.extend_from_slice(&(total as u32).to_be_bytes());
    message.extend_from_slice(&(encoded_headers.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&message);
    message.extend_from_slice(&prelude_crc.to_be_bytes());
    message.extend_from_slice(&encoded_headers);
    message.extend_from_slice(payload);
    let message_crc = crc32fast::hash(&message);
    message.extend_from_slice(&message_crc.to_be_bytes());
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_headers_of_every_type() {
        // A message built by hand with bool, byte, int, string and uuid headers:
        // only the string header ":event-type" is kept.
        let mut message = Vec::new();
        let headers: &[u8] = &[
            4, b'b', b'o', b'o', b'l', 0, // bool true
            4, b'b', b'y', b't', b'e', 2, 0xCF, // byte
            3, b'i', b'n', b't', 4, 0, 0, 0, 1, // int
            11, b':', b'e', b'v', b'e', b'n', b't', b'-', b't', b'y', b'p', b'e', 7, 0, 4, b'c',
            b'h', b'u', b'n', // string
            4, b'u', b'u', b'i', b'd', 9, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
            16, // uuid
        ];
        let payload = br#"{"foo":"bar"}"#;
        let total = (16 + headers.len() + payload.len()) as u32;
        message.extend_from_slice(&total.to_be_bytes());
        message.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        let crc = crc32fast::hash(&message);
        message.extend_from_slice(&crc.to_be_bytes());
        message.extend_from_slice(headers);
        message.extend_from_slice(payload);
        let crc = crc32fast::hash(&message);
        message.extend_from_slice(&crc.to_be_bytes());
        let mut decoder = EventStreamDecoder::new();
        decoder.push(&message);
        let decoded = decoder.next_message().unwrap().unwrap();
        assert_eq!(decoded.header(":event-type"), Some("chun"));
        assert_eq!(decoded.headers.len(), 1);
        assert_eq!(decoded.payload, payload);
        assert!(!decoder.finish());
    }

    #[test]
    fn known_empty_message_bytes() {
        // The AWS test suite's "empty_message": total 16, no headers, no payload.
        let bytes = [
            0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x05, 0xC2, 0x48, 0xEB, 0x7D, 0x98,
            0xC8, 0xFF,
        ];
        assert_eq!(encode_message(&[], b""), bytes);
        let mut decoder = EventStreamDecoder::new();
        decoder.push(&bytes);
        assert_eq!(decoder.next_message().unwrap(), Some(Message::default()));
    }

    #[test]
    fn round_trips_byte_by_byte() {
        let first = encode_message(
            &[
                (":event-type", "contentBlockDelta"),
                (":message-type", "event"),
            ],
            br#"{"delta":{"text":"Hi"}}"#,
        );
        let second = encode_message(&[(":event-type", "messageStop")], b"{}");
        let stream = [first, second].concat();
        let mut decoder = EventStreamDecoder::new();
        let mut messages = Vec::new();
        for byte in &stream {
            decoder.push(std::slice::from_ref(byte));
            while let Some(message) = decoder.next_message().unwrap() {
                messages.push(message);
            }
        }
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].header(":event-type"), Some("contentBlockDelta"));
        assert_eq!(messages[0].header(":message-type"), Some("event"));
        assert_eq!(messages[1].payload, b"{}");
        assert!(!decoder.finish());
        decoder.push(&stream[..20]);
        assert!(decoder.next_message().unwrap().is_none());
        assert!(decoder.finish());
        assert!(!decoder.finish(), "finish resets the decoder");
    }

    #[test]
    fn corruption_and_oversize_are_errors() {
        let message = encode_message(&[(":event-type", "x")], b"payload");
        for position in [2, 9, 20, message.len() - 1] {
            let mut corrupted = message.clone();
            corrupted[position] ^= 0x40;
            let mut decoder = EventStreamDecoder::new();
            decoder.push(&corrupted);
            assert!(decoder.next_message().is_err(), "byte {position}");
        }
        let mut huge = Vec::new();
        huge.extend_from_slice(&(MAX_MESSAGE_BYTES as u32 + 1).to_be_bytes());
        huge.extend_from_slice(&0u32.to_be_bytes());
        let crc = crc32fast::hash(&huge);
        huge.extend_from_slice(&crc.to_be_bytes());
        let mut decoder = EventStreamDecoder::new();
        decoder.push(&huge);
        let error = decoder.next_message().unwrap_err().to_string();
        assert!(error.contains("exceeds the limit"), "{error}");
    }
}
