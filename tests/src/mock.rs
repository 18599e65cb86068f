//! `MockUpstream`: an in-process HTTP/1.1 origin on 127.0.0.1:0 with fault knobs.
//!
//! One accept thread and one thread per connection, blocking `std` sockets.
//! For each request the mock reads the head (`httparse`) and the whole body
//! (`Content-Length` or chunked, hashed by [`Fingerprint`], the first
//! [`BODY_KEEP`] bytes kept), records it, then asks its handler what to do:
//! answer ([`Reply`]: status, headers, fixed / generated / echoed body,
//! chunked or not, latency, close), reset the connection (SO_LINGER 0), close
//! it, send garbage, hang, or switch to a WebSocket-style frame echo after a
//! `101`. The handler can be swapped while the mock runs, which is how tests
//! make an endpoint fail and recover. The mock counts accepted TCP connections
//! and keeps every request, complete or not (a body cut short is recorded with
//! `body_complete == false`).

use crate::body::{Fingerprint, Pattern};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Body bytes a recorded request keeps (the rest is only fingerprinted).
pub const BODY_KEEP: usize = 1 << 20;

/// A request as the mock received it.
#[derive(Debug, Clone)]
pub struct Request {
    /// Accepted-connection number (0-based) the request came on.
    pub connection: usize,
    /// Method.
    pub method: String,
    /// Request target as sent (path and query).
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// Headers in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The head exactly as received.
    pub raw_head: Vec<u8>,
    /// The first [`BODY_KEEP`] bytes of the decoded body.
    pub body: Vec<u8>,
    /// Fingerprint (length and digest) of the whole decoded body.
    pub body_fingerprint: Fingerprint,
    /// Whether the body arrived complete and correctly framed.
    pub body_complete: bool,
}

impl Request {
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

    /// The path part of the target.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

/// A response body.
#[derive(Debug, Clone)]
pub enum ReplyBody {
    /// These bytes.
    Bytes(Vec<u8>),
    /// A generated [`Pattern`] stream of `len` bytes.
    Pattern {
        /// Pattern seed.
        seed: u64,
        /// Length.
        len: u64,
    },
    /// The request's body (up to [`BODY_KEEP`] bytes).
    Echo,
}

/// A normal answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: ReplyBody,
    /// Send the body chunked, this many bytes per chunk.
    pub chunked: Option<usize>,
    /// Send no framing header at all: the body ends when the connection closes.
    pub until_close: bool,
    /// Wait this long before answering.
    pub latency: Duration,
    /// Close the connection after the answer (and say so).
    pub close: bool,
    /// Write the serialised answer in pieces of this many bytes, pausing between them.
    pub trickle: Option<(usize, Duration)>,
}

impl Reply {
    /// A reply with this status and an empty body.
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: ReplyBody::Bytes(Vec::new()),
            chunked: None,
            until_close: false,
            latency: Duration::ZERO,
            close: false,
            trickle: None,
        }
    }

    /// `200` with this body.
    pub fn ok(body: impl Into<Vec<u8>>) -> Reply {
        Reply::status(200).body(body)
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Reply {
        self.body = ReplyBody::Bytes(body.into());
        self
    }

    /// A generated body of `len` bytes.
    pub fn pattern(mut self, seed: u64, len: u64) -> Reply {
        self.body = ReplyBody::Pattern { seed, len };
        self
    }

    /// Echo the request body.
    pub fn echo(mut self) -> Reply {
        self.body = ReplyBody::Echo;
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Chunked body, `piece` bytes per chunk.
    pub fn chunked(mut self, piece: usize) -> Reply {
        self.chunked = Some(piece.max(1));
        self
    }

    /// No framing header: the body is delimited by closing the connection.
    pub fn until_close(mut self) -> Reply {
        self.until_close = true;
        self.close = true;
        self
    }

    /// Answer after `d`.
    pub fn latency(mut self, d: Duration) -> Reply {
        self.latency = d;
        self
    }

    /// Write the answer (head and body) `piece` bytes at a time with `pause` between
    /// writes, so the reader sees it split across many reads.
    pub fn trickle(mut self, piece: usize, pause: Duration) -> Reply {
        self.trickle = Some((piece.max(1), pause));
        self
    }

    /// Close the connection after answering.
    pub fn close(mut self) -> Reply {
        self.close = true;
        self
    }
}

/// What the mock does with a request.
#[derive(Debug, Clone)]
pub enum Action {
    /// Answer.
    Respond(Reply),
    /// Close with SO_LINGER 0 (the peer sees a reset), without answering.
    Reset,
    /// Close normally (FIN) without answering.
    Close,
    /// Write these bytes, then close.
    Garbage(Vec<u8>),
    /// Never answer; keep the connection open until the mock is dropped.
    Hang,
    /// Answer `101 Switching Protocols`, send one text frame `hello`, then echo
    /// every WebSocket frame back unmasked until a close frame.
    WebSocketEcho,
}

impl From<Reply> for Action {
    fn from(r: Reply) -> Action {
        Action::Respond(r)
    }
}

type Handler = Arc<dyn Fn(&Request) -> Action + Send + Sync>;

struct Shared {
    handler: RwLock<Handler>,
    requests: Mutex<Vec<Request>>,
    accepted: AtomicUsize,
    close_after: AtomicUsize,
    stop: AtomicBool,
}

/// An in-process upstream on an ephemeral port; stops when dropped.
pub struct MockUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MockUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockUpstream")
            .field("addr", &self.addr)
            .finish()
    }
}

impl MockUpstream {
    /// Starts a mock whose handler decides each answer.
    pub fn start(handler: impl Fn(&Request) -> Action + Send + Sync + 'static) -> MockUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind mock upstream");
        let addr = listener.local_addr().expect("mock addr");
        let shared = Arc::new(Shared {
            handler: RwLock::new(Arc::new(handler)),
            requests: Mutex::new(Vec::new()),
            accepted: AtomicUsize::new(0),
            close_after: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name(format!("mock-{}", addr.port()))
            .spawn(move || accept_loop(listener, s))
            .expect("spawn mock accept thread");
        MockUpstream { addr, shared }
    }

    /// A mock that answers `200` with `body` to everything.
    pub fn ok(body: &str) -> MockUpstream {
        let body = body.as_bytes().to_vec();
        MockUpstream::start(move |_| Reply::ok(body.clone()).into())
    }

    /// A mock that does `action` for every request.
    pub fn always(action: Action) -> MockUpstream {
        MockUpstream::start(move |_| action.clone())
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the handler (takes effect for the next request).
    pub fn set_handler(&self, handler: impl Fn(&Request) -> Action + Send + Sync + 'static) {
        *self
            .shared
            .handler
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(handler);
    }

    /// Closes each connection (silently) after it has answered `n` requests; 0 never.
    pub fn set_close_after(&self, n: usize) {
        self.shared.close_after.store(n, Ordering::Relaxed);
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Number of requests received (complete or not).
    pub fn request_count(&self) -> usize {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Number of requests whose path is `path`.
    pub fn count_path(&self, path: &str) -> usize {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|r| r.path() == path)
            .count()
    }

    /// Number of requests whose path is not `path` (e.g. all but health checks).
    pub fn count_except(&self, path: &str) -> usize {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|r| r.path() != path)
            .count()
    }

    /// The last request received; panics when there is none.
    pub fn last(&self) -> Request {
        self.requests()
            .pop()
            .expect("the mock upstream received no request")
    }

    /// TCP connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let id = shared.accepted.fetch_add(1, Ordering::Relaxed);
        let s = shared.clone();
        let _ = std::thread::Builder::new()
            .name("mock-conn".into())
            .spawn(move || {
                let _ = serve(stream, id, &s);
            });
    }
}

/// Reads until `buf` holds at least one more byte; false on EOF.
fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<bool> {
    let mut chunk = [0u8; 64 * 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(n > 0);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

enum BodyRead {
    Complete,
    Incomplete,
}

struct BodySink {
    kept: Vec<u8>,
    fp: Fingerprint,
}

impl BodySink {
    fn push(&mut self, b: &[u8]) {
        let room = BODY_KEEP.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&b[..room.min(b.len())]);
        self.fp.update(b);
    }
}

fn read_body(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    chunked: bool,
    length: u64,
    sink: &mut BodySink,
) -> io::Result<BodyRead> {
    if !chunked {
        let mut left = length;
        while left > 0 {
            if buf.is_empty() && !fill(stream, buf)? {
                return Ok(BodyRead::Incomplete);
            }
            let take = left.min(buf.len() as u64) as usize;
            sink.push(&buf[..take]);
            buf.drain(..take);
            left -= take as u64;
        }
        return Ok(BodyRead::Complete);
    }
    loop {
        let (consumed, size) = loop {
            match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete(x)) => break x,
                Ok(httparse::Status::Partial) => {
                    if !fill(stream, buf)? {
                        return Ok(BodyRead::Incomplete);
                    }
                }
                Err(_) => return Ok(BodyRead::Incomplete),
            }
        };
        buf.drain(..consumed);
        if size == 0 {
            loop {
                if let Some(nl) = buf.windows(2).position(|w| w == b"\r\n") {
                    buf.drain(..nl + 2);
                    if nl == 0 {
                        return Ok(BodyRead::Complete);
                    }
                } else if !fill(stream, buf)? {
                    return Ok(BodyRead::Incomplete);
                }
            }
        }
        let mut left = size;
        while left > 0 {
            if buf.is_empty() && !fill(stream, buf)? {
                return Ok(BodyRead::Incomplete);
            }
            let take = left.min(buf.len() as u64) as usize;
            sink.push(&buf[..take]);
            buf.drain(..take);
            left -= take as u64;
        }
        while buf.len() < 2 {
            if !fill(stream, buf)? {
                return Ok(BodyRead::Incomplete);
            }
        }
        if &buf[..2] != b"\r\n" {
            return Ok(BodyRead::Incomplete);
        }
        buf.drain(..2);
    }
}

fn serve(mut stream: TcpStream, id: usize, shared: &Shared) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_write_timeout(Some(Duration::from_secs(60)))?;
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut answered = 0usize;
    loop {
        // Head.
        let (mut req, chunked, length, wants_close) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 256];
            let mut parsed = httparse::Request::new(&mut headers);
            match parsed.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let headers: Vec<(String, String)> = parsed
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_string(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect();
                    let get = |name: &str| {
                        headers
                            .iter()
                            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                            .map(|(_, v)| v.to_ascii_lowercase())
                            .collect::<Vec<_>>()
                            .join(",")
                    };
                    let chunked = get("transfer-encoding").contains("chunked");
                    let length = get("content-length").trim().parse::<u64>().unwrap_or(0);
                    let version = parsed.version.unwrap_or(1);
                    let conn = get("connection");
                    let wants_close =
                        conn.contains("close") || (version == 0 && !conn.contains("keep-alive"));
                    let req = Request {
                        connection: id,
                        method: parsed.method.unwrap_or("").to_string(),
                        target: parsed.path.unwrap_or("").to_string(),
                        version,
                        headers,
                        raw_head: buf[..n].to_vec(),
                        body: Vec::new(),
                        body_fingerprint: Fingerprint::default(),
                        body_complete: true,
                    };
                    buf.drain(..n);
                    break (req, chunked, length, wants_close);
                }
                Ok(httparse::Status::Partial) if buf.len() < 1 << 20 => {
                    if !fill(&mut stream, &mut buf)? {
                        return Ok(());
                    }
                }
                _ => return Ok(()),
            }
        };
        // Body.
        let mut sink = BodySink {
            kept: Vec::new(),
            fp: Fingerprint::default(),
        };
        let outcome = read_body(&mut stream, &mut buf, chunked, length, &mut sink);
        req.body = sink.kept;
        req.body_fingerprint = sink.fp;
        req.body_complete = matches!(outcome, Ok(BodyRead::Complete));
        shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(req.clone());
        if !req.body_complete {
            return Ok(());
        }
        let handler = shared
            .handler
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let reply = match handler(&req) {
            Action::Respond(r) => r,
            Action::Reset => {
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                return Ok(());
            }
            Action::Close => return Ok(()),
            Action::Garbage(bytes) => {
                stream.write_all(&bytes)?;
                return Ok(());
            }
            Action::Hang => {
                let until = Instant::now() + Duration::from_secs(120);
                while !shared.stop.load(Ordering::Relaxed) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(20));
                }
                return Ok(());
            }
            Action::WebSocketEcho => return websocket_echo(stream, buf),
        };
        if !reply.latency.is_zero() {
            std::thread::sleep(reply.latency);
        }
        let close = reply.close || wants_close;
        match reply.trickle {
            None => write_reply(&mut stream, &reply, &req, close)?,
            Some((piece, pause)) => {
                let mut whole = Vec::new();
                write_reply(&mut whole, &reply, &req, close)?;
                for p in whole.chunks(piece) {
                    stream.write_all(p)?;
                    stream.flush()?;
                    std::thread::sleep(pause);
                }
            }
        }
        answered += 1;
        let limit = shared.close_after.load(Ordering::Relaxed);
        if close || (limit > 0 && answered >= limit) {
            return Ok(());
        }
    }
}

fn write_reply(stream: &mut impl Write, r: &Reply, req: &Request, close: bool) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {} Mock\r\n", r.status);
    for (k, v) in &r.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let len = match &r.body {
        ReplyBody::Bytes(b) => b.len() as u64,
        ReplyBody::Pattern { len, .. } => *len,
        ReplyBody::Echo => req.body.len() as u64,
    };
    let no_body = req.method == "HEAD" || r.status == 204 || r.status == 304;
    if r.chunked.is_some() {
        head.push_str("Transfer-Encoding: chunked\r\n");
    } else if !r.until_close {
        head.push_str(&format!("Content-Length: {len}\r\n"));
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if no_body {
        return Ok(());
    }
    let mut out = Vec::with_capacity(80 * 1024);
    let emit = |data: &[u8], out: &mut Vec<u8>, stream: &mut dyn Write| -> io::Result<()> {
        match r.chunked {
            Some(piece) => {
                for c in data.chunks(piece) {
                    out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                    out.extend_from_slice(c);
                    out.extend_from_slice(b"\r\n");
                    if out.len() >= 64 * 1024 {
                        stream.write_all(out)?;
                        out.clear();
                    }
                }
            }
            None => out.extend_from_slice(data),
        }
        if out.len() >= 64 * 1024 {
            stream.write_all(out)?;
            out.clear();
        }
        Ok(())
    };
    match &r.body {
        ReplyBody::Bytes(b) => emit(b, &mut out, stream)?,
        ReplyBody::Echo => emit(&req.body, &mut out, stream)?,
        ReplyBody::Pattern { seed, len } => {
            let mut p = Pattern::new(*seed, *len);
            let mut block = vec![0u8; 64 * 1024];
            loop {
                let n = p.fill(&mut block);
                if n == 0 {
                    break;
                }
                emit(&block[..n], &mut out, stream)?;
            }
        }
    }
    if r.chunked.is_some() {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    stream.write_all(&out)
}

/// A WebSocket frame: opcode and (unmasked) payload.
fn ws_frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            f.push(mask_bit | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(mask_bit | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            f.extend_from_slice(&key);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => f.extend_from_slice(payload),
    }
    f
}

/// Encodes a client-to-server (masked) WebSocket frame.
pub fn ws_client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    ws_frame(opcode, payload, Some([0x12, 0x34, 0x56, 0x78]))
}

/// Decodes one frame from the front of `buf`: `(opcode, payload, bytes used)`, or
/// `None` when more bytes are needed.
pub fn ws_parse_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut pos) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => {
            let mut a = [0u8; 8];
            a.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(a), 10)
        }
        126 | 127 => return None,
        n => (u64::from(n), 2),
    };
    let mut key = [0u8; 4];
    if masked {
        if buf.len() < pos + 4 {
            return None;
        }
        key.copy_from_slice(&buf[pos..pos + 4]);
        pos += 4;
    }
    let end = pos + len as usize;
    if buf.len() < end {
        return None;
    }
    let payload = buf[pos..end]
        .iter()
        .enumerate()
        .map(|(i, b)| if masked { b ^ key[i % 4] } else { *b })
        .collect();
    Some((opcode, payload, end))
}

fn websocket_echo(mut stream: TcpStream, mut buf: Vec<u8>) -> io::Result<()> {
    let mut out =
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
            .to_vec();
    // Sent in the same write as the head: bytes right after a 101 belong to the tunnel.
    out.extend_from_slice(&ws_frame(0x1, b"hello", None));
    stream.write_all(&out)?;
    loop {
        while let Some((opcode, payload, used)) = ws_parse_frame(&buf) {
            buf.drain(..used);
            stream.write_all(&ws_frame(opcode, &payload, None))?;
            if opcode == 0x8 {
                return Ok(());
            }
        }
        if !fill(&mut stream, &mut buf)? {
            return Ok(());
        }
    }
}
