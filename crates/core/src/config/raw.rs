//! The configuration file as written: serde types with every field documented.
//!
//! These types mirror the TOML one to one and carry no cross-references
//! (a route names its cluster by string). `config::validate` turns them into
//! the immutable, index-linked config the shards run on (each feature crate
//! validates its own sections; the runtime assembles the result).
//! `docs/config.md` documents the same fields for operators.

pub use super::edge::*;
use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Process-wide settings: shards, pinning, drain.
    #[serde(default)]
    pub server: ServerConfig,
    /// The admin listener (metrics, health, reload).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Limits and timeouts applied to every downstream connection.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// How request paths are made canonical before routing sees them.
    #[serde(default)]
    pub path: PathConfig,
    /// Structured JSON access log.
    #[serde(default)]
    pub access_log: AccessLogConfig,
    /// Data-plane listeners (one SO_REUSEPORT socket per shard each).
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    /// Upstream clusters.
    #[serde(default)]
    pub clusters: Vec<ClusterConfig>,
    /// Ordered routes: the first that matches wins.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Built-in demo upstreams the gateway starts itself (for examples and demos).
    #[serde(default)]
    pub demo_upstreams: Vec<DemoUpstreamConfig>,
    /// Optional observability extras (the kernel TCP probe).
    #[serde(default)]
    pub observability: ObservabilityConfig,
    /// API consumers and their credentials.
    #[serde(default)]
    pub consumers: Vec<ConsumerConfig>,
    /// Authentication methods.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Rate-limit policies, referenced by routes.
    #[serde(default)]
    pub rate_limits: Vec<RateLimitConfig>,
    /// Redis for cluster-wide rate limits.
    #[serde(default)]
    pub redis: Option<RedisConfig>,
    /// Connection-level protections and trusted proxies.
    #[serde(default)]
    pub protection: ProtectionConfig,
    /// The AI / LLM gateway: providers, model aliases, prices, budgets, guardrails, prompts.
    #[serde(default)]
    pub ai: super::ai::AiConfig,
    /// Hypercare: the call-record store.
    #[serde(default)]
    pub hypercare: super::hypercare::HypercareConfig,
    /// Several gateways judged and steered as one, through Redis.
    #[serde(default)]
    pub fleet: super::hypercare::FleetConfig,
}

/// Process-wide settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Number of shards (worker threads). 0 means one per available core.
    pub shards: usize,
    /// Pin shard `i` to CPU `cpu_list[i]`. Empty: pin shard `i` to the i-th available core.
    pub cpu_list: Vec<usize>,
    /// Pin shards to cores at all.
    pub pin_cores: bool,
    /// Lame-duck period after SIGTERM: `/readyz` answers 503 at once while the
    /// listeners keep accepting and serving, so a load balancer can notice before
    /// anything closes. `0s` skips it.
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// After the lame-duck period: how long in-flight requests may take to finish
    /// before the remaining connections are closed and the process exits.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// During the drain, how long a keep-alive connection that sits idle may still
    /// send a request (answered with `Connection: close`) before it is closed: a
    /// client about to reuse it gets an answer, not a closed socket.
    #[serde(with = "humantime_serde")]
    pub drain_idle_grace: Duration,
    /// Use io_uring when the kernel allows it (otherwise epoll is used).
    pub io_uring: bool,
    /// When the kernel finishes a shard's io_uring operations (see
    /// [`IoUringTaskRun`]).
    pub io_uring_task_run: IoUringTaskRun,
}

/// When the kernel runs the completion work of a shard's io_uring operations
/// (a read whose data arrived, a send that was waiting for room). Each shard
/// is the only thread that submits to its ring, so nothing needs the kernel to
/// interrupt it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IoUringTaskRun {
    /// Only when the shard waits for completions, between two batches of work
    /// (`IORING_SETUP_DEFER_TASKRUN`, Linux 6.1): no interrupt, and completions
    /// are reaped in batches. A shard busy for a long stretch (a large body
    /// being transformed) sees its completions after it; the default.
    Deferred,
    /// At the shard's next system call, without interrupting it
    /// (`IORING_SETUP_COOP_TASKRUN`, Linux 5.19).
    Cooperative,
    /// At once: the kernel interrupts the shard's thread (an inter-processor
    /// interrupt when it runs on another CPU), as io_uring did before 5.19.
    Interrupt,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            shards: 0,
            cpu_list: Vec::new(),
            pin_cores: true,
            drain_delay: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(15),
            drain_idle_grace: Duration::from_secs(1),
            io_uring: true,
            io_uring_task_run: IoUringTaskRun::Deferred,
        }
    }
}

/// The admin listener.
///
/// Every request must name the admin in `Host`: a loopback address, `localhost`,
/// the address the client connected to, or one of `allowed_hosts` (403 otherwise,
/// which defeats DNS rebinding). Mutating requests (any method but GET, HEAD and
/// OPTIONS) are also refused when `Sec-Fetch-Site` says another site or when
/// `Origin` names a host the `Host` rule does not allow.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin listener. Must not be one of the data listeners, and
    /// must be a loopback address unless `token` is set.
    pub listen: String,
    /// Extra host names accepted in `Host` and `Origin` (the port is ignored),
    /// e.g. the name a reverse proxy or a port-forward uses for the admin.
    pub allowed_hosts: Vec<String>,
    /// Bearer token every endpoint but `GET /healthz` and `GET /readyz` requires
    /// (`Authorization: Bearer <token>`, else 401); may be `${ENV_VAR}`. A secret:
    /// shown as `<redacted>`. Unset: no token is asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9901".into(),
            allowed_hosts: Vec::new(),
            token: None,
        }
    }
}

/// Downstream limits and timeouts.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Longest request line (method, target, version) in bytes; longer gets 414.
    pub max_request_line: usize,
    /// Largest request header section in bytes; larger gets 431.
    pub max_header_bytes: usize,
    /// Most request headers; more gets 431.
    pub max_headers: usize,
    /// Largest request body in bytes (0: unlimited); larger gets 413.
    pub max_body_bytes: u64,
    /// Time allowed for a TLS handshake on a TLS listener (the connection is closed after).
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// Time allowed to receive a whole request head once its first byte arrived (408 after).
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// How long a keep-alive connection may sit idle between requests.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Longest pause between two reads of a request body (408 after; the upstream
    /// connection that was receiving it is closed, not pooled).
    #[serde(with = "humantime_serde")]
    pub body_idle_timeout: Duration,
    /// Time allowed to receive a whole request body, however steadily it trickles (408 after).
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Longest pause while writing a response to the client (the connection is closed after).
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// How long an upgraded connection (WebSocket tunnel) may carry no byte in
    /// either direction before both sides are closed.
    #[serde(with = "humantime_serde")]
    pub tunnel_idle_timeout: Duration,
    /// Largest upstream response header section in bytes; larger gets 502.
    pub max_response_header_bytes: usize,
    /// HTTP/2: streams of one connection in the pipeline at once (also the
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` advertised); more are refused.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2: each stream's flow-control window in bytes (the connection's
    /// is four times it): what a client may send ahead, and what the gateway
    /// buffers for a slow reader.
    pub h2_initial_window: u32,
    /// HTTP/2: largest frame payload accepted (`SETTINGS_MAX_FRAME_SIZE`).
    pub h2_max_frame_size: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_request_line: 8 * 1024,
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_body_bytes: 0,
            tls_handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_idle_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(300),
            send_timeout: Duration::from_secs(60),
            tunnel_idle_timeout: Duration::from_secs(300),
            max_response_header_bytes: 64 * 1024,
            h2_max_concurrent_streams: 128,
            h2_initial_window: 256 * 1024,
            h2_max_frame_size: 16 * 1024,
        }
    }
}

/// Canonical request paths (docs/edge.md has the table of inputs and results).
///
/// Every request path is made canonical once, before routing: unreserved
/// characters are percent-decoded, dot segments removed, repeated slashes merged.
/// Routing, auth, rate-limit keys, rewrites, the access log, the call store and
/// metrics all see that one path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathConfig {
    /// Encoded `/` and `\` (`%2F`, `%5C`) and a raw `\`: `"reject"` (400),
    /// `"keep"` (left encoded, part of a segment) or `"decode"` (a separator).
    pub escaped_slashes: EscapedSlashes,
    /// A percent-encoded `%` that starts another escape (`%2570`), the classic
    /// double-decoding bypass: `"reject"` (400) or `"keep"`.
    pub double_encoding: RejectOrKeep,
    /// `;` in the path (Java servers strip `;params` from segments, so
    /// `/private;x/y` would reach `/private/y`): `"reject"` (400) or `"keep"`.
    pub semicolons: RejectOrKeep,
    /// What upstreams receive: `"canonical"` or `"original"` (the bytes the client
    /// sent; routes with a `rewrite` always send the canonical path).
    pub forward: PathForward,
}

/// The action for encoded slashes and backslashes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    /// Answer 400.
    #[default]
    Reject,
    /// Keep `%2F` / `%5C` encoded (a raw `\` as it is), inside one segment.
    Keep,
    /// Decode into a `/` separator.
    Decode,
}

/// Reject a construct with 400, or keep it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectOrKeep {
    /// Answer 400.
    #[default]
    Reject,
    /// Let it through unchanged.
    Keep,
}

/// The path upstreams receive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathForward {
    /// The canonical path (what routing matched).
    #[default]
    Canonical,
    /// The path exactly as the client sent it.
    Original,
}

/// The structured access log.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogConfig {
    /// Write one JSON line per request.
    pub enabled: bool,
    /// `"stdout"`, `"stderr"` or a file path (appended to).
    pub path: String,
    /// Records buffered per shard before new ones are dropped (and counted).
    pub buffer: usize,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            path: "stdout".into(),
            buffer: 4096,
        }
    }
}

/// A data-plane listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Name used in metrics and logs.
    pub name: String,
    /// `ip:port` to bind (every shard binds it with SO_REUSEPORT).
    pub address: String,
    /// Listen backlog per shard socket.
    #[serde(default = "default_backlog")]
    pub backlog: i32,
    /// Terminate TLS on this listener.
    #[serde(default)]
    pub tls: Option<ListenerTlsConfig>,
    /// Protocols served: `"http1"`, plus `"h2"` (offered by ALPN, TLS
    /// listeners) or `"h2c"` (HTTP/2 with prior knowledge, plaintext
    /// listeners; never by `Upgrade: h2c`).
    #[serde(default = "default_protocols")]
    pub protocols: Vec<Protocol>,
}

/// A protocol a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// HTTP/1.1 (and 1.0).
    Http1,
    /// HTTP/2 over TLS, negotiated by ALPN.
    H2,
    /// HTTP/2 over cleartext TCP with prior knowledge.
    H2c,
}

fn default_protocols() -> Vec<Protocol> {
    vec![Protocol::Http1]
}

fn default_backlog() -> i32 {
    1024
}

/// Load-balancing policy of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// Fewest in-flight requests among two random endpoints (power of two choices).
    LeastRequest,
    /// Consistent hashing (ring) on `hash_on`.
    Hash,
}

/// An upstream cluster.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Unique name, referenced by routes.
    pub name: String,
    /// Release label carried by metrics and logs (e.g. `"v1"`).
    #[serde(default)]
    pub version: String,
    /// Endpoints and their weights.
    pub endpoints: Vec<EndpointConfig>,
    /// Load-balancing policy.
    #[serde(default)]
    pub lb: LbPolicy,
    /// Hash key for `lb = "hash"`: `"header:NAME"`, `"cookie:NAME"` or `"client_ip"`.
    #[serde(default)]
    pub hash_on: Option<String>,
    /// TCP connect timeout.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest pause allowed while reading an upstream response body.
    #[serde(default = "default_read_timeout", with = "humantime_serde")]
    pub read_timeout: Duration,
    /// Per-shard keep-alive pool settings.
    #[serde(default)]
    pub pool: PoolConfig,
    /// Active HTTP health checks (off when absent).
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    /// Passive outlier detection.
    #[serde(default)]
    pub outlier: OutlierConfig,
    /// Retry policy.
    #[serde(default)]
    pub retry: RetryConfig,
    /// TLS to the endpoints (plain TCP when absent).
    #[serde(default)]
    pub tls: Option<UpstreamTlsConfig>,
    /// The protocol spoken to the endpoints: `"http1"` (default), `"h2"`
    /// (HTTP/2 over `tls`, offered by ALPN) or `"h2c"` (HTTP/2 over plain
    /// TCP, with prior knowledge). gRPC services need `h2` or `h2c`.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
}

/// The protocol a cluster's endpoints speak.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1, a request per connection at a time, connections pooled.
    #[default]
    Http1,
    /// HTTP/2 over TLS: requests multiplexed as streams on few connections.
    H2,
    /// HTTP/2 over plain TCP (prior knowledge).
    H2c,
}

impl UpstreamProtocol {
    /// Whether requests are multiplexed as HTTP/2 streams.
    pub fn is_h2(self) -> bool {
        self != UpstreamProtocol::Http1
    }
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_read_timeout() -> Duration {
    Duration::from_secs(60)
}

/// One upstream endpoint.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// `ip:port` or `host:port` (resolved when the config is loaded).
    pub address: String,
    /// Relative weight (1..=1000).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// Keep-alive pool per shard and endpoint.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Idle connections kept per endpoint per shard.
    pub max_idle: usize,
    /// Idle connections older than this are closed instead of reused.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Open connections (busy + idle) per endpoint per shard; beyond it requests get 503.
    pub max_connections: usize,
    /// HTTP/2 clusters: streams in flight on one connection before another is
    /// opened (the server's own `SETTINGS_MAX_CONCURRENT_STREAMS` applies too).
    pub max_streams: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_idle: 1024,
            idle_timeout: Duration::from_secs(30),
            max_connections: 4096,
            max_streams: 100,
        }
    }
}

/// Active health checking.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Path requested with GET (required unless `grpc_service` is set).
    #[serde(default)]
    pub path: String,
    /// Check with gRPC instead (`grpc.health.v1.Health/Check` for this
    /// service name; `""` asks about the server as a whole): healthy when it
    /// answers `SERVING`. Needs `protocol = "h2"` or `"h2c"`.
    #[serde(default)]
    pub grpc_service: Option<String>,
    /// Time between checks of one endpoint.
    #[serde(default = "default_hc_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Timeout of one check (connect + response).
    #[serde(default = "default_hc_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive successes that mark an unhealthy endpoint healthy.
    #[serde(default = "default_two")]
    pub healthy_threshold: u32,
    /// Consecutive failures that mark a healthy endpoint unhealthy.
    #[serde(default = "default_two")]
    pub unhealthy_threshold: u32,
    /// Status codes counted as healthy: inclusive range `[min, max]`.
    #[serde(default = "default_expected_status")]
    pub expected_status: [u16; 2],
    /// Host header sent with checks (default: the endpoint address).
    #[serde(default)]
    pub host: Option<String>,
}

fn default_hc_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_hc_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_two() -> u32 {
    2
}
fn default_expected_status() -> [u16; 2] {
    [200, 399]
}

/// Passive outlier detection (per shard).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierConfig {
    /// Consecutive failures (connect errors, resets, 5xx) that eject an endpoint; 0 disables.
    pub consecutive_failures: u32,
    /// First ejection time; doubled on each consecutive ejection.
    #[serde(with = "humantime_serde")]
    pub base_ejection: Duration,
    /// Longest ejection time.
    #[serde(with = "humantime_serde")]
    pub max_ejection: Duration,
    /// Most endpoints of the cluster ejected at once, in percent.
    pub max_ejection_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

/// Retries.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Extra attempts after the first (0 disables retries).
    pub attempts: u32,
    /// Also retry idempotent requests that got a 502/503/504 from the upstream.
    pub on_5xx: bool,
    /// Retries allowed as a fraction of requests (the retry budget).
    pub budget_ratio: f64,
    /// Retries always allowed per second regardless of the ratio.
    pub budget_min_per_second: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: 1,
            on_5xx: false,
            budget_ratio: 0.2,
            budget_min_per_second: 10,
        }
    }
}

/// A route.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique name used in metrics and logs.
    pub name: String,
    /// What requests this route takes (everything when empty).
    #[serde(default, rename = "match")]
    pub matcher: MatchConfig,
    /// The cluster to proxy to (exactly one of `cluster`, `split`, `direct`, `redirect`, `ai`).
    #[serde(default)]
    pub cluster: Option<String>,
    /// Weighted traffic split across clusters (canary / blue-green).
    #[serde(default)]
    pub split: Option<SplitConfig>,
    /// Answer at the gateway with a fixed response.
    #[serde(default)]
    pub direct: Option<DirectConfig>,
    /// Answer at the gateway with a redirect.
    #[serde(default)]
    pub redirect: Option<RedirectConfig>,
    /// Path rewrite before proxying.
    #[serde(default)]
    pub rewrite: Option<RewriteConfig>,
    /// Request header changes (applied before proxying).
    #[serde(default)]
    pub request_headers: HeaderOpsConfig,
    /// Response header changes (applied before answering).
    #[serde(default)]
    pub response_headers: HeaderOpsConfig,
    /// Time allowed for the upstream to send its response head once the request
    /// body was sent. On AI routes: the one deadline of a call across its retries
    /// and fallbacks, until a provider's answer starts. Default 30s, 300s on AI routes.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// `Upgrade` protocols this route forwards (e.g. `["websocket"]`), only after
    /// every request phase passed. Any other token (and `h2c` always) is removed
    /// with `HTTP2-Settings` and the matching `Connection` tokens; a `101` from an
    /// upstream that was not asked to upgrade is a 502.
    #[serde(default)]
    pub upgrade: Vec<String>,
    /// Edge policy: authentication, ACL, rate limits, IP rules, body limit, CORS.
    #[serde(default)]
    pub policy: RoutePolicyConfig,
    /// Serve the AI API (chat completions, messages, embeddings, models, feedback, prompts).
    #[serde(default)]
    pub ai: Option<super::ai::AiRouteConfig>,
    /// How gRPC calls on this route are judged and timed (any request with
    /// `content-type: application/grpc...` is a gRPC call; these are the
    /// defaults when the table is absent).
    #[serde(default)]
    pub grpc: GrpcRouteConfig,
}

/// A route's gRPC settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcRouteConfig {
    /// The `grpc-status` codes that make a call an error of the service for
    /// metrics, alerts, windows and canary analysis (names such as
    /// `"UNAVAILABLE"`, or numbers). Default: `UNKNOWN`, `DEADLINE_EXCEEDED`,
    /// `UNIMPLEMENTED`, `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS`; the client's
    /// own errors (`INVALID_ARGUMENT`, `NOT_FOUND`, ...) are answers.
    pub error_codes: Vec<String>,
    /// Longest deadline a call may have: a client's `grpc-timeout` above it
    /// (or none) is cut to it. Default: the route's `timeout`.
    #[serde(with = "humantime_serde")]
    pub max_timeout: Option<Duration>,
}

/// The gRPC status codes by name, in code order (`OK` is 0).
pub const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

impl Default for GrpcRouteConfig {
    fn default() -> Self {
        Self {
            error_codes: [
                "UNKNOWN",
                "DEADLINE_EXCEEDED",
                "UNIMPLEMENTED",
                "INTERNAL",
                "UNAVAILABLE",
                "DATA_LOSS",
            ]
            .map(String::from)
            .to_vec(),
            max_timeout: None,
        }
    }
}

/// A proxied route's `timeout` when none is given.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(30);
/// An AI route's `timeout` when none is given (long completions are not streamed).
pub const DEFAULT_AI_ROUTE_TIMEOUT: Duration = Duration::from_secs(300);

/// Request matching. All given conditions must hold.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// Host names: exact (`api.example.com`) or a leading wildcard (`*.example.com`). Any when empty.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Exact path.
    #[serde(default)]
    pub path_exact: Option<String>,
    /// Path prefix on segment boundaries: `/api` matches `/api` and `/api/x`, not `/apix`.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Path template with `{name}` segments and an optional trailing `{*rest}`.
    #[serde(default)]
    pub path_template: Option<String>,
    /// Methods (any when empty).
    #[serde(default)]
    pub methods: Vec<String>,
    /// Header conditions.
    #[serde(default)]
    pub headers: Vec<KeyValueMatch>,
    /// Query parameter conditions.
    #[serde(default)]
    pub query: Vec<KeyValueMatch>,
}

/// A header or query-parameter condition.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyValueMatch {
    /// Header or parameter name (headers compare case-insensitively).
    pub name: String,
    /// Required exact value; when absent the name only has to be present.
    #[serde(default)]
    pub value: Option<String>,
}

/// Weighted split across clusters.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    /// Sides of the split.
    pub targets: Vec<SplitTarget>,
    /// A request header whose value (a cluster name or version) forces that side.
    #[serde(default)]
    pub override_header: Option<String>,
    /// A cookie whose value (a cluster name or version) forces that side.
    #[serde(default)]
    pub override_cookie: Option<String>,
    /// Keep a user on one side: `"header:NAME"`, `"cookie:NAME"` or `"client_ip"`.
    #[serde(default)]
    pub sticky_on: Option<String>,
}

/// One side of a split.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SplitTarget {
    /// Cluster name.
    pub cluster: String,
    /// Relative weight (0 sends nothing unless forced).
    pub weight: u32,
}

/// A fixed response.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DirectConfig {
    /// Status code.
    #[serde(default = "default_direct_status")]
    pub status: u16,
    /// Body.
    #[serde(default)]
    pub body: String,
    /// Content-Type of the body.
    #[serde(default = "default_content_type")]
    pub content_type: String,
}

fn default_direct_status() -> u16 {
    200
}
fn default_content_type() -> String {
    "text/plain; charset=utf-8".into()
}

/// A redirect.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectConfig {
    /// Location header value.
    pub location: String,
    /// 301, 302, 303, 307 or 308.
    #[serde(default = "default_redirect_status")]
    pub status: u16,
}

fn default_redirect_status() -> u16 {
    302
}

/// Path rewrite.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteConfig {
    /// Remove this prefix (the route's `path_prefix` when empty string is not given).
    #[serde(default)]
    pub strip_prefix: Option<String>,
    /// Replace the stripped prefix with this one.
    #[serde(default)]
    pub replace_prefix: Option<String>,
}

/// Header manipulation. The values given in `add` and `set` are secrets (they
/// often carry static credentials such as `authorization`): `/config` shows the
/// header names with `<redacted>` values.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOpsConfig {
    /// Headers appended (kept alongside existing ones).
    #[serde(default)]
    pub add: BTreeMap<String, Secret>,
    /// Headers set (replacing existing ones of that name).
    #[serde(default)]
    pub set: BTreeMap<String, Secret>,
    /// Header names removed.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A built-in demo upstream.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DemoUpstreamConfig {
    /// `ip:port` it listens on.
    pub address: String,
    /// Text in its answers (e.g. a version).
    #[serde(default = "default_demo_name")]
    pub name: String,
    /// Share of requests answered with 500 (`grpc`: of Echo calls answered
    /// with UNAVAILABLE), from 0.0 to 1.0.
    #[serde(default)]
    pub fail_ratio: f64,
    /// `http` (a text answer), `llm` (a mock LLM provider speaking the OpenAI
    /// and Anthropic wire formats, streaming included; no key needed) or `grpc`
    /// (a gRPC server over h2c: the health service and an echo service).
    #[serde(default)]
    pub kind: DemoKind,
    /// `llm` only: pause between streamed chunks.
    #[serde(default = "default_demo_chunk_delay", with = "humantime_serde")]
    pub chunk_delay: Duration,
}

/// What a demo upstream serves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DemoKind {
    /// Plain HTTP text.
    #[default]
    Http,
    /// A mock LLM provider.
    Llm,
    /// A gRPC server over HTTP/2 cleartext (prior knowledge): the standard
    /// `grpc.health.v1.Health` (`Check`, `Watch`) and `hypergate.demo.Echo`
    /// (`Echo`, unary, and `Stream`, bidirectional), which send every request
    /// message back unchanged.
    Grpc,
}

fn default_demo_chunk_delay() -> Duration {
    Duration::from_millis(20)
}

fn default_demo_name() -> String {
    "demo".into()
}

/// Optional observability extras, beyond the always-on metrics and access log.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObservabilityConfig {
    /// The eBPF probe: the kernel's view of every gateway TCP connection (docs/ebpf.md).
    pub ebpf: EbpfConfig,
    /// OpenTelemetry traces (and call records as logs) over OTLP/HTTP
    /// (docs/observability.md). Also on when `OTEL_EXPORTER_OTLP_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set. Bound at start: changing it
    /// needs a restart.
    pub otlp: Option<hypergate_otel::OtlpConfig>,
}

/// The eBPF TCP probe (`hypergate_tcp_*` metrics). Needs a binary built with the
/// `ebpf` feature, root (or CAP_BPF + CAP_PERFMON + CAP_NET_ADMIN), kernel BTF and
/// cgroup v2. If it cannot load, the gateway logs why and runs without it.
/// Bound at start: changing it needs a restart.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EbpfConfig {
    /// Load the probe at start.
    pub enabled: bool,
    /// cgroup v2 directory to move the gateway into and attach `sock_ops` to; it must
    /// exist. Unset: the gateway creates `hypergate-<pid>` under its current cgroup v2
    /// (removed again once empty, on a later start).
    pub cgroup: Option<String>,
    /// How often the control thread drains the kernel maps into the histograms (also
    /// the period of the per-connection RTT samples). Scrapes drain first, so they
    /// never see older data than this.
    #[serde(with = "humantime_serde")]
    pub drain_interval: Duration,
}

impl Default for EbpfConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            cgroup: None,
            drain_interval: Duration::from_secs(1),
        }
    }
}
