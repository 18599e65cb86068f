//! A raw HTTP/1.1 client over a blocking `std` socket, so tests send exactly the bytes they mean.
//!
//! [`Conn`] writes whatever bytes it is given (malformed heads, pipelined
//! batches, bodies in pieces) and reads responses strictly: the head with
//! `httparse`, the body by `Content-Length`, chunked framing, or until close.
//! Every read and write has a timeout ([`crate::util::IO_TIMEOUT`] unless set),
//! so a gateway bug fails a test instead of hanging it. [`Request`] builds the
//! common well-formed requests.

use crate::util::IO_TIMEOUT;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How a response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304, or `Content-Length: 0`).
    None,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes.
    UntilClose,
}

/// A response as received.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// Headers in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The head exactly as received (status line to the blank line).
    pub raw_head: Vec<u8>,
    /// How the body was framed.
    pub framing: Framing,
    /// The decoded body (empty when it was streamed to a sink).
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header, in order.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON; panics with the body when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): status {} body {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// Whether the response says the connection closes after it.
    pub fn says_close(&self) -> bool {
        self.headers_named("connection")
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("close"))
    }
}

/// One client connection.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Connects with the default timeouts; panics when the connection fails.
    pub fn connect(addr: SocketAddr) -> Conn {
        Conn::try_connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
    }

    /// Connects with the default timeouts.
    pub fn try_connect(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
        })
    }

    /// Connects from the local address `source` (e.g. `127.0.0.2`, any port),
    /// so tests can present a different client IP on loopback; panics on failure.
    pub fn connect_from(addr: SocketAddr, source: std::net::IpAddr) -> Conn {
        Conn::try_connect_from(addr, source)
            .unwrap_or_else(|e| panic!("connect to {addr} from {source}: {e}"))
    }

    /// Connects from the local address `source` with the default timeouts.
    pub fn try_connect_from(addr: SocketAddr, source: std::net::IpAddr) -> io::Result<Conn> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.bind(&SocketAddr::new(source, 0).into())?;
        socket.connect_timeout(&addr.into(), IO_TIMEOUT)?;
        let stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
        })
    }

    /// Changes the read timeout.
    pub fn set_read_timeout(&mut self, t: Duration) {
        self.stream
            .set_read_timeout(Some(t))
            .expect("set read timeout");
    }

    /// Writes all of `bytes`; panics on failure.
    pub fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes).expect("write to gateway");
    }

    /// Writes all of `bytes`.
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Closes the write side (the peer reads EOF).
    pub fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// The underlying socket (for tests that stream).
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads one response head (interim 1xx heads included); the body stays unread.
    pub fn read_head(&mut self, request_was_head: bool) -> io::Result<Response> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 128];
            let mut res = httparse::Response::new(&mut headers);
            match res.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let status = res.code.unwrap_or(0);
                    let version = res.version.unwrap_or(1);
                    let headers: Vec<(String, String)> = res
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_string(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect();
                    let raw_head = self.buf[..n].to_vec();
                    self.buf.drain(..n);
                    let find = |name: &str| {
                        headers
                            .iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case(name))
                            .map(|(_, v)| v.clone())
                    };
                    let framing = if request_was_head
                        || (100..200).contains(&status)
                        || status == 204
                        || status == 304
                    {
                        Framing::None
                    } else if find("transfer-encoding")
                        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
                    {
                        Framing::Chunked
                    } else if let Some(cl) = find("content-length") {
                        match cl.trim().parse::<u64>() {
                            Ok(0) => Framing::None,
                            Ok(n) => Framing::Length(n),
                            Err(_) => {
                                return Err(io::Error::new(
                                    io::ErrorKind::InvalidData,
                                    format!("bad content-length {cl:?}"),
                                ))
                            }
                        }
                    } else {
                        Framing::UntilClose
                    };
                    return Ok(Response {
                        status,
                        version,
                        headers,
                        raw_head,
                        framing,
                        body: Vec::new(),
                    });
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "unparsable response head ({e}): {:?}",
                            String::from_utf8_lossy(&self.buf)
                        ),
                    ))
                }
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed before a complete response head ({} bytes: {:?})",
                        self.buf.len(),
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        }
    }

    /// Streams the body of `head` into `sink`; returns the decoded length.
    pub fn read_body_to(
        &mut self,
        head: &Response,
        mut sink: impl FnMut(&[u8]),
    ) -> io::Result<u64> {
        let eof = || io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed mid-body");
        match head.framing {
            Framing::None => Ok(0),
            Framing::Length(n) => {
                let mut left = n;
                loop {
                    let take = left.min(self.buf.len() as u64) as usize;
                    sink(&self.buf[..take]);
                    self.buf.drain(..take);
                    left -= take as u64;
                    if left == 0 {
                        return Ok(n);
                    }
                    if self.fill()? == 0 {
                        return Err(eof());
                    }
                }
            }
            Framing::UntilClose => {
                let mut total = self.buf.len() as u64;
                sink(&self.buf);
                self.buf.clear();
                loop {
                    match self.fill() {
                        Ok(0) => return Ok(total),
                        Ok(n) => {
                            total += n as u64;
                            sink(&self.buf);
                            self.buf.clear();
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            Framing::Chunked => {
                let mut total = 0u64;
                loop {
                    let (consumed, size) = loop {
                        match httparse::parse_chunk_size(&self.buf) {
                            Ok(httparse::Status::Complete(x)) => break x,
                            Ok(httparse::Status::Partial) => {
                                if self.fill()? == 0 {
                                    return Err(eof());
                                }
                            }
                            Err(_) => {
                                return Err(io::Error::new(
                                    io::ErrorKind::InvalidData,
                                    format!(
                                        "bad chunk size line: {:?}",
                                        String::from_utf8_lossy(
                                            &self.buf[..self.buf.len().min(64)]
                                        )
                                    ),
                                ))
                            }
                        }
                    };
                    self.buf.drain(..consumed);
                    if size == 0 {
                        // Trailer section: lines until an empty one.
                        loop {
                            if let Some(nl) = self.buf.windows(2).position(|w| w == b"\r\n") {
                                self.buf.drain(..nl + 2);
                                if nl == 0 {
                                    return Ok(total);
                                }
                            } else if self.fill()? == 0 {
                                return Err(eof());
                            }
                        }
                    }
                    let mut left = size;
                    while left > 0 {
                        if self.buf.is_empty() && self.fill()? == 0 {
                            return Err(eof());
                        }
                        let take = left.min(self.buf.len() as u64) as usize;
                        sink(&self.buf[..take]);
                        self.buf.drain(..take);
                        left -= take as u64;
                        total += take as u64;
                    }
                    while self.buf.len() < 2 {
                        if self.fill()? == 0 {
                            return Err(eof());
                        }
                    }
                    if &self.buf[..2] != b"\r\n" {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "chunk data not followed by CRLF",
                        ));
                    }
                    self.buf.drain(..2);
                }
            }
        }
    }

    /// Reads one complete final response (skipping interim 1xx heads).
    pub fn try_read_response(&mut self, request_was_head: bool) -> io::Result<Response> {
        loop {
            let mut head = self.read_head(request_was_head)?;
            if (100..200).contains(&head.status) && head.status != 101 {
                continue;
            }
            let mut body = Vec::new();
            self.read_body_to(&head, |b| body.extend_from_slice(b))?;
            head.body = body;
            return Ok(head);
        }
    }

    /// Reads one complete final response; panics on failure.
    pub fn read_response(&mut self) -> Response {
        self.try_read_response(false)
            .unwrap_or_else(|e| panic!("reading response: {e}"))
    }

    /// Sends a request and reads its response; panics on failure.
    pub fn request(&mut self, req: &Request) -> Response {
        self.send(&req.to_bytes());
        self.try_read_response(req.method == "HEAD")
            .unwrap_or_else(|e| panic!("{} {}: {e}", req.method, req.target))
    }

    /// Bytes received but not consumed by a response read.
    pub fn leftover(&self) -> &[u8] {
        &self.buf
    }

    /// Waits up to `limit` for the peer to close: true on EOF or reset, false
    /// if the connection is still open (or data arrived) when the time is up.
    pub fn closed_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = self.stream.set_read_timeout(Some(left));
            let mut b = [0u8; 1024];
            match self.stream.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => return false,
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    return false
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
    }
}

/// A well-formed request to build and serialise.
#[derive(Debug, Clone)]
pub struct Request {
    /// Method.
    pub method: String,
    /// Request target (path and query).
    pub target: String,
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: &'static str,
    /// Headers in order (a `Host` is added for HTTP/1.1 when absent).
    pub headers: Vec<(String, String)>,
    /// Body, sent with `Content-Length` (unless `chunked`).
    pub body: Vec<u8>,
    /// Send the body with chunked transfer coding, in pieces of this size.
    pub chunked: Option<usize>,
}

impl Request {
    /// A request with no headers and no body.
    pub fn new(method: &str, target: &str) -> Request {
        Request {
            method: method.into(),
            target: target.into(),
            version: "HTTP/1.1",
            headers: Vec::new(),
            body: Vec::new(),
            chunked: None,
        }
    }

    /// `GET target`.
    pub fn get(target: &str) -> Request {
        Request::new("GET", target)
    }

    /// `POST target` with a body.
    pub fn post(target: &str, body: impl Into<Vec<u8>>) -> Request {
        let mut r = Request::new("POST", target);
        r.body = body.into();
        r
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Uses HTTP/1.0.
    pub fn http10(mut self) -> Request {
        self.version = "HTTP/1.0";
        self
    }

    /// Sends the body chunked, `piece` bytes per chunk.
    pub fn chunked(mut self, piece: usize) -> Request {
        self.chunked = Some(piece.max(1));
        self
    }

    /// The request as bytes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("{} {} {}\r\n", self.method, self.target, self.version).into_bytes();
        let has = |n: &str| self.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
        if self.version == "HTTP/1.1" && !has("host") {
            out.extend_from_slice(b"Host: test.local\r\n");
        }
        for (k, v) in &self.headers {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        match self.chunked {
            Some(piece) => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                for c in self.body.chunks(piece) {
                    out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                    out.extend_from_slice(c);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
            }
            None => {
                if !self.body.is_empty() && !has("content-length") {
                    out.extend_from_slice(
                        format!("Content-Length: {}\r\n", self.body.len()).as_bytes(),
                    );
                }
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(&self.body);
            }
        }
        out
    }
}

/// One request on a fresh connection; panics on any I/O failure.
pub fn send(addr: SocketAddr, req: &Request) -> Response {
    Conn::connect(addr).request(req)
}

/// `GET path` on a fresh connection.
pub fn get(addr: SocketAddr, path: &str) -> Response {
    send(addr, &Request::get(path))
}
