//! The one responder: every answer the gateway writes itself goes out here.
//! Errors from any phase ([`error`], [`refuse_head`]), a route's direct answer ([`direct`]), a
//! CORS preflight ([`preflight`]), and the heads of the LLM gateway's own
//! answers ([`LocalHead`]). Proxied responses keep the upstream's head and are
//! rewritten in `forward`.
//!
//! Depends on `exchange`, `state` and `spec`, and on `hypergate-core`'s error type.

use crate::exchange::{After, ClientStream, Exchange, View};
use crate::routing::RequestInfo;
use crate::spec::{DirectResponse, HeaderOps, Route};
use crate::state::{Installed, ShardCtx};
use hypergate_core::error::{write_response, ErrorKind, ErrorShape, GatewayError};
use hypergate_core::http::{write_header, write_status_line, write_u64};
use hypergate_core::io::write_out;
use std::time::Duration;

/// Whether the client connection stays open after this response: asked for
/// and not draining. Read when the answer is written, so a response that
/// finishes during a drain carries `Connection: close`.
pub fn keeps_alive(ctx: &ShardCtx, req: &View<'_>) -> bool {
    req.head.keep_alive && !ctx.draining.get()
}

/// Answers `err` in `shape` and says what the connection does next. The
/// connection closes when the client or a drain asks, when the request body
/// was not read (its bytes would be taken for the next request), and after
/// any error about the request's framing or body.
#[allow(clippy::too_many_arguments)]
pub async fn error<S: ClientStream>(
    ctx: &ShardCtx,
    inst: &Installed,
    stream: &mut S,
    out: &mut Vec<u8>,
    ex: &mut Exchange,
    req: &View<'_>,
    err: &GatewayError,
    shape: ErrorShape,
    extra: &[u8],
) -> After {
    ex.failed(err.kind);
    ctx.stats.error(err);
    if !err.kind.answerable() {
        return After::Close;
    }
    ex.status = err.status();
    if let ErrorKind::Rejected(r) = err.kind {
        ctx.stats.reject(r);
    }
    let about_body = matches!(err.kind, ErrorKind::Rejected(_) | ErrorKind::BodyTimeout);
    let close =
        !keeps_alive(ctx, req) || (req.head.has_body() && !ex.body_read) || about_body || ex.close;
    out.clear();
    write_response(out, err, shape, ex.rid.as_str(), close, extra);
    finish(stream, out, inst.config.raw.limits.send_timeout, close).await
}

/// Answers a request whose head could not be read (framing, size, timing, a
/// path that cannot be made canonical); the connection then closes.
pub async fn refuse_head<S: ClientStream>(
    ctx: &ShardCtx,
    inst: &Installed,
    stream: &mut S,
    out: &mut Vec<u8>,
    err: &GatewayError,
) {
    ctx.stats.error(err);
    if let ErrorKind::Rejected(r) = err.kind {
        ctx.stats.reject(r);
    }
    out.clear();
    write_response(out, err, ErrorShape::Json, "", true, &[]);
    let _ = write_out(stream, out, inst.config.raw.limits.send_timeout).await;
}

/// Writes `out` and says what the connection does next.
pub async fn finish<S: ClientStream>(
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

/// How a locally written answer frames its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Length {
    /// A body of this many bytes (`Content-Length`).
    Sized(u64),
    /// A stream: chunked to HTTP/1.1 clients, until close to HTTP/1.0 ones.
    Stream,
    /// No body and no framing header (204).
    None,
}

/// The head of an answer the gateway writes itself.
pub struct LocalHead<'a> {
    /// Status.
    pub status: u16,
    /// Body framing.
    pub length: Length,
    /// Close the connection after it.
    pub close: bool,
    /// The client speaks HTTP/1.0.
    pub http10: bool,
    /// The request id (`X-Request-Id`), when one is sent.
    pub request_id: &'a str,
    /// Header lines the edge phase adds to every answer (CORS, rate limits).
    pub extra: &'a [u8],
}

impl LocalHead<'_> {
    /// Whether the connection closes after it (asked, or a stream to an
    /// HTTP/1.0 client, which ends with the connection).
    pub fn closes(&self) -> bool {
        self.close || (self.length == Length::Stream && self.http10)
    }

    /// Appends the head; `headers` adds the answer's own header lines.
    pub fn write(&self, out: &mut Vec<u8>, headers: impl FnOnce(&mut Vec<u8>)) {
        write_status_line(out, self.status);
        headers(out);
        match self.length {
            Length::Sized(n) => {
                out.extend_from_slice(b"content-length: ");
                write_u64(out, n);
                out.extend_from_slice(b"\r\n");
            }
            Length::Stream if !self.http10 => {
                write_header(out, b"transfer-encoding", b"chunked");
            }
            Length::Stream | Length::None => {}
        }
        if !self.request_id.is_empty() {
            write_header(out, b"x-request-id", self.request_id.as_bytes());
        }
        if self.closes() {
            write_header(out, b"connection", b"close");
        } else if self.http10 {
            write_header(out, b"connection", b"keep-alive");
        }
        out.extend_from_slice(self.extra);
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends a route's `set` and `add` header operations.
pub fn add_route_headers(out: &mut Vec<u8>, ops: &HeaderOps) {
    for (k, v) in ops.set.iter().chain(&ops.add) {
        write_header(out, k.as_bytes(), v.as_bytes());
    }
}

/// A route's direct answer (a fixed response or a redirect).
#[allow(clippy::too_many_arguments)]
pub async fn direct<S: ClientStream>(
    ctx: &ShardCtx,
    inst: &Installed,
    stream: &mut S,
    out: &mut Vec<u8>,
    ex: &mut Exchange,
    req: &View<'_>,
    route: &Route,
    d: &DirectResponse,
    extra: &[u8],
) -> After {
    ex.status = d.status;
    let head = LocalHead {
        status: d.status,
        length: Length::Sized(d.body.len() as u64),
        close: !keeps_alive(ctx, req) || req.head.has_body(),
        http10: req.head.version == 0,
        request_id: ex.rid.as_str(),
        extra,
    };
    out.clear();
    head.write(out, |out| {
        for (k, v) in &d.headers {
            if !route.response_headers.drops(k.as_bytes()) {
                write_header(out, k.as_bytes(), v.as_bytes());
            }
        }
        add_route_headers(out, &route.response_headers);
    });
    if req.method() != "HEAD" {
        out.extend_from_slice(&d.body);
        ex.bytes_out = d.body.len() as u64;
    }
    let send = inst.config.raw.limits.send_timeout;
    finish(stream, out, send, head.closes()).await
}

/// A CORS preflight's 204 (its headers are in `extra`).
pub async fn preflight<S: ClientStream>(
    ctx: &ShardCtx,
    inst: &Installed,
    stream: &mut S,
    out: &mut Vec<u8>,
    ex: &mut Exchange,
    req: &View<'_>,
    extra: &[u8],
) -> After {
    ex.status = 204;
    let head = LocalHead {
        status: 204,
        length: Length::None,
        close: !keeps_alive(ctx, req) || req.head.has_body(),
        http10: false,
        request_id: "",
        extra,
    };
    out.clear();
    head.write(out, |_| {});
    let send = inst.config.raw.limits.send_timeout;
    finish(stream, out, send, head.closes()).await
}
