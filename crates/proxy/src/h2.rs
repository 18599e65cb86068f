//! HTTP/2 downstream connections (`h2` by ALPN on TLS listeners, `h2c` with
//! prior knowledge on plaintext ones that enable it).
//!
//! The `h2` crate speaks the protocol (framing, HPACK, flow control,
//! SETTINGS, the CVE-2023-44487 and CONTINUATION-flood limits) over the
//! shard's socket through `monoio-compat`'s adapter. Each stream then enters
//! the very same pipeline as an HTTP/1.1 request: [`H2Exchange`] presents the
//! stream to [`crate::pipeline::serve_stream`] as a one-request HTTP/1.1
//! connection: the request head is written out as HTTP/1.1 bytes (so the
//! head phase parses and canonicalises it like any other: path rules,
//! limits, routing, auth, limits, AI, splits, records, metrics, traces), the
//! body as chunked or sized bytes as DATA frames arrive, and what the
//! pipeline writes back is parsed into the stream's HEADERS and DATA frames,
//! sent as the client's flow-control window allows (so a slow reader holds
//! at most the stream's send buffer, and the pipeline's `send_timeout`
//! applies as for HTTP/1.1). Why a bridge and not a second pipeline: one
//! code path for every check is the gateway's first rule; its cost (a head
//! written and parsed once more per stream) is measured in `cargo xtask
//! bench --scenario h2-get`.
//!
//! Per connection, at most `limits.h2_max_concurrent_streams` streams are in
//! the pipeline at once, counting streams the client already reset (the
//! rapid-reset attack opens and cancels streams faster than any limit on
//! open streams sees): a stream over it is refused with `REFUSED_STREAM`,
//! and a client that keeps being refused gets `GOAWAY` (`ENHANCE_YOUR_CALM`).
//! A drain sends `GOAWAY` and lets open streams finish; an idle connection
//! (no stream for `limits.idle_timeout`) is closed the same way.
//!
//! Depends on `pipeline` (the exchange of one stream), `state` and `stats`.

use crate::exchange::Downstream;
use crate::handler::Handler;
use crate::state::ShardCtx;
use crate::stats::h2_event;
use bytes::{Bytes, BytesMut};
use h2::server::SendResponse;
use h2::{Reason, RecvStream};
use hypergate_core::http::bridge::{connection_specific, copy_to_iovecs, BodyReader, BodySender};
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, Split};
use monoio::BufResult;
use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// The HTTP/2 connection preface a prior-knowledge (`h2c`) client opens with.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How often the connection checks for a drain and for idleness.
const TICK: Duration = Duration::from_millis(500);

/// Streams refused over the concurrency limit, per connection, before the
/// connection is closed as abusive.
const MAX_REFUSED: u32 = 1000;

/// Serves one HTTP/2 connection until it closes.
pub async fn serve_h2<S, H>(
    ctx: Rc<ShardCtx>,
    handler: Rc<H>,
    stream: S,
    fd: RawFd,
    peer: SocketAddr,
    scheme: &'static str,
    _permit: hypergate_edge::policy::ConnectionPermit,
) where
    S: AsyncReadRent + AsyncWriteRent + Unpin + 'static,
    H: Handler + 'static,
{
    let slot = ctx.conns.borrow_mut().register(fd);
    let active = &ctx.stats.active_connections;
    active.set(active.get() + 1);
    let peak = &ctx.stats.connections_peak;
    peak.set(peak.get().max(active.get()));
    ctx.stats.h2_event(h2_event::CONNECTION);
    let down = Rc::new(Downstream {
        peer,
        h2: true,
        peer_ip: hypergate_core::ids::IpText::new(peer.ip()),
        scheme,
    });
    let limits = ctx.installed.borrow().config.raw.limits.clone();
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .initial_window_size(limits.h2_initial_window)
        .initial_connection_window_size(limits.h2_initial_window.saturating_mul(4))
        .max_frame_size(limits.h2_max_frame_size)
        .max_header_list_size(limits.max_header_bytes as u32)
        .max_send_buffer_size(limits.h2_initial_window as usize)
        .max_pending_accept_reset_streams(limits.h2_max_concurrent_streams as usize)
        .max_local_error_reset_streams(Some(limits.h2_max_concurrent_streams as usize * 4));
    let io = monoio_compat::StreamWrapper::new(stream);
    let handshake = monoio::time::timeout(limits.header_timeout, builder.handshake::<_, Bytes>(io));
    let mut conn = match handshake.await {
        Ok(Ok(conn)) => conn,
        _ => {
            ctx.stats.h2_event(h2_event::ERROR);
            ctx.conns.borrow_mut().unregister(slot);
            active.set(active.get() - 1);
            return;
        }
    };
    let in_flight = Rc::new(Cell::new(0usize));
    let mut refused = 0u32;
    let mut last_activity = Instant::now();
    let mut closing = false;
    let mut tick = std::pin::pin!(monoio::time::sleep(TICK));
    loop {
        // One timer for the connection, re-armed when it fires: a new one
        // per stream would cost a timer-wheel entry per request.
        let next = monoio::select! {
            next = conn.accept() => Some(next),
            _ = &mut tick => {
                tick.as_mut().reset(monoio::time::Instant::now() + TICK);
                None
            }
        };
        match next {
            None => {
                let idle = in_flight.get() == 0 && last_activity.elapsed() >= limits.idle_timeout;
                if !closing && (ctx.draining.get() || idle) {
                    closing = true;
                    conn.graceful_shutdown();
                }
            }
            Some(None) => break,
            Some(Some(Err(e))) => {
                if !e.is_go_away() && !e.is_io() {
                    ctx.stats.h2_event(h2_event::ERROR);
                }
                break;
            }
            Some(Some(Ok((request, mut respond)))) => {
                last_activity = Instant::now();
                if in_flight.get() >= limits.h2_max_concurrent_streams as usize {
                    respond.send_reset(Reason::REFUSED_STREAM);
                    ctx.stats.h2_event(h2_event::REFUSED);
                    refused += 1;
                    if refused >= MAX_REFUSED && !closing {
                        closing = true;
                        conn.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
                    }
                    continue;
                }
                ctx.stats.h2_event(h2_event::STREAM);
                in_flight.set(in_flight.get() + 1);
                let (ctx, handler, down, in_flight) = (
                    ctx.clone(),
                    handler.clone(),
                    down.clone(),
                    in_flight.clone(),
                );
                monoio::spawn(async move {
                    let exchange = H2Exchange::new(request, respond);
                    crate::pipeline::serve_stream(&ctx, &*handler, exchange, &down).await;
                    in_flight.set(in_flight.get() - 1);
                });
            }
        }
    }
    ctx.conns.borrow_mut().unregister(slot);
    active.set(active.get() - 1);
}

/// The request head as HTTP/1.1 bytes, and whether its body is sent chunked
/// (no `content-length` and not already ended).
fn request_head(parts: &http::request::Parts, ended: bool) -> (Vec<u8>, bool) {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let authority = parts.uri.authority().map(|a| a.as_str());
    if let Some(a) = authority {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let mut cookies: Vec<&[u8]> = Vec::new();
    let mut sized = false;
    for (name, value) in &parts.headers {
        let n = name.as_str().as_bytes();
        if connection_specific(n) || (n == b"host" && authority.is_some()) {
            continue;
        }
        // HTTP/2 splits cookies into crumbs; HTTP/1.1 wants one header.
        if n == b"cookie" {
            cookies.push(value.as_bytes());
            continue;
        }
        sized |= n == b"content-length";
        out.extend_from_slice(n);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !cookies.is_empty() {
        out.extend_from_slice(b"cookie: ");
        out.extend_from_slice(&cookies.join(&b"; "[..]));
        out.extend_from_slice(b"\r\n");
    }
    let chunked = !sized && !ended;
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    } else if !sized && parts.method != http::Method::GET && parts.method != http::Method::HEAD {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (out, chunked)
}

/// Where the response the pipeline writes stands.
enum Out {
    /// Collecting the head.
    Head,
    /// The body, onto the stream's DATA frames.
    Body(BodySender),
    /// Sent whole (or with no body); anything more is ignored.
    Done,
}

/// One HTTP/2 stream as the pipeline sees it: a connection that carries
/// exactly one HTTP/1.1 request and its response (see the module docs).
pub struct H2Exchange {
    /// Read side: request bytes not read yet (the head first), then the body.
    pending: Bytes,
    body: BodyReader,
    /// Write side.
    respond: Option<SendResponse<Bytes>>,
    head_request: bool,
    head: Vec<u8>,
    out: Out,
}

// SAFETY: `Split` promises the stream tolerates its read and write halves
// being used at once. The read methods touch only the read-side fields
// (`pending`, `body`) and the write methods only the write-side ones; the
// `h2` handles behind them are independent (receiving and sending halves of
// the stream).
unsafe impl Split for H2Exchange {}

impl H2Exchange {
    /// The exchange of one accepted stream.
    pub fn new(request: http::Request<RecvStream>, respond: SendResponse<Bytes>) -> Self {
        let (parts, body) = request.into_parts();
        let ended = body.is_end_stream();
        let (head, chunked) = request_head(&parts, ended);
        Self {
            pending: Bytes::from(head),
            body: BodyReader::new((!ended).then_some(body), chunked),
            respond: Some(respond),
            head_request: parts.method == http::Method::HEAD,
            head: Vec::new(),
            out: Out::Head,
        }
    }

    /// The next request bytes into `pending` (empty at the end).
    async fn fill(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            self.pending = self.body.next().await?;
        }
        Ok(())
    }

    /// Takes what the pipeline wrote (see the module docs).
    async fn take(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.out {
            Out::Head => {
                self.head.extend_from_slice(data);
                let Some(end) = self.head.windows(4).position(|w| w == b"\r\n\r\n") else {
                    if self.head.len() > 256 * 1024 {
                        return Err(io::Error::other("response head too large"));
                    }
                    return Ok(());
                };
                let rest = self.head.split_off(end + 4);
                self.start_response()?;
                self.head.clear();
                if rest.is_empty() {
                    return Ok(());
                }
                // The body bytes that came with the head.
                Box::pin(self.take(&rest)).await
            }
            Out::Body(sender) => sender.take(data).await,
            Out::Done => Ok(()),
        }
    }

    /// Sends the response head parsed from `self.head`.
    fn start_response(&mut self) -> io::Result<()> {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut parsed = httparse::Response::new(&mut headers);
        parsed
            .parse(&self.head)
            .map_err(|e| io::Error::other(format!("response head: {e}")))?;
        let status = parsed.code.unwrap_or(502);
        let mut builder = http::Response::builder().status(status);
        let mut length = None;
        let mut chunked = false;
        for h in parsed.headers.iter() {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"transfer-encoding") {
                chunked = true;
            }
            if name.eq_ignore_ascii_case(b"content-length") {
                length = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok());
            }
            if connection_specific(name) {
                continue;
            }
            builder = builder.header(h.name, h.value);
        }
        let response = builder
            .body(())
            .map_err(|e| io::Error::other(format!("response head: {e}")))?;
        let no_body = self.head_request || status == 204 || status == 304 || length == Some(0);
        let respond = self
            .respond
            .as_mut()
            .ok_or_else(|| io::Error::other("response already sent"))?;
        if (100..200).contains(&status) {
            // An interim response (100 Continue): HTTP/2 clients do not need it.
            return Ok(());
        }
        let send = respond
            .send_response(response, no_body)
            .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e))?;
        self.respond = None;
        self.out = if no_body {
            Out::Done
        } else {
            Out::Body(BodySender::new(send, length, chunked))
        };
        Ok(())
    }
}

impl Drop for H2Exchange {
    fn drop(&mut self) {
        // A response the pipeline never finished: the client must not take
        // a truncated body for a whole one (a body without a length ends
        // when the pipeline is done with it).
        if let Some(respond) = &mut self.respond {
            respond.send_reset(Reason::INTERNAL_ERROR);
        } else if let Out::Body(sender) = &mut self.out {
            sender.end();
            if !sender.is_done() {
                sender.reset(Reason::INTERNAL_ERROR);
            }
        }
    }
}

hypergate_core::bridge_io!(H2Exchange);

/// What a plaintext connection on an `h2c` listener opens with.
pub enum Opening {
    /// The HTTP/2 preface: serve HTTP/2 (the bytes read are replayed).
    H2(Bytes),
    /// Anything else: serve HTTP/1.1 with these bytes already read.
    Http1(BytesMut),
    /// Closed, failed or silent past the timeout before a byte arrived.
    Nothing,
}

/// Reads until the first bytes match the HTTP/2 preface or cannot (at most
/// its 24 bytes), within `timeout`.
pub async fn sniff<S: AsyncReadRent>(stream: &mut S, timeout: Duration) -> Opening {
    let mut seen = BytesMut::with_capacity(4096);
    let deadline = Instant::now() + timeout;
    loop {
        let n = seen.len().min(PREFACE.len());
        if seen[..n] != PREFACE[..n] {
            return Opening::Http1(seen);
        }
        if n == PREFACE.len() {
            return Opening::H2(seen.freeze());
        }
        let buf = std::mem::take(&mut seen);
        let (len, cap) = (buf.len(), buf.capacity());
        let left = deadline.saturating_duration_since(Instant::now());
        let read = monoio::time::timeout(left, stream.read(buf.slice_mut(len..cap))).await;
        match read {
            Ok((Ok(got), b)) if got > 0 => seen = b.into_inner(),
            Ok((_, b)) if !b.get_ref().is_empty() => return Opening::Http1(b.into_inner()),
            _ => return Opening::Nothing,
        }
    }
}

/// A stream whose first reads return bytes already read from it.
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner`, with `prefix` read again first.
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Self { prefix, inner }
    }
}

impl<S: AsyncReadRent> AsyncReadRent for Prefixed<S> {
    async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        if self.prefix.is_empty() {
            return self.inner.read(buf).await;
        }
        let n = self.prefix.len().min(buf.bytes_total());
        // SAFETY: `write_ptr` points at `bytes_total` writable bytes; `n` is
        // at most that and at most the prefix's length.
        unsafe {
            std::ptr::copy_nonoverlapping(self.prefix.as_ptr(), buf.write_ptr(), n);
            buf.set_init(n);
        }
        let _ = self.prefix.split_to(n);
        (Ok(n), buf)
    }

    async fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        if self.prefix.is_empty() {
            return self.inner.readv(buf).await;
        }
        let total = copy_to_iovecs(&mut self.prefix, &mut buf);
        (Ok(total), buf)
    }
}

impl<S: AsyncWriteRent> AsyncWriteRent for Prefixed<S> {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        self.inner.write(buf).await
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        self.inner.writev(buf).await
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.inner.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads_are_http11_with_host_cookies_and_framing() {
        let req = http::Request::builder()
            .method("POST")
            .uri("https://example.com/a/b?x=1")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .header("te", "trailers")
            .header("x-y", "z")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let (head, chunked) = request_head(&parts, false);
        assert!(chunked);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "POST /a/b?x=1 HTTP/1.1\r\nhost: example.com\r\nx-y: z\r\ncookie: a=1; b=2\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        let req = http::Request::builder().uri("http://h/").body(()).unwrap();
        let (parts, ()) = req.into_parts();
        let (head, chunked) = request_head(&parts, true);
        assert!(!chunked);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "GET / HTTP/1.1\r\nhost: h\r\n\r\n"
        );
    }
}
