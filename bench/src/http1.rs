//! Just enough HTTP/1.1 framing for the benchmark tools.
//!
//! The mock upstream must find where each (possibly pipelined) request ends so it
//! can discard bodies and answer in order; the load generator must find where each
//! response ends to reuse the connection. Both work the same way:
//! 1. [`parse_request_head`] / [`parse_response_head`] parse a head with `httparse`
//!    and decide the body framing (Content-Length, chunked, until close, none) and
//!    whether the connection stays open.
//! 2. A [`BodyDecoder`] is fed whatever bytes have arrived and says how many of them
//!    belong to the body, until the body is complete. It never copies the body.
//!
//! Messages that could be read two ways (both Content-Length and chunked, or two
//! different lengths) are rejected rather than guessed.

use thiserror::Error;

/// The most header lines a head may carry.
pub const MAX_HEADERS: usize = 64;

/// Why a message could not be framed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FramingError {
    /// The head is not valid HTTP/1.x.
    #[error("malformed message head: {0}")]
    Head(#[from] httparse::Error),
    /// A Content-Length value is not a number.
    #[error("invalid Content-Length")]
    InvalidContentLength,
    /// Several Content-Length headers disagree, or one comes with chunked encoding.
    #[error("conflicting body length headers")]
    ConflictingLength,
    /// A request body uses a transfer coding other than chunked.
    #[error("unsupported Transfer-Encoding")]
    UnsupportedTransferEncoding,
    /// A chunk-size line is malformed.
    #[error("invalid chunk size line")]
    InvalidChunkSize,
    /// A chunk's data is not followed by CRLF.
    #[error("chunk data not followed by CRLF")]
    MissingChunkDelimiter,
}

/// How the body after a head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body at all.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Everything until the peer closes (responses only).
    UntilClose,
}

/// What the server needs to know about a parsed request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHead {
    /// How the request body is delimited.
    pub framing: BodyFraming,
    /// Whether the client wants the connection kept open after the response.
    pub keep_alive: bool,
    /// Whether the client sent `Expect: 100-continue`.
    pub expect_continue: bool,
}

/// What the client needs to know about a parsed response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    /// The status code.
    pub status: u16,
    /// How the response body is delimited.
    pub framing: BodyFraming,
    /// Whether the server keeps the connection open after this response.
    pub keep_alive: bool,
}

/// Header facts shared by requests and responses.
#[derive(Debug, Default)]
struct HeaderSummary {
    content_length: Option<u64>,
    chunked: bool,
    other_transfer_coding: bool,
    connection_close: bool,
    connection_keep_alive: bool,
    expect_continue: bool,
}

impl HeaderSummary {
    fn from_headers(headers: &[httparse::Header<'_>]) -> Result<Self, FramingError> {
        let mut summary = Self::default();
        for header in headers {
            let name = header.name;
            if name.eq_ignore_ascii_case("content-length") {
                let length = parse_content_length(header.value)?;
                if summary.content_length.is_some_and(|seen| seen != length) {
                    return Err(FramingError::ConflictingLength);
                }
                summary.content_length = Some(length);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                // Only the last coding decides whether the body is chunked.
                let last = tokens(header.value).last().unwrap_or_default();
                summary.chunked = last.eq_ignore_ascii_case("chunked");
                summary.other_transfer_coding = !summary.chunked;
            } else if name.eq_ignore_ascii_case("connection") {
                for token in tokens(header.value) {
                    if token.eq_ignore_ascii_case("close") {
                        summary.connection_close = true;
                    } else if token.eq_ignore_ascii_case("keep-alive") {
                        summary.connection_keep_alive = true;
                    }
                }
            } else if name.eq_ignore_ascii_case("expect") {
                summary.expect_continue = header.value.eq_ignore_ascii_case(b"100-continue");
            }
        }
        if summary.content_length.is_some() && (summary.chunked || summary.other_transfer_coding) {
            return Err(FramingError::ConflictingLength);
        }
        Ok(summary)
    }

    /// HTTP/1.1 defaults to keep-alive, HTTP/1.0 to close.
    fn keep_alive(&self, minor_version: u8) -> bool {
        if minor_version >= 1 {
            !self.connection_close
        } else {
            self.connection_keep_alive && !self.connection_close
        }
    }
}

/// Comma-separated tokens of a header value, trimmed, as UTF-8 (invalid ones skipped).
fn tokens(value: &[u8]) -> impl Iterator<Item = &str> {
    value
        .split(|&byte| byte == b',')
        .filter_map(|token| std::str::from_utf8(token).ok())
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

fn parse_content_length(value: &[u8]) -> Result<u64, FramingError> {
    let text = std::str::from_utf8(value)
        .map_err(|_| FramingError::InvalidContentLength)?
        .trim();
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(FramingError::InvalidContentLength);
    }
    text.parse().map_err(|_| FramingError::InvalidContentLength)
}

/// Parses a request head at the start of `buf`.
///
/// Returns `Ok(None)` while the head is incomplete, or the head's length in bytes
/// and what it says about the body and the connection.
pub fn parse_request_head(buf: &[u8]) -> Result<Option<(usize, RequestHead)>, FramingError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let length = match request.parse(buf)? {
        httparse::Status::Complete(length) => length,
        httparse::Status::Partial => return Ok(None),
    };
    let summary = HeaderSummary::from_headers(request.headers)?;
    if summary.other_transfer_coding {
        return Err(FramingError::UnsupportedTransferEncoding);
    }
    let framing = if summary.chunked {
        BodyFraming::Chunked
    } else {
        match summary.content_length {
            Some(0) | None => BodyFraming::Empty,
            Some(length) => BodyFraming::Length(length),
        }
    };
    let head = RequestHead {
        framing,
        keep_alive: summary.keep_alive(request.version.unwrap_or(1)),
        expect_continue: summary.expect_continue,
    };
    Ok(Some((length, head)))
}

/// Parses a response head at the start of `buf`, for a request that was not `HEAD`.
///
/// Returns `Ok(None)` while the head is incomplete. Interim (1xx) responses are
/// returned like any other; the caller skips them.
pub fn parse_response_head(buf: &[u8]) -> Result<Option<(usize, ResponseHead)>, FramingError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let length = match response.parse(buf)? {
        httparse::Status::Complete(length) => length,
        httparse::Status::Partial => return Ok(None),
    };
    let status = response.code.unwrap_or_default();
    let summary = HeaderSummary::from_headers(response.headers)?;
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        BodyFraming::Empty
    } else if summary.chunked {
        BodyFraming::Chunked
    } else if summary.other_transfer_coding {
        BodyFraming::UntilClose
    } else {
        match summary.content_length {
            Some(0) => BodyFraming::Empty,
            Some(length) => BodyFraming::Length(length),
            None => BodyFraming::UntilClose,
        }
    };
    let keep_alive =
        framing != BodyFraming::UntilClose && summary.keep_alive(response.version.unwrap_or(1));
    Ok(Some((
        length,
        ResponseHead {
            status,
            framing,
            keep_alive,
        },
    )))
}

/// Where a [`BodyDecoder`] is inside a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DecodeState {
    /// This many bytes of a fixed-length body (or of a chunk's data) are left.
    Length { remaining: u64, chunked: bool },
    /// Expecting a chunk-size line.
    ChunkSize,
    /// Expecting the CRLF after a chunk's data.
    ChunkEnd,
    /// Expecting trailer lines, ended by an empty line.
    Trailer,
    /// Everything until the peer closes.
    UntilClose,
    /// The body is complete.
    Done,
}

/// Walks over a body as its bytes arrive, without copying them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyDecoder {
    state: DecodeState,
}

impl BodyDecoder {
    /// A decoder for a body framed as `framing`.
    pub fn new(framing: BodyFraming) -> Self {
        let state = match framing {
            BodyFraming::Empty | BodyFraming::Length(0) => DecodeState::Done,
            BodyFraming::Length(remaining) => DecodeState::Length {
                remaining,
                chunked: false,
            },
            BodyFraming::Chunked => DecodeState::ChunkSize,
            BodyFraming::UntilClose => DecodeState::UntilClose,
        };
        Self { state }
    }

    /// Whether the whole body has been seen.
    pub fn is_done(&self) -> bool {
        self.state == DecodeState::Done
    }

    /// Whether the body only ends when the peer closes the connection.
    pub fn is_until_close(&self) -> bool {
        self.state == DecodeState::UntilClose
    }

    /// Consumes the body bytes at the start of `buf` and returns how many there were.
    ///
    /// Stops at the end of the body (bytes after it belong to the next message) or
    /// when `buf` ends in the middle of a framing line, which must then be offered
    /// again with more bytes appended.
    pub fn consume(&mut self, buf: &[u8]) -> Result<usize, FramingError> {
        let mut position = 0;
        loop {
            let rest = &buf[position..];
            match self.state {
                DecodeState::Done => return Ok(position),
                DecodeState::UntilClose => return Ok(buf.len()),
                DecodeState::Length { remaining, chunked } => {
                    if rest.is_empty() {
                        return Ok(position);
                    }
                    let available = u64::try_from(rest.len()).unwrap_or(u64::MAX);
                    let taken = remaining.min(available);
                    // `taken` is at most `rest.len()`, so it fits in usize.
                    position += usize::try_from(taken).unwrap_or(rest.len());
                    self.state = match (remaining - taken, chunked) {
                        (0, false) => DecodeState::Done,
                        (0, true) => DecodeState::ChunkEnd,
                        (remaining, chunked) => DecodeState::Length { remaining, chunked },
                    };
                }
                DecodeState::ChunkSize => match httparse::parse_chunk_size(rest) {
                    Ok(httparse::Status::Complete((line, size))) => {
                        position += line;
                        self.state = if size == 0 {
                            DecodeState::Trailer
                        } else {
                            DecodeState::Length {
                                remaining: size,
                                chunked: true,
                            }
                        };
                    }
                    Ok(httparse::Status::Partial) => return Ok(position),
                    Err(_) => return Err(FramingError::InvalidChunkSize),
                },
                DecodeState::ChunkEnd => {
                    if rest.len() < 2 {
                        return Ok(position);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(FramingError::MissingChunkDelimiter);
                    }
                    position += 2;
                    self.state = DecodeState::ChunkSize;
                }
                DecodeState::Trailer => {
                    let Some(line_end) = rest.windows(2).position(|pair| pair == b"\r\n") else {
                        return Ok(position);
                    };
                    position += line_end + 2;
                    if line_end == 0 {
                        self.state = DecodeState::Done;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> (usize, RequestHead) {
        parse_request_head(text.as_bytes())
            .expect("valid head")
            .expect("complete head")
    }

    /// Feeds `body` to a fresh decoder in pieces of `step` bytes, the way reads would
    /// deliver it, and returns how many bytes belonged to the body.
    fn decode_in_steps(framing: BodyFraming, body: &[u8], step: usize) -> usize {
        let mut decoder = BodyDecoder::new(framing);
        let mut buffered = Vec::new();
        let mut consumed_total = 0;
        for piece in body.chunks(step) {
            buffered.extend_from_slice(piece);
            let consumed = decoder.consume(&buffered).expect("valid body");
            buffered.drain(..consumed);
            consumed_total += consumed;
            if decoder.is_done() {
                break;
            }
        }
        assert!(decoder.is_done(), "body incomplete");
        consumed_total
    }

    #[test]
    fn get_without_body_keeps_alive() {
        let text = "GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /next";
        let (length, head) = request(text);
        assert_eq!(length, text.find("GET /next").unwrap_or_default());
        assert_eq!(head.framing, BodyFraming::Empty);
        assert!(head.keep_alive);
        assert!(!head.expect_continue);
    }

    #[test]
    fn partial_head_asks_for_more() {
        assert_eq!(parse_request_head(b"GET / HTTP/1.1\r\nHo"), Ok(None));
    }

    #[test]
    fn connection_close_and_http10_are_honoured() {
        assert!(
            !request("GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
                .1
                .keep_alive
        );
        assert!(!request("GET / HTTP/1.0\r\n\r\n").1.keep_alive);
        assert!(
            request("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
                .1
                .keep_alive
        );
    }

    #[test]
    fn content_length_and_expect() {
        let head =
            request("POST / HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n").1;
        assert_eq!(head.framing, BodyFraming::Length(5));
        assert!(head.expect_continue);
    }

    #[test]
    fn ambiguous_lengths_are_rejected() {
        assert_eq!(
            parse_request_head(
                b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            ),
            Err(FramingError::ConflictingLength)
        );
        assert_eq!(
            parse_request_head(
                b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
            ),
            Err(FramingError::ConflictingLength)
        );
        assert_eq!(
            parse_request_head(b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n"),
            Err(FramingError::InvalidContentLength)
        );
        assert_eq!(
            parse_request_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Err(FramingError::UnsupportedTransferEncoding)
        );
    }

    #[test]
    fn fixed_length_body_stops_at_its_end() {
        let mut decoder = BodyDecoder::new(BodyFraming::Length(4));
        assert_eq!(decoder.consume(b"ab"), Ok(2));
        assert!(!decoder.is_done());
        assert_eq!(decoder.consume(b"cdGET"), Ok(2));
        assert!(decoder.is_done());
        assert_eq!(decoder.consume(b"GET"), Ok(0));
    }

    #[test]
    fn chunked_body_in_any_split() {
        let body = b"5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\nX-Trailer: y\r\n\r\n";
        let mut with_next = body.to_vec();
        with_next.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        for step in 1..=with_next.len() {
            assert_eq!(
                decode_in_steps(BodyFraming::Chunked, &with_next, step),
                body.len(),
                "step {step}"
            );
        }
    }

    #[test]
    fn bad_chunks_are_rejected() {
        let mut decoder = BodyDecoder::new(BodyFraming::Chunked);
        assert_eq!(
            decoder.consume(b"zz\r\n"),
            Err(FramingError::InvalidChunkSize)
        );
        let mut decoder = BodyDecoder::new(BodyFraming::Chunked);
        assert_eq!(
            decoder.consume(b"1\r\nabc"),
            Err(FramingError::MissingChunkDelimiter)
        );
    }

    #[test]
    fn response_framing() {
        let parse = |text: &str| {
            parse_response_head(text.as_bytes())
                .expect("valid head")
                .expect("complete head")
                .1
        };
        let ok = parse("HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n");
        assert_eq!(ok.status, 200);
        assert_eq!(ok.framing, BodyFraming::Length(13));
        assert!(ok.keep_alive);
        let until_close = parse("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(until_close.framing, BodyFraming::UntilClose);
        assert!(!until_close.keep_alive);
        let no_content = parse("HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(no_content.framing, BodyFraming::Empty);
        let closing =
            parse("HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        assert_eq!(closing.status, 502);
        assert!(!closing.keep_alive);
    }
}
