//! The benchmark scenarios, as data.
//!
//! A scenario says what traffic the load generator sends and how the upstream and
//! the proxies are set up for it. Adding one is adding an entry to [`SCENARIOS`];
//! the runner, the configs and the report read only these fields.
//!
//! Edge scenarios ([`Edge`]) turn on Hypergate's edge policy (API keys and a rate
//! limit, or JWT) while nginx and HAProxy keep their plain proxy config: they are
//! there as the usual yardstick, and the figure that matters is Hypergate's CPU
//! per request against its own plain run ([`Scenario::cpu_baseline`]). TLS
//! scenarios terminate TLS in every proxy with the same certificate.
//!
//! Pair scenarios ([`Scenario::pair`]) run Hypergate alone, twice per round,
//! with one feature off and on ([`Pair`]). The eBPF pair turns the kernel TCP
//! probe on; its work happens in the kernel, outside the gateway's own CPU
//! time, so that pair is compared on the whole machine's CPU per request as
//! well. The call-store pair records every request into the SQLite call store
//! (`[hypercare.store]`), which the plain target turns off. The two tracing
//! pairs export OpenTelemetry spans over OTLP/HTTP (`[observability.otlp]`) to
//! a collector of their own (a second `mock-upstream`), one with every request
//! sampled and one with 1% (the load carries no `traceparent`, so the head
//! sampler alone decides). The two io_uring pairs compare when the kernel runs
//! the completion work of the shards' rings (`[server] io_uring_task_run`):
//! the plain target runs the default, `"deferred"`, the second target
//! `"cooperative"` or `"interrupt"`, so their ratios are the other mode over
//! the default.
//!
//! The HTTP/2 scenario ([`Scenario::h2c`]) sends the small GET of `get-c64`
//! over cleartext HTTP/2 with prior knowledge (h2c), several streams at once
//! per connection, with `h2load` instead of wrk. Every proxy's listener speaks
//! h2c and talks HTTP/1.1 to the same keep-alive upstream, so the figure is
//! each proxy's HTTP/2 termination; `direct` does not run there (the mock
//! upstream speaks HTTP/1.1 only).
//!
//! The gRPC scenario ([`Scenario::grpc`]) is HTTP/2 load too, from `h2load`
//! with the same connections and streams, but each request is a gRPC unary
//! call (`POST /hypergate.demo.Echo/Echo` with one length-prefixed message,
//! see [`Grpc::body`]) to the gateway's own demo gRPC upstream, an h2c server
//! that echoes the message back with `grpc-status: 0` in trailers. Every proxy
//! speaks h2c on both sides, and `direct` runs (the upstream speaks it).
//!
//! LLM scenarios ([`Scenario::llm`]) send OpenAI chat completions at a fixed rate
//! with `loadgen` (open loop) instead of wrk, to the mock LLM provider
//! (`mock-llm`, no delays) instead of the mock upstream, directly and through
//! Hypergate (an AI route with the mock as provider) and LiteLLM's proxy; the
//! report shows what each adds over direct. The soak ([`Llm::soak`]) streams
//! through Hypergate alone for a long run, sampling its memory; it runs only when
//! named.

use super::targets::Target;

/// The request the load generator sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// A bodiless GET.
    Get,
    /// A POST with a body of this many bytes.
    Post {
        /// Request body size in bytes.
        body_bytes: usize,
    },
}

/// The feature a pair scenario turns on in its second Hypergate target (for
/// the io_uring pairs, the setting it changes from the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pair {
    /// The kernel TCP probe: Hypergate built with the `ebpf` feature, its
    /// config with `[observability.ebpf] enabled = true` (`hypergate-ebpf`).
    EbpfProbe,
    /// The SQLite call store: the same binary, its config with
    /// `[hypercare.store] enabled = true` (`hypergate-callstore`).
    CallStore,
    /// OpenTelemetry tracing with every request sampled: the same binary, its
    /// config with `[observability.otlp]` and `sampler =
    /// "parentbased_always_on"` (`hypergate-trace-all`).
    TraceAll,
    /// OpenTelemetry tracing with 1% of requests sampled: `sampler =
    /// "parentbased_traceidratio"`, `sampler_arg = 0.01`
    /// (`hypergate-trace-1pct`).
    TraceOnePercent,
    /// io_uring completion work run at the shard's next system call: the
    /// same binary, its config with `[server] io_uring_task_run =
    /// "cooperative"` (`hypergate-uring-cooperative`), against the default
    /// `"deferred"`.
    IoUringCooperative,
    /// io_uring completion work run at once, the kernel interrupting the
    /// shard's thread: `io_uring_task_run = "interrupt"`
    /// (`hypergate-uring-interrupt`), against the default `"deferred"`.
    IoUringInterrupt,
}

impl Pair {
    /// The target that runs with the feature on; the plain `hypergate` is off.
    pub fn on_target(self) -> Target {
        match self {
            Self::EbpfProbe => Target::HypergateEbpf,
            Self::CallStore => Target::HypergateCallstore,
            Self::TraceAll => Target::HypergateTraceAll,
            Self::TraceOnePercent => Target::HypergateTraceOnePercent,
            Self::IoUringCooperative => Target::HypergateUringCooperative,
            Self::IoUringInterrupt => Target::HypergateUringInterrupt,
        }
    }

    /// Whether the "on" target exports spans, so the scenario needs an OTLP
    /// collector.
    pub fn traces(self) -> bool {
        matches!(self, Self::TraceAll | Self::TraceOnePercent)
    }
}

/// A fixed-rate chat-completion load against the mock LLM provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Llm {
    /// Ask for a streamed (SSE) answer and measure latency to its first chunk
    /// (`loadgen --ttfb`); otherwise to the end of the JSON answer.
    pub stream: bool,
    /// Speak OpenAI's Responses API (`/v1/responses`) instead of Chat Completions.
    pub responses: bool,
    /// Hypergate alone, one long run (`--duration`, default
    /// [`SOAK_DEFAULT_SECS`]) with its resident set sampled every
    /// [`SOAK_SAMPLE_SECS`]; only run when named with `--scenario`.
    pub soak: bool,
}

/// Default request rate of the LLM scenarios (`--rate` changes it).
pub const LLM_DEFAULT_RATE: f64 = 1000.0;

/// The model every LLM target serves: the mock's name, Hypergate's alias and
/// LiteLLM's `model_name` alike, so one request body fits all of them.
pub const LLM_MODEL: &str = "mock-small";

/// Default length of the soak run, seconds.
pub const SOAK_DEFAULT_SECS: u64 = 600;

/// Default length of the soak run with `--quick`, seconds.
pub const SOAK_QUICK_SECS: u64 = 30;

/// How often the soak samples the gateway's resident set, seconds.
pub const SOAK_SAMPLE_SECS: u64 = 10;

impl Llm {
    /// The request body: one short user message (the mock answers with seven
    /// words); streamed requests ask for usage, as Hypergate does upstream.
    pub fn body(self) -> String {
        if self.responses {
            return format!(
                r#"{{"model":"{LLM_MODEL}","input":"Say hello to the benchmark","stream":{}}}"#,
                self.stream
            );
        }
        let stream = if self.stream {
            r#""stream":true,"stream_options":{"include_usage":true}"#
        } else {
            r#""stream":false"#
        };
        format!(
            r#"{{"model":"{LLM_MODEL}","messages":[{{"role":"user","content":"Say hello to the benchmark"}}],{stream}}}"#
        )
    }
}

/// HTTP/2 load with prior knowledge over cleartext TCP (h2c), from `h2load`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2c {
    /// Streams each connection keeps in flight at once (`h2load -m`); the
    /// scenario's `connections` are h2load's clients (`-c`).
    pub streams_per_connection: usize,
}

/// gRPC unary calls to `hypergate.demo.Echo/Echo` on the gateway's demo gRPC
/// upstream (`[[demo_upstreams]] kind = "grpc"`), which echoes each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grpc {
    /// Payload bytes of the call's one message (the body adds gRPC's 5-byte
    /// prefix); the answer's message is the same.
    pub message_bytes: u32,
}

/// Bytes of gRPC's message prefix: the compressed flag and a 4-byte length.
const GRPC_PREFIX_BYTES: usize = 5;

impl Grpc {
    /// The headers every call carries besides HTTP/2's pseudo-headers: gRPC's
    /// content type, and `te: trailers`, which gRPC requires of clients.
    pub const HEADERS: [&'static str; 2] = ["content-type: application/grpc", "te: trailers"];

    /// Size of the request body (and of the echoed answer's): one message
    /// with its prefix.
    pub const fn body_bytes(self) -> usize {
        GRPC_PREFIX_BYTES + self.message_bytes as usize
    }

    /// The request body: one uncompressed message (flag 0, big-endian length)
    /// of `message_bytes` ASCII `x`, which the demo takes as opaque bytes.
    pub fn body(self) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.body_bytes());
        body.push(0);
        body.extend_from_slice(&self.message_bytes.to_be_bytes());
        body.resize(self.body_bytes(), b'x');
        body
    }
}

/// The gRPC scenario's call: a 100-byte message.
const ECHO_100: Grpc = Grpc { message_bytes: 100 };

/// The edge policy Hypergate applies (peers always run their plain config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    /// None: the plain proxy path.
    None,
    /// API-key authentication (`x-api-key` header) plus a per-consumer rate limit
    /// far above any load this can generate, so it never trips.
    ApiKeyRateLimit,
    /// An RS256 JWT as `Authorization: Bearer` on every request.
    JwtRs256,
}

/// One benchmark scenario.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// Name used on the command line, in the table and in the JSON.
    pub name: &'static str,
    /// One line for `--help`-like listings and the README.
    pub summary: &'static str,
    /// Concurrent client connections (closed loop: one request in flight each,
    /// or [`H2c::streams_per_connection`] over HTTP/2).
    pub connections: usize,
    /// The request sent.
    pub request: RequestKind,
    /// The request path.
    pub path: &'static str,
    /// The upstream's response body size in bytes.
    pub upstream_body_bytes: usize,
    /// The client asks for `Connection: close`, so every request opens a connection.
    pub new_connection_per_request: bool,
    /// Every proxy writes an access log line per request to a file.
    pub access_log: bool,
    /// Prefix routes `/svc0/` .. `/svc{n-1}/` that Hypergate's config lists before
    /// its catch-all; the scenario's path matches the last of them. Peers proxy
    /// everything with their usual single location/backend.
    pub hypergate_prefix_routes: usize,
    /// Edge policy Hypergate applies; the load carries the credential it needs.
    pub edge: Edge,
    /// Every proxy terminates TLS (same certificate) and the load uses `https`.
    pub tls: bool,
    /// Hypergate's CPU per request is also reported relative to its own figure
    /// in this scenario (when both ran), to show what the feature costs.
    pub cpu_baseline: Option<&'static str>,
    /// Hypergate only, twice per round: the plain target, and the same gateway
    /// with one feature on (see [`Pair`]). Peers and direct do not run (with
    /// `--baseline`, `hypergate-base` does, with the plain config); the
    /// report shows the pair's throughput and CPU-per-request ratios, on over off.
    pub pair: Option<Pair>,
    /// A fixed-rate chat-completion load against the mock LLM provider, with
    /// Hypergate, LiteLLM and direct as targets; `request` and
    /// `upstream_body_bytes` do not apply.
    pub llm: Option<Llm>,
    /// The load is HTTP/2 with prior knowledge (h2c) from `h2load`, several
    /// streams per connection, instead of HTTP/1.1 from wrk; every proxy's
    /// listener speaks h2c, `direct` does not run (unless [`Scenario::grpc`]).
    pub h2c: Option<H2c>,
    /// The HTTP/2 load ([`Scenario::h2c`], required) is gRPC unary calls to
    /// the demo gRPC upstream (a `hypergate` process of its own) instead of
    /// the mock upstream; every proxy talks h2c to it, and `direct` runs.
    /// `request` and `upstream_body_bytes` give the call's body size.
    pub grpc: Option<Grpc>,
    /// Part of the `--quick` smoke subset.
    pub quick: bool,
}

/// Body size of the small responses, as `mock-upstream` defaults to.
const SMALL_BODY_BYTES: usize = 13;

/// A small keep-alive GET scenario with `connections` clients.
const fn small_get(name: &'static str, summary: &'static str, connections: usize) -> Scenario {
    Scenario {
        name,
        summary,
        connections,
        request: RequestKind::Get,
        path: "/",
        upstream_body_bytes: SMALL_BODY_BYTES,
        new_connection_per_request: false,
        access_log: false,
        hypergate_prefix_routes: 0,
        edge: Edge::None,
        tls: false,
        cpu_baseline: None,
        pair: None,
        llm: None,
        h2c: None,
        grpc: None,
        quick: false,
    }
}

/// An LLM scenario: `/v1/chat/completions` over 64 keep-alive connections
/// (enough for a fixed rate of 1,000 req/s with up to 64 ms per answer).
const fn chat(name: &'static str, summary: &'static str, llm: Llm) -> Scenario {
    Scenario {
        path: "/v1/chat/completions",
        llm: Some(llm),
        ..small_get(name, summary, 64)
    }
}

/// Every scenario, in the order they run.
pub const SCENARIOS: &[Scenario] = &[
    small_get(
        "get-c16",
        "keep-alive GET, 13-byte response, 16 connections",
        16,
    ),
    Scenario {
        quick: true,
        ..small_get(
            "get-c64",
            "keep-alive GET, 13-byte response, 64 connections",
            64,
        )
    },
    small_get(
        "get-c256",
        "keep-alive GET, 13-byte response, 256 connections",
        256,
    ),
    Scenario {
        upstream_body_bytes: 100 * 1024,
        ..small_get(
            "large-100k",
            "keep-alive GET, 100 KiB response, 64 connections",
            64,
        )
    },
    Scenario {
        request: RequestKind::Post {
            body_bytes: 10 * 1024,
        },
        quick: true,
        ..small_get(
            "post-10k",
            "keep-alive POST with a 10 KiB body, 64 connections",
            64,
        )
    },
    Scenario {
        new_connection_per_request: true,
        quick: true,
        ..small_get(
            "newconn",
            "GET with `Connection: close`: a new client connection per request, 64 connections",
            64,
        )
    },
    Scenario {
        path: "/svc998/x",
        hypergate_prefix_routes: 999,
        ..small_get(
            "routes-1000",
            "GET matching the last of 1,000 Hypergate routes (/svc998/x), 64 connections",
            64,
        )
    },
    Scenario {
        access_log: true,
        ..small_get(
            "accesslog",
            "keep-alive GET with every proxy writing an access log file, 64 connections",
            64,
        )
    },
    Scenario {
        edge: Edge::ApiKeyRateLimit,
        cpu_baseline: Some("get-c64"),
        quick: true,
        ..small_get(
            "edge-apikey-rl",
            "get-c64 with API-key auth and a per-consumer rate limit that never trips \
             (Hypergate only; peers plain)",
            64,
        )
    },
    Scenario {
        edge: Edge::JwtRs256,
        cpu_baseline: Some("get-c64"),
        ..small_get(
            "edge-jwt",
            "get-c64 with an RS256 JWT bearer on every request (Hypergate only; peers plain)",
            64,
        )
    },
    Scenario {
        tls: true,
        cpu_baseline: Some("get-c64"),
        quick: true,
        ..small_get(
            "tls-keepalive",
            "keep-alive GET over TLS terminated by every proxy (same certificate), 64 connections",
            64,
        )
    },
    Scenario {
        tls: true,
        new_connection_per_request: true,
        cpu_baseline: Some("newconn"),
        ..small_get(
            "tls-newconn",
            "GET over TLS with `Connection: close`: a TLS handshake per request, 64 connections",
            64,
        )
    },
    Scenario {
        h2c: Some(H2c {
            streams_per_connection: 10,
        }),
        ..small_get(
            "h2-get",
            "the GET of get-c64 over HTTP/2 with prior knowledge (h2c, h2load): 64 connections, \
             10 concurrent streams each; every proxy's listener speaks h2c, HTTP/1.1 upstream \
             (direct does not run: the mock upstream speaks HTTP/1.1 only)",
            64,
        )
    },
    Scenario {
        path: "/hypergate.demo.Echo/Echo",
        request: RequestKind::Post {
            body_bytes: ECHO_100.body_bytes(),
        },
        upstream_body_bytes: ECHO_100.body_bytes(),
        h2c: Some(H2c {
            streams_per_connection: 10,
        }),
        grpc: Some(ECHO_100),
        ..small_get(
            "grpc-unary",
            "gRPC unary calls (hypergate.demo.Echo/Echo, a 100-byte message) over h2c \
             (h2load): 64 connections, 10 concurrent streams each, to the gateway's demo gRPC \
             upstream; every proxy speaks h2c on both sides, and direct runs too",
            64,
        )
    },
    Scenario {
        pair: Some(Pair::EbpfProbe),
        ..small_get(
            "ebpf-probe",
            "get-c64 against Hypergate without and with its eBPF TCP probe, alternating \
             (Hypergate only)",
            64,
        )
    },
    Scenario {
        pair: Some(Pair::CallStore),
        ..small_get(
            "callstore",
            "get-c64 against Hypergate without and with every call recorded to its SQLite \
             call store, alternating (Hypergate only)",
            64,
        )
    },
    Scenario {
        pair: Some(Pair::TraceAll),
        ..small_get(
            "trace-all",
            "get-c64 against Hypergate without and with OpenTelemetry tracing, every request \
             sampled and exported over OTLP/HTTP to a mock collector, alternating (Hypergate only)",
            64,
        )
    },
    Scenario {
        pair: Some(Pair::TraceOnePercent),
        ..small_get(
            "trace-1pct",
            "get-c64 against Hypergate without and with OpenTelemetry tracing, 1% of requests \
             sampled and exported over OTLP/HTTP to a mock collector, alternating (Hypergate only)",
            64,
        )
    },
    Scenario {
        pair: Some(Pair::IoUringCooperative),
        ..small_get(
            "uring-cooperative",
            "get-c64 against Hypergate with io_uring_task_run = \"deferred\" (the default) and \
             \"cooperative\", alternating (Hypergate only)",
            64,
        )
    },
    Scenario {
        pair: Some(Pair::IoUringInterrupt),
        ..small_get(
            "uring-interrupt",
            "get-c64 against Hypergate with io_uring_task_run = \"deferred\" (the default) and \
             \"interrupt\", alternating (Hypergate only)",
            64,
        )
    },
    chat(
        "llm-chat",
        "chat completions (JSON) at a fixed rate (--rate, default 1,000 req/s) to the mock \
         LLM: direct, through Hypergate and through LiteLLM; latency to the whole answer",
        Llm {
            stream: false,
            responses: false,
            soak: false,
        },
    ),
    Scenario {
        path: "/v1/responses",
        ..chat(
            "llm-responses",
            "OpenAI Responses calls (JSON) at a fixed rate (--rate, default 1,000 req/s) to \
             the mock LLM: direct (the mock's own /v1/responses), through Hypergate (which \
             translates them to chat for the provider) and through LiteLLM; latency to the \
             whole answer; compare its added p50/p99 and CPU per request with llm-chat's",
            Llm {
                stream: false,
                responses: true,
                soak: false,
            },
        )
    },
    chat(
        "llm-stream",
        "streamed chat completions (SSE) at a fixed rate (--rate, default 1,000 req/s) to \
         the mock LLM: direct, through Hypergate and through LiteLLM; latency to the first \
         chunk",
        Llm {
            stream: true,
            responses: false,
            soak: false,
        },
    ),
    chat(
        "llm-soak",
        "streamed chat completions at a fixed rate (--rate, default 1,000 req/s) through \
         Hypergate for --duration (default 600 s), its memory sampled every 10 s (only \
         when named)",
        Llm {
            stream: true,
            responses: false,
            soak: true,
        },
    ),
];

/// The scenario called `name`, if any.
pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|scenario| scenario.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        for (index, scenario) in SCENARIOS.iter().enumerate() {
            assert!(
                SCENARIOS[index + 1..]
                    .iter()
                    .all(|other| other.name != scenario.name),
                "duplicate scenario {}",
                scenario.name
            );
        }
    }

    #[test]
    fn quick_subset_is_the_smoke_set() {
        let quick: Vec<_> = SCENARIOS
            .iter()
            .filter(|scenario| scenario.quick)
            .map(|scenario| scenario.name)
            .collect();
        assert_eq!(
            quick,
            [
                "get-c64",
                "post-10k",
                "newconn",
                "edge-apikey-rl",
                "tls-keepalive"
            ]
        );
    }

    #[test]
    fn cpu_baselines_name_plain_scenarios() {
        for scenario in SCENARIOS {
            if let Some(baseline) = scenario.cpu_baseline {
                let base = find(baseline).expect("baseline exists");
                assert_eq!(base.edge, Edge::None, "{}", scenario.name);
                assert!(!base.tls, "{}", scenario.name);
                assert_eq!(base.connections, scenario.connections, "{}", scenario.name);
                assert_eq!(
                    base.new_connection_per_request, scenario.new_connection_per_request,
                    "{}",
                    scenario.name
                );
            }
        }
    }

    #[test]
    fn pairs_are_get_c64_traffic_outside_the_smoke_set() {
        for (name, kind) in [
            ("ebpf-probe", Pair::EbpfProbe),
            ("callstore", Pair::CallStore),
            ("trace-all", Pair::TraceAll),
            ("trace-1pct", Pair::TraceOnePercent),
            ("uring-cooperative", Pair::IoUringCooperative),
            ("uring-interrupt", Pair::IoUringInterrupt),
        ] {
            assert_pair_is_get_c64(name, kind);
            assert_eq!(kind.traces(), name.starts_with("trace-"), "{name}");
            assert_eq!(
                kind.on_target().io_uring_task_run(),
                name.strip_prefix("uring-"),
                "{name}"
            );
        }
        assert_eq!(Pair::CallStore.on_target(), Target::HypergateCallstore);
        assert_eq!(Pair::EbpfProbe.on_target(), Target::HypergateEbpf);
        assert_eq!(Pair::TraceAll.on_target(), Target::HypergateTraceAll);
        assert_eq!(
            Pair::TraceOnePercent.on_target(),
            Target::HypergateTraceOnePercent
        );
        assert_eq!(
            Pair::IoUringCooperative.on_target(),
            Target::HypergateUringCooperative
        );
        assert_eq!(
            Pair::IoUringInterrupt.on_target(),
            Target::HypergateUringInterrupt
        );
    }

    fn assert_pair_is_get_c64(name: &str, kind: Pair) {
        let pair = find(name).expect("scenario exists");
        let plain = find("get-c64").expect("scenario exists");
        assert!(pair.pair == Some(kind) && !pair.quick, "{name}");
        assert_eq!(
            (
                pair.connections,
                pair.request,
                pair.path,
                pair.upstream_body_bytes
            ),
            (
                plain.connections,
                plain.request,
                plain.path,
                plain.upstream_body_bytes
            )
        );
        assert!(!pair.new_connection_per_request && !pair.access_log && !pair.tls);
        assert_eq!(pair.edge, Edge::None);
    }

    #[test]
    fn h2_get_is_get_c64_traffic_over_h2c_outside_the_smoke_set() {
        let h2 = find("h2-get").expect("scenario exists");
        let plain = find("get-c64").expect("scenario exists");
        assert_eq!(
            h2.h2c,
            Some(H2c {
                streams_per_connection: 10
            })
        );
        assert!(!h2.quick);
        assert_eq!(
            (h2.connections, h2.request, h2.path, h2.upstream_body_bytes),
            (
                plain.connections,
                plain.request,
                plain.path,
                plain.upstream_body_bytes
            )
        );
        assert!(!h2.new_connection_per_request && !h2.access_log && !h2.tls);
        assert!(h2.edge == Edge::None && h2.pair.is_none() && h2.llm.is_none());
        let others: Vec<_> = SCENARIOS
            .iter()
            .filter(|scenario| scenario.h2c.is_some())
            .map(|scenario| scenario.name)
            .collect();
        assert_eq!(others, ["h2-get", "grpc-unary"]);
        assert!(h2.grpc.is_none());
        assert!(!Target::Direct.runs_in(h2) && Target::Direct.runs_in(plain));
        assert!(Target::Nginx.runs_in(h2) && Target::Haproxy.runs_in(h2));
    }

    #[test]
    fn grpc_unary_is_h2_get_load_of_echo_calls_outside_the_smoke_set() {
        let grpc = find("grpc-unary").expect("scenario exists");
        let h2 = find("h2-get").expect("scenario exists");
        assert_eq!(grpc.grpc, Some(Grpc { message_bytes: 100 }));
        assert_eq!((grpc.h2c, grpc.connections), (h2.h2c, h2.connections));
        assert_eq!(grpc.path, "/hypergate.demo.Echo/Echo");
        assert!(!grpc.quick && !grpc.new_connection_per_request && !grpc.access_log);
        assert!(!grpc.tls && grpc.edge == Edge::None);
        assert!(grpc.pair.is_none() && grpc.llm.is_none());
        assert_eq!(grpc.hypergate_prefix_routes, 0);
        let only: Vec<_> = SCENARIOS
            .iter()
            .filter(|scenario| scenario.grpc.is_some())
            .map(|scenario| scenario.name)
            .collect();
        assert_eq!(only, ["grpc-unary"]);
        assert!(SCENARIOS
            .iter()
            .all(|scenario| scenario.grpc.is_none() || scenario.h2c.is_some()));
        // Every proxy, and direct too: the demo upstream speaks h2c.
        for target in [Target::Hypergate, Target::Nginx, Target::Haproxy] {
            assert!(target.runs_in(grpc), "{target:?}");
        }
        assert!(Target::Direct.runs_in(grpc) && !Target::Litellm.runs_in(grpc));
    }

    #[test]
    fn the_grpc_body_is_one_length_prefixed_message() {
        let call = find("grpc-unary").and_then(|s| s.grpc).expect("gRPC");
        let body = call.body();
        assert_eq!(body[..5], [0, 0, 0, 0, 100]);
        assert_eq!(body.len(), 105);
        assert!(body[5..].iter().all(|&byte| byte == b'x'));
        let scenario = find("grpc-unary").expect("scenario exists");
        assert_eq!(
            scenario.request,
            RequestKind::Post {
                body_bytes: body.len()
            }
        );
        assert_eq!(scenario.upstream_body_bytes, body.len());
        let big = Grpc {
            message_bytes: 70_000,
        };
        assert_eq!(big.body()[..5], [0, 0, 1, 0x11, 0x70]);
        assert_eq!(big.body().len(), big.body_bytes());
        assert_eq!(
            Grpc::HEADERS,
            ["content-type: application/grpc", "te: trailers"]
        );
    }

    #[test]
    fn routes_scenario_hits_the_last_specific_route() {
        let scenario = find("routes-1000").expect("scenario exists");
        let routes = scenario.hypergate_prefix_routes;
        let matching: Vec<usize> = (0..routes)
            .filter(|index| scenario.path.starts_with(&format!("/svc{index}/")))
            .collect();
        assert_eq!(matching, [routes - 1]);
    }

    #[test]
    fn llm_bodies_are_chat_requests_for_the_shared_model() {
        let responses = find("llm-responses").and_then(|s| s.llm).expect("exists");
        let body: serde_json::Value =
            serde_json::from_str(&responses.body()).expect("the body is JSON");
        assert_eq!(body["model"], LLM_MODEL);
        assert!(body["input"].is_string());
        for name in ["llm-chat", "llm-stream", "llm-soak"] {
            let scenario = find(name).expect("scenario exists");
            let llm = scenario.llm.expect("an LLM scenario");
            assert!(!scenario.quick, "{name}");
            let body: serde_json::Value =
                serde_json::from_str(&llm.body()).expect("the body is JSON");
            assert_eq!(body["model"], LLM_MODEL, "{name}");
            assert_eq!(body["stream"], llm.stream, "{name}");
            assert_eq!(
                body["stream_options"]["include_usage"].as_bool(),
                llm.stream.then_some(true),
                "{name}"
            );
        }
        assert!(find("llm-soak")
            .and_then(|s| s.llm)
            .is_some_and(|llm| llm.soak));
    }
}
