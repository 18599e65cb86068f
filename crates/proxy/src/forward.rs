//! The proxy phase: a route's split picks a cluster, the upstream client
//! sends the rewritten request (retrying when [`retry_safe`] allows and the
//! budget has room), and the upstream's response goes back to the client
//! with its head rewritten and its body streamed.
//!
//! Depends on `exchange`, `split`, `respond`, `spec`, `state`, and on
//! `hypergate-upstream`'s client.
//!
//! [`retry_safe`]: hypergate_upstream::client::retry_safe

use crate::exchange::{
    After, AttemptSpan, AttemptSpans, Captured, ClientStream, Downstream, Exchange, View,
};
use crate::respond::{add_route_headers, keeps_alive};
use crate::routing::RequestInfo;
use crate::spec::Route;
use crate::state::{Installed, ShardCtx};
use bytes::{Buf, BytesMut};
use hypergate_core::error::{ErrorKind, GatewayError};
use hypergate_core::http::chunked;
use hypergate_core::http::codec::{at, is_hop_by_hop, BodyFraming, RequestHead, ResponseHead};
use hypergate_core::http::{write_header, write_u64};
use hypergate_core::io::{
    pump, read_at_least, split, write_out, Encoding, PumpError, PumpLimits, BODY_READ, FRAME_READ,
};
use hypergate_otel::SpanContext;
use hypergate_upstream::client::{
    self, AttemptLimits, Failure, Next, Outcome, Outgoing, Retries, RetryPolicy, RetryStatuses,
};
use hypergate_upstream::lease::Lease;
use hypergate_upstream::{ClusterRuntime, UpstreamConn};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use std::time::{Duration, Instant};

/// Largest body copied next to its head so both leave in one write.
const INLINE_BODY_MAX: u64 = 16 * 1024;

/// Where the proxy phase reads and writes (the connection's buffers).
pub struct ProxyIo<'a, S> {
    /// The client.
    pub stream: &'a mut S,
    /// Bytes read from the client and not yet consumed (the body's start).
    pub rbuf: &'a mut BytesMut,
    /// The write buffer.
    pub out: &'a mut Vec<u8>,
    /// The upstream's response head.
    pub resp: &'a mut ResponseHead,
    /// Header lines the edge phase adds to the response.
    pub extra: &'a [u8],
}

/// Proxies a routed, admitted request to its route's cluster (the split's
/// side) and streams the answer back. `max_body`: the body limit (0: none).
#[allow(clippy::too_many_arguments)]
pub async fn proxy<S: ClientStream>(
    ctx: &ShardCtx,
    inst: &Installed,
    down: &Downstream,
    req: &View<'_>,
    route_index: usize,
    max_body: u64,
    io: ProxyIo<'_, S>,
    ex: &mut Exchange,
) -> Result<After, GatewayError> {
    let route = &inst.config.routes[route_index];
    let rr = &inst.routes[route_index];
    let t = crate::split::choose_target(route, rr, &inst.config.clusters, req, down.peer);
    ex.target = Some(t);
    let cluster = &inst.clusters[rr.targets[t].0];
    let store = &inst.config.raw.hypercare.store;
    let capture = (store.enabled
        && hypergate_upstream::sampled(&ctx.rng, store.capture_api_bodies))
    .then(|| {
        Box::new(Captured::new(
            store.capture_max_bytes + hypergate_core::record::CAPTURE_SLACK,
        ))
    });
    let limits = &inst.config.raw.limits;
    let grpc = crate::grpc::Call::of(req, route, ex);
    let ProxyIo {
        stream,
        rbuf,
        out,
        resp,
        extra,
    } = io;
    let read_room = if down.h2 { FRAME_READ } else { BODY_READ };
    // A gRPC call's body may stream as long as the call lasts (its deadline
    // bounds it), and streams while the response does.
    let body_limits = match grpc {
        Some(call) => PumpLimits {
            read_timeout: call.left(),
            write_timeout: cluster.spec.raw.read_timeout,
            max_bytes: max_body,
            deadline: Some(call.deadline),
            read_room,
        },
        None => PumpLimits {
            read_timeout: limits.body_idle_timeout,
            write_timeout: cluster.spec.raw.read_timeout,
            max_bytes: max_body,
            deadline: Some(ex.started + limits.body_timeout),
            read_room,
        },
    };
    // A small body that declares its length is read whole before anything
    // goes upstream, so it leaves in the head's write (`write_head`): one send
    // upstream instead of three (the head, the part of the body that came with
    // it, the rest), as nginx's request buffering does. An idle connection's
    // first read takes only 2 KiB, so a 10 KiB POST has most of its body in
    // the socket still when its head is parsed.
    if let Some(n) = inline_body(req.head, max_body).filter(|_| grpc.is_none()) {
        if (rbuf.len() as u64) < n {
            let deadline = ex.started + limits.body_timeout;
            let idle = limits.body_idle_timeout;
            if let Err(e) = read_at_least(stream, rbuf, n as usize, idle, deadline).await {
                return Err(GatewayError::request_body(e));
            }
        }
    }
    let mut request = Forwarded {
        inst,
        route,
        req,
        down,
        rid: ex.rid.as_str(),
        trace: &ex.trace,
        traceparent: ex.trace.traceparent(),
        consumer: ex.consumer,
        // Only after every request phase passed, and only a protocol the route
        // allows: anything else is forwarded as a plain request.
        upgrade: req
            .head
            .upgrade
            .then(|| req.header("upgrade").and_then(|v| route.allowed_upgrade(v)))
            .flatten(),
        stream,
        rbuf,
        capture,
        body_limits,
        grpc,
        duplex: grpc.is_some() && req.head.body == BodyFraming::Chunked,
        send_timeout: limits.send_timeout,
        max_body,
        inline: false,
        body_taken: false,
        continue_sent: false,
        bytes_in: 0,
    };
    let mut tally = Tally::default();
    let sent = send(
        ctx,
        inst,
        cluster,
        req,
        down,
        &mut request,
        resp,
        out,
        &mut tally,
    )
    .await;
    ex.endpoint = tally.endpoint;
    ex.retries = tally.retries;
    ex.attempts = tally.attempts;
    let Forwarded {
        stream,
        rbuf,
        capture,
        bytes_in,
        upgrade,
        duplex,
        ..
    } = request;
    ex.capture = capture;
    ex.bytes_in = bytes_in;
    let mut answer = sent?;
    let reply = Reply {
        ctx,
        inst,
        route,
        cluster,
        req,
        extra,
        upgrade: upgrade.is_some(),
        grpc,
    };
    if duplex {
        // Boxed: its two directions' futures are large, and held inline they
        // would make every request's future (each HTTP/2 stream's task) so.
        return Box::pin(reply.duplex(stream, rbuf, out, resp, ex, answer, body_limits)).await;
    }
    ex.upstream_us = Some(answer.upstream_us);
    let conn = answer.lease.conn();
    Ok(reply
        .respond(stream, out, resp, ex, &mut conn.stream, &mut conn.rbuf)
        .await?
        .finish(answer.lease))
}

/// What the attempts came to, for the exchange.
#[derive(Default)]
struct Tally {
    /// The endpoint of the last attempt.
    endpoint: Option<usize>,
    /// Retries made.
    retries: u32,
    /// The attempts, for their client spans (when spans are exported).
    attempts: AttemptSpans,
}

/// Sends the request through the upstream client: pick an endpoint, attempt,
/// and retry on another endpoint while the one retry rule allows it.
#[allow(clippy::too_many_arguments)]
async fn send<'c, S: ClientStream>(
    ctx: &ShardCtx,
    inst: &Installed,
    cluster: &'c ClusterRuntime,
    req: &View<'_>,
    down: &Downstream,
    request: &mut Forwarded<'_, '_, S>,
    resp: &mut ResponseHead,
    out: &mut Vec<u8>,
    tally: &mut Tally,
) -> Result<client::Response<'c>, GatewayError> {
    let spec = &cluster.spec;
    let policy = RetryPolicy {
        attempts: 1 + spec.raw.retry.attempts,
        statuses: if spec.raw.retry.on_5xx {
            RetryStatuses::Gateway
        } else {
            RetryStatuses::None
        },
        on_timeout: false,
        free: u32::MAX,
        backoff: Duration::ZERO,
        max_backoff: Duration::ZERO,
    };
    let limits = AttemptLimits {
        write_timeout: spec.raw.read_timeout,
        response_timeout: request.route.timeout,
        deadline: request.grpc.map(|c| c.deadline),
        max_head: inst.config.raw.limits.max_response_header_bytes,
        head_request: req.method() == "HEAD",
        verify_open: req.head.has_body(),
    };
    let key = spec
        .hash_on
        .as_ref()
        .and_then(|k| req.key_hash(k, down.peer));
    let idempotent = req.is_idempotent();
    let mut retries = Retries::new(policy, cluster, None);
    let mut tried = 0u64;
    loop {
        retries.attempt();
        let Ok(ep) = cluster
            .pick(key, tried, &ctx.rng)
            .or_else(|_| cluster.pick(key, 0, &ctx.rng))
        else {
            return Err(Failure::NoEndpoint.error());
        };
        if ep < 64 {
            tried |= 1 << ep;
        }
        tally.endpoint = Some(ep);
        // With spans exported, each attempt is a client span, and the upstream
        // receives it as its parent; without, the server span is the parent.
        let attempt_span = ctx.telemetry.is_some().then(|| {
            let child = request
                .trace
                .child(hypergate_core::rng::next_random(&ctx.rng));
            request.traceparent = child.traceparent();
            (child.span_id, Instant::now())
        });
        let result = client::attempt(cluster, ep, request, resp, out, limits).await;
        if request.duplex {
            // Sent without its body: the answer is judged once its head is read.
            return result.map_err(|f| {
                client::record_outcome(cluster, ep, Outcome::Failed(f));
                f.error()
            });
        }
        if let Some((span_id, start)) = attempt_span {
            tally.attempts.push(AttemptSpan {
                span_id,
                start,
                end: Instant::now(),
                endpoint: ep,
                result: match &result {
                    Ok(_) => Ok(resp.status),
                    Err(f) => Err(f.label()),
                },
            });
        }
        let outcome = match &result {
            Ok(_) => Outcome::Answered(resp.status),
            Err(f) => Outcome::Failed(*f),
        };
        client::record_outcome(cluster, ep, outcome);
        let stats = &cluster.stats;
        if let Err(f) = result {
            let counter = match f {
                Failure::Connect | Failure::ConnectTimeout => Some(&stats.connect_errors),
                Failure::Timeout => Some(&stats.timeouts),
                Failure::BadResponse => Some(&stats.bad_responses),
                _ => None,
            };
            if let Some(c) = counter {
                c.set(c.get() + 1);
            }
        }
        let again = match outcome {
            Outcome::Answered(s) if s < 500 => Next::Stop,
            _ => retries.next(outcome, idempotent && request.resendable(), None, &ctx.rng),
        };
        match (again, result) {
            (Next::Again(_), _) => {
                tally.retries += 1;
                stats.retries.set(stats.retries.get() + 1);
            }
            (_, Ok(answer)) => return Ok(answer),
            (_, Err(f)) => return Err(f.error()),
        }
    }
}

/// The upstream request: the client's, rewritten for the route.
struct Forwarded<'a, 'i, S> {
    inst: &'a Installed,
    route: &'a Route,
    req: &'a View<'a>,
    down: &'a Downstream,
    /// Request id.
    rid: &'i str,
    /// The server span (attempts are its children).
    trace: &'i SpanContext,
    /// The `traceparent` this attempt sends.
    traceparent: [u8; 55],
    consumer: Option<usize>,
    /// The `Upgrade` token forwarded (one the route allows), if any.
    upgrade: Option<&'a [u8]>,
    stream: &'a mut S,
    rbuf: &'a mut BytesMut,
    capture: Option<Box<Captured>>,
    body_limits: PumpLimits,
    /// A gRPC call's facts (its deadline).
    grpc: Option<crate::grpc::Call>,
    /// The body streams while the response is read (a streamed gRPC call).
    duplex: bool,
    send_timeout: Duration,
    max_body: u64,
    /// The body left with the head.
    inline: bool,
    /// Body bytes were taken from the client: the request cannot be written again.
    body_taken: bool,
    continue_sent: bool,
    bytes_in: u64,
}

/// The length of a request body small enough to leave upstream in the head's
/// write (read whole first, see [`proxy`]): declared by `Content-Length`, at
/// most [`INLINE_BODY_MAX`] and the route's limit, and not behind
/// `Expect: 100-continue` (that client waits for a 100 before it sends it).
fn inline_body(head: &RequestHead, max_body: u64) -> Option<u64> {
    match head.body {
        BodyFraming::Length(n)
            if n > 0
                && n <= INLINE_BODY_MAX
                && !head.expect_continue
                && (max_body == 0 || n <= max_body) =>
        {
            Some(n)
        }
        _ => None,
    }
}

impl<S: ClientStream> Outgoing for Forwarded<'_, '_, S> {
    fn write_head(&mut self, out: &mut Vec<u8>, endpoint: &str) {
        self.write_request_head(out, endpoint);
        // A small body that already arrived whole leaves in the same write as the head.
        if let Some(n) = inline_body(self.req.head, self.max_body) {
            if self.rbuf.len() as u64 >= n {
                let body = &self.rbuf[..n as usize];
                out.extend_from_slice(body);
                if let Some(c) = self.capture.as_mut() {
                    c.request.clear();
                    c.request().keep(body);
                }
                self.rbuf.advance(n as usize);
                self.inline = true;
                self.body_taken = true;
                self.bytes_in = n;
            }
        }
    }

    async fn send_body(
        &mut self,
        conn: &mut UpstreamConn,
        out: &mut Vec<u8>,
    ) -> Result<(), Failure> {
        let head = self.req.head;
        if !head.has_body() || self.inline {
            return Ok(());
        }
        if head.expect_continue && !self.continue_sent {
            self.continue_sent = true;
            out.clear();
            out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            if write_out(self.stream, out, self.send_timeout)
                .await
                .is_err()
            {
                return Err(Failure::Body(PumpError::SourceClosed));
            }
        }
        self.body_taken = true;
        let encoding = if head.body == BodyFraming::Chunked {
            Encoding::Chunked
        } else {
            Encoding::Raw
        };
        let tap = self.capture.as_mut().map(|c| {
            c.request.clear();
            c.request()
        });
        match pump(
            self.stream,
            self.rbuf,
            &mut conn.stream,
            out,
            head.body,
            encoding,
            self.body_limits,
            tap,
        )
        .await
        {
            Ok(p) => {
                self.bytes_in = p.bytes;
                Ok(())
            }
            Err(PumpError::Destination) => Err(Failure::Write),
            Err(p) => Err(Failure::Body(p)),
        }
    }

    fn resendable(&self) -> bool {
        !self.body_taken
    }

    fn duplex(&self) -> bool {
        self.duplex
    }
}

impl<S> Forwarded<'_, '_, S> {
    /// Serializes the upstream request head.
    fn write_request_head(&self, out: &mut Vec<u8>, endpoint: &str) {
        let (buf, head, route) = (self.req.buf, self.req.head, self.route);
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
                    // Written below: what is left of the call's deadline.
                    b"grpc-timeout",
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
                    out.extend_from_slice(self.down.peer_ip.as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
                continue;
            }
            write_header(out, name, at(buf, v));
        }
        if !xff_written {
            write_header(out, b"x-forwarded-for", self.down.peer_ip.as_bytes());
        }
        write_header(out, b"x-forwarded-proto", self.down.scheme.as_bytes());
        match self.req.header("host") {
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
        write_header(out, b"x-request-id", self.rid.as_bytes());
        write_header(out, b"traceparent", &self.traceparent);
        if let Some(call) = self.grpc {
            call.write_timeout_header(out);
        }
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

/// Writes the upstream's answer to the client.
struct Reply<'a> {
    ctx: &'a ShardCtx,
    inst: &'a Installed,
    route: &'a Route,
    cluster: &'a ClusterRuntime,
    req: &'a View<'a>,
    extra: &'a [u8],
    /// An upgrade was forwarded.
    upgrade: bool,
    /// A gRPC call's facts.
    grpc: Option<crate::grpc::Call>,
}

impl Reply<'_> {
    /// Writes the response head and streams the body from `src` (with the
    /// head and what followed it in `sbuf`) to the client.
    async fn respond<S: AsyncWriteRent, R: AsyncReadRent>(
        &self,
        stream: &mut S,
        out: &mut Vec<u8>,
        resp: &mut ResponseHead,
        ex: &mut Exchange,
        src: &mut R,
        sbuf: &mut BytesMut,
    ) -> Result<Responded, GatewayError> {
        let head = self.req.head;
        let send = self.inst.config.raw.limits.send_timeout;
        let keep_alive = keeps_alive(self.ctx, self.req);
        ex.status = resp.status;
        let upgrade = resp.status == 101;
        if upgrade && !self.upgrade {
            ex.close = true;
            return Err(GatewayError::new(
                ErrorKind::BadUpstreamResponse,
                "the upstream switched protocols without being asked to",
            ));
        }
        if self.grpc.is_some() {
            // A trailers-only answer carries its status in the head.
            if let Some(status) = client::header(sbuf, resp, "grpc-status") {
                self.grpc_status(ex, resp.status, Some(status));
            }
        }
        let client_http10 = head.version == 0;
        let (down, mut close) = match resp.body {
            BodyFraming::None => (Down::Passthrough, false),
            BodyFraming::Length(n) => (Down::Length(n), false),
            BodyFraming::Chunked | BodyFraming::UntilClose if client_http10 => (Down::Raw, true),
            BodyFraming::Chunked | BodyFraming::UntilClose => (Down::Chunked, false),
        };
        close |= !keep_alive;
        out.clear();
        write_response_head(
            out,
            sbuf,
            resp,
            self.route,
            ex.rid.as_str(),
            down,
            close,
            client_http10,
            upgrade,
            self.extra,
        );
        sbuf.advance(resp.len);
        if upgrade {
            // Bytes the upstream sent right after its 101 belong to the tunnel.
            out.extend_from_slice(sbuf);
            sbuf.clear();
            return Ok(match write_out(stream, out, send).await {
                Ok(()) => Responded::Upgrade,
                Err(_) => Responded::Close,
            });
        }
        // A small body that arrived with the head leaves in the same write.
        let mut body_inline = false;
        if let (BodyFraming::Length(n), Down::Length(_)) = (resp.body, down) {
            if n <= INLINE_BODY_MAX && sbuf.len() as u64 >= n {
                out.extend_from_slice(&sbuf[..n as usize]);
                if let Some(c) = ex.capture.as_mut() {
                    c.response().keep(&sbuf[..n as usize]);
                }
                sbuf.advance(n as usize);
                ex.bytes_out = n;
                body_inline = true;
            }
        }
        if write_out(stream, out, send).await.is_err() {
            ex.failed(ErrorKind::ClientGone);
            return Ok(Responded::Close);
        }
        if body_inline {
            if self.grpc.is_some() && ex.grpc_status.is_none() {
                // A sized gRPC answer has no trailers to carry its status.
                self.grpc_status(ex, resp.status, None);
            }
            return Ok(Responded::done(resp.keep_alive, close));
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
            read_room: if self.cluster.spec.raw.protocol.is_h2() {
                FRAME_READ
            } else {
                BODY_READ
            },
        };
        let limits = match self.grpc {
            // A stream may be silent between messages as long as the call lasts.
            Some(call) => PumpLimits {
                read_timeout: call.left(),
                deadline: Some(call.deadline),
                ..limits
            },
            None => limits,
        };
        match pump(
            src,
            sbuf,
            stream,
            out,
            resp.body,
            encoding,
            limits,
            ex.capture.as_mut().map(|c| c.response()),
        )
        .await
        {
            Ok(p) => {
                ex.bytes_out = p.bytes;
                if self.grpc.is_some() && ex.grpc_status.is_none() {
                    let status = chunked::forwardable_trailers(&p.trailers)
                        .find(|(n, _)| n.eq_ignore_ascii_case(b"grpc-status"))
                        .map(|(_, v)| v);
                    self.grpc_status(ex, resp.status, status);
                }
            }
            Err(e) => {
                ex.failed(if e == PumpError::Destination {
                    ErrorKind::ClientGone
                } else if e == PumpError::SourceTimeout && self.grpc.is_some() {
                    ErrorKind::UpstreamTimeout
                } else {
                    ErrorKind::UpstreamBodyAborted
                });
                if let (Some(_), Encoding::Chunked) = (self.grpc, encoding) {
                    if e != PumpError::Destination {
                        // The client learns why its call ended, as a status.
                        out.clear();
                        crate::grpc::write_failed_trailers(out, e == PumpError::SourceTimeout);
                        let _ = write_out(stream, out, send).await;
                    }
                }
                return Ok(Responded::Close);
            }
        }
        Ok(Responded::done(
            resp.keep_alive && resp.body != BodyFraming::UntilClose,
            close,
        ))
    }

    /// Notes a gRPC call's `grpc-status` (`value`, from the head or the
    /// trailers) and whether the route counts it as an error. A complete
    /// HTTP 200 answer without a valid one is a broken call, as gRPC clients
    /// read it: `UNKNOWN`. Any other HTTP status is judged as such.
    fn grpc_status(&self, ex: &mut Exchange, http_status: u16, value: Option<&[u8]>) {
        if http_status != 200 && value.is_none() {
            return;
        }
        let code = value.and_then(crate::grpc::parse_status).unwrap_or(2);
        ex.grpc_status = Some(code);
        ex.grpc_error = self.route.grpc.is_error(code);
        if ex.grpc_error && ex.error.is_empty() {
            ex.error = crate::grpc::error_label(code);
        }
    }

    /// A streamed gRPC call: its body goes up while the response comes
    /// down (a bidirectional stream answers messages before the client is
    /// done), each direction on its own half of both connections. The call
    /// ends when the response does; a client that cancels (or a body that
    /// fails) ends it at once, and the upstream stream with it.
    #[allow(clippy::too_many_arguments)]
    async fn duplex<S: ClientStream>(
        &self,
        stream: &mut S,
        rbuf: &mut BytesMut,
        out: &mut Vec<u8>,
        resp: &mut ResponseHead,
        ex: &mut Exchange,
        mut answer: client::Response<'_>,
        body_limits: PumpLimits,
    ) -> Result<After, GatewayError> {
        let call = self.grpc.expect("only gRPC calls are duplex");
        let endpoint = answer.lease.endpoint;
        let sent_at = answer.sent_at;
        let conn = answer.lease.conn();
        let (mut up_read, mut up_write) = split(&mut conn.stream);
        let up_buf = &mut conn.rbuf;
        let (mut down_read, mut down_write) = split(stream);
        let mut up_out = Vec::with_capacity(4096);
        let request = pump(
            &mut down_read,
            rbuf,
            &mut up_write,
            &mut up_out,
            BodyFraming::Chunked,
            Encoding::Chunked,
            body_limits,
            None,
        );
        let limits = AttemptLimits {
            write_timeout: self.cluster.spec.raw.read_timeout,
            response_timeout: self.route.timeout,
            deadline: Some(call.deadline),
            max_head: self.inst.config.raw.limits.max_response_header_bytes,
            head_request: false,
            verify_open: false,
        };
        let body_bytes = std::cell::Cell::new(0);
        let response = async {
            let head_by = call
                .deadline
                .min(hypergate_core::clock::coarse_now() + self.route.timeout);
            let read = client::read_head(&mut up_read, up_buf, resp, &limits, head_by).await;
            let outcome = match read {
                Ok(()) => Outcome::Answered(resp.status),
                Err(f) => Outcome::Failed(f),
            };
            client::record_outcome(self.cluster, endpoint, outcome);
            read.map_err(Failure::error)?;
            ex.upstream_us = Some(sent_at.elapsed().as_micros() as u64);
            let responded = self
                .respond(&mut down_write, out, resp, ex, &mut up_read, up_buf)
                .await;
            ex.bytes_in = body_bytes.get();
            responded
        };
        let ended = {
            let mut request = std::pin::pin!(request);
            let mut response = std::pin::pin!(response);
            let mut sending = true;
            loop {
                monoio::select! {
                    r = &mut response => break r,
                    sent = &mut request, if sending => {
                        sending = false;
                        match sent {
                            Ok(p) => body_bytes.set(p.bytes),
                            // The upstream stopped reading (it may have
                            // answered already, e.g. an early error): its
                            // answer still comes.
                            Err(PumpError::Destination) => {}
                            // The client cancelled, or its body broke a
                            // limit: the call ends here, and the upstream
                            // stream is reset when it is dropped.
                            Err(e) => break Err(GatewayError::request_body(e)),
                        }
                    }
                }
            }
        };
        match ended {
            Ok(_) => Ok(After::Close),
            // Before the response head the client gets a status; after it, a
            // status written now could land inside a message: the stream is
            // reset (HTTP/2) or the connection closed (HTTP/1.1) instead.
            Err(e) if ex.status == 0 => Err(e),
            Err(e) => {
                ex.failed(e.kind);
                Ok(After::Close)
            }
        }
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
    request_id: &str,
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
        write_header(out, b"x-request-id", request_id.as_bytes());
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
