//! The request pipeline: one downstream connection, request by request.
//!
//! [`serve_connection`] waits for a request, reads its head
//! ([`head`](crate::head)), runs the request's phases ([`phases`]: route,
//! edge, body limit, then a direct answer, the [`Handler`] (the LLM gateway)
//! or the proxy), answers any phase's error through the one responder
//! ([`respond`](crate::respond)), and records the exchange
//! ([`record`](crate::record)). An upgrade the route allows becomes a tunnel
//! ([`tunnel`](crate::tunnel)) once every phase has passed.
//!
//! Pipelined requests are answered in order because each is handled to the
//! end before the next head is parsed from the same buffer.
//!
//! Depends on every phase module of this crate; nothing depends on it but
//! the crate's users.

use crate::edge_phase::{self as edge, Admitted};
use crate::exchange::{After, ClientStream, Downstream, Exchange, View};
use crate::forward::{self, ProxyIo};
use crate::handler::{Handler, HandlerRequest};
use crate::routing::RequestInfo;
use crate::spec::RouteAction;
use crate::state::{Installed, ShardCtx};
use crate::stats::TunnelEnd;
use crate::{head, record, respond, tunnel};
use bytes::BytesMut;
use hypergate_core::error::{ErrorKind, ErrorShape, GatewayError};
use hypergate_core::http::codec::{RequestHead, ResponseHead};
use hypergate_core::io::{read_idle, ReadOutcome, IDLE_BUFFER_MAX};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;

/// Per-connection buffers, reused for every request on the connection.
#[derive(Default)]
struct Buffers {
    rbuf: BytesMut,
    out: Vec<u8>,
    head_buf: Vec<u8>,
    head: RequestHead,
    resp: ResponseHead,
    /// Headers the edge phase adds to whatever response is sent (CORS, challenges, rate limits).
    extra: Vec<u8>,
    /// Scratch for the canonical path.
    canon: Vec<u8>,
}

impl Buffers {
    /// Buffers for one HTTP/2 stream: sized for a typical exchange at once,
    /// since a stream's buffers serve one request (growing them from empty,
    /// as a long-lived connection's do once, would copy them several times
    /// per request).
    fn for_stream() -> Buffers {
        Buffers {
            out: Vec::with_capacity(4096),
            head_buf: Vec::with_capacity(1024),
            extra: Vec::with_capacity(256),
            canon: Vec::with_capacity(256),
            ..Buffers::default()
        }
    }
}

/// Where a request's phases read and write.
struct Io<'a, S> {
    stream: &'a mut S,
    rbuf: &'a mut BytesMut,
    out: &'a mut Vec<u8>,
    resp: &'a mut ResponseHead,
    extra: &'a mut Vec<u8>,
}

/// Serves one downstream connection until it closes. `fd` is the underlying
/// socket (so a drain can wake the connection when idle); `scheme` is what
/// `X-Forwarded-Proto` says (`http` or `https`); `read` holds bytes already
/// read from it (by the `h2c` sniffing of the first bytes), usually none.
#[allow(clippy::too_many_arguments)]
pub async fn serve_connection<S: ClientStream, H: Handler>(
    ctx: Rc<ShardCtx>,
    handler: Rc<H>,
    mut stream: S,
    fd: RawFd,
    peer: SocketAddr,
    scheme: &'static str,
    _permit: hypergate_edge::policy::ConnectionPermit,
    read: BytesMut,
) {
    let slot = ctx.conns.borrow_mut().register(fd);
    let active = &ctx.stats.active_connections;
    active.set(active.get() + 1);
    let peak = &ctx.stats.connections_peak;
    peak.set(peak.get().max(active.get()));
    let down = Downstream {
        peer,
        h2: false,
        peer_ip: hypergate_core::ids::IpText::new(peer.ip()),
        scheme,
    };
    // The write buffer starts with room for a typical response head: grown
    // from empty it would be reallocated several times on the connection's
    // first request, which is its only one when clients close after each
    // (about 900 instructions; see `bench/README.md`, newconn).
    let mut bufs = Buffers {
        rbuf: read,
        out: Vec::with_capacity(1024),
        ..Buffers::default()
    };
    loop {
        let inst = ctx.installed.borrow().clone();
        if bufs.rbuf.is_empty() && !idle(&ctx, &inst, slot, &mut stream, &mut bufs).await {
            break;
        }
        if !read_head(&ctx, &inst, &mut stream, &mut bufs).await {
            break;
        }
        let (after, mut ex) = handle(&ctx, &*handler, &inst, &down, &mut stream, &mut bufs).await;
        let after = match after {
            After::Upgrade(up) => {
                let leftover = std::mem::take(&mut bufs.rbuf);
                let idle = inst.config.raw.limits.tunnel_idle_timeout;
                let (end, bytes_up, bytes_down) =
                    tunnel::tunnel(&ctx, slot, fd, stream, leftover, up, idle).await;
                ctx.stats.tunnel_ended(end, bytes_up, bytes_down);
                ex.bytes_in += bytes_up;
                ex.bytes_out += bytes_down;
                if end != TunnelEnd::Closed {
                    ex.error = end.label();
                }
                record(&ctx, &inst, &bufs, &ex, &down);
                ctx.conns.borrow_mut().unregister(slot);
                active.set(active.get() - 1);
                return;
            }
            after => after,
        };
        record(&ctx, &inst, &bufs, &ex, &down);
        if let After::Close = after {
            break;
        }
    }
    ctx.conns.borrow_mut().unregister(slot);
    active.set(active.get() - 1);
}

/// Serves the one request of an HTTP/2 stream (the `h2` module calls it): the same
/// head phase, phases, responder and record as a request on an HTTP/1.1
/// connection. No upgrade happens on a stream (the HTTP/2 codec refuses the
/// `upgrade` header), so the exchange ends with its response.
pub(crate) async fn serve_stream<S: ClientStream, H: Handler>(
    ctx: &ShardCtx,
    handler: &H,
    mut stream: S,
    down: &Downstream,
) {
    let mut bufs = Buffers::for_stream();
    let inst = ctx.installed.borrow().clone();
    if !read_head(ctx, &inst, &mut stream, &mut bufs).await {
        return;
    }
    let (_after, ex) = handle(ctx, handler, &inst, down, &mut stream, &mut bufs).await;
    record(ctx, &inst, &bufs, &ex, down);
}

/// The head phase of one request: read and canonicalise its head, or
/// answer why it cannot be (the connection then ends). `false`: no request.
async fn read_head<S: ClientStream>(
    ctx: &ShardCtx,
    inst: &Installed,
    stream: &mut S,
    bufs: &mut Buffers,
) -> bool {
    let head_bufs = head::HeadBufs {
        rbuf: &mut bufs.rbuf,
        head_buf: &mut bufs.head_buf,
        head: &mut bufs.head,
        canon: &mut bufs.canon,
    };
    match head::read(inst, stream, head_bufs).await {
        Ok(read) => read,
        Err(err) => {
            respond::refuse_head(ctx, inst, stream, &mut bufs.out, &err).await;
            false
        }
    }
}

/// The record phase of a request whose head is in `bufs`.
fn record(ctx: &ShardCtx, inst: &Installed, bufs: &Buffers, ex: &Exchange, down: &Downstream) {
    let view = View {
        buf: &bufs.head_buf,
        head: &bufs.head,
    };
    record::record(ctx, inst, &view, ex, down);
}

/// Waits, between requests, for the next one (within `idle_timeout`). A drain
/// closes this connection only after a grace period without a request (see
/// the runtime's drain), so a client that was about to reuse it gets an
/// answer with `Connection: close` instead of a closed socket. `false`: the
/// connection is done.
async fn idle<S: ClientStream>(
    ctx: &ShardCtx,
    inst: &Installed,
    slot: usize,
    stream: &mut S,
    bufs: &mut Buffers,
) -> bool {
    if bufs.rbuf.capacity() > IDLE_BUFFER_MAX {
        bufs.rbuf = BytesMut::new();
    }
    if bufs.out.capacity() > IDLE_BUFFER_MAX {
        bufs.out = Vec::new();
    }
    ctx.conns.borrow_mut().set_idle(slot, true);
    let timeout = inst.config.raw.limits.idle_timeout;
    let r = read_idle(stream, &mut bufs.rbuf, timeout).await;
    ctx.conns.borrow_mut().set_idle(slot, false);
    r == ReadOutcome::Data
}

/// One request whose head has arrived: its phases, then the responder for
/// whatever error one of them returned. The exchange goes to the record.
async fn handle<S: ClientStream, H: Handler>(
    ctx: &ShardCtx,
    handler: &H,
    inst: &Installed,
    down: &Downstream,
    stream: &mut S,
    bufs: &mut Buffers,
) -> (After, Exchange) {
    let Buffers {
        rbuf,
        out,
        head_buf,
        head,
        resp,
        extra,
        canon: _,
    } = bufs;
    let req = View {
        buf: head_buf,
        head,
    };
    let mut ex = Exchange::begin(&req, &ctx.rng, ctx.telemetry.as_ref().map(|t| t.sampler()));
    extra.clear();
    let io = Io {
        stream: &mut *stream,
        rbuf,
        out: &mut *out,
        resp,
        extra: &mut *extra,
    };
    let after = match phases(ctx, handler, inst, down, &req, &mut ex, io).await {
        Ok(after) => after,
        Err(err) => {
            // gRPC clients read a status, not a body, whatever the route.
            let shape = match ex.route.map(|r| &inst.config.routes[r].action) {
                _ if ex.grpc => ErrorShape::Grpc,
                Some(RouteAction::Ai) => handler.error_shape(req.path()),
                _ => ErrorShape::Json,
            };
            respond::error(ctx, inst, stream, out, &mut ex, &req, &err, shape, extra).await
        }
    };
    (after, ex)
}

/// The phases of one request, in order. Each passes, answers, or fails with
/// the error the responder answers.
async fn phases<S: ClientStream, H: Handler>(
    ctx: &ShardCtx,
    handler: &H,
    inst: &Installed,
    down: &Downstream,
    req: &View<'_>,
    ex: &mut Exchange,
    io: Io<'_, S>,
) -> Result<After, GatewayError> {
    // Route, on the canonical path.
    let Some(ri) = inst.config.router.find(req) else {
        ctx.stats.no_route.set(ctx.stats.no_route.get() + 1);
        return Err(GatewayError::new(
            ErrorKind::NoRoute,
            "no route matches this request",
        ));
    };
    ex.route = Some(ri);
    let route = &inst.config.routes[ri];
    // Edge: CORS, IP rules, authentication, groups, rate limits.
    match edge::admit(ctx, inst, ri, req, down.peer, io.extra).await? {
        Admitted::Consumer(c) => ex.consumer = c,
        Admitted::Preflight => {
            return Ok(respond::preflight(ctx, inst, io.stream, io.out, ex, req, io.extra).await)
        }
    }
    // Body limit, for a body that declares its length.
    let max_body = edge::body_limit(inst, route, req)?;
    // The answer: direct, the handler (the LLM gateway), or the upstream.
    match &route.action {
        RouteAction::Direct(d) => {
            Ok(respond::direct(ctx, inst, io.stream, io.out, ex, req, route, d, io.extra).await)
        }
        RouteAction::Ai => handle_with(ctx, handler, inst, req, ri, io, ex).await,
        _ => {
            let io = ProxyIo {
                stream: io.stream,
                rbuf: io.rbuf,
                out: io.out,
                resp: io.resp,
                extra: io.extra,
            };
            forward::proxy(ctx, inst, down, req, ri, max_body, io, ex).await
        }
    }
}

/// The handler phase: the LLM gateway answers (or returns its error).
async fn handle_with<S: ClientStream, H: Handler>(
    ctx: &ShardCtx,
    handler: &H,
    inst: &Installed,
    req: &View<'_>,
    route_index: usize,
    io: Io<'_, S>,
    ex: &mut Exchange,
) -> Result<After, GatewayError> {
    let route = &inst.config.routes[route_index];
    let request = HandlerRequest {
        ctx,
        inst,
        route: route_index,
        request: req,
        body: req.head.body,
        http10: req.head.version == 0,
        request_id: ex.rid.as_str(),
        consumer: ex.consumer,
        extra: io.extra,
        keep_alive: respond::keeps_alive(ctx, req),
        max_body: route.policy.protection.max_body_bytes.unwrap_or(0),
        started: ex.started,
        deadline: route.timeout,
    };
    // Boxed: the LLM gateway's future is the largest of the phases'; inline,
    // it would make every request's future (each HTTP/2 stream's task) that
    // large. One allocation per AI call, next to its tens of microseconds.
    let o = Box::pin(handler.serve(&request, io.stream, io.rbuf, io.out)).await;
    ex.bytes_in = o.bytes_in;
    ex.body_read = o.body_read;
    ex.upstream_us = o.upstream_us;
    ex.llm = o.llm;
    let answered = o.result?;
    ex.status = answered.status;
    ex.bytes_out = answered.bytes_out;
    Ok(if answered.keep_alive && answered.status != 0 {
        After::KeepAlive
    } else {
        After::Close
    })
}
