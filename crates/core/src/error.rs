//! The gateway's one error type, and the one function that turns it into a response.
//!
//! Every failure the gateway answers for itself (a malformed request, a refused
//! credential, an unreachable upstream, an LLM provider that timed out) is a
//! [`GatewayError`]: its [`ErrorKind`] fixes the status and the stable label
//! (the error `type` in bodies, the `error` field of call records, the metric
//! label), its [`Side`] says who failed, and `retryable` whether sending the
//! request again may succeed. [`write_response`] is the only writer of error
//! responses: JSON on API routes, and the OpenAI or Anthropic error shape on AI
//! routes ([`ErrorShape`]), so clients' SDKs parse the gateway's own errors.
//!
//! Depends on the codec's [`Reject`] and the body pump's [`PumpError`] only;
//! nothing here knows a feature.

use crate::http::codec::Reject;
use crate::http::{write_header, write_status_line, write_u64};
use crate::io::PumpError;
use serde_json::{json, Value};
use std::borrow::Cow;

/// Who failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client: its request is malformed, too large, too slow, refused by
    /// policy, or it went away.
    Downstream,
    /// The upstream or provider: unreachable, slow, or its answer is unusable.
    Upstream,
    /// The gateway itself: a backend it depends on (rate-limit or budget store)
    /// is unreachable, or its own limits are reached.
    Internal,
}

impl Side {
    /// Label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Side::Downstream => "downstream",
            Side::Upstream => "upstream",
            Side::Internal => "internal",
        }
    }
}

/// What went wrong. Each kind has one status and one label; the labels are
/// stable (dashboards and alerts use them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    // --- The request (downstream) ---
    /// The request head or body framing broke a rule of the codec.
    Rejected(Reject),
    /// No route matches (404).
    NoRoute,
    /// The client address may not use the route (403).
    IpDenied,
    /// Authentication failed (401); the label names why.
    Unauthenticated(&'static str),
    /// The consumer is not in a group the route allows (403).
    Forbidden,
    /// A CORS preflight the route does not allow (403).
    CorsDenied,
    /// A rate limit is exceeded (429).
    RateLimited,
    /// The request body did not arrive in time (408).
    BodyTimeout,
    /// The client went away; nothing can be answered.
    ClientGone,
    /// An AI request that is not valid for the API (400).
    InvalidRequest,
    /// No AI endpoint at this path, or no record to attach feedback to (404).
    NotFound,
    /// The model is not one of the gateway's aliases (404).
    ModelNotFound,
    /// The model exists but not on this route (403).
    ModelNotAllowed,
    /// The prompt is longer than the model accepts (400).
    ContextLengthExceeded,
    /// A guardrail blocked the request (400).
    GuardrailDenied,
    /// A budget is exhausted (429).
    BudgetExceeded,
    /// The provider refused the request as invalid; its 4xx status is passed on.
    ProviderRejected(u16),
    // --- The upstream ---
    /// No endpoint of the cluster is healthy (503).
    NoHealthyEndpoint,
    /// Connecting failed (502).
    ConnectFailed,
    /// Connecting timed out (504).
    ConnectTimeout,
    /// Sending the request failed (502).
    UpstreamWriteFailed,
    /// The upstream closed before a complete response head (502).
    UpstreamReset,
    /// No response head in time (504).
    UpstreamTimeout,
    /// The response was not valid HTTP, or not what was asked for (502).
    BadUpstreamResponse,
    /// The endpoint's connection pool is full (503).
    PoolExhausted,
    /// The upstream broke off its response body (the head was already sent).
    UpstreamBodyAborted,
    /// An LLM provider answered 429 (429, with its `Retry-After`).
    ProviderRateLimited,
    /// An LLM provider answered 5xx or with an unusable body (502).
    ProviderError,
    /// No LLM provider answered within the deadline (504).
    ProviderTimeout,
    /// An LLM provider could not be reached (502).
    ProviderUnreachable,
    /// No LLM provider could be tried (503).
    ProviderUnavailable,
    /// The model's answer is not in the format the prompt requires (502).
    InvalidModelOutput,
    // --- The gateway ---
    /// The rate-limit backend is unreachable and the limit fails closed (503).
    RateLimitUnavailable,
    /// The budget store is unreachable and the budget fails closed (503).
    BudgetUnavailable,
    /// The provider refused the gateway's credentials (its 401 or 403).
    ProviderAuth(u16),
    /// The listener's connection caps are reached (503).
    ConnectionLimit,
}

impl ErrorKind {
    /// The HTTP status answered.
    pub fn status(self) -> u16 {
        use ErrorKind::*;
        match self {
            Rejected(r) => r.status(),
            NoRoute | NotFound | ModelNotFound => 404,
            IpDenied | Forbidden | CorsDenied | ModelNotAllowed => 403,
            Unauthenticated(_) => 401,
            RateLimited | BudgetExceeded | ProviderRateLimited => 429,
            BodyTimeout => 408,
            InvalidRequest | ContextLengthExceeded | GuardrailDenied => 400,
            ProviderRejected(s) | ProviderAuth(s) => s,
            ConnectFailed | UpstreamWriteFailed | UpstreamReset | BadUpstreamResponse
            | ProviderError | ProviderUnreachable | InvalidModelOutput => 502,
            NoHealthyEndpoint | PoolExhausted | ProviderUnavailable | RateLimitUnavailable
            | BudgetUnavailable | ConnectionLimit => 503,
            ConnectTimeout | UpstreamTimeout | ProviderTimeout => 504,
            // Never answered (the response is under way or the client is gone);
            // the status is what the record shows.
            ClientGone => 499,
            UpstreamBodyAborted => 502,
        }
    }

    /// The stable label: the error `type` in bodies, the record's `error`.
    pub fn label(self) -> &'static str {
        use ErrorKind::*;
        match self {
            Rejected(r) => r.label(),
            NoRoute => "no_route",
            IpDenied => "ip_denied",
            Unauthenticated(why) => why,
            Forbidden => "forbidden",
            CorsDenied => "cors_denied",
            RateLimited => "rate_limited",
            BodyTimeout => "body_timeout",
            ClientGone => "client_gone",
            InvalidRequest | ProviderRejected(_) => "invalid_request_error",
            NotFound => "not_found_error",
            ModelNotFound => "model_not_found",
            ModelNotAllowed => "permission_error",
            ContextLengthExceeded => "context_length_exceeded",
            GuardrailDenied => "guardrail_denied",
            BudgetExceeded => "budget_exceeded",
            NoHealthyEndpoint => "no_healthy_endpoint",
            ConnectFailed => "connect_failed",
            ConnectTimeout => "connect_timeout",
            UpstreamWriteFailed => "upstream_write_failed",
            UpstreamReset => "upstream_reset",
            UpstreamTimeout => "upstream_timeout",
            BadUpstreamResponse => "bad_upstream_response",
            PoolExhausted => "pool_exhausted",
            UpstreamBodyAborted => "upstream_body_aborted",
            ProviderRateLimited => "rate_limit_error",
            ProviderError => "provider_error",
            ProviderTimeout => "provider_timeout",
            ProviderUnreachable => "provider_unreachable",
            ProviderUnavailable => "provider_unavailable",
            InvalidModelOutput => "invalid_model_output",
            RateLimitUnavailable => "rate_limit_unavailable",
            BudgetUnavailable => "budget_unavailable",
            ProviderAuth(_) => "provider_auth_error",
            ConnectionLimit => "connection_limit",
        }
    }

    /// Who failed.
    pub fn side(self) -> Side {
        use ErrorKind::*;
        match self {
            Rejected(_)
            | NoRoute
            | IpDenied
            | Unauthenticated(_)
            | Forbidden
            | CorsDenied
            | RateLimited
            | BodyTimeout
            | ClientGone
            | InvalidRequest
            | NotFound
            | ModelNotFound
            | ModelNotAllowed
            | ContextLengthExceeded
            | GuardrailDenied
            | BudgetExceeded
            | ProviderRejected(_) => Side::Downstream,
            NoHealthyEndpoint | ConnectFailed | ConnectTimeout | UpstreamWriteFailed
            | UpstreamReset | UpstreamTimeout | BadUpstreamResponse | PoolExhausted
            | UpstreamBodyAborted | ProviderRateLimited | ProviderError | ProviderTimeout
            | ProviderUnreachable | ProviderUnavailable | InvalidModelOutput => Side::Upstream,
            RateLimitUnavailable | BudgetUnavailable | ProviderAuth(_) | ConnectionLimit => {
                Side::Internal
            }
        }
    }

    /// OpenAI's `error.type` and `error.code` for this kind, as OpenAI's API
    /// writes them: `invalid_request_error` for refused requests (with the
    /// gateway's label as the code, e.g. `context_length_exceeded`,
    /// `model_not_found`, `missing_credentials`; no code for a plain invalid
    /// request), `requests` / `rate_limit_exceeded` for rate limits,
    /// `insufficient_quota` for spent budgets, `server_error` for everything
    /// that failed on the gateway's or a provider's side (the label as the code).
    pub fn openai(self) -> (&'static str, Option<&'static str>) {
        use ErrorKind::*;
        match self {
            InvalidRequest | ProviderRejected(_) => ("invalid_request_error", None),
            RateLimited | ProviderRateLimited => ("requests", Some("rate_limit_exceeded")),
            BudgetExceeded => ("insufficient_quota", Some("budget_exceeded")),
            kind if kind.status() < 500 => ("invalid_request_error", Some(kind.label())),
            kind => ("server_error", Some(kind.label())),
        }
    }

    /// The gRPC status code for this kind, for gRPC clients: UNAUTHENTICATED
    /// (16), PERMISSION_DENIED (7), UNIMPLEMENTED (12, no such route or
    /// model), RESOURCE_EXHAUSTED (8, rate limits, budgets, sizes, connection
    /// caps), DEADLINE_EXCEEDED (4, every timeout), INVALID_ARGUMENT (3, a
    /// refused request), UNAVAILABLE (14, the upstream or a dependency failed)
    /// and INTERNAL (13, a gateway error).
    pub fn grpc_code(self) -> u8 {
        use ErrorKind::*;
        match self {
            Unauthenticated(_) => 16,
            Forbidden | IpDenied | CorsDenied | ModelNotAllowed => 7,
            NoRoute | NotFound | ModelNotFound => 12,
            RateLimited | BudgetExceeded | ProviderRateLimited | ConnectionLimit => 8,
            Rejected(r) if r.status() == 413 || r.status() == 431 || r.status() == 414 => 8,
            BodyTimeout | ConnectTimeout | UpstreamTimeout | ProviderTimeout => 4,
            Rejected(_)
            | InvalidRequest
            | ContextLengthExceeded
            | GuardrailDenied
            | ProviderRejected(_) => 3,
            ClientGone => 1,
            ProviderAuth(_) => 13,
            _ => 14,
        }
    }

    /// The request field a kind is about, when it always is the same one.
    pub fn param(self) -> Option<&'static str> {
        match self {
            ErrorKind::ModelNotFound | ErrorKind::ModelNotAllowed => Some("model"),
            ErrorKind::ContextLengthExceeded => Some("messages"),
            _ => None,
        }
    }

    /// Whether a response can still be written for it (false once the client
    /// is gone or a response is under way).
    pub fn answerable(self) -> bool {
        !matches!(self, ErrorKind::ClientGone | ErrorKind::UpstreamBodyAborted)
    }

    /// The call outcome an error of this kind gives.
    pub fn outcome(self) -> Outcome {
        use ErrorKind::*;
        match self {
            ClientGone => Outcome::ClientAborted,
            ConnectTimeout | UpstreamTimeout | ProviderTimeout => Outcome::Timeout,
            kind => match kind.side() {
                Side::Downstream => Outcome::Rejected,
                Side::Upstream => Outcome::UpstreamError,
                Side::Internal => Outcome::GatewayError,
            },
        }
    }
}

/// How a call ended, decided once per call by [`Outcome::of`] and used alike
/// by the metrics, the call record and store, the access log, alerts, windows
/// and canary judges. Errors of the service (what a release is judged on) are
/// [`Outcome::is_error`]: upstream errors, gateway errors and timeouts; a
/// client that went away or a request the gateway refused is not one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Answered: the upstream's or provider's answer (any status below 500), or
    /// the gateway's own direct answer.
    #[default]
    Ok,
    /// The client went away before the answer was complete.
    ClientAborted,
    /// The gateway refused the request (malformed, unauthenticated, over a
    /// limit or budget, too slow to arrive, not valid for the API).
    Rejected,
    /// The upstream or provider failed: unreachable, reset, a 5xx, an
    /// unusable answer, or a body broken off.
    UpstreamError,
    /// The gateway failed by itself (a store it depends on, its own limits).
    GatewayError,
    /// The upstream or provider did not answer in time.
    Timeout,
}

impl Outcome {
    /// Every outcome, in label order.
    pub const ALL: [Outcome; 6] = [
        Outcome::Ok,
        Outcome::ClientAborted,
        Outcome::Rejected,
        Outcome::UpstreamError,
        Outcome::GatewayError,
        Outcome::Timeout,
    ];

    /// How many outcomes there are.
    pub const COUNT: usize = 6;

    /// Decides a call's outcome. `status`: the status sent (0: none);
    /// `error`: the error the gateway answered or met; `client_aborted`: the
    /// client went away before the end of the answer; `broken_off`: the answer
    /// started but the upstream or provider broke it off (a truncated stream).
    pub fn of(
        status: u16,
        error: Option<ErrorKind>,
        client_aborted: bool,
        broken_off: bool,
    ) -> Outcome {
        match error {
            Some(kind) => kind.outcome(),
            None if client_aborted => Outcome::ClientAborted,
            None if broken_off || status >= 500 => Outcome::UpstreamError,
            None if status == 0 => Outcome::ClientAborted,
            None => Outcome::Ok,
        }
    }

    /// Index into per-outcome counters.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Stable label (metrics, records, the store).
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::ClientAborted => "client_aborted",
            Outcome::Rejected => "rejected",
            Outcome::UpstreamError => "upstream_error",
            Outcome::GatewayError => "gateway_error",
            Outcome::Timeout => "timeout",
        }
    }

    /// Whether it counts as an error of the service.
    pub fn is_error(self) -> bool {
        matches!(
            self,
            Outcome::UpstreamError | Outcome::GatewayError | Outcome::Timeout
        )
    }
}

/// A failure the gateway answers for itself.
#[derive(Debug, Clone)]
pub struct GatewayError {
    /// What went wrong (status and label).
    pub kind: ErrorKind,
    /// Who failed.
    pub side: Side,
    /// Whether sending the same request again (elsewhere or later) may
    /// succeed: set by the upstream client from what reached the upstream.
    pub retryable: bool,
    /// What the client reads.
    pub message: Cow<'static, str>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
    /// The request field at fault (OpenAI's `error.param`), when one is.
    pub param: Option<Cow<'static, str>>,
}

impl GatewayError {
    /// An error of `kind`, not retryable.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            side: kind.side(),
            retryable: false,
            message: message.into(),
            retry_after: None,
            param: kind.param().map(Cow::Borrowed),
        }
    }

    /// Names the request field at fault.
    pub fn param(mut self, param: impl Into<Cow<'static, str>>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// The same error, marked retryable or not.
    pub fn retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// The same error with a `Retry-After`.
    pub fn retry_after(mut self, seconds: Option<u64>) -> Self {
        self.retry_after = seconds;
        self
    }

    /// The HTTP status answered.
    pub fn status(&self) -> u16 {
        self.kind.status()
    }

    /// The stable label (error `type`, record `error`, metric label).
    pub fn label(&self) -> &'static str {
        self.kind.label()
    }

    /// The response body in `shape`.
    pub fn body(&self, shape: ErrorShape, request_id: &str) -> Value {
        let (status, kind, message) = (self.status(), self.label(), &*self.message);
        match shape {
            ErrorShape::Json => json!({
                "error": { "type": kind, "message": message, "request_id": request_id }
            }),
            ErrorShape::OpenAi => {
                let (kind_type, code) = self.kind.openai();
                let mut v = openai_error(kind_type, code, self.param.as_deref(), message);
                v["error"]["request_id"] = request_id.into();
                v
            }
            ErrorShape::Grpc => {
                json!({"grpc-status": self.kind.grpc_code(), "grpc-message": message})
            }
            ErrorShape::Anthropic => {
                let mut v = anthropic_error(status, kind, message);
                if !request_id.is_empty() {
                    v["request_id"] = request_id.into();
                }
                v
            }
        }
    }
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.label(), self.status(), self.message)
    }
}

impl std::error::Error for GatewayError {}

impl GatewayError {
    /// The error for a request body that could not be read or streamed.
    pub fn request_body(p: PumpError) -> Self {
        let kind = match p {
            PumpError::Framing => ErrorKind::Rejected(Reject::BadChunk),
            PumpError::TooLarge => ErrorKind::Rejected(Reject::BodyTooLarge),
            PumpError::SourceTimeout => ErrorKind::BodyTimeout,
            _ => ErrorKind::ClientGone,
        };
        let message = match p {
            PumpError::TooLarge => "request body exceeds the limit",
            PumpError::SourceTimeout => "the request body did not arrive in time",
            _ => "the request body was rejected",
        };
        GatewayError::new(kind, message)
    }
}

impl From<Reject> for GatewayError {
    fn from(r: Reject) -> Self {
        GatewayError::new(
            ErrorKind::Rejected(r),
            "the request was rejected before it was forwarded",
        )
    }
}

/// The error body's shape: the API the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorShape {
    /// `{"error": {"type", "message", "request_id"}}` (API routes).
    #[default]
    Json,
    /// OpenAI's `{"error": {"message", "type", "param", "code"}}`.
    OpenAi,
    /// Anthropic's `{"type": "error", "error": {"type", "message"}}`.
    Anthropic,
    /// A gRPC status: `200` with `content-type: application/grpc`, no body,
    /// and `grpc-status` / `grpc-message` in the head (a trailers-only
    /// response, which an HTTP/2 client gets as one HEADERS frame).
    Grpc,
}

/// Appends the complete error response: status line, JSON body in `shape`,
/// `x-request-id` (when known), `Retry-After`, `Connection: close` when
/// `close`, and `extra` (pre-serialized header lines: CORS, challenges,
/// rate-limit headers). Returns the body's length.
pub fn write_response(
    out: &mut Vec<u8>,
    err: &GatewayError,
    shape: ErrorShape,
    request_id: &str,
    close: bool,
    extra: &[u8],
) -> usize {
    if shape == ErrorShape::Grpc {
        write_grpc_status(out, err, request_id, close, extra);
        return 0;
    }
    let body = err.body(shape, request_id).to_string();
    write_status_line(out, err.status());
    write_header(out, b"content-type", b"application/json");
    out.extend_from_slice(b"content-length: ");
    write_u64(out, body.len() as u64);
    out.extend_from_slice(b"\r\n");
    if !request_id.is_empty() {
        write_header(out, b"x-request-id", request_id.as_bytes());
    }
    if let Some(s) = err.retry_after {
        out.extend_from_slice(b"retry-after: ");
        write_u64(out, s);
        out.extend_from_slice(b"\r\n");
    }
    if close {
        write_header(out, b"connection", b"close");
    }
    out.extend_from_slice(extra);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    body.len()
}

/// A gRPC trailers-only answer for `err` (see [`ErrorShape::Grpc`]); the
/// message is percent-encoded as gRPC requires.
fn write_grpc_status(
    out: &mut Vec<u8>,
    err: &GatewayError,
    request_id: &str,
    close: bool,
    extra: &[u8],
) {
    write_status_line(out, 200);
    write_header(out, b"content-type", b"application/grpc");
    out.extend_from_slice(b"grpc-status: ");
    write_u64(out, u64::from(err.kind.grpc_code()));
    out.extend_from_slice(b"\r\ngrpc-message: ");
    crate::http::percent_encode(out, err.message.as_bytes(), |b| {
        (0x20..0x7f).contains(&b) && b != b'%'
    });
    out.extend_from_slice(b"\r\ncontent-length: 0\r\n");
    if !request_id.is_empty() {
        write_header(out, b"x-request-id", request_id.as_bytes());
    }
    if close {
        write_header(out, b"connection", b"close");
    }
    out.extend_from_slice(extra);
    out.extend_from_slice(b"\r\n");
}

/// An OpenAI error body: `{"error": {"message", "type", "param", "code"}}`.
pub fn openai_error(kind: &str, code: Option<&str>, param: Option<&str>, message: &str) -> Value {
    json!({
        "error": {
            "message": message,
            "type": kind,
            "param": param,
            "code": code,
        }
    })
}

/// The error types Anthropic's API uses.
const ANTHROPIC_ERROR_TYPES: [&str; 9] = [
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "api_error",
    "overloaded_error",
    "timeout_error",
];

/// An Anthropic error body: `{"type": "error", "error": {"type", "message"}}`. `kind`
/// is used when it is one of Anthropic's error types; otherwise the type follows the
/// status, as in [`anthropic_error_type`], since Anthropic clients branch on it.
pub fn anthropic_error(status: u16, kind: &str, message: &str) -> Value {
    let kind = if ANTHROPIC_ERROR_TYPES.contains(&kind) {
        kind
    } else {
        anthropic_error_type(status)
    };
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

/// Anthropic's error type for an HTTP status: 400 invalid_request_error, 401
/// authentication_error, 403 permission_error, 404 not_found_error, 413
/// request_too_large, 429 rate_limit_error, 504 timeout_error, 529 overloaded_error,
/// other 4xx invalid_request_error, anything else api_error.
pub fn anthropic_error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(out: &[u8]) -> (String, Value) {
        let text = String::from_utf8(out.to_vec()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        (head.to_string(), serde_json::from_str(body).unwrap())
    }

    #[test]
    fn json_response_is_valid_http() {
        let mut out = Vec::new();
        let err = GatewayError::new(ErrorKind::NoHealthyEndpoint, "all down").retry_after(Some(1));
        write_response(
            &mut out,
            &err,
            ErrorShape::Json,
            "abc",
            true,
            b"x-extra: 1\r\n",
        );
        assert!(out.starts_with(b"HTTP/1.1 503 Service Unavailable\r\n"));
        let (head, v) = parse(&out);
        assert!(head.contains("\r\nretry-after: 1\r\n"));
        assert!(head.contains("\r\nconnection: close\r\n"));
        assert!(head.contains("\r\nx-extra: 1"));
        assert_eq!(v["error"]["type"], "no_healthy_endpoint");
        assert_eq!(v["error"]["request_id"], "abc");
        assert_eq!(err.side, Side::Upstream);
    }

    #[test]
    fn api_shapes() {
        let err = GatewayError::new(ErrorKind::BudgetExceeded, "spent");
        let mut out = Vec::new();
        write_response(&mut out, &err, ErrorShape::OpenAi, "r1", false, &[]);
        let (_, v) = parse(&out);
        assert_eq!(v["error"]["type"], "insufficient_quota");
        assert_eq!(v["error"]["code"], "budget_exceeded");
        assert_eq!(v["error"]["request_id"], "r1");
        out.clear();
        write_response(&mut out, &err, ErrorShape::Anthropic, "r1", false, &[]);
        let (_, v) = parse(&out);
        assert_eq!(v["type"], "error");
        assert_eq!(v["request_id"], "r1");
        // Not an Anthropic type: the status decides, as Anthropic clients expect.
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(
            anthropic_error(401, "invalid_api_key", "bad key")["error"]["type"],
            "authentication_error",
            "a non-Anthropic kind falls back to the status"
        );
    }

    #[test]
    fn error_bodies_in_both_formats() {
        assert_eq!(
            openai_error("requests", Some("rate_limit_exceeded"), None, "slow down"),
            json!({"error": {"message": "slow down", "type": "requests", "param": null, "code": "rate_limit_exceeded"}})
        );
        let e = GatewayError::new(ErrorKind::ContextLengthExceeded, "too long");
        let v = e.body(ErrorShape::OpenAi, "r");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "context_length_exceeded");
        assert_eq!(v["error"]["param"], "messages");
        let v = GatewayError::new(ErrorKind::ProviderTimeout, "slow").body(ErrorShape::OpenAi, "r");
        assert_eq!(
            (&v["error"]["type"], &v["error"]["code"]),
            (&json!("server_error"), &json!("provider_timeout"))
        );
        let v = GatewayError::new(ErrorKind::InvalidRequest, "bad")
            .param("input")
            .body(ErrorShape::OpenAi, "r");
        assert_eq!(
            (&v["error"]["code"], &v["error"]["param"]),
            (&Value::Null, &json!("input"))
        );
        assert_eq!(
            anthropic_error(529, "overloaded_error", "busy"),
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})
        );
        for (status, kind) in [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (413, "request_too_large"),
            (422, "invalid_request_error"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (502, "api_error"),
            (504, "timeout_error"),
            (529, "overloaded_error"),
        ] {
            assert_eq!(anthropic_error_type(status), kind, "{status}");
        }
    }

    #[test]
    fn grpc_clients_get_a_trailers_only_status() {
        let mut out = Vec::new();
        let err = GatewayError::new(
            ErrorKind::Unauthenticated("missing_credentials"),
            "no key: 100%",
        );
        write_response(&mut out, &err, ErrorShape::Grpc, "r1", false, &[]);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\ngrpc-status: 16\r\n"), "{text}");
        assert!(
            text.contains("\r\ngrpc-message: no key: 100%25\r\n"),
            "{text}"
        );
        assert!(
            text.ends_with("content-length: 0\r\nx-request-id: r1\r\n\r\n"),
            "{text}"
        );
        for (kind, code) in [
            (ErrorKind::UpstreamTimeout, 4),
            (ErrorKind::RateLimited, 8),
            (ErrorKind::NoRoute, 12),
            (ErrorKind::ConnectFailed, 14),
            (ErrorKind::InvalidRequest, 3),
        ] {
            assert_eq!(kind.grpc_code(), code, "{kind:?}");
        }
    }

    #[test]
    fn kinds_have_sides_and_statuses() {
        assert_eq!(ErrorKind::Rejected(Reject::BodyTooLarge).status(), 413);
        assert_eq!(ErrorKind::ProviderRejected(422).status(), 422);
        assert_eq!(ErrorKind::ProviderAuth(401).side(), Side::Internal);
        assert_eq!(ErrorKind::UpstreamTimeout.side(), Side::Upstream);
        assert_eq!(
            ErrorKind::Unauthenticated("token_expired").label(),
            "token_expired"
        );
        assert!(!ErrorKind::ClientGone.answerable());
    }
}
