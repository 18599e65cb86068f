//! Just enough HTTP/1.1 for the mock: reading requests, writing JSON, SSE and AWS
//! event-stream responses.
//!
//! Reading ([`read_request`]): the head is parsed with `httparse` from a
//! per-connection buffer that keeps any bytes past the request (pipelining);
//! the body is framed by `Content-Length` or `Transfer-Encoding: chunked`
//! (a message with both is rejected). `Expect: 100-continue` is answered.
//!
//! Writing ([`write_response`]): a JSON body goes out with `Content-Length` in
//! one write. An SSE body or a binary event stream (`application/vnd.amazon.eventstream`)
//! goes out with `Transfer-Encoding: chunked`, one chunk per event, each written on its own (the sockets have `TCP_NODELAY`, so every
//! event leaves at once), with the configured delay between events. A stream
//! can be cut after a number of content events: the writer then stops without
//! the terminating chunk and the caller closes the connection.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

/// The largest request head accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The largest request body accepted.
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// The most header lines a request may carry.
const MAX_HEADERS: usize = 128;

/// A request, fully read.
#[derive(Debug)]
pub(crate) struct Request {
    /// Method, as sent.
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    /// The query string (after `?`, empty when there is none), as sent.
    pub query: String,
    /// Headers in order, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The decoded body.
    pub body: Vec<u8>,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
}

impl Request {
    /// The first value of a header; `name` must be lowercase.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| header == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Why no request could be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The peer closed the connection (or it failed) before a whole request arrived.
    Closed,
    /// The request is not valid HTTP/1.1 or its framing is ambiguous.
    Malformed(&'static str),
    /// The head or the body is over the limits.
    TooLarge,
}

/// Reads one request from `stream`, starting with the bytes already in `buffer`;
/// bytes past the request stay in `buffer` for the next call.
pub(crate) fn read_request(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
) -> Result<Request, ReadError> {
    let (head_len, method, path, query, version, headers) = loop {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut slots);
        match parsed.parse(buffer) {
            Ok(httparse::Status::Complete(head_len)) => {
                let method = parsed.method.unwrap_or_default().to_owned();
                let target = parsed.path.unwrap_or_default();
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                let (path, query) = (path.to_owned(), query.to_owned());
                let version = parsed.version.unwrap_or(1);
                let headers = parsed
                    .headers
                    .iter()
                    .map(|header| {
                        let value = String::from_utf8_lossy(header.value).into_owned();
                        (header.name.to_ascii_lowercase(), value)
                    })
                    .collect::<Vec<_>>();
                break (head_len, method, path, query, version, headers);
            }
            Ok(httparse::Status::Partial) if buffer.len() > MAX_HEAD_BYTES => {
                return Err(ReadError::TooLarge)
            }
            Ok(httparse::Status::Partial) => fill(stream, buffer)?,
            Err(_) => return Err(ReadError::Malformed("malformed request head")),
        }
    };
    let has_token = |name: &str, token: &str| {
        headers
            .iter()
            .filter(|(header, _)| header == name)
            .flat_map(|(_, value)| value.split(','))
            .any(|item| item.trim().eq_ignore_ascii_case(token))
    };
    let keep_alive = if version == 0 {
        has_token("connection", "keep-alive")
    } else {
        !has_token("connection", "close")
    };
    let framing = body_framing(&headers)?;
    if framing != Framing::Length(0)
        && buffer.len() == head_len
        && has_token("expect", "100-continue")
    {
        stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .map_err(|_| ReadError::Closed)?;
    }
    let body = match framing {
        Framing::Length(length) => {
            if length > MAX_BODY_BYTES {
                return Err(ReadError::TooLarge);
            }
            while buffer.len() < head_len + length {
                fill(stream, buffer)?;
            }
            let body = buffer[head_len..head_len + length].to_vec();
            buffer.drain(..head_len + length);
            body
        }
        Framing::Chunked => loop {
            match decode_chunked(&buffer[head_len..])? {
                Some((body, used)) => {
                    buffer.drain(..head_len + used);
                    break body;
                }
                None if buffer.len() > head_len + MAX_BODY_BYTES + MAX_HEAD_BYTES => {
                    return Err(ReadError::TooLarge)
                }
                None => fill(stream, buffer)?,
            }
        },
    };
    Ok(Request {
        method,
        path,
        query,
        headers,
        body,
        keep_alive,
    })
}

/// How a request body is delimited.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    /// Exactly this many bytes (0 when there is no framing header).
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Decides the body framing, rejecting anything that could be read two ways.
fn body_framing(headers: &[(String, String)]) -> Result<Framing, ReadError> {
    let mut length = None;
    let mut chunked = false;
    for (name, value) in headers {
        match name.as_str() {
            "content-length" => {
                let value = value
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| ReadError::Malformed("invalid Content-Length"))?;
                if length.is_some_and(|length| length != value) {
                    return Err(ReadError::Malformed("conflicting Content-Length headers"));
                }
                length = Some(value);
            }
            "transfer-encoding" => {
                if !value.trim().eq_ignore_ascii_case("chunked") {
                    return Err(ReadError::Malformed("unsupported Transfer-Encoding"));
                }
                chunked = true;
            }
            _ => {}
        }
    }
    match (chunked, length) {
        (true, Some(_)) => Err(ReadError::Malformed("both Content-Length and chunked")),
        (true, None) => Ok(Framing::Chunked),
        (false, length) => Ok(Framing::Length(length.unwrap_or(0))),
    }
}

/// Decodes a complete chunked body at the start of `data`: the body and the
/// number of bytes it took (trailers included), or `None` if more bytes are needed.
fn decode_chunked(data: &[u8]) -> Result<Option<(Vec<u8>, usize)>, ReadError> {
    let mut body = Vec::new();
    let mut position = 0;
    loop {
        let Some(line_end) = find_crlf(&data[position..]) else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&data[position..position + line_end])
            .map_err(|_| ReadError::Malformed("malformed chunk size"))?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| ReadError::Malformed("malformed chunk size"))?;
        if body.len() + size > MAX_BODY_BYTES {
            return Err(ReadError::TooLarge);
        }
        position += line_end + 2;
        if size == 0 {
            // Trailer lines, up to an empty line.
            loop {
                let Some(line_end) = find_crlf(&data[position..]) else {
                    return Ok(None);
                };
                position += line_end + 2;
                if line_end == 0 {
                    return Ok(Some((body, position)));
                }
            }
        }
        if data.len() < position + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&data[position..position + size]);
        if &data[position + size..position + size + 2] != b"\r\n" {
            return Err(ReadError::Malformed("chunk data not followed by CRLF"));
        }
        position += size + 2;
    }
}

/// The offset of the first CRLF in `data`.
fn find_crlf(data: &[u8]) -> Option<usize> {
    data.windows(2).position(|window| window == b"\r\n")
}

/// Reads more bytes from `stream` into `buffer`.
fn fill(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Result<(), ReadError> {
    let mut chunk = [0u8; 16 * 1024];
    match stream.read(&mut chunk) {
        Ok(0) | Err(_) => Err(ReadError::Closed),
        Ok(read) => {
            buffer.extend_from_slice(&chunk[..read]);
            Ok(())
        }
    }
}

/// A response to write.
#[derive(Debug)]
pub(crate) struct Response {
    /// Status code.
    pub status: u16,
    /// Headers besides the framing ones (`content-type`, `content-length`,
    /// `transfer-encoding`, `connection`), which the writer adds.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Body,
}

/// A response body.
#[derive(Debug)]
pub(crate) enum Body {
    /// A JSON document, sent with `Content-Length`.
    Json(Vec<u8>),
    /// Server-sent events, sent chunked, one chunk per event.
    Events(Vec<SseEvent>),
    /// AWS event-stream messages, sent chunked, one chunk per message.
    EventStream(Vec<BinaryEvent>),
}

/// One encoded AWS event-stream message.
#[derive(Debug)]
pub(crate) struct BinaryEvent {
    /// The encoded message.
    pub bytes: Vec<u8>,
    /// Whether it carries reply content (what `truncate_after` counts).
    pub content: bool,
}

/// One server-sent event.
#[derive(Debug)]
pub(crate) struct SseEvent {
    /// The `event:` field (Anthropic names its events; OpenAI does not).
    pub name: Option<&'static str>,
    /// The `data:` field: one line of JSON (or `[DONE]`).
    pub data: String,
    /// Whether the event carries reply content (text or tool arguments); these
    /// are what `truncate_after` counts.
    pub content: bool,
}

impl Response {
    /// A JSON response.
    pub fn json(
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: &serde_json::Value,
    ) -> Response {
        Response {
            status,
            headers,
            body: Body::Json(body.to_string().into_bytes()),
        }
    }
}

/// How a response went out.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Written {
    /// Completely.
    Complete,
    /// A stream cut after `truncate_after` content events, without its end:
    /// the caller must close the connection.
    Truncated,
}

/// Writes `response`; SSE events are `chunk_delay` apart and the stream stops
/// after `truncate_after` content events.
pub(crate) fn write_response(
    stream: &mut TcpStream,
    response: &Response,
    keep_alive: bool,
    chunk_delay: Duration,
    truncate_after: Option<usize>,
) -> io::Result<Written> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        response.status,
        reason(response.status)
    );
    let connection = if keep_alive { "keep-alive" } else { "close" };
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    match &response.body {
        Body::Json(body) => {
            head.push_str(&format!(
                "content-type: application/json\r\ncontent-length: {}\r\nconnection: {connection}\r\n\r\n",
                body.len()
            ));
            let mut message = head.into_bytes();
            message.extend_from_slice(body);
            stream.write_all(&message)?;
            Ok(Written::Complete)
        }
        Body::Events(events) => {
            let chunks = events.iter().map(|event| {
                let mut payload = String::with_capacity(event.data.len() + 32);
                if let Some(name) = event.name {
                    payload.push_str(&format!("event: {name}\n"));
                }
                payload.push_str(&format!("data: {}\n\n", event.data));
                (payload.into_bytes(), event.content)
            });
            head.push_str("content-type: text/event-stream\r\ncache-control: no-cache\r\n");
            write_chunked(
                stream,
                head,
                connection,
                chunks,
                chunk_delay,
                truncate_after,
            )
        }
        Body::EventStream(events) => {
            let chunks = events
                .iter()
                .map(|event| (event.bytes.clone(), event.content));
            head.push_str("content-type: application/vnd.amazon.eventstream\r\n");
            write_chunked(
                stream,
                head,
                connection,
                chunks,
                chunk_delay,
                truncate_after,
            )
        }
    }
}

/// Writes `head` (without its framing headers) and one chunk per `(payload, is
/// content)` item, `chunk_delay` apart, stopping after `truncate_after` content items.
fn write_chunked(
    stream: &mut TcpStream,
    mut head: String,
    connection: &str,
    chunks: impl Iterator<Item = (Vec<u8>, bool)>,
    chunk_delay: Duration,
    truncate_after: Option<usize>,
) -> io::Result<Written> {
    head.push_str(&format!(
        "transfer-encoding: chunked\r\nconnection: {connection}\r\n\r\n"
    ));
    stream.write_all(head.as_bytes())?;
    let mut content_events = 0;
    for (index, (payload, content)) in chunks.enumerate() {
        if content && truncate_after == Some(content_events) {
            return Ok(Written::Truncated);
        }
        if index > 0 && !chunk_delay.is_zero() {
            thread::sleep(chunk_delay);
        }
        let mut chunk = format!("{:x}\r\n", payload.len()).into_bytes();
        chunk.extend_from_slice(&payload);
        chunk.extend_from_slice(b"\r\n");
        stream.write_all(&chunk)?;
        if content {
            content_events += 1;
            if truncate_after == Some(content_events) {
                return Ok(Written::Truncated);
            }
        }
    }
    stream.write_all(b"0\r\n\r\n")?;
    Ok(Written::Complete)
}

/// The reason phrase for a status code.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        529 => "Site Overloaded",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_chunked_body_with_extensions_and_trailers() {
        let data = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        let (body, used) = decode_chunked(data).unwrap().unwrap();
        assert_eq!(body, b"hello world");
        assert_eq!(&data[used..], b"NEXT");
    }

    #[test]
    fn an_incomplete_chunked_body_asks_for_more() {
        assert!(decode_chunked(b"5\r\nhel").unwrap().is_none());
        assert!(decode_chunked(b"5\r\nhello\r\n0\r\n").unwrap().is_none());
        assert!(matches!(
            decode_chunked(b"5\r\nhelloXX"),
            Err(ReadError::Malformed(_))
        ));
        assert!(matches!(
            decode_chunked(b"zz\r\n"),
            Err(ReadError::Malformed(_))
        ));
    }

    #[test]
    fn ambiguous_framing_is_rejected() {
        let header = |name: &str, value: &str| (name.to_owned(), value.to_owned());
        assert!(matches!(
            body_framing(&[
                header("content-length", "3"),
                header("transfer-encoding", "chunked")
            ]),
            Err(ReadError::Malformed(_))
        ));
        assert!(matches!(
            body_framing(&[header("content-length", "3"), header("content-length", "4")]),
            Err(ReadError::Malformed(_))
        ));
        assert!(matches!(
            body_framing(&[header("transfer-encoding", "gzip, chunked")]),
            Err(ReadError::Malformed(_))
        ));
        assert_eq!(
            body_framing(&[header("transfer-encoding", "Chunked")]).unwrap(),
            Framing::Chunked
        );
        assert_eq!(body_framing(&[]).unwrap(), Framing::Length(0));
    }
}
