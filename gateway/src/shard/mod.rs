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

use crate::config::overrides::Overrides;
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
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A message from the control thread to a shard.
pub enum ShardCommand {
    /// Build the state for this config and these overrides (from the running
    /// state, so pools survive) and hold it; answer whether that worked. Nothing
    /// changes until [`ShardCommand::Commit`].
    Prepare(Prepare),
    /// Switch to the prepared state; acknowledge when installed.
    Commit(crossbeam_channel::Sender<()>),
    /// Drop the prepared state: the running one stays.
    Abort,
    /// Run the current config with these overrides; acknowledge when installed.
    SetOverrides(Arc<Overrides>, crossbeam_channel::Sender<()>),
    /// Send a stats snapshot.
    Snapshot(crossbeam_channel::Sender<ShardSnapshot>),
    /// Stop accepting, finish in-flight requests, then exit.
    Drain,
}

/// A reload's first phase, for one shard.
pub struct Prepare {
    /// The new config.
    pub config: Arc<Config>,
    /// The overrides in force.
    pub overrides: Arc<Overrides>,
    /// Fail on purpose with this reason (failure drills and tests; see
    /// `Controller::fail_next_prepare`).
    pub fail: Option<String>,
    /// Where to say whether the shard is ready to commit.
    pub ready: crossbeam_channel::Sender<Result<(), String>>,
}

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
        let resolved = crate::config::resolve::resolve(&overrides, &config);
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
            .enumerate()
            .map(|(ri, r)| {
                let cluster_ids: Vec<usize> = match &r.action {
                    RouteAction::Cluster(i) => vec![*i],
                    RouteAction::Split(s) => s.targets.iter().map(|t| t.0).collect(),
                    RouteAction::Direct(_) | RouteAction::Ai => Vec::new(),
                };
                let weights: Vec<u32> = match (&r.action, resolved.routes.get(&ri)) {
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
    fn idle_snapshot(&self) -> Vec<(usize, u32)> {
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
    fn close_still_idle(&mut self, snapshot: &[(usize, u32)]) {
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
    fn end_tunnels(&mut self) {
        for s in self.slots.iter_mut().flatten() {
            if let ConnState::Tunnel(up) = s.state {
                s.shut = true;
                crate::proxy::shutdown_both(s.fd, up);
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
    pub token_cache: crate::auth::TokenCache,
    /// Process-wide connection caps.
    pub conn_limits: Arc<ConnectionLimits>,
    /// This shard's rate-limit leases.
    pub limiter: crate::edge::ratelimit::ShardLimiter,
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
    /// Initial runtime overrides (restored from the call store).
    pub overrides: Arc<Overrides>,
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

/// What hands a thread's freed memory back to the operating system (the
/// binary's allocator sets it: `mi_collect` for mimalloc); nothing when unset.
static MEMORY_RELEASE: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Sets how a shard returns freed memory to the OS after many of its
/// connections closed (see [`release_memory_after_floods`]). Call once, at start.
pub fn set_memory_release(release: fn()) {
    let _ = MEMORY_RELEASE.set(release);
}

/// Connections that must have closed, from the peak since the last release,
/// before a shard releases memory.
const RELEASE_AFTER_CLOSED: u64 = 256;

/// Returns freed memory to the OS once the open connections fell well below
/// their recent peak: the allocator keeps a flood's pages for reuse otherwise,
/// and a shard with nothing to do never gets around to purging them. Checked
/// once a second; steady traffic (however many connections come and go) never
/// triggers it, only a fall from a peak.
async fn release_memory_after_floods(ctx: Rc<ShardCtx>) {
    let Some(release) = MEMORY_RELEASE.get() else {
        return;
    };
    let mut peak = 0;
    while !ctx.draining.get() {
        monoio::time::sleep(Duration::from_secs(1)).await;
        let open = ctx.stats.active_connections.get();
        // The most open at any moment since the last look (a flood may come and
        // go between two looks).
        peak = peak.max(ctx.stats.connections_peak.replace(open));
        if peak - open >= RELEASE_AFTER_CLOSED && open <= peak / 2 {
            release();
            peak = open;
        }
    }
}

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
    let installed = Installed::prepare(
        spec.config.clone(),
        spec.overrides.clone(),
        None,
        &stats,
        &spec.health,
        crate::ai::installed(&spec.config, &spec.overrides),
    );
    let drain_timeout = spec.config.raw.server.drain_timeout;
    let drain_grace = spec.config.raw.server.drain_idle_grace;
    // The layer above the proxy: the LLM gateway's per-shard state answers AI routes.
    let ai = Rc::new(crate::ai::AiShard::new(
        crate::ai::spec::of(&spec.config),
        spec.ai,
        spec.shards,
    ));
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
    });
    monoio::spawn(release_memory_after_floods(ctx.clone()));
    // Closed when the drain starts: every accept loop stops, accepts what is
    // already queued, and closes its listener.
    let (stop_accepting, accepting) = async_channel::bounded::<()>(1);
    let mut accept_loops = Vec::new();
    for (i, std_listener) in spec.listeners.into_iter().enumerate() {
        match monoio::net::TcpListener::from_std(std_listener) {
            Ok(l) => {
                accept_loops.push(monoio::spawn(accept_loop(
                    ctx.clone(),
                    ai.clone(),
                    l,
                    i,
                    accepting.clone(),
                )));
            }
            Err(e) => tracing::error!(shard = ctx.id, error = %e, "cannot adopt listener"),
        }
    }
    drop(accepting);
    // A prepared reload waiting for its commit (or abort).
    let mut pending: Option<Installed> = None;
    while let Ok(cmd) = rx.recv().await {
        match cmd {
            ShardCommand::Prepare(p) => {
                pending = None;
                let result = match p.fail {
                    Some(reason) => Err(reason),
                    None => {
                        let cur = ctx.installed.borrow();
                        let ext = crate::ai::installed(&p.config, &p.overrides);
                        pending = Some(Installed::prepare(
                            p.config,
                            p.overrides,
                            Some(&cur),
                            &ctx.stats,
                            &ctx.health,
                            ext,
                        ));
                        Ok(())
                    }
                };
                let _ = p.ready.send(result);
            }
            ShardCommand::Commit(ack) => {
                if let Some(next) = pending.take() {
                    ai.install(crate::ai::spec::of(&next.config));
                    *ctx.installed.borrow_mut() = Rc::new(next);
                    ctx.token_cache.clear();
                }
                let _ = ack.send(());
            }
            ShardCommand::Abort => pending = None,
            ShardCommand::SetOverrides(overrides, ack) => {
                let next = {
                    let cur = ctx.installed.borrow();
                    let ext = crate::ai::installed(&cur.config, &overrides);
                    Installed::prepare(
                        cur.config.clone(),
                        overrides,
                        Some(&cur),
                        &ctx.stats,
                        &ctx.health,
                        ext,
                    )
                };
                *ctx.installed.borrow_mut() = Rc::new(next);
                let _ = ack.send(());
            }
            ShardCommand::Snapshot(reply) => {
                let _ = reply.send(
                    ctx.stats
                        .snapshot(ctx.pool_snapshot(), ai.stats.snapshot()),
                );
            }
            ShardCommand::Drain => break,
        }
    }
    drain(
        &ctx,
        stop_accepting,
        accept_loops,
        drain_timeout,
        drain_grace,
    )
    .await;
    // Tasks still holding the context (connections past the drain timeout) may
    // outlive this function; release what other threads wait on explicitly.
    ctx.access_log.borrow_mut().take();
    let config = ctx.installed.borrow().config.clone();
    *ctx.installed.borrow_mut() = Rc::new(Installed {
        config,
        overrides: Arc::default(),
        ext: Rc::new(()),
        clusters: Vec::new(),
        routes: Vec::new(),
    });
}

/// How long a draining listener keeps accepting after it stopped taking new
/// SYNs: handshakes already under way complete and are served, instead of
/// being reset when the listener closes.
const LISTENER_SETTLE: Duration = Duration::from_millis(100);

async fn accept_loop(
    ctx: Rc<ShardCtx>,
    ai: Rc<crate::ai::AiShard>,
    listener: monoio::net::TcpListener,
    listener_idx: usize,
    accepting: async_channel::Receiver<()>,
) {
    // Until the drain: accept. Then, with new SYNs dropped, keep accepting for
    // `LISTENER_SETTLE`, so nothing is mid-handshake when the listener closes.
    // The pending accept is never dropped while connections can still arrive:
    // with io_uring, one that completed as it was cancelled would be lost with
    // its request (and reset at exit). It is dropped only after the settle,
    // when the filter lets no new connection in.
    {
        let mut settle_until: Option<Instant> = None;
        let mut accept = std::pin::pin!(listener.accept());
        loop {
            let draining = settle_until.is_some();
            let settle_left = settle_until.map_or(Duration::ZERO, |u| {
                u.saturating_duration_since(Instant::now())
            });
            monoio::select! {
                r = accept.as_mut() => {
                    accept.set(listener.accept());
                    match r {
                        Ok((stream, peer)) => admit(&ctx, &ai, stream, peer, listener_idx),
                        Err(e) => {
                            // EMFILE and friends: back off briefly instead of spinning.
                            tracing::warn!(shard = ctx.id, error = %e, "accept failed");
                            monoio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                _ = accepting.recv(), if !draining => {
                    if let Err(e) = refuse_new_syns(listener.as_raw_fd()) {
                        tracing::warn!(shard = ctx.id, error = %e, "cannot stop new handshakes on a draining listener");
                    }
                    settle_until = Some(Instant::now() + LISTENER_SETTLE);
                }
                _ = monoio::time::sleep(settle_left), if draining => break,
            }
        }
        // The pending accept (cancelled now, with nothing left to take) goes here,
        // before the queue is drained below.
    }
    // Closing a listener resets the connections still in its accept queue, so
    // take them all first (they are answered with `Connection: close`).
    let fd = listener.as_raw_fd();
    // SAFETY: `fd` is this shard's open listening socket; the duplicate is a new
    // fd that the std listener owns and closes; the original stays with `listener`.
    let dup = unsafe { libc::dup(fd) };
    if dup >= 0 {
        // SAFETY: `dup` is a fresh, valid fd owned by nothing else.
        let queue = unsafe { std::net::TcpListener::from_raw_fd(dup) };
        if queue.set_nonblocking(true).is_ok() {
            while let Ok((std_stream, peer)) = queue.accept() {
                let _ = std_stream.set_nonblocking(true);
                match monoio::net::TcpStream::from_std(std_stream) {
                    Ok(stream) => admit(&ctx, &ai, stream, peer, listener_idx),
                    Err(e) => {
                        tracing::warn!(shard = ctx.id, error = %e, "cannot adopt a queued connection")
                    }
                }
            }
        }
    }
}

/// Makes a listening socket drop new connection attempts (TCP segments with SYN
/// and without ACK) while handshakes already under way still complete: a
/// classic BPF socket filter, which the kernel runs on the TCP header of every
/// segment addressed to the listener. A client whose SYN is dropped retries
/// after its retransmission timeout (a second) and finds the port closed: it is
/// refused before it sent anything, rather than reset after.
fn refuse_new_syns(fd: RawFd) -> std::io::Result<()> {
    // A = TCP flags (byte 13 of the TCP header); A &= SYN|ACK;
    // SYN alone: drop (return 0); anything else: keep (return the whole length).
    let mut program = [
        libc::sock_filter {
            code: (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16,
            jt: 0,
            jf: 0,
            k: 13,
        },
        libc::sock_filter {
            code: (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: 0x12,
        },
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: 0x02,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: u32::MAX,
        },
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: `fd` is an open socket of this shard; the kernel copies the program
    // (five valid classic BPF instructions) out of `fprog` during the call, so
    // both only need to live until it returns.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            std::ptr::addr_of!(fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Applies the connection caps and starts serving an accepted connection.
fn admit(
    ctx: &Rc<ShardCtx>,
    ai: &Rc<crate::ai::AiShard>,
    stream: monoio::net::TcpStream,
    peer: std::net::SocketAddr,
    listener_idx: usize,
) {
    ctx.stats
        .accepted_connections
        .set(ctx.stats.accepted_connections.get() + 1);
    let tls = ctx.installed.borrow().config.listeners[listener_idx]
        .tls
        .clone();
    let permit = match ctx.conn_limits.admit(peer.ip()) {
        Ok(p) => p,
        Err(refusal) => {
            ctx.stats.edge_reject(match refusal {
                ConnRefusal::Total => EdgeReject::ConnectionLimit,
                ConnRefusal::PerIp => EdgeReject::ConnectionLimitPerIp,
            });
            // A plaintext 503 on a TLS port would read as a broken TLS setup:
            // there, the connection is just closed.
            if tls.is_none() {
                monoio::spawn(refuse_connection(stream));
            }
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let fd = stream.as_raw_fd();
    match tls {
        None => {
            monoio::spawn(crate::proxy::serve_connection(
                ctx.clone(),
                ai.clone(),
                stream,
                fd,
                peer,
                "http",
                permit,
            ));
        }
        Some(tls) => {
            monoio::spawn(serve_tls(ctx.clone(), ai.clone(), tls, stream, peer, permit));
        }
    }
}

/// Completes a TLS handshake (bounded by `limits.tls_handshake_timeout`), then serves HTTP over it.
async fn serve_tls(
    ctx: Rc<ShardCtx>,
    ai: Rc<crate::ai::AiShard>,
    tls: Arc<rustls::ServerConfig>,
    stream: monoio::net::TcpStream,
    peer: std::net::SocketAddr,
    permit: ConnectionPermit,
) {
    let fd = stream.as_raw_fd();
    let timeout = ctx
        .installed
        .borrow()
        .config
        .raw
        .limits
        .tls_handshake_timeout;
    let acceptor = monoio_rustls::TlsAcceptor::from(tls);
    match monoio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls_stream)) => {
            ctx.stats
                .tls_handshakes
                .set(ctx.stats.tls_handshakes.get() + 1);
            crate::proxy::serve_connection(ctx, ai, tls_stream, fd, peer, "https", permit).await;
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

/// The drain, once the lame-duck period is over: stop accepting (taking what is
/// queued), end tunnels, close idle keep-alive connections that send nothing for
/// `grace` (`server.drain_idle_grace`: a client about to reuse one gets an answer
/// with `Connection: close` instead of a closed socket), answer everything else
/// with `Connection: close`, and wait for in-flight requests up to `timeout`.
async fn drain(
    ctx: &Rc<ShardCtx>,
    stop_accepting: async_channel::Sender<()>,
    accept_loops: Vec<monoio::task::JoinHandle<()>>,
    timeout: Duration,
    grace: Duration,
) {
    let started = Instant::now();
    let deadline = started + timeout;
    ctx.draining.set(true);
    drop(stop_accepting);
    for l in accept_loops {
        l.await;
    }
    ctx.conns.borrow_mut().end_tunnels();
    let mut idle = ctx.conns.borrow().idle_snapshot();
    let mut next_sweep = Instant::now() + grace;
    while ctx.stats.active_connections.get() > 0 && Instant::now() < deadline {
        if Instant::now() >= next_sweep {
            let mut conns = ctx.conns.borrow_mut();
            conns.close_still_idle(&idle);
            idle = conns.idle_snapshot();
            next_sweep = Instant::now() + grace;
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
