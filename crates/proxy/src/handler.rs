//! The seam between the proxy and the layer above it (the LLM gateway): a
//! route whose action is [`RouteAction::Ai`](crate::spec::RouteAction::Ai) is
//! answered by a [`Handler`], after every request phase (routing, the edge,
//! body limits) has passed, with one [`HandlerRequest`] holding what they found.
//!
//! The proxy never looks into the handler's own spec and per-shard state: they
//! travel as the opaque `ext` of the config and of the installed state, so a
//! request sees one config throughout, even across a reload's commit. The
//! handler's errors are answered by the pipeline's one responder, in the
//! shape the handler names.
//!
//! Depends on `exchange`, `routing` and `state`.

use crate::exchange::ClientStream;
use crate::routing::RequestInfo;
use crate::state::{Installed, ShardCtx};
use bytes::BytesMut;
use hypergate_core::error::{ErrorShape, GatewayError};
use hypergate_core::http::codec::BodyFraming;
use hypergate_core::record::LlmRecord;
use std::future::Future;
use std::time::{Duration, Instant};

/// What the request phases found out, for the handler.
pub struct HandlerRequest<'a> {
    /// The shard.
    pub ctx: &'a ShardCtx,
    /// The config the request started on.
    pub inst: &'a Installed,
    /// Index of the route in `inst.config.routes`.
    pub route: usize,
    /// The request head (method, path, headers).
    pub request: &'a dyn RequestInfo,
    /// Request body framing.
    pub body: BodyFraming,
    /// The client speaks HTTP/1.0.
    pub http10: bool,
    /// Request id.
    pub request_id: &'a str,
    /// The authenticated consumer (index into `inst.config.auth.consumers`).
    pub consumer: Option<usize>,
    /// Header lines the edge phase adds to any answer (CORS, rate limits).
    pub extra: &'a [u8],
    /// The client wants the connection kept after this request.
    pub keep_alive: bool,
    /// The route's body limit (0: the default).
    pub max_body: u64,
    /// When the request head was complete.
    pub started: Instant,
    /// The route's `timeout`.
    pub deadline: Duration,
}

/// What the handler did, for the proxy's metrics and record.
#[derive(Debug)]
pub struct HandlerOutcome {
    /// The answer it sent, or the error for the responder to answer.
    pub result: Result<Answered, GatewayError>,
    /// Request body bytes read.
    pub bytes_in: u64,
    /// Whether the request body was read whole (an error answered after that
    /// may keep the connection).
    pub body_read: bool,
    /// Upstream (provider) time to response head, µs.
    pub upstream_us: Option<u64>,
    /// LLM details for the record.
    pub llm: Option<Box<LlmRecord>>,
}

/// An answer the handler sent.
#[derive(Debug, Default, Clone, Copy)]
pub struct Answered {
    /// Status sent (0 when the connection failed before any answer).
    pub status: u16,
    /// Response body bytes sent.
    pub bytes_out: u64,
    /// Whether the connection may carry another request.
    pub keep_alive: bool,
}

/// Answers the requests of handler routes (the LLM gateway's endpoints).
pub trait Handler: 'static {
    /// Reads the request body from `stream` (with `rbuf` holding what already
    /// arrived), answers on `stream` using `out` as the write buffer (or
    /// returns the error to answer), and says what it did.
    fn serve<S: ClientStream>(
        &self,
        req: &HandlerRequest<'_>,
        stream: &mut S,
        rbuf: &mut BytesMut,
        out: &mut Vec<u8>,
    ) -> impl Future<Output = HandlerOutcome>;

    /// The shape of error bodies on a handler route for a request at `path`:
    /// the API the client speaks. JSON unless the handler says otherwise.
    fn error_shape(&self, _path: &str) -> ErrorShape {
        ErrorShape::Json
    }
}
