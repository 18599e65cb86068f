//! HTTP/2 to upstreams (`protocol = "h2"` over TLS, `"h2c"` over plain TCP).
//!
//! Per shard and endpoint, a few multiplexed connections ([`H2Conn`]), each
//! carrying at most `pool.max_streams` streams at once (and no more than the
//! server's `SETTINGS_MAX_CONCURRENT_STREAMS`); a connection is opened when
//! every open one is full, within `pool.max_connections`, and forgotten when
//! it closes (a GOAWAY, an error, the server's idle timeout). Each attempt is
//! one stream, an [`H2Stream`]: to the upstream client it is a connection
//! like any other, that takes the HTTP/1.1 request bytes the pipeline writes
//! and gives back the response as HTTP/1.1 bytes (through
//! `hypergate_core::http::bridge`), so retries, deadlines, outlier
//! detection, body pumps, gRPC trailers and records are one code path for
//! both protocols. Dropping a stream before its exchange ended resets it
//! (`CANCEL`): a client that goes away cancels the upstream call.
//!
//! The policy (pool limits, timeouts, when to open a connection) is
//! `lease`'s; this module speaks the protocol. Depends on the crate's
//! `ClusterRuntime` and `UpstreamStream`, and on `hypergate-core`'s bridge.

use crate::{ClusterRuntime, UpstreamConn, UpstreamStream};
use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use hypergate_core::http::bridge::{connection_specific, write_header_map, BodyReader, BodySender};
use monoio::io::Split;
use std::cell::Cell;
use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;

/// Largest request head the bridge collects, and largest header list
/// accepted from the upstream.
const MAX_HEAD: usize = 256 * 1024;

/// One HTTP/2 connection to an endpoint.
pub struct H2Conn {
    send: SendRequest<Bytes>,
    /// Streams open on it now.
    streams: Cell<usize>,
    /// Set when the connection ended (its task finished).
    closed: Rc<Cell<bool>>,
    fd: RawFd,
}

impl H2Conn {
    /// Whether another stream fits (`cap`: the cluster's `pool.max_streams`).
    fn has_room(&self, cap: usize) -> bool {
        !self.closed.get() && self.streams.get() < cap.min(self.send.current_max_send_streams())
    }
}

/// A stream on an open connection to endpoint `ep` with room for one, if any.
pub fn open_stream(cluster: &ClusterRuntime, ep: usize) -> Option<UpstreamConn> {
    let endpoint = &cluster.endpoints[ep];
    let cap = cluster.spec.raw.pool.max_streams;
    endpoint.h2.borrow_mut().retain(|c| !c.closed.get());
    let conn = endpoint
        .h2
        .borrow()
        .iter()
        .find(|c| c.has_room(cap))
        .cloned()?;
    let mut stream = stream_on(cluster, ep, conn);
    stream.reused = true;
    Some(stream)
}

/// Speaks HTTP/2 on `conn`, newly connected to endpoint `ep` (after TLS
/// with ALPN `h2` on `h2` clusters): the handshake, the connection's task
/// (which counts the connection closed when it ends), and a first stream.
pub async fn handshake(
    cluster: &ClusterRuntime,
    ep: usize,
    conn: UpstreamConn,
) -> io::Result<UpstreamConn> {
    let endpoint = &cluster.endpoints[ep];
    let fd = conn.fd();
    if let UpstreamStream::Tls(tls) = &conn.stream {
        if tls.alpn_protocol().as_deref() != Some(&b"h2"[..]) {
            return Err(io::Error::other(
                "the upstream did not agree to HTTP/2 (ALPN)",
            ));
        }
    }
    let io = monoio_compat::StreamWrapper::new(conn.stream);
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .max_concurrent_reset_streams(64)
        // An upstream's header block (or trailers) is bounded like the
        // HTTP/1.1 head the bridge makes of it.
        .max_header_list_size(MAX_HEAD as u32)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(io::Error::other)?;
    let closed = Rc::new(Cell::new(false));
    let (done, owner) = (closed.clone(), endpoint.clone());
    monoio::spawn(async move {
        if let Err(e) = connection.await {
            if !e.is_go_away() && !e.is_io() {
                tracing::debug!(endpoint = %owner.label, error = %e, "upstream HTTP/2 connection failed");
            }
        }
        done.set(true);
        owner.open.set(owner.open.get().saturating_sub(1));
    });
    let conn = Rc::new(H2Conn {
        send,
        streams: Cell::new(0),
        closed,
        fd,
    });
    endpoint.h2.borrow_mut().push(conn.clone());
    Ok(stream_on(cluster, ep, conn))
}

/// A new stream's worth of `conn`, as an upstream connection.
fn stream_on(cluster: &ClusterRuntime, ep: usize, conn: Rc<H2Conn>) -> UpstreamConn {
    conn.streams.set(conn.streams.get() + 1);
    let scheme = if cluster.spec.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let fd = conn.fd;
    let stream = H2Stream {
        conn,
        scheme,
        authority: cluster.endpoints[ep].label.clone(),
        head: Vec::new(),
        sender: None,
        sent: false,
        response: None,
        pending: Bytes::new(),
        reader: None,
    };
    UpstreamConn::with_buffer(UpstreamStream::H2(Box::new(stream)), fd, 4096)
}

/// A request head made ready for HTTP/2.
struct Head {
    request: http::Request<()>,
    /// Its `content-length`.
    length: Option<u64>,
    /// Its body is chunked.
    chunked: bool,
}

/// One request's stream on an upstream HTTP/2 connection, as HTTP/1.1 bytes
/// (see the module docs).
pub struct H2Stream {
    conn: Rc<H2Conn>,
    scheme: &'static str,
    /// `:authority` when the request has no `Host`.
    authority: std::sync::Arc<str>,
    /// Write side: the request head being collected, then its body.
    head: Vec<u8>,
    sender: Option<BodySender>,
    sent: bool,
    /// The response, once the request is sent.
    response: Option<ResponseFuture>,
    /// Read side: response bytes not read yet (the head first), then the body.
    pending: Bytes,
    reader: Option<BodyReader>,
}

// SAFETY: `Split` promises reads and writes may run at once. The write
// methods touch `head`, `sender`, `sent` and set `response` once, before the
// read side can use it (the head is written before any read: the upstream
// client reads only after writing it); the read methods touch `response`
// (taken once), `pending` and `reader`. The `h2` send and receive handles
// are independent halves of the stream.
unsafe impl Split for H2Stream {}

impl H2Stream {
    /// Takes request bytes as the pipeline writes them.
    async fn take(&mut self, data: &[u8]) -> io::Result<()> {
        if self.sent {
            return match &mut self.sender {
                Some(sender) => sender.take(data).await,
                None => Ok(()),
            };
        }
        self.head.extend_from_slice(data);
        let Some(end) = self.head.windows(4).position(|w| w == b"\r\n\r\n") else {
            if self.head.len() > MAX_HEAD {
                return Err(io::Error::other("request head too large"));
            }
            return Ok(());
        };
        let rest = self.head.split_off(end + 4);
        self.send_head().await?;
        self.head = Vec::new();
        if !rest.is_empty() {
            if let Some(sender) = &mut self.sender {
                sender.take(&rest).await?;
            }
        }
        Ok(())
    }

    /// Sends the request head collected in `self.head` as HEADERS.
    async fn send_head(&mut self) -> io::Result<()> {
        let Head {
            request,
            length,
            chunked,
        } = self.parse_head()?;
        let end = !chunked && length.unwrap_or(0) == 0;
        let mut send = self.conn.send.clone();
        std::future::poll_fn(|cx| send.poll_ready(cx))
            .await
            .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e))?;
        let (response, stream) = send
            .send_request(request, end)
            .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e))?;
        self.response = Some(response);
        self.sent = true;
        if !end {
            self.sender = Some(BodySender::new(stream, length, chunked));
        }
        Ok(())
    }

    /// The HTTP/2 request of the HTTP/1.1 head in `self.head`. Not async on
    /// purpose: the parser's header array stays off the write future (every
    /// upstream write's future is as large as this variant's).
    fn parse_head(&self) -> io::Result<Head> {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut parsed = httparse::Request::new(&mut headers);
        parsed
            .parse(&self.head)
            .map_err(|e| io::Error::other(format!("request head: {e}")))?;
        let (Some(method), Some(path)) = (parsed.method, parsed.path) else {
            return Err(io::Error::other("request head: incomplete"));
        };
        let mut authority: Option<&[u8]> = None;
        let mut length = None;
        let mut chunked = false;
        let mut grpc = false;
        let mut builder = http::Request::builder().method(method);
        for h in parsed.headers.iter() {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"host") {
                authority = Some(h.value);
                continue;
            }
            if name.eq_ignore_ascii_case(b"transfer-encoding") {
                chunked = true;
            }
            if name.eq_ignore_ascii_case(b"content-length") {
                length = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok());
            }
            if name.eq_ignore_ascii_case(b"content-type") {
                grpc = h.value.starts_with(b"application/grpc");
            }
            if connection_specific(name) {
                continue;
            }
            builder = builder.header(h.name, h.value);
        }
        if grpc {
            // gRPC servers require it; the only `te` HTTP/2 allows.
            builder = builder.header("te", "trailers");
        }
        let authority = match authority {
            Some(a) => std::str::from_utf8(a).map_err(io::Error::other)?,
            None => &self.authority,
        };
        let uri = format!("{}://{authority}{path}", self.scheme);
        let request = builder
            .uri(uri)
            .body(())
            .map_err(|e| io::Error::other(format!("request head: {e}")))?;
        Ok(Head {
            request,
            length,
            chunked,
        })
    }

    /// The next response bytes into `pending` (empty at the end).
    async fn fill(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            return Ok(());
        }
        if let Some(reader) = &mut self.reader {
            self.pending = reader.next().await?;
            return Ok(());
        }
        let Some(response) = self.response.take() else {
            return Ok(());
        };
        let response = response
            .await
            .map_err(|e| io::Error::new(io::ErrorKind::ConnectionReset, e))?;
        let (parts, body) = response.into_parts();
        let ended = body.is_end_stream();
        let mut head = Vec::with_capacity(512);
        hypergate_core::http::write_status_line(&mut head, parts.status.as_u16());
        let sized = parts.headers.contains_key(http::header::CONTENT_LENGTH);
        write_header_map(&mut head, &parts.headers);
        let chunked = !ended && !sized;
        if chunked {
            head.extend_from_slice(b"transfer-encoding: chunked\r\n");
        } else if ended && !sized {
            head.extend_from_slice(b"content-length: 0\r\n");
        }
        head.extend_from_slice(b"\r\n");
        self.pending = Bytes::from(head);
        self.reader = Some(BodyReader::new((!ended).then_some(body), chunked));
        Ok(())
    }
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        self.conn.streams.set(self.conn.streams.get() - 1);
        // A request body the pipeline never finished is not a whole one.
        if let Some(sender) = &mut self.sender {
            if !sender.is_done() {
                sender.reset(h2::Reason::CANCEL);
            }
        }
    }
}

hypergate_core::bridge_io!(H2Stream);
