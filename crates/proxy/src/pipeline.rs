//! The request pipeline: one downstream connection, request by request.
//!
//! [`serve_connection`] runs the phases in order, all readable here:
//! 1. **read head**: wait (idle timeout) for a request, parse it strictly
//!    (header timeout, size limits); a rejection is answered and the connection closed.
//! 2. **route**: the router picks a route; no match is a 404.
//! 3. **local answer**: direct responses and redirects are written at once.
//! 4. **choose cluster**: a split picks a side (forced by header/cookie,
//!    sticky by hash, else weighted round robin).
//! 5. **upstream**: pick an endpoint, take a pooled connection or connect,
//!    write the rewritten head, stream the body, read the response head;
//!    retry when it is safe and the budget allows.
//! 6. **respond**: write the rewritten response head, stream the body,
//!    return the upstream connection to the pool when it is reusable.
//! 7. **log**: count the request by route/cluster/version/status, record
//!    latencies, and hand an access-log record to the writer thread.
//!
//! Pipelined requests are answered in order because each is handled to the
//! end before the next head is parsed from the same buffer.

use crate::edge_phase as edge;
use crate::handler::{self, Handler};
use hypergate_core::{ids, io};

use crate::routing::RequestInfo;
use crate::spec::{Route, RouteAction};
use crate::state::{Installed, ShardCtx};
use crate::stats::TunnelEnd;
use bytes::{Buf, BytesMut};
use hypergate_core::http::codec::{
    at, is_hop_by_hop, parse_request, parse_response, BodyFraming, HeadLimits, Parsed, Reject,
    RequestHead, ResponseHead,
};
use hypergate_core::http::{write_error, write_header, write_status_line, write_u64};
use hypergate_core::keys::KeySource;
use hypergate_upstream::lease::{lease, Lease, LeaseError};
use hypergate_upstream::{ClusterRuntime, UpstreamConn};
use ids::{RequestId, TraceParent};
use io::{
    pump, read_idle, read_more, write_out, Encoding, PumpError, PumpLimits, ReadOutcome, Tap,
    IDLE_BUFFER_MAX,
};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Split, Splitable};
use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Largest body copied next to its head so both leave in one write.
const INLINE_BODY_MAX: u64 = 16 * 1024;

/// What the connection does after a request.
enum After {
    KeepAlive,
    Close,
    /// The upstream accepted an upgrade: tunnel bytes both ways.
    Upgrade(UpstreamConn),
}

/// An upgraded request, whose record waits for its tunnel to end (the access-log
/// line then says how long it lasted and what it carried).
struct Pending {
    ex: Exchange,
    rid: RequestId,
    trace: TraceParent,
    started: Instant,
}

/// Per-connection buffers, reused for every request on the connection.
struct Buffers {
    rbuf: BytesMut,
    out: Vec<u8>,
    head_buf: Vec<u8>,
    head: RequestHead,
    resp: ResponseHead,
    /// Headers the edge phase adds to whatever response is sent (CORS, challenges, rate limits).
    extra: Vec<u8>,
    /// The client's IP address as text.
    peer_ip: String,
    /// Scratch for the canonical path.
    canon: Vec<u8>,
}

/// A parsed request as the router and balancers see it.
pub(crate) struct View<'a> {
    buf: &'a [u8],
    head: &'a RequestHead,
}

impl RequestInfo for View<'_> {
    fn method(&self) -> &str {
        std::str::from_utf8(at(self.buf, &self.head.method)).unwrap_or("")
    }
    fn host(&self) -> &str {
        std::str::from_utf8(at(self.buf, &self.head.host)).unwrap_or("")
    }
    fn path(&self) -> &str {
        std::str::from_utf8(at(self.buf, &self.head.path)).unwrap_or("")
    }
    fn query(&self) -> &str {
        std::str::from_utf8(at(self.buf, &self.head.query)).unwrap_or("")
    }
    fn header(&self, lowercase_name: &str) -> Option<&[u8]> {
        self.head
            .headers
            .iter()
            .find(|(n, _)| at(self.buf, n).eq_ignore_ascii_case(lowercase_name.as_bytes()))
            .map(|(_, v)| at(self.buf, v))
    }
}

impl View<'_> {
    pub(crate) fn header_values<'b>(
        &'b self,
        lowercase_name: &'b str,
    ) -> impl Iterator<Item = &'b [u8]> + 'b {
        self.head
            .headers
            .iter()
            .filter(move |(n, _)| at(self.buf, n).eq_ignore_ascii_case(lowercase_name.as_bytes()))
            .map(|(_, v)| at(self.buf, v))
    }

    fn cookie(&self, name: &str) -> Option<&[u8]> {
        self.head
            .headers
            .iter()
            .filter(|(n, _)| at(self.buf, n).eq_ignore_ascii_case(b"cookie"))
            .flat_map(|(_, v)| at(self.buf, v).split(|b| *b == b';'))
            .find_map(|pair| {
                let pair = pair.trim_ascii();
                let eq = pair.iter().position(|b| *b == b'=')?;
                (&pair[..eq] == name.as_bytes()).then(|| &pair[eq + 1..])
            })
    }

    fn key_hash(&self, source: &KeySource, peer: SocketAddr) -> Option<u64> {
        let bytes = match source {
            KeySource::Header(h) => self.header(h)?,
            KeySource::Cookie(c) => self.cookie(c)?,
            KeySource::ClientIp => {
                return Some(match peer.ip() {
                    std::net::IpAddr::V4(v4) => xxhash_rust::xxh3::xxh3_64(&v4.octets()),
                    std::net::IpAddr::V6(v6) => xxhash_rust::xxh3::xxh3_64(&v6.octets()),
                })
            }
        };
        Some(xxhash_rust::xxh3::xxh3_64(bytes))
    }

    fn is_idempotent(&self) -> bool {
        matches!(
            self.method(),
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        )
    }
}

/// What one request did, for metrics and the access log.
#[derive(Default)]
struct Exchange {
    route: Option<usize>,
    target: Option<usize>,
    endpoint: Option<usize>,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    upstream_us: Option<u64>,
    retries: u32,
    error: &'static str,
    consumer: Option<usize>,
    llm: Option<Box<hypergate_core::record::LlmRecord>>,
    /// The bodies' first bytes, on a call sampled for capture.
    capture: Option<Box<Captured>>,
}

/// A sampled call's body capture (`[hypercare.store] capture_api_bodies`):
/// the first `max` bytes of each body (`capture_max_bytes` and some slack),
/// redacted and cut later by the record writer.
struct Captured {
    request: Vec<u8>,
    response: Vec<u8>,
    max: usize,
}

impl Captured {
    fn request(&mut self) -> Tap<'_> {
        Tap {
            buf: &mut self.request,
            max: self.max,
        }
    }

    fn response(&mut self) -> Tap<'_> {
        Tap {
            buf: &mut self.response,
            max: self.max,
        }
    }
}

/// A downstream byte stream: plain TCP or TLS over TCP.
pub trait ClientStream: AsyncReadRent + AsyncWriteRent + Split + 'static {}
impl<T: AsyncReadRent + AsyncWriteRent + Split + 'static> ClientStream for T {}

/// Serves one downstream connection until it closes. `fd` is the underlying
/// socket (so a drain can wake the connection when idle); `scheme` is what
/// `X-Forwarded-Proto` says (`http` or `https`).
pub async fn serve_connection<S: ClientStream, H: Handler>(
    ctx: Rc<ShardCtx>,
    handler: Rc<H>,
    mut stream: S,
    fd: RawFd,
    peer: SocketAddr,
    scheme: &'static str,
    _permit: hypergate_edge::policy::ConnectionPermit,
) {
    let slot = ctx.conns.borrow_mut().register(fd);
    let active = &ctx.stats.active_connections;
    active.set(active.get() + 1);
    let peak = &ctx.stats.connections_peak;
    peak.set(peak.get().max(active.get()));
    let mut bufs = Buffers {
        rbuf: BytesMut::new(),
        out: Vec::new(),
        head_buf: Vec::new(),
        head: RequestHead::default(),
        resp: ResponseHead::default(),
        extra: Vec::new(),
        // Formatted once per connection: X-Forwarded-For needs it on every request.
        peer_ip: peer.ip().to_string(),
        canon: Vec::new(),
    };
    loop {
        let inst = ctx.installed.borrow().clone();
        let limits = &inst.config.raw.limits;
        if bufs.rbuf.is_empty() {
            // Idle between requests. A drain closes this connection only after a
            // grace period without a request (see `shard::drain`), so a client that
            // was about to reuse it gets an answer with `Connection: close` instead
            // of a closed socket.
            if bufs.rbuf.capacity() > IDLE_BUFFER_MAX {
                bufs.rbuf = BytesMut::new();
            }
            if bufs.out.capacity() > IDLE_BUFFER_MAX {
                bufs.out = Vec::new();
            }
            ctx.conns.borrow_mut().set_idle(slot, true);
            let r = read_idle(&mut stream, &mut bufs.rbuf, limits.idle_timeout).await;
            ctx.conns.borrow_mut().set_idle(slot, false);
            if r != ReadOutcome::Data {
                break;
            }
        }
        match read_head(&inst, &mut stream, &mut bufs).await {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                let (reject, message) = match e {
                    HeadError::Reject(r) => (
                        r,
                        "the request was rejected before it was forwarded".to_string(),
                    ),
                    HeadError::Path(p) => (Reject::BadPath, format!("{p}; nothing was forwarded")),
                };
                ctx.stats.reject(reject);
                bufs.out.clear();
                write_error(
                    &mut bufs.out,
                    reject.status(),
                    reject.label(),
                    &message,
                    "",
                    true,
                    &[],
                );
                let _ = write_out(&mut stream, &mut bufs.out, limits.send_timeout).await;
                break;
            }
        }
        match handle_request(&ctx, &*handler, &inst, &mut stream, &mut bufs, peer, scheme).await {
            (After::KeepAlive, _) => {}
            (After::Close, _) | (After::Upgrade(_), None) => break,
            (After::Upgrade(up), Some(mut pending)) => {
                let leftover = std::mem::take(&mut bufs.rbuf);
                let idle = limits.tunnel_idle_timeout;
                let (end, bytes_up, bytes_down) =
                    tunnel(&ctx, slot, fd, stream, leftover, up, idle).await;
                ctx.stats.tunnel_ended(end, bytes_up, bytes_down);
                pending.ex.bytes_in += bytes_up;
                pending.ex.bytes_out += bytes_down;
                if end != TunnelEnd::Closed {
                    pending.ex.error = end.label();
                }
                let view = View {
                    buf: &bufs.head_buf,
                    head: &bufs.head,
                };
                let Pending {
                    ex,
                    rid,
                    trace,
                    started,
                } = *pending;
                record(&ctx, &inst, &view, &ex, &rid, &trace, peer, started);
                ctx.conns.borrow_mut().unregister(slot);
                active.set(active.get() - 1);
                return;
            }
        }
    }
    ctx.conns.borrow_mut().unregister(slot);
    active.set(active.get() - 1);
}

/// Why a request head was refused.
enum HeadError {
    /// Framing, size or timing.
    Reject(Reject),
    /// The path cannot be made canonical or the `[path]` policy refuses it.
    Path(hypergate_core::http::path::PathError),
}

impl From<Reject> for HeadError {
    fn from(r: Reject) -> Self {
        HeadError::Reject(r)
    }
}

/// Reads and parses one request head into `bufs.head_buf`/`bufs.head`, and
/// makes its path canonical (every later phase and the upstream see that path).
/// `Ok(false)`: the client went away without a complete head.
async fn read_head<S: ClientStream>(
    inst: &Installed,
    stream: &mut S,
    bufs: &mut Buffers,
) -> Result<bool, HeadError> {
    let l = &inst.config.raw.limits;
    let limits = HeadLimits {
        max_request_line: l.max_request_line,
        max_header_bytes: l.max_header_bytes,
        max_headers: l.max_headers,
    };
    let deadline = Instant::now() + l.header_timeout;
    loop {
        match parse_request(&bufs.rbuf, &limits, &mut bufs.head)? {
            Parsed::Complete(n) => {
                bufs.head_buf.clear();
                bufs.head_buf.extend_from_slice(&bufs.rbuf[..n]);
                bufs.rbuf.advance(n);
                canonicalize(&inst.config.path, bufs).map_err(HeadError::Path)?;
                return Ok(true);
            }
            Parsed::Partial => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Reject::HeaderTimeout.into());
                }
                match read_more(stream, &mut bufs.rbuf, left).await {
                    ReadOutcome::Data => {}
                    ReadOutcome::Timeout => return Err(Reject::HeaderTimeout.into()),
                    ReadOutcome::Eof | ReadOutcome::Failed => return Ok(false),
                }
            }
        }
    }
}

/// Replaces the head's path with its canonical form. A rewritten path is
/// appended to the head buffer and `head.path` points at it, so everything that
/// reads the path through the head sees the canonical one; `head.raw_path`
/// keeps what the client sent.
fn canonicalize(
    policy: &hypergate_core::http::path::PathPolicy,
    bufs: &mut Buffers,
) -> Result<(), hypergate_core::http::path::PathError> {
    let raw = at(&bufs.head_buf, &bufs.head.path);
    if raw == b"*" {
        // `OPTIONS *`: no path to route on.
        return Ok(());
    }
    if let hypergate_core::http::path::Normalized::Rewritten =
        hypergate_core::http::path::normalize(raw, policy, &mut bufs.canon)?
    {
        let start = bufs.head_buf.len() as u32;
        bufs.head_buf.extend_from_slice(&bufs.canon);
        bufs.head.path = start..bufs.head_buf.len() as u32;
    }
    Ok(())
}

async fn handle_request<S: ClientStream, H: Handler>(
    ctx: &ShardCtx,
    handler: &H,
    inst: &Installed,
    stream: &mut S,
    bufs: &mut Buffers,
    peer: SocketAddr,
    scheme: &'static str,
) -> (After, Option<Box<Pending>>) {
    let started = Instant::now();
    let Buffers {
        rbuf,
        out,
        head_buf,
        head,
        resp,
        extra,
        peer_ip,
        canon: _,
    } = bufs;
    let view = View {
        buf: head_buf,
        head,
    };
    let rid = RequestId::new(view.header("x-request-id"), &ctx.rng);
    let trace = TraceParent::new(view.header("traceparent"), &ctx.rng);
    let mut ex = Exchange::default();
    let send = inst.config.raw.limits.send_timeout;
    let has_body = head.has_body();
    let keep_alive = head.keep_alive && !ctx.draining.get();
    let after = 'done: {
        let Some(ri) = inst.config.router.find(&view) else {
            ctx.stats.no_route.set(ctx.stats.no_route.get() + 1);
            ex.status = 404;
            ex.error = "no_route";
            out.clear();
            let close = !keep_alive || has_body;
            write_error(
                out,
                404,
                "no_route",
                "no route matches this request",
                rid.as_str(),
                close,
                &[],
            );
            break 'done finish(stream, out, send, close).await;
        };
        ex.route = Some(ri);
        let route = &inst.config.routes[ri];
        extra.clear();
        let (consumer, client_ip) = match edge::check(ctx, inst, route, &view, peer, extra) {
            edge::Verdict::Continue {
                consumer,
                client_ip,
            } => (consumer, client_ip),
            edge::Verdict::Refuse {
                status,
                kind,
                message,
            } => {
                ex.status = status;
                ex.error = kind;
                out.clear();
                let close = !keep_alive || has_body;
                write_error(out, status, kind, message, rid.as_str(), close, extra);
                break 'done finish(stream, out, send, close).await;
            }
            edge::Verdict::Preflight => {
                ex.status = 204;
                out.clear();
                let close = !keep_alive || has_body;
                write_status_line(out, 204);
                out.extend_from_slice(extra);
                if close {
                    write_header(out, b"connection", b"close");
                }
                out.extend_from_slice(b"\r\n");
                break 'done finish(stream, out, send, close).await;
            }
        };
        if let Err((status, kind, message)) =
            edge::rate_limit(ctx, inst, route, &view, consumer, client_ip, extra).await
        {
            ex.status = status;
            ex.error = kind;
            out.clear();
            let close = !keep_alive || has_body;
            write_error(out, status, kind, message, rid.as_str(), close, extra);
            break 'done finish(stream, out, send, close).await;
        }
        if let Some(c) = consumer {
            ex.consumer = Some(c);
            ctx.count_consumer(inst, ri, c);
        }
        let max_body = route
            .policy
            .protection
            .max_body_bytes
            .unwrap_or(inst.config.raw.limits.max_body_bytes);
        if let BodyFraming::Length(n) = head.body {
            if max_body > 0 && n > max_body {
                ctx.stats.reject(Reject::BodyTooLarge);
                ex.status = 413;
                ex.error = Reject::BodyTooLarge.label();
                out.clear();
                write_error(
                    out,
                    413,
                    ex.error,
                    "request body exceeds the limit",
                    rid.as_str(),
                    true,
                    extra,
                );
                break 'done finish(stream, out, send, true).await;
            }
        }
        match &route.action {
            RouteAction::Direct(d) => {
                ex.status = d.status;
                out.clear();
                write_status_line(out, d.status);
                for (k, v) in &d.headers {
                    if !route.response_headers.drops(k.as_bytes()) {
                        write_header(out, k.as_bytes(), v.as_bytes());
                    }
                }
                out.extend_from_slice(b"content-length: ");
                write_u64(out, d.body.len() as u64);
                out.extend_from_slice(b"\r\n");
                write_header(out, b"x-request-id", rid.as_str().as_bytes());
                out.extend_from_slice(extra);
                add_route_headers(out, &route.response_headers);
                let close = !keep_alive || has_body;
                if close {
                    write_header(out, b"connection", b"close");
                } else if head.version == 0 {
                    write_header(out, b"connection", b"keep-alive");
                }
                out.extend_from_slice(b"\r\n");
                if view.method() != "HEAD" {
                    out.extend_from_slice(&d.body);
                    ex.bytes_out = d.body.len() as u64;
                }
                finish(stream, out, send, close).await
            }
            RouteAction::Ai => {
                let req = handler::HandlerRequest {
                    ctx,
                    inst,
                    route: ri,
                    request: &view,
                    body: head.body,
                    http10: head.version == 0,
                    request_id: rid.as_str(),
                    consumer,
                    extra,
                    keep_alive,
                    max_body: route.policy.protection.max_body_bytes.unwrap_or(0),
                    started,
                    deadline: route.timeout,
                };
                let o = handler.serve(&req, stream, rbuf, out).await;
                ex.status = o.status;
                ex.error = o.error;
                ex.bytes_in = o.bytes_in;
                ex.bytes_out = o.bytes_out;
                ex.upstream_us = o.upstream_us;
                ex.llm = o.llm;
                if o.keep_alive && o.status != 0 {
                    After::KeepAlive
                } else {
                    After::Close
                }
            }
            _ => {
                let t = choose_target(route, &inst.routes[ri], &inst.config.clusters, &view, peer);
                ex.target = Some(t);
                let cluster = &inst.clusters[inst.routes[ri].targets[t].0];
                // Only after every request phase passed, and only a protocol the
                // route allows: anything else is forwarded as a plain request.
                let upgrade = head
                    .upgrade
                    .then(|| {
                        view.header("upgrade")
                            .and_then(|v| route.allowed_upgrade(v))
                    })
                    .flatten();
                let mut call = Call {
                    ctx,
                    inst,
                    route,
                    cluster,
                    view: &view,
                    rid: &rid,
                    trace: &trace,
                    peer,
                    scheme,
                    consumer,
                    max_body,
                    extra,
                    peer_ip,
                    upgrade,
                    started,
                };
                call.proxy(stream, rbuf, out, resp, &mut ex).await
            }
        }
    };
    if let After::Upgrade(_) = after {
        let pending = Pending {
            ex,
            rid,
            trace,
            started,
        };
        return (after, Some(Box::new(pending)));
    }
    record(ctx, inst, &view, &ex, &rid, &trace, peer, started);
    (after, None)
}

async fn finish<S: ClientStream>(
    stream: &mut S,
    out: &mut Vec<u8>,
    timeout: Duration,
    close: bool,
) -> After {
    match write_out(stream, out, timeout).await {
        Ok(()) if !close => After::KeepAlive,
        _ => After::Close,
    }
}

/// Counts the request and submits its access-log record.
#[allow(clippy::too_many_arguments)]
fn record(
    ctx: &ShardCtx,
    inst: &Installed,
    view: &View<'_>,
    ex: &Exchange,
    rid: &RequestId,
    trace: &TraceParent,
    peer: SocketAddr,
    started: Instant,
) {
    let total_us = started.elapsed().as_micros() as u64;
    let Some(ri) = ex.route else {
        return record_log(ctx, inst, view, ex, rid, trace, peer, total_us);
    };
    let rr = &inst.routes[ri];
    match ex.target {
        Some(t) => {
            rr.targets[t].1.count(ex.status);
            if let Some(us) = ex.upstream_us {
                inst.clusters[rr.targets[t].0]
                    .stats
                    .upstream_latency
                    .record(us);
            }
        }
        None => rr.local.count(ex.status),
    }
    rr.stats.latency.record(total_us);
    record_log(ctx, inst, view, ex, rid, trace, peer, total_us);
}

#[allow(clippy::too_many_arguments)]
fn record_log(
    ctx: &ShardCtx,
    inst: &Installed,
    view: &View<'_>,
    ex: &Exchange,
    rid: &RequestId,
    trace: &TraceParent,
    peer: SocketAddr,
    total_us: u64,
) {
    let sink = ctx.access_log.borrow();
    let Some(sink) = sink.as_ref() else { return };
    let Some(mut r) = sink.take() else {
        ctx.stats
            .access_log_dropped
            .set(ctx.stats.access_log_dropped.get() + 1);
        return;
    };
    r.unix_ms = hypergate_core::clock::unix_ms();
    r.request_id.push_str(rid.as_str());
    r.trace_id.push_str(trace.trace_id());
    r.method.push_str(view.method());
    if sink.json {
        // Only JSON lines show these; the call store does not keep them.
        r.client = Some(peer);
        r.host
            .push_str(std::str::from_utf8(view.header("host").unwrap_or_default()).unwrap_or(""));
    }
    r.path.push_str(view.path());
    if !view.query().is_empty() {
        r.path.push('?');
        r.path.push_str(view.query());
    }
    if let Some(ri) = ex.route {
        r.route.push_str(&inst.config.routes[ri].name);
        if let Some(t) = ex.target {
            let cl = &inst.clusters[inst.routes[ri].targets[t].0];
            r.cluster.push_str(&cl.spec.name);
            r.version.push_str(&cl.spec.version);
            if let Some(e) = ex.endpoint {
                r.endpoint.push_str(&cl.endpoints[e].label);
            }
        }
    }
    if let Some(c) = ex.consumer {
        r.consumer.push_str(&inst.config.auth.consumers[c].name);
    }
    r.status = ex.status;
    r.bytes_in = ex.bytes_in;
    r.bytes_out = ex.bytes_out;
    r.upstream_us = ex.upstream_us;
    r.total_us = total_us;
    r.retries = ex.retries;
    r.error = ex.error;
    r.llm.clone_from(&ex.llm);
    if let Some(c) = &ex.capture {
        // Redacted (and cut) by the record writer, off the request path.
        r.request_body = Some(String::from_utf8_lossy(&c.request).into_owned());
        r.response_body = Some(String::from_utf8_lossy(&c.response).into_owned());
    }
    if !sink.submit(r) {
        ctx.stats
            .access_log_dropped
            .set(ctx.stats.access_log_dropped.get() + 1);
    }
}

/// Picks the split side (index into the route's targets), by the split's
/// effective weights (the file's, or a runtime override's).
fn choose_target(
    route: &Route,
    rr: &crate::state::RouteRuntime,
    clusters: &[std::sync::Arc<crate::spec::Cluster>],
    view: &View<'_>,
    peer: SocketAddr,
) -> usize {
    let RouteAction::Split(split) = &route.action else {
        return 0;
    };
    let forced = |v: &[u8]| {
        split.targets.iter().position(|(c, _)| {
            let c = &clusters[*c];
            c.name.as_bytes() == v || (!c.version.is_empty() && c.version.as_bytes() == v)
        })
    };
    if let Some(i) = split
        .override_header
        .as_deref()
        .and_then(|h| view.header(h))
        .and_then(forced)
    {
        return i;
    }
    if let Some(i) = split
        .override_cookie
        .as_deref()
        .and_then(|c| view.cookie(c))
        .and_then(forced)
    {
        return i;
    }
    let (weights, total) = (&rr.weights, rr.total_weight);
    if let Some(h) = split
        .sticky_on
        .as_ref()
        .and_then(|k| view.key_hash(k, peer))
    {
        let mut point = (h % u64::from(total)) as u32;
        for (i, w) in weights.iter().enumerate() {
            if point < *w {
                return i;
            }
            point -= w;
        }
    }
    // Smooth weighted round robin: exact proportions per shard, no randomness.
    let current = &rr.split_current;
    let mut best = 0;
    for (i, w) in weights.iter().enumerate() {
        current[i].set(current[i].get() + i64::from(*w));
        if current[i].get() > current[best].get() {
            best = i;
        }
    }
    current[best].set(current[best].get() - i64::from(total));
    best
}

fn add_route_headers(out: &mut Vec<u8>, ops: &crate::spec::HeaderOps) {
    for (k, v) in ops.set.iter().chain(&ops.add) {
        write_header(out, k.as_bytes(), v.as_bytes());
    }
}

/// Why an upstream attempt failed before a response head was accepted.
enum AttemptError {
    /// Connect failed.
    Connect,
    /// Connect timed out.
    ConnectTimeout,
    /// A pooled connection turned out closed before any response byte.
    Stale,
    /// Writing the request failed.
    Write,
    /// The upstream closed or reset before a complete response head.
    Reset,
    /// No response head in time.
    Timeout,
    /// The response head was invalid.
    BadResponse,
    /// The request body could not be streamed (answered and closed by the caller).
    Body(PumpError),
    /// The pool for the endpoint is at `max_connections`.
    PoolFull,
}

/// One proxied request.
struct Call<'a> {
    ctx: &'a ShardCtx,
    inst: &'a Installed,
    route: &'a Route,
    cluster: &'a ClusterRuntime,
    view: &'a View<'a>,
    rid: &'a RequestId,
    trace: &'a TraceParent,
    peer: SocketAddr,
    scheme: &'static str,
    consumer: Option<usize>,
    max_body: u64,
    extra: &'a [u8],
    peer_ip: &'a str,
    /// The `Upgrade` token forwarded (one the route allows), if any.
    upgrade: Option<&'a [u8]>,
    /// When the request head was complete (the body's total deadline counts from it).
    started: Instant,
}

impl<'a> Call<'a> {
    async fn proxy<S: ClientStream>(
        &mut self,
        stream: &mut S,
        rbuf: &mut BytesMut,
        out: &mut Vec<u8>,
        resp: &mut ResponseHead,
        ex: &mut Exchange,
    ) -> After {
        let cluster = self.cluster;
        let head = self.view.head;
        let has_body = head.has_body();
        cluster.deposit();
        let idempotent = self.view.is_idempotent();
        let key = cluster
            .spec
            .hash_on
            .as_ref()
            .and_then(|k| self.view.key_hash(k, self.peer));
        let store = &self.inst.config.raw.hypercare.store;
        if store.enabled && hypergate_upstream::sampled(&self.ctx.rng, store.capture_api_bodies) {
            ex.capture = Some(Box::new(Captured {
                request: Vec::new(),
                response: Vec::new(),
                max: store.capture_max_bytes + hypergate_core::record::CAPTURE_SLACK,
            }));
        }
        let max_attempts = 1 + cluster.spec.raw.retry.attempts;
        let mut attempt = 0;
        let mut tried = 0u64;
        let mut body_started = false;
        let mut continue_sent = false;
        loop {
            attempt += 1;
            let picked = cluster
                .pick(key, tried, &self.ctx.rng)
                .or_else(|_| cluster.pick(key, 0, &self.ctx.rng));
            let Ok(ep) = picked else {
                return self
                    .fail(
                        stream,
                        out,
                        ex,
                        503,
                        "no_healthy_endpoint",
                        "no healthy endpoint in the cluster",
                        has_body || !self.client_keeps_alive(),
                    )
                    .await;
            };
            if ep < 64 {
                tried |= 1 << ep;
            }
            ex.endpoint = Some(ep);
            let result = self
                .attempt(
                    ep,
                    stream,
                    rbuf,
                    out,
                    resp,
                    ex,
                    &mut body_started,
                    &mut continue_sent,
                )
                .await;
            let mut lease = match result {
                Ok(lease) => lease,
                Err(e) => {
                    let stats = &cluster.stats;
                    let (status, kind, msg) = match e {
                        AttemptError::Stale => {
                            // A keep-alive race, not an endpoint failure: try again at once.
                            attempt -= 1;
                            continue;
                        }
                        AttemptError::Connect => {
                            stats.connect_errors.set(stats.connect_errors.get() + 1);
                            (502, "connect_failed", "could not connect to the upstream")
                        }
                        AttemptError::ConnectTimeout => {
                            stats.connect_errors.set(stats.connect_errors.get() + 1);
                            (
                                504,
                                "connect_timeout",
                                "connecting to the upstream timed out",
                            )
                        }
                        AttemptError::Write => (
                            502,
                            "upstream_write_failed",
                            "sending the request upstream failed",
                        ),
                        AttemptError::Reset => (
                            502,
                            "upstream_reset",
                            "the upstream closed the connection without a response",
                        ),
                        AttemptError::Timeout => {
                            stats.timeouts.set(stats.timeouts.get() + 1);
                            (
                                504,
                                "upstream_timeout",
                                "the upstream did not answer in time",
                            )
                        }
                        AttemptError::BadResponse => {
                            stats.bad_responses.set(stats.bad_responses.get() + 1);
                            (
                                502,
                                "bad_upstream_response",
                                "the upstream sent an invalid response",
                            )
                        }
                        AttemptError::PoolFull => (
                            503,
                            "pool_exhausted",
                            "the upstream connection limit is reached",
                        ),
                        AttemptError::Body(p) => return self.body_failed(stream, out, ex, p).await,
                    };
                    if status != 503 {
                        cluster.failure(ep);
                    }
                    // Safe to retry: nothing reached the upstream (connect failures), or
                    // an idempotent request without a body that was not answered.
                    let safe =
                        matches!(
                            e,
                            AttemptError::Connect
                                | AttemptError::ConnectTimeout
                                | AttemptError::PoolFull
                        ) || (idempotent && !body_started && !matches!(e, AttemptError::Timeout));
                    if safe && attempt < max_attempts && cluster.take_retry() {
                        ex.retries += 1;
                        stats.retries.set(stats.retries.get() + 1);
                        continue;
                    }
                    let close = !self.client_keeps_alive() || has_body;
                    return self.fail(stream, out, ex, status, kind, msg, close).await;
                }
            };
            if (502..=504).contains(&resp.status) {
                cluster.failure(ep);
                let r = &cluster.spec.raw.retry;
                if r.on_5xx
                    && idempotent
                    && !body_started
                    && attempt < max_attempts
                    && cluster.take_retry()
                {
                    ex.retries += 1;
                    cluster.stats.retries.set(cluster.stats.retries.get() + 1);
                    continue;
                }
            } else if resp.status >= 500 {
                cluster.failure(ep);
            } else {
                cluster.success(ep);
            }
            return self
                .respond(stream, out, resp, ex, &mut lease)
                .await
                .finish(lease);
        }
    }

    /// Whether the client connection stays open after this response: asked for
    /// and not draining. Read when the answer is written, so a response that
    /// finishes during a drain carries `Connection: close`.
    fn client_keeps_alive(&self) -> bool {
        self.view.head.keep_alive && !self.ctx.draining.get()
    }

    /// One attempt: connection, request head and body, response head.
    #[allow(clippy::too_many_arguments)]
    async fn attempt<S: ClientStream>(
        &mut self,
        ep: usize,
        stream: &mut S,
        rbuf: &mut BytesMut,
        out: &mut Vec<u8>,
        resp: &mut ResponseHead,
        ex: &mut Exchange,
        body_started: &mut bool,
        continue_sent: &mut bool,
    ) -> Result<Lease<'a>, AttemptError> {
        let cluster = self.cluster;
        let spec = &cluster.spec.raw;
        let head = self.view.head;
        let mut lease = match lease(cluster, ep, true, head.has_body()).await {
            Ok(l) => l,
            Err(LeaseError::PoolFull) => return Err(AttemptError::PoolFull),
            Err(LeaseError::Connect) => return Err(AttemptError::Connect),
            Err(LeaseError::ConnectTimeout) => return Err(AttemptError::ConnectTimeout),
        };
        let reused = lease.conn().reused;
        out.clear();
        self.write_request_head(out, &cluster.endpoints[ep].label);
        // A small body that already arrived whole leaves in the same write as the head.
        let mut body_inline = false;
        if let BodyFraming::Length(n) = head.body {
            if n > 0
                && n <= INLINE_BODY_MAX
                && rbuf.len() as u64 >= n
                && !head.expect_continue
                && (self.max_body == 0 || n <= self.max_body)
            {
                out.extend_from_slice(&rbuf[..n as usize]);
                if let Some(c) = ex.capture.as_mut() {
                    c.request.clear();
                    c.request().keep(&rbuf[..n as usize]);
                }
                rbuf.advance(n as usize);
                body_inline = true;
                *body_started = true;
                ex.bytes_in = n;
            }
        }
        let sent_at = Instant::now();
        let limits = &self.inst.config.raw.limits;
        if write_out(&mut lease.conn().stream, out, spec.read_timeout)
            .await
            .is_err()
        {
            return Err(if reused && !*body_started {
                AttemptError::Stale
            } else {
                AttemptError::Write
            });
        }
        if head.has_body() && !body_inline {
            if head.expect_continue && !*continue_sent {
                *continue_sent = true;
                out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                if write_out(stream, out, limits.send_timeout).await.is_err() {
                    return Err(AttemptError::Body(PumpError::SourceClosed));
                }
            }
            *body_started = true;
            let encoding = if head.body == BodyFraming::Chunked {
                Encoding::Chunked
            } else {
                Encoding::Raw
            };
            let pump_limits = PumpLimits {
                read_timeout: limits.body_idle_timeout,
                write_timeout: spec.read_timeout,
                max_bytes: self.max_body,
                deadline: Some(self.started + limits.body_timeout),
            };
            let conn = lease.conn();
            let tap = ex.capture.as_mut().map(|c| {
                c.request.clear();
                c.request()
            });
            match pump(
                stream,
                rbuf,
                &mut conn.stream,
                out,
                head.body,
                encoding,
                pump_limits,
                tap,
            )
            .await
            {
                Ok(n) => ex.bytes_in = n,
                Err(PumpError::Destination) => return Err(AttemptError::Write),
                Err(p) => return Err(AttemptError::Body(p)),
            }
        }
        let max = self.inst.config.raw.limits.max_response_header_bytes;
        let is_head = self.view.method() == "HEAD";
        // The response head is due `timeout` after the request was sent whole: a
        // streamed body has its own deadlines and does not eat into it.
        let sent_whole = if head.has_body() && !body_inline {
            Instant::now()
        } else {
            sent_at
        };
        let deadline = sent_whole + self.route.timeout;
        let conn = lease.conn();
        loop {
            match parse_response(&conn.rbuf, max, is_head, resp) {
                Ok(Parsed::Complete(n)) => {
                    if (100..200).contains(&resp.status) && resp.status != 101 {
                        // Interim responses: the gateway answered 100-continue itself.
                        conn.rbuf.advance(n);
                        continue;
                    }
                    ex.upstream_us = Some(sent_at.elapsed().as_micros() as u64);
                    return Ok(lease);
                }
                Ok(Parsed::Partial) => {}
                Err(_) => return Err(AttemptError::BadResponse),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(AttemptError::Timeout);
            }
            let was_empty = conn.rbuf.is_empty();
            match read_more(&mut conn.stream, &mut conn.rbuf, left).await {
                ReadOutcome::Data => {}
                ReadOutcome::Timeout => return Err(AttemptError::Timeout),
                ReadOutcome::Eof | ReadOutcome::Failed if was_empty => {
                    return Err(if reused && !*body_started {
                        AttemptError::Stale
                    } else {
                        AttemptError::Reset
                    });
                }
                ReadOutcome::Eof | ReadOutcome::Failed => return Err(AttemptError::BadResponse),
            }
        }
    }

    /// Writes the response head and streams the body to the client.
    #[allow(clippy::too_many_arguments)]
    async fn respond<S: ClientStream>(
        &mut self,
        stream: &mut S,
        out: &mut Vec<u8>,
        resp: &mut ResponseHead,
        ex: &mut Exchange,
        lease: &mut Lease<'a>,
    ) -> Responded {
        let head = self.view.head;
        let send = self.inst.config.raw.limits.send_timeout;
        let keep_alive = self.client_keeps_alive();
        ex.status = resp.status;
        let upgrade = resp.status == 101;
        if upgrade && self.upgrade.is_none() {
            ex.status = 502;
            ex.error = "bad_upstream_response";
            out.clear();
            write_error(
                out,
                502,
                ex.error,
                "the upstream switched protocols without being asked to",
                self.rid.as_str(),
                true,
                self.extra,
            );
            let _ = write_out(stream, out, send).await;
            return Responded::Close;
        }
        let client_http10 = head.version == 0;
        let (down, mut close) = match resp.body {
            BodyFraming::None => (Down::Passthrough, false),
            BodyFraming::Length(n) => (Down::Length(n), false),
            BodyFraming::Chunked | BodyFraming::UntilClose if client_http10 => (Down::Raw, true),
            BodyFraming::Chunked | BodyFraming::UntilClose => (Down::Chunked, false),
        };
        close |= !keep_alive;
        let conn = lease.conn();
        out.clear();
        write_response_head(
            out,
            &conn.rbuf,
            resp,
            self.route,
            self.rid,
            down,
            close,
            client_http10,
            upgrade,
            self.extra,
        );
        conn.rbuf.advance(resp.len);
        if upgrade {
            // Bytes the upstream sent right after its 101 belong to the tunnel.
            out.extend_from_slice(&conn.rbuf);
            conn.rbuf.clear();
            return match write_out(stream, out, send).await {
                Ok(()) => Responded::Upgrade,
                Err(_) => Responded::Close,
            };
        }
        // A small body that arrived with the head leaves in the same write.
        let mut body_inline = false;
        if let (BodyFraming::Length(n), Down::Length(_)) = (resp.body, down) {
            if n <= INLINE_BODY_MAX && conn.rbuf.len() as u64 >= n {
                out.extend_from_slice(&conn.rbuf[..n as usize]);
                if let Some(c) = ex.capture.as_mut() {
                    c.response().keep(&conn.rbuf[..n as usize]);
                }
                conn.rbuf.advance(n as usize);
                ex.bytes_out = n;
                body_inline = true;
            }
        }
        if write_out(stream, out, send).await.is_err() {
            ex.error = "client_gone";
            return Responded::Close;
        }
        if body_inline {
            return Responded::done(resp.keep_alive, close);
        }
        let encoding = if down == Down::Chunked {
            Encoding::Chunked
        } else {
            Encoding::Raw
        };
        let limits = PumpLimits {
            read_timeout: self.cluster.spec.raw.read_timeout,
            write_timeout: send,
            max_bytes: 0,
            deadline: None,
        };
        let conn = lease.conn();
        match pump(
            &mut conn.stream,
            &mut conn.rbuf,
            stream,
            out,
            resp.body,
            encoding,
            limits,
            ex.capture.as_mut().map(|c| c.response()),
        )
        .await
        {
            Ok(n) => ex.bytes_out = n,
            Err(e) => {
                ex.error = if e == PumpError::Destination {
                    "client_gone"
                } else {
                    "upstream_body_aborted"
                };
                return Responded::Close;
            }
        }
        Responded::done(
            resp.keep_alive && resp.body != BodyFraming::UntilClose,
            close,
        )
    }

    async fn body_failed<S: ClientStream>(
        &self,
        stream: &mut S,
        out: &mut Vec<u8>,
        ex: &mut Exchange,
        p: PumpError,
    ) -> After {
        let (status, reject) = match p {
            PumpError::Framing => (400, Some(Reject::BadChunk)),
            PumpError::TooLarge => (413, Some(Reject::BodyTooLarge)),
            PumpError::SourceTimeout => (408, None),
            _ => {
                ex.error = "client_gone";
                return After::Close;
            }
        };
        if let Some(r) = reject {
            self.ctx.stats.reject(r);
        }
        let kind = reject.map_or("body_timeout", Reject::label);
        self.fail(
            stream,
            out,
            ex,
            status,
            kind,
            "the request body was rejected",
            true,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn fail<S: ClientStream>(
        &self,
        stream: &mut S,
        out: &mut Vec<u8>,
        ex: &mut Exchange,
        status: u16,
        kind: &'static str,
        message: &str,
        close: bool,
    ) -> After {
        ex.status = status;
        ex.error = kind;
        out.clear();
        write_error(
            out,
            status,
            kind,
            message,
            self.rid.as_str(),
            close,
            self.extra,
        );
        finish(stream, out, self.inst.config.raw.limits.send_timeout, close).await
    }

    /// Serializes the upstream request head.
    fn write_request_head(&self, out: &mut Vec<u8>, endpoint: &str) {
        let (buf, head, route) = (self.view.buf, self.view.head, self.route);
        out.extend_from_slice(at(buf, &head.method));
        out.push(b' ');
        let path = at(buf, &head.path);
        match &route.rewrite {
            Some((strip, replace)) if prefix_matches(path, strip.as_bytes()) => {
                let rest = &path[strip.trim_end_matches('/').len()..];
                let base = replace.trim_end_matches('/');
                out.extend_from_slice(base.as_bytes());
                if rest.is_empty() || rest[0] != b'/' {
                    out.push(b'/');
                }
                out.extend_from_slice(rest);
            }
            _ => out.extend_from_slice(path),
        }
        let query = at(buf, &head.query);
        if !query.is_empty() {
            out.push(b'?');
            out.extend_from_slice(query);
        }
        out.extend_from_slice(b" HTTP/1.1\r\n");
        // A client-sent consumer header is never trusted; only the gateway sets it.
        let consumer_header = self.inst.config.auth.consumer_header.as_bytes();
        let mut xff_written = false;
        for (n, v) in &head.headers {
            let name = at(buf, n);
            if is_hop_by_hop(name)
                || head
                    .connection_tokens
                    .iter()
                    .any(|t| at(buf, t).eq_ignore_ascii_case(name))
                || route.request_headers.drops(name)
                || (!consumer_header.is_empty() && name.eq_ignore_ascii_case(consumer_header))
                || [
                    &b"x-forwarded-proto"[..],
                    b"x-forwarded-host",
                    b"x-request-id",
                    b"traceparent",
                    b"content-length",
                    b"expect",
                    // An h2c upgrade's settings; never forwarded (no h2c upgrades).
                    b"http2-settings",
                ]
                .iter()
                .any(|h| h.eq_ignore_ascii_case(name))
            {
                continue;
            }
            if name.eq_ignore_ascii_case(b"x-forwarded-for") {
                if !xff_written {
                    xff_written = true;
                    out.extend_from_slice(b"x-forwarded-for: ");
                    let mut first = true;
                    for (n2, v2) in &head.headers {
                        if at(buf, n2).eq_ignore_ascii_case(b"x-forwarded-for") {
                            if !first {
                                out.extend_from_slice(b", ");
                            }
                            out.extend_from_slice(at(buf, v2));
                            first = false;
                        }
                    }
                    out.extend_from_slice(b", ");
                    out.extend_from_slice(self.peer_ip.as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
                continue;
            }
            write_header(out, name, at(buf, v));
        }
        if !xff_written {
            write_header(out, b"x-forwarded-for", self.peer_ip.as_bytes());
        }
        write_header(out, b"x-forwarded-proto", self.scheme.as_bytes());
        match self.view.header("host") {
            Some(host) => write_header(out, b"x-forwarded-host", host),
            // HTTP/1.0 clients may omit Host; HTTP/1.1 upstreams require one.
            None => write_header(out, b"host", endpoint.as_bytes()),
        }
        if let Some(c) = self.consumer {
            if !consumer_header.is_empty() {
                write_header(
                    out,
                    consumer_header,
                    self.inst.config.auth.consumers[c].name.as_bytes(),
                );
            }
        }
        write_header(out, b"x-request-id", self.rid.as_str().as_bytes());
        write_header(out, b"traceparent", self.trace.as_bytes());
        match head.body {
            BodyFraming::Length(n) => {
                out.extend_from_slice(b"content-length: ");
                write_u64(out, n);
                out.extend_from_slice(b"\r\n");
            }
            BodyFraming::Chunked => write_header(out, b"transfer-encoding", b"chunked"),
            _ => {}
        }
        if let Some(token) = self.upgrade {
            write_header(out, b"upgrade", token);
            write_header(out, b"connection", b"upgrade");
        }
        add_route_headers(out, &route.request_headers);
        out.extend_from_slice(b"\r\n");
    }
}

/// How a response finished, and what may be reused.
enum Responded {
    KeepAliveBoth,
    PoolUpstream,
    KeepAliveClient,
    Close,
    Upgrade,
}

impl Responded {
    /// After a complete response: what can be kept, given whether the upstream
    /// connection is reusable and whether the client connection closes.
    fn done(upstream_reusable: bool, client_closes: bool) -> Self {
        match (upstream_reusable, client_closes) {
            (true, false) => Responded::KeepAliveBoth,
            (true, true) => Responded::PoolUpstream,
            (false, false) => Responded::KeepAliveClient,
            (false, true) => Responded::Close,
        }
    }

    fn finish(self, lease: Lease<'_>) -> After {
        match self {
            Responded::KeepAliveBoth => {
                lease.release();
                After::KeepAlive
            }
            Responded::PoolUpstream => {
                lease.release();
                After::Close
            }
            Responded::KeepAliveClient => After::KeepAlive,
            Responded::Close => After::Close,
            Responded::Upgrade => After::Upgrade(lease.take()),
        }
    }
}

/// Downstream body framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Down {
    /// No body of ours: upstream's Content-Length (HEAD, 304) passes through.
    Passthrough,
    Length(u64),
    Chunked,
    /// Raw bytes until close (HTTP/1.0 clients).
    Raw,
}

fn prefix_matches(path: &[u8], prefix: &[u8]) -> bool {
    let p = if prefix.len() > 1 && prefix.ends_with(b"/") {
        &prefix[..prefix.len() - 1]
    } else {
        prefix
    };
    path.starts_with(p) && (p == b"/" || matches!(path.get(p.len()), None | Some(b'/')))
}

#[allow(clippy::too_many_arguments)]
fn write_response_head(
    out: &mut Vec<u8>,
    buf: &[u8],
    resp: &ResponseHead,
    route: &Route,
    rid: &RequestId,
    down: Down,
    close: bool,
    client_http10: bool,
    upgrade: bool,
    extra: &[u8],
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    write_u64(out, u64::from(resp.status));
    out.push(b' ');
    let reason = at(buf, &resp.reason);
    if reason.is_empty() {
        out.extend_from_slice(hypergate_core::http::reason(resp.status).as_bytes());
    } else {
        out.extend_from_slice(reason);
    }
    out.extend_from_slice(b"\r\n");
    for (n, v) in &resp.headers {
        let name = at(buf, n);
        let framing_header = name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"transfer-encoding");
        if (is_hop_by_hop(name) && !(upgrade && name.eq_ignore_ascii_case(b"upgrade")))
            || (framing_header && down != Down::Passthrough)
            || resp
                .connection_tokens
                .iter()
                .any(|t| at(buf, t).eq_ignore_ascii_case(name))
            || route.response_headers.drops(name)
        {
            continue;
        }
        write_header(out, name, at(buf, v));
    }
    if !resp.has_request_id {
        write_header(out, b"x-request-id", rid.as_str().as_bytes());
    }
    match down {
        Down::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            write_u64(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Down::Chunked => write_header(out, b"transfer-encoding", b"chunked"),
        Down::Passthrough | Down::Raw => {}
    }
    if upgrade {
        write_header(out, b"connection", b"upgrade");
    } else if close {
        write_header(out, b"connection", b"close");
    } else if client_http10 {
        write_header(out, b"connection", b"keep-alive");
    }
    out.extend_from_slice(extra);
    add_route_headers(out, &route.response_headers);
    out.extend_from_slice(b"\r\n");
}

/// Copies bytes both ways after a successful upgrade. Each direction ends at its
/// source's EOF (passed on as a half-close); the tunnel ends when both have, when
/// no byte moved either way for `idle`, or when the shard drains (it shuts both
/// sockets down through the connection registry). Reads are never cancelled by
/// a timeout (a cancelled read may lose bytes): a watchdog shuts the sockets down
/// instead. Returns how it ended and the bytes carried up and down.
async fn tunnel<S: ClientStream>(
    ctx: &ShardCtx,
    slot: usize,
    client_fd: RawFd,
    client: S,
    client_leftover: BytesMut,
    mut up: UpstreamConn,
    idle: Duration,
) -> (TunnelEnd, u64, u64) {
    let up_fd = up.fd();
    ctx.conns.borrow_mut().set_tunnel(slot, up_fd);
    let active = &ctx.stats.tunnels_active;
    active.set(active.get() + 1);
    let (sent_up, sent_down) = (Cell::new(0u64), Cell::new(0u64));
    let last = Cell::new(Instant::now());
    let failed = Cell::new(false);
    let timed_out = Cell::new(false);
    let mut leftover_ok = true;
    if !client_leftover.is_empty() {
        sent_up.set(client_leftover.len() as u64);
        let written = monoio::time::timeout(idle, up.stream.write_all(client_leftover)).await;
        leftover_ok = matches!(written, Ok((Ok(_), _)));
    }
    if leftover_ok {
        let (mut cr, mut cw) = client.into_split();
        let (mut ur, mut uw) = up.stream.into_split();
        let copies = async {
            monoio::join!(
                copy_half(&mut cr, &mut uw, &sent_up, &last, &failed),
                copy_half(&mut ur, &mut cw, &sent_down, &last, &failed)
            )
        };
        let watchdog = async {
            loop {
                let quiet = last.get().elapsed();
                if quiet >= idle {
                    timed_out.set(true);
                    shutdown_both(client_fd, up_fd);
                    // The copies now end with errors or EOF; let them.
                    std::future::pending::<()>().await;
                }
                monoio::time::sleep(idle - quiet).await;
            }
        };
        monoio::select! {
            _ = copies => {}
            _ = watchdog => {}
        }
    } else {
        failed.set(true);
    }
    active.set(active.get() - 1);
    let end = if ctx.draining.get() && ctx.conns.borrow().was_shut(slot) {
        TunnelEnd::Drain
    } else if timed_out.get() {
        TunnelEnd::IdleTimeout
    } else if failed.get() {
        TunnelEnd::Error
    } else {
        TunnelEnd::Closed
    };
    (end, sent_up.get(), sent_down.get())
}

/// One direction of a tunnel: read, write all, until EOF (then half-close the
/// destination). A failure is noted in `failed`; `last` is the latest activity.
async fn copy_half<R: AsyncReadRent, W: AsyncWriteRent>(
    src: &mut R,
    dst: &mut W,
    bytes: &Cell<u64>,
    last: &Cell<Instant>,
    failed: &Cell<bool>,
) {
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        let (res, b) = src.read(buf).await;
        buf = b;
        match res {
            Ok(0) => break,
            Ok(n) => {
                bytes.set(bytes.get() + n as u64);
                last.set(Instant::now());
            }
            Err(_) => {
                failed.set(true);
                break;
            }
        }
        let (res, b) = dst.write_all(buf).await;
        buf = b;
        buf.clear();
        if res.is_err() {
            failed.set(true);
            break;
        }
    }
    let _ = dst.shutdown().await;
}

/// Shuts both sockets of a tunnel down, so every pending read and write on them ends.
pub fn shutdown_both(a: RawFd, b: RawFd) {
    for fd in [a, b] {
        // SAFETY: both fds belong to the tunnel task calling this (or, from a drain,
        // to a live tunnel registered on this thread); shutdown() does not close or
        // free them, it only ends their pending I/O.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    }
}
