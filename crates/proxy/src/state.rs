//! A shard's data-plane state: the config as installed on it (cluster and
//! route runtimes, effective split weights, the LLM layer's opaque state), its
//! open connections, and everything its request tasks share ([`ShardCtx`]).
//!
//! Single-threaded by design (`Rc`, `Cell`, `RefCell`): nothing here is shared
//! with another thread except the relaxed health flags and the caps' atomics.

use crate::spec::{Config, RouteAction};
use crate::stats::{PoolSnapshot, RouteStats, ShardStats, TargetStats};
use hypergate_core::config::overrides::Overrides;
use hypergate_core::record::AccessLogSink;
use hypergate_edge::policy::ConnectionLimits;
use hypergate_upstream::health::HealthRegistry;
use hypergate_upstream::ClusterRuntime;
use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Per-shard state of a route.
pub struct RouteRuntime {
    /// Latency stats.
    pub stats: Rc<RouteStats>,
    /// Clusters this route can send to, with their counters (parallel to the split targets).
    pub targets: Vec<(usize, Rc<TargetStats>)>,
    /// Counters for answers without a cluster (direct responses, errors before one was chosen).
    pub local: Rc<TargetStats>,
    /// A split's effective weights (the file's, or an override's), parallel to
    /// `targets`, and their sum.
    pub weights: Vec<u32>,
    /// Sum of `weights`.
    pub total_weight: u32,
    /// Smooth weighted round robin state for splits.
    pub split_current: Vec<Cell<i64>>,
    /// Request counters per consumer index, filled on first use.
    pub consumer_counters: RefCell<std::collections::HashMap<usize, Rc<Cell<u64>>>>,
}

/// A config as installed on one shard.
pub struct Installed {
    /// The validated config.
    pub config: Arc<Config>,
    /// The runtime overrides it runs with.
    pub overrides: Arc<Overrides>,
    /// The layer above the proxy keeps its per-shard state for this config here
    /// (the LLM gateway: its aliases' effective weights), so a request sees one
    /// config throughout. Opaque to the proxy.
    pub ext: Rc<dyn std::any::Any>,
    /// Cluster runtimes, parallel to `config.clusters`.
    pub clusters: Vec<Rc<ClusterRuntime>>,
    /// Route runtimes, parallel to `config.routes`.
    pub routes: Vec<RouteRuntime>,
}

impl Installed {
    /// Prepares `config` with `overrides` for this shard, reusing cluster
    /// runtimes (and so their pools) from `previous` where a cluster is unchanged.
    pub fn prepare(
        config: Arc<Config>,
        overrides: Arc<Overrides>,
        previous: Option<&Installed>,
        stats: &ShardStats,
        health: &HealthRegistry,
        ext: Rc<dyn std::any::Any>,
    ) -> Self {
        let resolved = crate::spec::route_weights(&overrides, &config);
        let fingerprint =
            |c: &crate::spec::Cluster| serde_json::to_string(&c.raw).unwrap_or_default();
        let clusters: Vec<Rc<ClusterRuntime>> = config
            .clusters
            .iter()
            .map(|spec| {
                let old =
                    previous.and_then(|p| p.clusters.iter().find(|c| c.spec.name == spec.name));
                match old {
                    Some(o) if fingerprint(&o.spec) == fingerprint(spec) => o.clone(),
                    _ => Rc::new(ClusterRuntime::new(
                        spec.clone(),
                        old.map(|o| o.as_ref()),
                        health,
                        stats.cluster(&spec.name, &spec.version),
                    )),
                }
            })
            .collect();
        let empty: Arc<str> = Arc::from("");
        let routes = config
            .routes
            .iter()
            .enumerate()
            .map(|(ri, r)| {
                let cluster_ids: Vec<usize> = match &r.action {
                    RouteAction::Cluster(i) => vec![*i],
                    RouteAction::Split(s) => s.targets.iter().map(|t| t.0).collect(),
                    RouteAction::Direct(_) | RouteAction::Ai => Vec::new(),
                };
                let weights: Vec<u32> = match (&r.action, resolved.get(&ri)) {
                    (RouteAction::Split(_), Some(w)) => w.clone(),
                    (RouteAction::Split(s), None) => s.targets.iter().map(|t| t.1).collect(),
                    _ => Vec::new(),
                };
                let targets = cluster_ids
                    .iter()
                    .map(|&i| {
                        let c = &config.clusters[i];
                        (i, stats.target(&r.name, &c.name, &c.version))
                    })
                    .collect();
                RouteRuntime {
                    stats: stats.route(&r.name),
                    targets,
                    total_weight: weights.iter().map(|w| (*w).min(1_000_000)).sum(),
                    weights,
                    local: stats.target(&r.name, &empty, &empty),
                    split_current: cluster_ids.iter().map(|_| Cell::new(0)).collect(),
                    consumer_counters: RefCell::default(),
                }
            })
            .collect();
        Installed {
            config,
            overrides,
            ext,
            clusters,
            routes,
        }
    }
}

/// What a registered connection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    /// Reading or answering a request.
    Busy,
    /// Waiting for the next request; the generation changes each time it goes idle.
    Idle(u32),
    /// Carrying an upgraded connection to this upstream socket.
    Tunnel(RawFd),
}

#[derive(Debug)]
struct ConnSlot {
    fd: RawFd,
    state: ConnState,
    generation: u32,
    /// A drain shut its socket down.
    shut: bool,
}

/// Open downstream connections, so a drain can close the idle ones and end tunnels.
#[derive(Default)]
pub struct ConnRegistry {
    slots: Vec<Option<ConnSlot>>,
    free: Vec<usize>,
}

impl ConnRegistry {
    /// Registers a connection; returns its slot.
    pub fn register(&mut self, fd: RawFd) -> usize {
        let slot = Some(ConnSlot {
            fd,
            state: ConnState::Busy,
            generation: 0,
            shut: false,
        });
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        }
    }

    /// Marks a connection idle (between requests) or busy.
    pub fn set_idle(&mut self, slot: usize, idle: bool) {
        if let Some(Some(s)) = self.slots.get_mut(slot) {
            if idle {
                s.generation = s.generation.wrapping_add(1);
                s.state = ConnState::Idle(s.generation);
            } else {
                s.state = ConnState::Busy;
            }
        }
    }

    /// Marks a connection as a tunnel to `upstream_fd`.
    pub fn set_tunnel(&mut self, slot: usize, upstream_fd: RawFd) {
        if let Some(Some(s)) = self.slots.get_mut(slot) {
            s.state = ConnState::Tunnel(upstream_fd);
        }
    }

    /// Whether a drain shut this connection down.
    pub fn was_shut(&self, slot: usize) -> bool {
        matches!(self.slots.get(slot), Some(Some(s)) if s.shut)
    }

    /// Forgets a closed connection.
    pub fn unregister(&mut self, slot: usize) {
        self.slots[slot] = None;
        self.free.push(slot);
    }

    /// The idle connections now, with their idle generations.
    pub fn idle_snapshot(&self) -> Vec<(usize, u32)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                Some(ConnSlot {
                    state: ConnState::Idle(g),
                    ..
                }) => Some((i, *g)),
                _ => None,
            })
            .collect()
    }

    /// Shuts down the read side of connections that have stayed idle since `snapshot`
    /// (same generation): their pending read sees EOF and they close.
    pub fn close_still_idle(&mut self, snapshot: &[(usize, u32)]) {
        for &(i, g) in snapshot {
            if let Some(Some(s)) = self.slots.get_mut(i) {
                if s.state == ConnState::Idle(g) {
                    s.shut = true;
                    // SAFETY: registered fds belong to live connection tasks on this
                    // thread (they unregister before closing); SHUT_RD only makes
                    // their idle read see EOF.
                    unsafe { libc::shutdown(s.fd, libc::SHUT_RD) };
                }
            }
        }
    }

    /// Shuts down both sockets of every tunnel, ending it.
    pub fn end_tunnels(&mut self) {
        for s in self.slots.iter_mut().flatten() {
            if let ConnState::Tunnel(up) = s.state {
                s.shut = true;
                shutdown_both(s.fd, up);
            }
        }
    }
}

/// Everything a shard's tasks share.
pub struct ShardCtx {
    /// Shard number.
    pub id: usize,
    /// The config requests start on (each request holds its own `Rc`).
    pub installed: RefCell<Rc<Installed>>,
    /// Counters and histograms.
    pub stats: ShardStats,
    /// Balancer randomness.
    pub rng: Cell<u64>,
    /// Set when draining: finish the current request, then close.
    pub draining: Cell<bool>,
    /// Open connections.
    pub conns: RefCell<ConnRegistry>,
    /// Access log, when enabled (taken at the end of a drain so the writer can flush and exit).
    pub access_log: RefCell<Option<AccessLogSink>>,
    /// Health verdicts.
    pub health: Arc<HealthRegistry>,
    /// Verified JWTs (cleared on every config install).
    pub token_cache: hypergate_edge::auth::TokenCache,
    /// Process-wide connection caps.
    pub conn_limits: Arc<ConnectionLimits>,
    /// This shard's rate-limit leases.
    pub limiter: hypergate_edge::ratelimit::ShardLimiter,
    /// This shard's span and log buffer, when OTLP export is on.
    pub telemetry: Option<hypergate_otel::TelemetrySink>,
}

impl ShardCtx {
    /// Counts a request of an authenticated consumer on a route.
    pub fn count_consumer(&self, inst: &Installed, route: usize, consumer: usize) {
        let rr = &inst.routes[route];
        let mut counters = rr.consumer_counters.borrow_mut();
        let counter = counters.entry(consumer).or_insert_with(|| {
            self.stats.consumer_counter(
                &inst.config.auth.consumers[consumer].name,
                &inst.config.routes[route].name,
            )
        });
        counter.set(counter.get() + 1);
    }

    /// The pools of every endpoint of the installed clusters, for a stats snapshot.
    pub fn pool_snapshot(&self) -> Vec<PoolSnapshot> {
        let inst = self.installed.borrow();
        inst.clusters
            .iter()
            .flat_map(|c| {
                c.endpoints.iter().map(move |e| PoolSnapshot {
                    cluster: c.spec.name.clone(),
                    endpoint: e.label.clone(),
                    idle: e.idle_count() as u64,
                    open: e.open.get() as u64,
                    ejected: u64::from(e.is_ejected()),
                    healthy: e.healthy.load(Ordering::Relaxed),
                })
            })
            .collect()
    }
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
