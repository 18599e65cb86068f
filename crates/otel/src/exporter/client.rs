//! A minimal blocking HTTP/1.1 client for OTLP/HTTP: `POST` with a protobuf
//! body, one kept-alive connection per endpoint, timeouts on connect, write
//! and read.
//!
//! The response head is parsed with `httparse`; its body is drained by
//! `Content-Length`, chunked framing, or to the end of the connection, so the
//! connection can be reused. A request that finds a reused connection closed
//! before any answer is sent once more on a new one. A 429 or 503 is retried
//! once, at once (no `Retry-After` handling). After a timeout or any other
//! error the connection is dropped, never reused.
//!
//! Depends on: [`crate::config`] (the endpoint and headers) and [`crate::stats`].
#![allow(
    clippy::disallowed_methods,
    reason = "the exporter runs on its own thread, never on a shard: it resolves the \
              collector's name, connects and waits on its socket there"
)]

use crate::config::{HttpEndpoint, SecretValue};
use crate::stats::add;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// The largest response head, and the read buffer's size.
const MAX_HEAD: usize = 16 * 1024;
/// Response bodies longer than this are not drained: the connection is closed.
const MAX_DRAIN: u64 = 1024 * 1024;

/// Why an export request failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExportError {
    /// Name resolution or connect failed.
    #[error("connect to {url}: {source}")]
    Connect {
        /// The endpoint.
        url: String,
        /// The last address's error.
        source: io::Error,
    },
    /// A write or read failed (a timeout included).
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The collector closed the connection without answering.
    #[error("the collector closed the connection without answering")]
    Closed,
    /// The answer was not HTTP/1.x as expected.
    #[error("bad response: {0}")]
    BadResponse(&'static str),
    /// A status other than 2xx.
    #[error("the collector answered {0}")]
    Status(u16),
}

impl ExportError {
    /// Whether a reused connection had been closed by the peer before the
    /// request got an answer: then the request is sent again on a new one.
    fn is_stale_connection(&self) -> bool {
        match self {
            ExportError::Closed => true,
            ExportError::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
            ),
            _ => false,
        }
    }
}

/// The client of one endpoint.
pub(crate) struct HttpClient {
    endpoint: HttpEndpoint,
    timeout: Duration,
    /// The request head from the `Host` line to the `Content-Length` name.
    fixed_head: String,
    request: Vec<u8>,
    conn: Option<Connection>,
}

impl HttpClient {
    pub(crate) fn new(
        endpoint: HttpEndpoint,
        timeout: Duration,
        headers: &[(String, SecretValue)],
    ) -> HttpClient {
        let mut fixed_head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-protobuf\r\nUser-Agent: hypergate-otel/{}\r\n",
            endpoint.path(),
            endpoint.authority(),
            env!("CARGO_PKG_VERSION"),
        );
        for (name, value) in headers {
            // The collector's credentials leave here, onto the wire.
            let _ = write!(fixed_head, "{name}: {}\r\n", value.expose());
        }
        fixed_head.push_str("Content-Length: ");
        HttpClient {
            endpoint,
            timeout,
            fixed_head,
            request: Vec::new(),
            conn: None,
        }
    }

    /// The endpoint's URL, for logs.
    pub(crate) fn url(&self) -> &str {
        self.endpoint.url()
    }

    /// POSTs an encoded body; `Ok` on a 2xx. Each request sent is added to
    /// `requests`.
    pub(crate) fn post(&mut self, body: &[u8], requests: &AtomicU64) -> Result<(), ExportError> {
        self.head(body.len());
        self.request.extend_from_slice(body);
        self.finish(requests)
    }

    fn head(&mut self, body_len: usize) {
        self.request.clear();
        self.request.extend_from_slice(self.fixed_head.as_bytes());
        self.request
            .extend_from_slice(format!("{body_len}\r\n\r\n").as_bytes());
    }

    fn finish(&mut self, requests: &AtomicU64) -> Result<(), ExportError> {
        let mut status = self.send(requests)?;
        if status == 429 || status == 503 {
            status = self.send(requests)?;
        }
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(ExportError::Status(status))
        }
    }

    /// Sends the request once (twice if a reused connection turns out closed)
    /// and returns the response status.
    fn send(&mut self, requests: &AtomicU64) -> Result<u16, ExportError> {
        add(requests, 1);
        if let Some(conn) = self.conn.take() {
            match self.exchange(conn) {
                Err(e) if e.is_stale_connection() => add(requests, 1),
                result => return result,
            }
        }
        let conn = self.connect()?;
        self.exchange(conn)
    }

    fn exchange(&mut self, mut conn: Connection) -> Result<u16, ExportError> {
        conn.stream.write_all(&self.request)?;
        let (status, reusable) = conn.read_response()?;
        if reusable {
            self.conn = Some(conn);
        }
        Ok(status)
    }

    fn connect(&self) -> Result<Connection, ExportError> {
        let failed = |source| ExportError::Connect {
            url: self.endpoint.url().to_string(),
            source,
        };
        let addrs = (self.endpoint.host(), self.endpoint.port())
            .to_socket_addrs()
            .map_err(failed)?;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the name has no address");
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, self.timeout) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(self.timeout))?;
                    stream.set_write_timeout(Some(self.timeout))?;
                    stream.set_nodelay(true)?;
                    return Ok(Connection {
                        stream,
                        buf: vec![0; MAX_HEAD],
                        start: 0,
                        end: 0,
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(failed(last))
    }
}

/// How a response body is delimited.
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// One connection and its read buffer (`buf[start..end]` is unread).
struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Connection {
    /// Reads more into the buffer; `Ok(0)` at the end of the stream.
    fn fill(&mut self) -> io::Result<usize> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "response line or head too long",
            ));
        }
        let n = self.stream.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }

    /// Reads a response: its status, and whether the connection may be reused.
    fn read_response(&mut self) -> Result<(u16, bool), ExportError> {
        let mut answered = self.end > self.start;
        loop {
            let parsed = {
                let mut headers = [httparse::EMPTY_HEADER; 32];
                let mut response = httparse::Response::new(&mut headers);
                match response.parse(&self.buf[self.start..self.end]) {
                    Ok(httparse::Status::Complete(len)) => Some(head(&response, len)?),
                    Ok(httparse::Status::Partial) => None,
                    Err(_) => return Err(ExportError::BadResponse("malformed response head")),
                }
            };
            let Some((status, framing, keep_alive, len)) = parsed else {
                if self.fill()? == 0 {
                    return Err(if answered {
                        ExportError::BadResponse("the connection closed inside the response head")
                    } else {
                        ExportError::Closed
                    });
                }
                answered = true;
                continue;
            };
            self.start += len;
            if (100..200).contains(&status) {
                // An interim response: the final one follows.
                continue;
            }
            // The status is the outcome; a body that cannot be drained only
            // makes the connection unusable.
            let drained = self.drain(framing).unwrap_or(false);
            let clean = self.start == self.end;
            return Ok((status, keep_alive && drained && clean));
        }
    }

    /// Reads and discards a body; `Ok(true)` when the connection is still usable.
    fn drain(&mut self, framing: Framing) -> io::Result<bool> {
        match framing {
            Framing::None => Ok(true),
            Framing::Length(n) if n > MAX_DRAIN => Ok(false),
            Framing::Length(n) => self.skip(n).map(|()| true),
            Framing::Chunked => {
                let mut total = 0u64;
                loop {
                    let line = self.read_line()?;
                    let size = line.split(';').next().unwrap_or("").trim();
                    let size =
                        u64::from_str_radix(size, 16).map_err(|_| invalid("bad chunk size"))?;
                    total = total.saturating_add(size);
                    if total > MAX_DRAIN {
                        return Ok(false);
                    }
                    if size == 0 {
                        // Trailers, up to the empty line.
                        while !self.read_line()?.is_empty() {}
                        return Ok(true);
                    }
                    self.skip(size)?;
                    if !self.read_line()?.is_empty() {
                        return Err(invalid("chunk longer than its size"));
                    }
                }
            }
            Framing::UntilClose => {
                let mut total = 0u64;
                while total <= MAX_DRAIN {
                    self.start = 0;
                    self.end = 0;
                    match self.fill()? {
                        0 => break,
                        n => total += n as u64,
                    }
                }
                Ok(false)
            }
        }
    }

    /// Discards `n` body bytes.
    fn skip(&mut self, mut n: u64) -> io::Result<()> {
        loop {
            let available = (self.end - self.start) as u64;
            let take = available.min(n);
            // `take` is at most the buffered length, a usize.
            self.start += take as usize;
            n -= take;
            if n == 0 {
                return Ok(());
            }
            if self.fill()? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// One CRLF-terminated line, without the line end.
    fn read_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = self.buf[self.start..self.end]
                .iter()
                .position(|b| *b == b'\n')
            {
                let line = &self.buf[self.start..self.start + i];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let text = String::from_utf8_lossy(line).into_owned();
                self.start += i + 1;
                return Ok(text);
            }
            if self.fill()? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// What the head says: status, framing, keep-alive, and the head's length.
fn head(
    response: &httparse::Response<'_, '_>,
    len: usize,
) -> Result<(u16, Framing, bool, usize), ExportError> {
    let status = response
        .code
        .ok_or(ExportError::BadResponse("no status code"))?;
    let http11 = response.version == Some(1);
    let mut keep_alive = http11;
    let mut length = None;
    let mut chunked = false;
    for h in response.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse::<u64>()
                .map_err(|_| ExportError::BadResponse("bad content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(ExportError::BadResponse("conflicting content-length"));
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::None
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        keep_alive = false;
        Framing::UntilClose
    };
    Ok((status, framing, keep_alive, len))
}
