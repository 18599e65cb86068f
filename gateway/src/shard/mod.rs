//! Shards: one pinned thread per core, each with its own monoio runtime and state.
//!
//! 1. [`spawn`] starts a thread per shard, pins it, and builds a monoio runtime
//!    (io_uring when the kernel allows it and the config asks, else epoll).
//! 2. The shard adopts its own SO_REUSEPORT listener sockets (bound by the
//!    caller, so port 0 resolves once) and runs an accept loop per listener.
//! 3. A control task receives [`ShardCommand`]s from the control thread:
//!    install a new config (prepared from the old one so pools survive),
//!    snapshot stats, or drain.
//!
//! All per-request state ([`ShardCtx`]) is `Rc`/`Cell`/`RefCell`: nothing on
//! the request path is shared with another thread except the relaxed health flags.

use crate::config::{Config, RouteAction};
use crate::observability::access_log::AccessLogSink;
use crate::observability::metrics::PoolSnapshot;
use crate::observability::{RouteStats, ShardSnapshot, ShardStats, TargetStats};
use crate::policy::{ConnRefusal, ConnectionLimits, ConnectionPermit};
use crate::proxy::EdgeReject;
use crate::upstream::health::HealthRegistry;
use crate::upstream::ClusterRuntime;
use monoio::io::AsyncWriteRentExt;
use monoio::time::TimeDriver;
use monoio::{FusionRuntime, IoUringDriver, LegacyDriver, RuntimeBuilder};
use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A message from the control thread to a shard.
pub enum ShardCommand {
    /// Switch to this config; acknowledge when installed.
    Install(Arc<Config>, crossbeam_channel::Sender<()>),
    /// Send a stats snapshot.
    Snapshot(crossbeam_channel::Sender<ShardSnapshot>),
    /// Stop accepting, finish in-flight requests, then exit.
    Drain,
}

/// Per-shard state of a route.
pub struct RouteRuntime {
    /// Latency stats.
    pub stats: Rc<RouteStats>,
    /// Clusters this route can send to, with their counters (parallel to the split targets).
    pub targets: Vec<(usize, Rc<TargetStats>)>,
    /// Counters for answers without a cluster (direct responses, errors before one was chosen).
    pub local: Rc<TargetStats>,
    /// Smooth weighted round robin state for splits.
    pub split_current: Vec<Cell<i64>>,
    /// Request counters per consumer index, filled on first use.
    pub consumer_counters: RefCell<std::collections::HashMap<usize, Rc<Cell<u64>>>>,
}

/// A config as installed on one shard.
pub struct Installed {
    /// The validated config.
    pub config: Arc<Config>,
    /// Cluster runtimes, parallel to `config.clusters`.
    pub clusters: Vec<Rc<ClusterRuntime>>,
    /// Route runtimes, parallel to `config.routes`.
    pub routes: Vec<RouteRuntime>,
}

impl Installed {
    /// Prepares `config` for this shard, reusing cluster runtimes (and so their
    /// pools) from `previous` where a cluster is unchanged.
    pub fn prepare(
        config: Arc<Config>,
        previous: Option<&Installed>,
        stats: &ShardStats,
        health: &HealthRegistry,
    ) -> Self {
        let fingerprint =
            |c: &crate::config::Cluster| serde_json::to_string(&c.raw).unwrap_or_default();
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
            .map(|r| {
                let cluster_ids: Vec<usize> = match &r.action {
                    RouteAction::Cluster(i) => vec![*i],
                    RouteAction::Split(s) => s.targets.iter().map(|t| t.0).collect(),
                    RouteAction::Direct(_) | RouteAction::Ai(_) => Vec::new(),
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
                    local: stats.target(&r.name, &empty, &empty),
                    split_current: cluster_ids.iter().map(|_| Cell::new(0)).collect(),
                    consumer_counters: RefCell::default(),
                }
            })
            .collect();
        Installed {
            config,
            clusters,
            routes,
        }
    }
}

/// Open downstream connections, so a drain can wake the idle ones.
#[derive(Default)]
pub struct ConnRegistry {
    slots: Vec<Option<(RawFd, bool)>>,
    free: Vec<usize>,
}

impl ConnRegistry {
    /// Registers a connection; returns its slot.
    pub fn register(&mut self, fd: RawFd) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some((fd, true));
                i
            }
            None => {
                self.slots.push(Some((fd, true)));
                self.slots.len() - 1
            }
        }
    }

    /// Marks a connection idle (between requests) or busy.
    pub fn set_idle(&mut self, slot: usize, idle: bool) {
        if let Some(Some(s)) = self.slots.get_mut(slot) {
            s.1 = idle;
        }
    }

    /// Forgets a closed connection.
    pub fn unregister(&mut self, slot: usize) {
        self.slots[slot] = None;
        self.free.push(slot);
    }

    fn idle_fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.slots.iter().flatten().filter(|s| s.1).map(|s| s.0)
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
    pub token_cache: crate::auth::TokenCache,
    /// Process-wide connection caps.
    pub conn_limits: Arc<ConnectionLimits>,
    /// This shard's rate-limit leases.
    pub limiter: crate::edge::ratelimit::ShardLimiter,
    /// LLM gateway state: metrics, cache, breakers, and the process-wide budgets.
    pub ai: crate::ai::AiShard,
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

    fn pool_snapshot(&self) -> Vec<PoolSnapshot> {
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

/// What the control thread keeps per shard.
pub struct ShardHandle {
    /// Command channel.
    pub tx: async_channel::Sender<ShardCommand>,
    /// The thread.
    pub thread: std::thread::JoinHandle<()>,
}

/// Everything a shard thread needs to start.
pub struct ShardSpec {
    /// Shard number.
    pub id: usize,
    /// CPU to pin to.
    pub cpu: Option<usize>,
    /// Try io_uring.
    pub io_uring: bool,
    /// Listener sockets for this shard (already bound with SO_REUSEPORT).
    pub listeners: Vec<std::net::TcpListener>,
    /// Initial config.
    pub config: Arc<Config>,
    /// Access log sink.
    pub access_log: Option<AccessLogSink>,
    /// Health verdicts.
    pub health: Arc<HealthRegistry>,
    /// Seed for the balancer RNG.
    pub seed: u64,
    /// Process-wide connection caps.
    pub conn_limits: Arc<ConnectionLimits>,
    /// Process-wide rate-limit state.
    pub rate_limiter: Arc<crate::edge::ratelimit::RateLimiter>,
    /// Process-wide LLM state (budgets, feedback).
    pub ai: Arc<crate::ai::AiShared>,
    /// Number of shards (the cache and feedback memory are split between them).
    pub shards: usize,
}

type Runtime = FusionRuntime<TimeDriver<IoUringDriver>, TimeDriver<LegacyDriver>>;

/// Whether io_uring will be used (probed once).
pub fn io_uring_available() -> bool {
    monoio::utils::detect_uring()
}

fn build_runtime(io_uring: bool) -> std::io::Result<Runtime> {
    if io_uring && io_uring_available() {
        match RuntimeBuilder::<IoUringDriver>::new()
            .enable_timer()
            .with_entries(4096)
            .build()
        {
            Ok(rt) => return Ok(rt.into()),
            // The probe ring is tiny; a large one can still fail (RLIMIT_MEMLOCK on
            // older kernels). Fall back to epoll rather than lose the shard.
            Err(e) => {
                tracing::warn!(error = %e, "io_uring ring setup failed; this shard uses epoll")
            }
        }
    }
    Ok(RuntimeBuilder::<LegacyDriver>::new()
        .enable_timer()
        .build()?
        .into())
}

/// Starts a shard thread.
pub fn spawn(spec: ShardSpec) -> std::io::Result<ShardHandle> {
    let (tx, rx) = async_channel::unbounded();
    let thread = std::thread::Builder::new()
        .name(format!("shard-{}", spec.id))
        .spawn(move || run(spec, rx))?;
    Ok(ShardHandle { tx, thread })
}

fn run(spec: ShardSpec, rx: async_channel::Receiver<ShardCommand>) {
    if let Some(cpu) = spec.cpu {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
            tracing::warn!(shard = spec.id, cpu, "could not pin shard to CPU");
        }
    }
    let mut rt = match build_runtime(spec.io_uring) {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(shard = spec.id, error = %e, "cannot build runtime");
            return;
        }
    };
    rt.block_on(shard_main(spec, rx));
}

async fn shard_main(spec: ShardSpec, rx: async_channel::Receiver<ShardCommand>) {
    let stats = ShardStats::default();
    let installed = Installed::prepare(spec.config.clone(), None, &stats, &spec.health);
    let drain_timeout = spec.config.raw.server.drain_timeout;
    let ctx = Rc::new(ShardCtx {
        id: spec.id,
        installed: RefCell::new(Rc::new(installed)),
        stats,
        rng: Cell::new(spec.seed | 1),
        draining: Cell::new(false),
        conns: RefCell::new(ConnRegistry::default()),
        access_log: RefCell::new(spec.access_log),
        health: spec.health,
        token_cache: crate::auth::TokenCache::default(),
        conn_limits: spec.conn_limits,
        limiter: crate::edge::ratelimit::ShardLimiter::new(spec.rate_limiter, spec.id),
        ai: crate::ai::AiShard::new(&spec.config.ai, spec.ai, spec.shards),
    });
    let mut listener_fds = Vec::new();
    for (i, std_listener) in spec.listeners.into_iter().enumerate() {
        listener_fds.push(std_listener.as_raw_fd());
        match monoio::net::TcpListener::from_std(std_listener) {
            Ok(l) => {
                monoio::spawn(accept_loop(ctx.clone(), l, i));
            }
            Err(e) => tracing::error!(shard = ctx.id, error = %e, "cannot adopt listener"),
        }
    }
    while let Ok(cmd) = rx.recv().await {
        match cmd {
            ShardCommand::Install(config, ack) => {
                let next = {
                    let cur = ctx.installed.borrow();
                    Installed::prepare(config, Some(&cur), &ctx.stats, &ctx.health)
                };
                ctx.ai.install(&next.config.ai);
                *ctx.installed.borrow_mut() = Rc::new(next);
                ctx.token_cache.clear();
                let _ = ack.send(());
            }
            ShardCommand::Snapshot(reply) => {
                let _ = reply.send(
                    ctx.stats
                        .snapshot(ctx.pool_snapshot(), ctx.ai.stats.snapshot()),
                );
            }
            ShardCommand::Drain => break,
        }
    }
    drain(&ctx, &listener_fds, drain_timeout).await;
    // Tasks still holding the context (connections past the drain timeout) may
    // outlive this function; release what other threads wait on explicitly.
    ctx.access_log.borrow_mut().take();
    let config = ctx.installed.borrow().config.clone();
    *ctx.installed.borrow_mut() = Rc::new(Installed {
        config,
        clusters: Vec::new(),
        routes: Vec::new(),
    });
}

async fn accept_loop(ctx: Rc<ShardCtx>, listener: monoio::net::TcpListener, listener_idx: usize) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                if ctx.draining.get() {
                    return;
                }
                ctx.stats
                    .accepted_connections
                    .set(ctx.stats.accepted_connections.get() + 1);
                let permit = match ctx.conn_limits.admit(peer.ip()) {
                    Ok(p) => p,
                    Err(refusal) => {
                        ctx.stats.edge_reject(match refusal {
                            ConnRefusal::Total => EdgeReject::ConnectionLimit,
                            ConnRefusal::PerIp => EdgeReject::ConnectionLimitPerIp,
                        });
                        // A plaintext 503 on a TLS port would read as a broken TLS setup:
                        // there, the connection is just closed.
                        if ctx.installed.borrow().config.listeners[listener_idx]
                            .tls
                            .is_none()
                        {
                            monoio::spawn(refuse_connection(stream));
                        }
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let fd = stream.as_raw_fd();
                let tls = ctx.installed.borrow().config.listeners[listener_idx]
                    .tls
                    .clone();
                match tls {
                    None => {
                        monoio::spawn(crate::proxy::serve_connection(
                            ctx.clone(),
                            stream,
                            fd,
                            peer,
                            "http",
                            permit,
                        ));
                    }
                    Some(tls) => {
                        monoio::spawn(serve_tls(ctx.clone(), tls, stream, peer, permit));
                    }
                }
            }
            Err(e) => {
                if ctx.draining.get() {
                    return;
                }
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(shard = ctx.id, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Completes a TLS handshake (bounded by the header timeout), then serves HTTP over it.
async fn serve_tls(
    ctx: Rc<ShardCtx>,
    tls: Arc<rustls::ServerConfig>,
    stream: monoio::net::TcpStream,
    peer: std::net::SocketAddr,
    permit: ConnectionPermit,
) {
    let fd = stream.as_raw_fd();
    let timeout = ctx.installed.borrow().config.raw.limits.header_timeout;
    let acceptor = monoio_rustls::TlsAcceptor::from(tls);
    match monoio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls_stream)) => {
            ctx.stats
                .tls_handshakes
                .set(ctx.stats.tls_handshakes.get() + 1);
            crate::proxy::serve_connection(ctx, tls_stream, fd, peer, "https", permit).await;
        }
        Ok(Err(e)) => ctx
            .stats
            .tls_failure(crate::tls::classify_handshake_error(&e.into())),
        Err(_) => ctx.stats.tls_failure(crate::tls::classify_handshake_error(
            &std::io::ErrorKind::TimedOut.into(),
        )),
    }
}

/// Answers a connection over the caps with a 503 and closes it.
async fn refuse_connection(mut stream: monoio::net::TcpStream) {
    let mut out = Vec::with_capacity(256);
    crate::http::write_error(
        &mut out,
        503,
        "connection_limit",
        "too many connections",
        "",
        true,
        &[],
    );
    let _ = monoio::time::timeout(Duration::from_secs(1), stream.write_all(out)).await;
}

/// Stops accepting, wakes idle keep-alive connections so they close, and waits
/// for in-flight requests up to `timeout`.
async fn drain(ctx: &Rc<ShardCtx>, listener_fds: &[RawFd], timeout: Duration) {
    ctx.draining.set(true);
    for fd in listener_fds {
        // SAFETY: `fd` is a listening socket this shard owns and has not closed;
        // shutdown() only wakes the pending accept (it returns an error), it does not free the fd.
        unsafe { libc::shutdown(*fd, libc::SHUT_RDWR) };
    }
    let deadline = Instant::now() + timeout;
    loop {
        for fd in ctx.conns.borrow().idle_fds() {
            // SAFETY: registered fds belong to live connection tasks on this thread
            // (they unregister before closing); SHUT_RD makes their idle read see EOF.
            unsafe { libc::shutdown(fd, libc::SHUT_RD) };
        }
        if ctx.stats.active_connections.get() == 0 || Instant::now() >= deadline {
            break;
        }
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
    let left = ctx.stats.active_connections.get();
    if left > 0 {
        tracing::warn!(
            shard = ctx.id,
            connections = left,
            "drain timeout: closing remaining connections"
        );
    }
}
