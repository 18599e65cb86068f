//! What every phase of one request shares: the canonical request as the
//! phases read it ([`View`]), and the [`Exchange`], the request's running
//! account (ids, timings, route, consumer, outcome) that the record phase
//! turns into metrics and a call record.
//!
//! Depends on `routing` (the router reads a [`View`]) and on `hypergate-core`.

use crate::routing::RequestInfo;
use hypergate_core::error::{ErrorKind, Outcome};
use hypergate_core::http::codec::{at, RequestHead};
use hypergate_core::ids::RequestId;
use hypergate_core::io::Tap;
use hypergate_core::keys::KeySource;
use hypergate_core::record::LlmRecord;
use hypergate_otel::{RemoteParent, Sampler, SamplerPolicy, SpanContext, SpanId};
use monoio::io::{AsyncReadRent, AsyncWriteRent, Split};
use std::cell::Cell;
use std::net::SocketAddr;
use std::time::Instant;

/// A downstream byte stream: plain TCP or TLS over TCP.
pub trait ClientStream: AsyncReadRent + AsyncWriteRent + Split + 'static {}
impl<T: AsyncReadRent + AsyncWriteRent + Split + 'static> ClientStream for T {}

/// The downstream connection, as the phases need it.
pub struct Downstream {
    /// The client's address.
    pub peer: SocketAddr,
    /// The client is an HTTP/2 stream (each read brings one DATA frame).
    pub h2: bool,
    /// The client's IP address as text (formatted once per connection:
    /// `X-Forwarded-For` needs it on every request).
    pub peer_ip: hypergate_core::ids::IpText,
    /// What `X-Forwarded-Proto` says: `http` or `https`.
    pub scheme: &'static str,
}

/// What the connection does after a request.
pub enum After {
    /// Read the next request.
    KeepAlive,
    /// Close the connection.
    Close,
    /// The upstream accepted an upgrade: tunnel bytes both ways.
    Upgrade(hypergate_upstream::UpstreamConn),
}

/// The request as every phase reads it: its head, whose path is the canonical
/// one (the client's stays in `head.raw_path`).
pub struct View<'a> {
    /// The buffer the head's ranges point into.
    pub buf: &'a [u8],
    /// The parsed head.
    pub head: &'a RequestHead,
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
    /// Every value of header `lowercase_name`, in order.
    pub fn header_values<'b>(
        &'b self,
        lowercase_name: &'b str,
    ) -> impl Iterator<Item = &'b [u8]> + 'b {
        self.head
            .headers
            .iter()
            .filter(move |(n, _)| at(self.buf, n).eq_ignore_ascii_case(lowercase_name.as_bytes()))
            .map(|(_, v)| at(self.buf, v))
    }

    /// The value of cookie `name`.
    pub fn cookie(&self, name: &str) -> Option<&[u8]> {
        self.header_values("cookie")
            .flat_map(|v| v.split(|b| *b == b';'))
            .find_map(|pair| {
                let pair = pair.trim_ascii();
                let eq = pair.iter().position(|b| *b == b'=')?;
                (&pair[..eq] == name.as_bytes()).then(|| &pair[eq + 1..])
            })
    }

    /// The hash of the request's key under `source` (sticky splits, hash balancing).
    pub fn key_hash(&self, source: &KeySource, peer: SocketAddr) -> Option<u64> {
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

    /// Whether the method is idempotent (safe to send twice).
    pub fn is_idempotent(&self) -> bool {
        matches!(
            self.method(),
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        )
    }
}

/// One request's running account, filled in by the phases and read by the
/// record phase.
pub struct Exchange {
    /// Request id (the client's `X-Request-Id` when valid, else a new one).
    pub rid: RequestId,
    /// The server span's context: the client's `traceparent` continued (a new
    /// span id, its `tracestate` kept), or a new trace; with the head sampling
    /// decision of `[observability.otlp]` (the caller's when it has one).
    pub trace: SpanContext,
    /// The upstream attempts, for their client spans (kept only when spans
    /// are exported: `ShardCtx::telemetry`).
    pub attempts: AttemptSpans,
    /// When the request head was complete (the body's total deadline and the
    /// route's AI deadline count from it).
    pub started: Instant,
    /// The route (index into `config.routes`).
    pub route: Option<usize>,
    /// The split side (index into the route's targets).
    pub target: Option<usize>,
    /// The endpoint of the last attempt.
    pub endpoint: Option<usize>,
    /// The authenticated consumer.
    pub consumer: Option<usize>,
    /// Status sent (0: none).
    pub status: u16,
    /// Error label ("" when none): the error's, or why a tunnel ended.
    pub error: &'static str,
    /// The error the gateway answered or met, if any (see [`Exchange::failed`]).
    pub error_kind: Option<ErrorKind>,
    /// Request body bytes read.
    pub bytes_in: u64,
    /// Response body bytes sent.
    pub bytes_out: u64,
    /// Upstream time to response head, µs.
    pub upstream_us: Option<u64>,
    /// Retries made.
    pub retries: u32,
    /// The connection closes after this exchange, whatever the client asked.
    pub close: bool,
    /// Whether the request body was read whole (an error answered after that
    /// may keep the connection).
    pub body_read: bool,
    /// The request is a gRPC call (`content-type: application/grpc...`),
    /// decided once for every phase (error shape, deadline, outcome, metrics).
    pub grpc: bool,
    /// The `grpc-status` of a gRPC call's answer (from its trailers, or its
    /// head when it had no body).
    pub grpc_status: Option<u8>,
    /// Whether that status is an error of the service on this route
    /// (`[routes.grpc] error_codes`).
    pub grpc_error: bool,
    /// LLM details.
    pub llm: Option<Box<LlmRecord>>,
    /// The bodies' first bytes, on a call sampled for capture.
    pub capture: Option<Box<Captured>>,
}

impl Exchange {
    /// The account of a request whose head just arrived; `sampler`: the
    /// exporter's, when spans are exported (without one, a new trace is
    /// sampled and a caller's decision is passed on).
    pub fn begin(view: &View<'_>, rng: &Cell<u64>, sampler: Option<&Sampler>) -> Self {
        let parent = view
            .header("traceparent")
            .and_then(|tp| RemoteParent::parse(tp, view.header("tracestate")));
        let sampler = sampler
            .copied()
            .unwrap_or_else(|| Sampler::new(SamplerPolicy::ParentBasedAlwaysOn, false, false));
        let trace = SpanContext::server(parent.as_ref(), &sampler, || {
            hypergate_core::rng::next_random(rng)
        });
        Self {
            rid: RequestId::new(view.header("x-request-id"), rng),
            trace,
            attempts: AttemptSpans::default(),
            started: Instant::now(),
            route: None,
            target: None,
            endpoint: None,
            consumer: None,
            status: 0,
            error: "",
            error_kind: None,
            bytes_in: 0,
            bytes_out: 0,
            upstream_us: None,
            retries: 0,
            close: false,
            body_read: false,
            grpc: view
                .header("content-type")
                .is_some_and(hypergate_core::http::is_grpc),
            grpc_status: None,
            grpc_error: false,
            llm: None,
            capture: None,
        }
    }
}

impl Exchange {
    /// Notes the error the request met (its label goes to the record).
    pub fn failed(&mut self, kind: ErrorKind) {
        self.error = kind.label();
        self.error_kind = Some(kind);
    }

    /// The error label, or the outcome's when no error was noted.
    pub fn error_or(&self, outcome: Outcome) -> &'static str {
        if self.error.is_empty() {
            outcome.label()
        } else {
            self.error
        }
    }

    /// How the call ended: decided here, once, from what the phases noted.
    pub fn outcome(&self) -> Outcome {
        let (aborted, broken) = self
            .llm
            .as_ref()
            .map_or((false, false), |l| (l.client_aborted, l.error.is_some()));
        match Outcome::of(self.status, self.error_kind, aborted, broken) {
            // A gRPC answer is a 200 whatever its status: the status decides.
            Outcome::Ok if self.grpc_error && self.grpc_status == Some(4) => Outcome::Timeout,
            Outcome::Ok if self.grpc_error => Outcome::UpstreamError,
            outcome => outcome,
        }
    }
}

/// Client spans kept per request at most (the attempts beyond are counted in
/// `hypergate.retries` on the server span).
pub const MAX_ATTEMPT_SPANS: usize = 4;

/// The attempts of one request, inline (no allocation on the request path).
#[derive(Debug, Clone, Copy, Default)]
pub struct AttemptSpans {
    spans: [Option<AttemptSpan>; MAX_ATTEMPT_SPANS],
}

impl AttemptSpans {
    /// Keeps an attempt (the first [`MAX_ATTEMPT_SPANS`] only).
    pub fn push(&mut self, a: AttemptSpan) {
        if let Some(slot) = self.spans.iter_mut().find(|s| s.is_none()) {
            *slot = Some(a);
        }
    }

    /// The attempts kept, in order.
    pub fn iter(&self) -> impl Iterator<Item = &AttemptSpan> {
        self.spans.iter().flatten()
    }
}

/// One upstream attempt, for its client span.
#[derive(Debug, Clone, Copy)]
pub struct AttemptSpan {
    /// The span id (the `traceparent` the upstream received names it).
    pub span_id: SpanId,
    /// When the attempt began and ended.
    pub start: Instant,
    /// When it ended.
    pub end: Instant,
    /// The endpoint tried (index into the cluster's endpoints).
    pub endpoint: usize,
    /// The response status, or the failure's error label.
    pub result: Result<u16, &'static str>,
}

/// A sampled call's body capture (`[hypercare.store] capture_api_bodies`):
/// the first `max` bytes of each body (`capture_max_bytes` and some slack),
/// redacted and cut later by the record writer.
pub struct Captured {
    /// Request body's first bytes.
    pub request: Vec<u8>,
    /// Response body's first bytes.
    pub response: Vec<u8>,
    /// How many bytes each keeps.
    pub max: usize,
}

impl Captured {
    /// A capture keeping `max` bytes of each body.
    pub fn new(max: usize) -> Self {
        Self {
            request: Vec::new(),
            response: Vec::new(),
            max,
        }
    }

    /// The request body's tap.
    pub fn request(&mut self) -> Tap<'_> {
        Tap {
            buf: &mut self.request,
            max: self.max,
        }
    }

    /// The response body's tap.
    pub fn response(&mut self) -> Tap<'_> {
        Tap {
            buf: &mut self.response,
            max: self.max,
        }
    }
}
