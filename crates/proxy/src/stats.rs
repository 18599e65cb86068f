//! Per-shard, single-writer counters and HDR histograms, and their merged snapshots.
//!
//! A shard owns its [`ShardStats`]: plain `Cell` counters and `RefCell`
//! histograms that only its own thread touches, so recording is a few
//! non-atomic adds. Stats objects live in by-name registries that survive
//! reloads (a route keeps its counters when the config changes). The admin
//! thread asks each shard for a [`ShardSnapshot`] over the control channel and
//! merges them into a [`MergedStats`], off the request path.

use hdrhistogram::Histogram;
use hypergate_core::error::Outcome;
use hypergate_core::http::codec::Reject;
use hypergate_edge::auth::AuthFailure;
use hypergate_edge::EdgeReject;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;

use hypergate_core::config::raw::GRPC_CODES;
pub use hypergate_core::metrics::{new_histogram, LazyHistogram, STATUS_CLASSES};

/// Requests of one route to one cluster version, by status class and outcome.
pub struct TargetStats {
    /// Status class counters, see [`STATUS_CLASSES`].
    pub by_class: [Cell<u64>; 6],
    /// Outcome counters, in [`Outcome::ALL`] order.
    pub by_outcome: [Cell<u64>; Outcome::COUNT],
}

impl TargetStats {
    fn new() -> Self {
        Self {
            by_class: Default::default(),
            by_outcome: Default::default(),
        }
    }

    /// Counts one request with this status (0: no response) and outcome.
    pub fn count(&self, status: u16, outcome: Outcome) {
        let class = (status / 100).min(5) as usize;
        self.by_class[class].set(self.by_class[class].get() + 1);
        let o = &self.by_outcome[outcome.index()];
        o.set(o.get() + 1);
    }

    fn counts(&self) -> TargetCounts {
        TargetCounts {
            by_class: self.by_class.each_ref().map(Cell::get),
            by_outcome: self.by_outcome.each_ref().map(Cell::get),
        }
    }
}

/// A target's counters as numbers (snapshots, merged stats, hypercare series,
/// a fleet member's published aggregates).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TargetCounts {
    /// By status class, see [`STATUS_CLASSES`].
    pub by_class: [u64; 6],
    /// By outcome, in [`Outcome::ALL`] order.
    pub by_outcome: [u64; Outcome::COUNT],
}

impl TargetCounts {
    /// Requests counted.
    pub fn requests(&self) -> u64 {
        self.by_outcome.iter().sum()
    }

    /// Requests whose outcome is an error of the service ([`Outcome::is_error`]).
    pub fn errors(&self) -> u64 {
        Outcome::ALL
            .iter()
            .filter(|o| o.is_error())
            .map(|o| self.by_outcome[o.index()])
            .sum()
    }

    /// Adds `other` in.
    pub fn add(&mut self, other: &TargetCounts) {
        for (a, b) in self.by_class.iter_mut().zip(other.by_class) {
            *a += b;
        }
        for (a, b) in self.by_outcome.iter_mut().zip(other.by_outcome) {
            *a += b;
        }
    }

    /// What was counted since `then` (counters only grow; a reset reads as 0).
    pub fn since(&self, then: &TargetCounts) -> TargetCounts {
        TargetCounts {
            by_class: std::array::from_fn(|i| self.by_class[i].saturating_sub(then.by_class[i])),
            by_outcome: std::array::from_fn(|i| {
                self.by_outcome[i].saturating_sub(then.by_outcome[i])
            }),
        }
    }
}

/// Per-route latency.
#[derive(Default)]
pub struct RouteStats {
    /// Total request latency.
    pub latency: LazyHistogram,
}

pub use hypergate_upstream::ClusterStats;

/// Why a tunnel (an upgraded connection, e.g. a WebSocket) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelEnd {
    /// One side closed and the other finished.
    Closed,
    /// No byte either way for `limits.tunnel_idle_timeout`.
    IdleTimeout,
    /// The gateway drained.
    Drain,
    /// A socket failed.
    Error,
}

impl TunnelEnd {
    /// All reasons, for metrics.
    pub const ALL: [TunnelEnd; 4] = [
        TunnelEnd::Closed,
        TunnelEnd::IdleTimeout,
        TunnelEnd::Drain,
        TunnelEnd::Error,
    ];

    /// Metric label and access-log `error` value.
    pub fn label(self) -> &'static str {
        match self {
            TunnelEnd::Closed => "closed",
            TunnelEnd::IdleTimeout => "tunnel_idle_timeout",
            TunnelEnd::Drain => "drain",
            TunnelEnd::Error => "tunnel_error",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

type TargetKey = (Arc<str>, Arc<str>, Arc<str>);
type ClusterKey = (Arc<str>, Arc<str>);
/// A latency histogram and the exact sum of its values (µs).
type HistogramSum = (Histogram<u64>, u64);
/// (consumer, route).
type ConsumerKey = (Arc<str>, Arc<str>);

/// All stats of one shard.
#[derive(Default)]
pub struct ShardStats {
    targets: RefCell<HashMap<TargetKey, Rc<TargetStats>>>,
    routes: RefCell<HashMap<Arc<str>, Rc<RouteStats>>>,
    clusters: RefCell<HashMap<ClusterKey, Rc<ClusterStats>>>,
    /// Rejected requests by reason.
    pub rejections: [Cell<u64>; Reject::ALL.len()],
    /// Requests that matched no route.
    pub no_route: Cell<u64>,
    /// Open downstream connections.
    pub active_connections: Cell<u64>,
    /// The most open downstream connections since the shard last looked (memory release).
    pub connections_peak: Cell<u64>,
    /// Accepted downstream connections.
    pub accepted_connections: Cell<u64>,
    /// Access-log records dropped because the writer fell behind.
    pub access_log_dropped: Cell<u64>,
    /// Call records the store's sampling rules left out (counted in rollups).
    pub records_sampled_out: Cell<u64>,
    /// Edge-policy refusals by reason.
    pub edge_rejections: [Cell<u64>; EdgeReject::ALL.len()],
    /// Authentication failures by reason.
    pub auth_failures: [Cell<u64>; AuthFailure::ALL.len()],
    /// Requests per (consumer, route).
    consumers: RefCell<HashMap<ConsumerKey, Rc<Cell<u64>>>>,
    /// Completed TLS handshakes.
    pub tls_handshakes: Cell<u64>,
    /// Failed TLS handshakes by reason (see `tls::HANDSHAKE_FAILURES`).
    pub tls_failures: [Cell<u64>; HANDSHAKE_FAILURES.len()],
    /// HTTP/2 events by kind (see [`H2_EVENTS`]).
    pub h2: [Cell<u64>; H2_EVENTS.len()],
    /// Open tunnels (upgraded connections).
    pub tunnels_active: Cell<u64>,
    /// Ended tunnels by reason.
    tunnels_ended: [Cell<u64>; TunnelEnd::ALL.len()],
    /// Tunnel bytes: `[client to upstream, upstream to client]`.
    tunnel_bytes: [Cell<u64>; 2],
    /// Errors the gateway answered, by (label, side): a bounded set, the
    /// labels are static.
    errors: RefCell<HashMap<ErrorKey, u64>>,
    /// gRPC calls by route, then method (`/package.Service/Method`), by
    /// status code ([`grpc_code_label`]); at most [`MAX_GRPC_METHODS`]
    /// methods per shard, the rest under [`OTHER_METHOD`].
    grpc: RefCell<HashMap<Arc<str>, GrpcMethods>>,
    grpc_methods: Cell<usize>,
}

/// Calls of one gRPC method by status code.
pub type GrpcCounts = [u64; GRPC_CODE_SLOTS];

/// A route's gRPC methods and their calls.
type GrpcMethods = HashMap<Box<str>, GrpcCounts>;

/// Methods (paths) counted apart per shard: clients choose the paths, so
/// the set is bounded; calls to methods beyond it count as [`OTHER_METHOD`].
pub const MAX_GRPC_METHODS: usize = 256;

/// The method label of calls beyond [`MAX_GRPC_METHODS`].
pub const OTHER_METHOD: &str = "other";

/// Counters per gRPC method: codes 0 to 16, then any other.
pub const GRPC_CODE_SLOTS: usize = GRPC_CODES.len() + 1;

/// The label of a counter slot: the code's name, or `other`.
pub fn grpc_code_label(slot: usize) -> &'static str {
    GRPC_CODES.get(slot).copied().unwrap_or("other")
}

/// (error label, side label).
type ErrorKey = (&'static str, &'static str);

impl ShardStats {
    /// Counts an error the gateway answered (or could not answer).
    pub fn error(&self, e: &hypergate_core::error::GatewayError) {
        *self
            .errors
            .borrow_mut()
            .entry((e.label(), e.side.label()))
            .or_default() += 1;
    }

    /// The counters for (route, cluster, version), created on first use.
    pub fn target(
        &self,
        route: &Arc<str>,
        cluster: &Arc<str>,
        version: &Arc<str>,
    ) -> Rc<TargetStats> {
        self.targets
            .borrow_mut()
            .entry((route.clone(), cluster.clone(), version.clone()))
            .or_insert_with(|| Rc::new(TargetStats::new()))
            .clone()
    }

    /// The stats of a route, created on first use.
    pub fn route(&self, name: &Arc<str>) -> Rc<RouteStats> {
        self.routes
            .borrow_mut()
            .entry(name.clone())
            .or_default()
            .clone()
    }

    /// The stats of a cluster version, created on first use.
    pub fn cluster(&self, name: &Arc<str>, version: &Arc<str>) -> Rc<ClusterStats> {
        self.clusters
            .borrow_mut()
            .entry((name.clone(), version.clone()))
            .or_default()
            .clone()
    }

    /// Counts a gRPC call on `route` to `method` that ended with `code`.
    /// Allocates only for a method not seen before (within the bound).
    pub fn grpc_call(&self, route: &Arc<str>, method: &str, code: u8) {
        let code = usize::from(code).min(GRPC_CODE_SLOTS - 1);
        let mut grpc = self.grpc.borrow_mut();
        let methods = match grpc.get_mut(&**route) {
            Some(m) => m,
            None => grpc.entry(route.clone()).or_default(),
        };
        if let Some(counts) = methods.get_mut(method) {
            counts[code] += 1;
            return;
        }
        let method = if self.grpc_methods.get() < MAX_GRPC_METHODS {
            self.grpc_methods.set(self.grpc_methods.get() + 1);
            method
        } else {
            OTHER_METHOD
        };
        methods.entry(method.into()).or_insert([0; GRPC_CODE_SLOTS])[code] += 1;
    }

    /// Counts an edge-policy refusal.
    pub fn edge_reject(&self, r: EdgeReject) {
        let c = &self.edge_rejections[r.index()];
        c.set(c.get() + 1);
    }

    /// Counts an authentication failure.
    pub fn auth_failure(&self, f: AuthFailure) {
        let c = &self.auth_failures[f.index()];
        c.set(c.get() + 1);
    }

    /// The request counter of (consumer, route), created on first use.
    pub fn consumer_counter(&self, consumer: &Arc<str>, route: &Arc<str>) -> Rc<Cell<u64>> {
        self.consumers
            .borrow_mut()
            .entry((consumer.clone(), route.clone()))
            .or_default()
            .clone()
    }

    /// Counts a failed TLS handshake.
    pub fn tls_failure(&self, reason: usize) {
        let c = &self.tls_failures[reason];
        c.set(c.get() + 1);
    }

    /// Counts an ended tunnel and the bytes it carried each way.
    pub fn tunnel_ended(&self, end: TunnelEnd, up: u64, down: u64) {
        let c = &self.tunnels_ended[end.index()];
        c.set(c.get() + 1);
        self.tunnel_bytes[0].set(self.tunnel_bytes[0].get() + up);
        self.tunnel_bytes[1].set(self.tunnel_bytes[1].get() + down);
    }

    /// Counts a rejection.
    pub fn reject(&self, r: Reject) {
        let c = &self.rejections[r.index()];
        c.set(c.get() + 1);
    }

    /// Copies everything into an owned snapshot for the admin thread.
    pub fn snapshot(&self, pools: Vec<PoolSnapshot>) -> ShardSnapshot {
        let targets = self
            .targets
            .borrow()
            .iter()
            .map(|(k, v)| (k.clone(), v.counts()))
            .collect();
        let routes = self
            .routes
            .borrow()
            .iter()
            .filter_map(|(k, v)| v.latency.snapshot().map(|h| (k.clone(), h)))
            .collect();
        let clusters = self
            .clusters
            .borrow()
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    ClusterSnapshot {
                        latency: v.upstream_latency.snapshot(),
                        connect_errors: v.connect_errors.get(),
                        timeouts: v.timeouts.get(),
                        retries: v.retries.get(),
                        ejections: v.ejections.get(),
                        bad_responses: v.bad_responses.get(),
                    },
                )
            })
            .collect();
        ShardSnapshot {
            targets,
            routes,
            clusters,
            pools,
            rejections: self.rejections.each_ref().map(Cell::get),
            no_route: self.no_route.get(),
            active_connections: self.active_connections.get(),
            accepted_connections: self.accepted_connections.get(),
            access_log_dropped: self.access_log_dropped.get(),
            records_sampled_out: self.records_sampled_out.get(),
            edge_rejections: self.edge_rejections.each_ref().map(Cell::get),
            auth_failures: self.auth_failures.each_ref().map(Cell::get),
            consumers: self
                .consumers
                .borrow()
                .iter()
                .map(|(k, v)| (k.clone(), v.get()))
                .collect(),
            tls_handshakes: self.tls_handshakes.get(),
            tls_failures: self.tls_failures.each_ref().map(Cell::get),
            h2: self.h2.each_ref().map(Cell::get),
            tunnels_active: self.tunnels_active.get(),
            tunnels_ended: self.tunnels_ended.each_ref().map(Cell::get),
            tunnel_bytes: self.tunnel_bytes.each_ref().map(Cell::get),
            errors: self.errors.borrow().iter().map(|(k, v)| (*k, *v)).collect(),
            grpc: self
                .grpc
                .borrow()
                .iter()
                .flat_map(|(route, methods)| {
                    methods
                        .iter()
                        .map(|(m, c)| ((route.to_string(), m.to_string()), *c))
                })
                .collect(),
        }
    }
}

/// One cluster's figures in a snapshot.
#[derive(Clone, Default)]
pub struct ClusterSnapshot {
    /// Upstream latency histogram and sum (µs).
    pub latency: Option<(Histogram<u64>, u64)>,
    /// Failed connects.
    pub connect_errors: u64,
    /// Timeouts.
    pub timeouts: u64,
    /// Retries.
    pub retries: u64,
    /// Ejections.
    pub ejections: u64,
    /// Invalid responses.
    pub bad_responses: u64,
}

/// Pool state of one endpoint on one shard.
#[derive(Clone)]
pub struct PoolSnapshot {
    /// Cluster name.
    pub cluster: Arc<str>,
    /// Endpoint label.
    pub endpoint: Arc<str>,
    /// Idle pooled connections.
    pub idle: u64,
    /// Open connections.
    pub open: u64,
    /// Currently ejected (1) or not (0).
    pub ejected: u64,
    /// Active health-check verdict.
    pub healthy: bool,
}

/// Everything one shard reports.
pub struct ShardSnapshot {
    targets: Vec<(TargetKey, TargetCounts)>,
    routes: Vec<(Arc<str>, HistogramSum)>,
    clusters: Vec<(ClusterKey, ClusterSnapshot)>,
    pools: Vec<PoolSnapshot>,
    rejections: [u64; Reject::ALL.len()],
    no_route: u64,
    active_connections: u64,
    accepted_connections: u64,
    access_log_dropped: u64,
    records_sampled_out: u64,
    edge_rejections: [u64; EdgeReject::ALL.len()],
    auth_failures: [u64; AuthFailure::ALL.len()],
    consumers: Vec<(ConsumerKey, u64)>,
    tls_handshakes: u64,
    tls_failures: [u64; HANDSHAKE_FAILURES.len()],
    h2: [u64; H2_EVENTS.len()],
    tunnels_active: u64,
    tunnels_ended: [u64; TunnelEnd::ALL.len()],
    tunnel_bytes: [u64; 2],
    errors: Vec<(ErrorKey, u64)>,
    grpc: Vec<((String, String), GrpcCounts)>,
}

/// Snapshots of all shards merged.
#[derive(Default)]
pub struct MergedStats {
    /// (route, cluster, version) -> counts by status class and outcome.
    pub targets: BTreeMap<(String, String, String), TargetCounts>,
    /// route -> latency histogram and sum (µs).
    pub routes: BTreeMap<String, (Histogram<u64>, u64)>,
    /// (cluster, version) -> figures.
    pub clusters: BTreeMap<(String, String), ClusterSnapshot>,
    /// (cluster, endpoint) -> pool state summed over shards.
    pub pools: BTreeMap<(String, String), PoolSnapshot>,
    /// Rejections by reason.
    pub rejections: [u64; Reject::ALL.len()],
    /// Requests with no route.
    pub no_route: u64,
    /// Open downstream connections.
    pub active_connections: u64,
    /// Accepted downstream connections.
    pub accepted_connections: u64,
    /// Dropped access-log records.
    pub access_log_dropped: u64,
    /// Call records left out by the store's sampling rules.
    pub records_sampled_out: u64,
    /// Edge-policy refusals by reason.
    pub edge_rejections: [u64; EdgeReject::ALL.len()],
    /// Authentication failures by reason.
    pub auth_failures: [u64; AuthFailure::ALL.len()],
    /// (consumer, route) -> requests.
    pub consumers: BTreeMap<(String, String), u64>,
    /// Completed TLS handshakes.
    pub tls_handshakes: u64,
    /// Failed TLS handshakes by reason.
    pub tls_failures: [u64; HANDSHAKE_FAILURES.len()],
    /// HTTP/2 events by kind (see [`H2_EVENTS`]).
    pub h2: [u64; H2_EVENTS.len()],
    /// Open tunnels.
    pub tunnels_active: u64,
    /// Ended tunnels by reason (see [`TunnelEnd::ALL`]).
    pub tunnels_ended: [u64; TunnelEnd::ALL.len()],
    /// Tunnel bytes: `[client to upstream, upstream to client]`.
    pub tunnel_bytes: [u64; 2],
    /// Errors the gateway answered, by (label, side).
    pub errors: BTreeMap<(&'static str, &'static str), u64>,
    /// gRPC calls by (route, method), by status code.
    pub grpc: BTreeMap<(String, String), GrpcCounts>,
    /// Shards that answered.
    pub shards: usize,
}

fn add_hist(into: &mut Option<(Histogram<u64>, u64)>, from: &(Histogram<u64>, u64)) {
    match into {
        Some((h, s)) => {
            // Both come from `new_histogram`, so bounds always match.
            let _ = h.add(&from.0);
            *s += from.1;
        }
        None => *into = Some(from.clone()),
    }
}

impl MergedStats {
    /// Merges shard snapshots.
    pub fn merge(snapshots: &[ShardSnapshot]) -> Self {
        Self::merge_refs(&snapshots.iter().collect::<Vec<_>>())
    }

    /// Merges shard snapshots held elsewhere.
    pub fn merge_refs(snapshots: &[&ShardSnapshot]) -> Self {
        let mut m = MergedStats {
            shards: snapshots.len(),
            ..Default::default()
        };
        for s in snapshots {
            for ((r, c, v), counts) in &s.targets {
                let e = m
                    .targets
                    .entry((r.to_string(), c.to_string(), v.to_string()))
                    .or_default();
                e.add(counts);
            }
            for (r, h) in &s.routes {
                let mut slot = m.routes.remove(r.as_ref());
                add_hist(&mut slot, h);
                m.routes.insert(r.to_string(), slot.expect("just filled"));
            }
            for ((c, v), cs) in &s.clusters {
                let e = m
                    .clusters
                    .entry((c.to_string(), v.to_string()))
                    .or_default();
                if let Some(h) = &cs.latency {
                    add_hist(&mut e.latency, h);
                }
                e.connect_errors += cs.connect_errors;
                e.timeouts += cs.timeouts;
                e.retries += cs.retries;
                e.ejections += cs.ejections;
                e.bad_responses += cs.bad_responses;
            }
            for p in &s.pools {
                let e = m
                    .pools
                    .entry((p.cluster.to_string(), p.endpoint.to_string()))
                    .or_insert_with(|| PoolSnapshot {
                        idle: 0,
                        open: 0,
                        ejected: 0,
                        ..p.clone()
                    });
                e.idle += p.idle;
                e.open += p.open;
                e.ejected += p.ejected;
            }
            for (a, b) in m.rejections.iter_mut().zip(&s.rejections) {
                *a += b;
            }
            m.no_route += s.no_route;
            m.active_connections += s.active_connections;
            m.accepted_connections += s.accepted_connections;
            m.access_log_dropped += s.access_log_dropped;
            m.records_sampled_out += s.records_sampled_out;
            for (a, b) in m.edge_rejections.iter_mut().zip(&s.edge_rejections) {
                *a += b;
            }
            for (a, b) in m.auth_failures.iter_mut().zip(&s.auth_failures) {
                *a += b;
            }
            for ((c, r), n) in &s.consumers {
                *m.consumers
                    .entry((c.to_string(), r.to_string()))
                    .or_default() += n;
            }
            m.tls_handshakes += s.tls_handshakes;
            for (a, b) in m.tls_failures.iter_mut().zip(&s.tls_failures) {
                *a += b;
            }
            for (a, b) in m.h2.iter_mut().zip(&s.h2) {
                *a += b;
            }
            m.tunnels_active += s.tunnels_active;
            for (a, b) in m.tunnels_ended.iter_mut().zip(&s.tunnels_ended) {
                *a += b;
            }
            for (a, b) in m.tunnel_bytes.iter_mut().zip(&s.tunnel_bytes) {
                *a += b;
            }
            for (k, n) in &s.errors {
                *m.errors.entry(*k).or_default() += n;
            }
            for (k, counts) in &s.grpc {
                let merged = m.grpc.entry(k.clone()).or_insert([0; GRPC_CODE_SLOTS]);
                for (a, b) in merged.iter_mut().zip(counts) {
                    *a += b;
                }
            }
        }
        m
    }
}

/// HTTP/2 events counted in metrics: connections served, streams that
/// entered the pipeline, streams refused over the per-connection limit, and
/// connections that ended with a protocol error (or a failed handshake).
pub const H2_EVENTS: [&str; 4] = [
    "connections",
    "streams",
    "refused_streams",
    "protocol_errors",
];

/// Indexes into [`H2_EVENTS`].
pub mod h2_event {
    /// A connection served.
    pub const CONNECTION: usize = 0;
    /// A stream that entered the pipeline.
    pub const STREAM: usize = 1;
    /// A stream refused over the per-connection limit.
    pub const REFUSED: usize = 2;
    /// A connection ended by a protocol error or a failed handshake.
    pub const ERROR: usize = 3;
}

impl ShardStats {
    /// Counts one HTTP/2 event (an index of [`H2_EVENTS`]).
    pub fn h2_event(&self, event: usize) {
        self.h2[event].set(self.h2[event].get() + 1);
    }
}

/// Handshake failure reasons counted in metrics.
pub const HANDSHAKE_FAILURES: [&str; 6] = [
    "no_shared_version_or_cipher",
    "bad_certificate",
    "peer_misbehaved",
    "timeout",
    "eof",
    "other",
];

/// Classifies a failed handshake into one of [`HANDSHAKE_FAILURES`] (its index).
pub fn classify_handshake_error(e: &std::io::Error) -> usize {
    if e.kind() == std::io::ErrorKind::TimedOut {
        return 3;
    }
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        return 4;
    }
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::PeerIncompatible(_)) => 0,
        Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented) => 1,
        Some(rustls::Error::PeerMisbehaved(_) | rustls::Error::InvalidMessage(_)) => 2,
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::HandshakeFailure | rustls::AlertDescription::ProtocolVersion,
        )) => 0,
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::BadCertificate
            | rustls::AlertDescription::UnknownCA
            | rustls::AlertDescription::CertificateUnknown,
        )) => 1,
        _ => 5,
    }
}
