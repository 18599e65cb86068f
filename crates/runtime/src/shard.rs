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

use crate::observability::{ShardReport, ShardStats};
use hypergate_core::config::overrides::Overrides;
use hypergate_core::config::raw::IoUringTaskRun;
use hypergate_core::error::{write_response, ErrorKind, ErrorShape, GatewayError};
use hypergate_core::record::AccessLogSink;
use hypergate_edge::policy::{ConnRefusal, ConnectionLimits, ConnectionPermit};
use hypergate_proxy::spec::Config;
use hypergate_proxy::EdgeReject;
use hypergate_upstream::health::HealthRegistry;
use monoio::io::AsyncWriteRentExt;
use monoio::time::TimeDriver;
use monoio::{FusionRuntime, IoUringDriver, LegacyDriver, RuntimeBuilder};
use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::rc::Rc;
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
    Snapshot(crossbeam_channel::Sender<ShardReport>),
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

pub use hypergate_proxy::state::{ConnRegistry, Installed, RouteRuntime, ShardCtx};

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
    /// When the kernel runs the ring's completion work.
    pub io_uring_task_run: IoUringTaskRun,
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
    pub rate_limiter: Arc<hypergate_edge::ratelimit::RateLimiter>,
    /// Process-wide LLM state (budgets, feedback).
    pub ai: Arc<hypergate_llm::AiShared>,
    /// Number of shards (the cache and feedback memory are split between them).
    pub shards: usize,
    /// Span and log buffer, when OTLP export is on.
    pub telemetry: Option<hypergate_otel::TelemetrySink>,
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

/// Hands freed memory back to the operating system now (after a one-off
/// build that freed a lot, such as the tokenizer's); nothing when no
/// allocator hook is set.
pub fn release_memory() {
    if let Some(release) = MEMORY_RELEASE.get() {
        release();
    }
}

/// Connections that must have closed, from the peak since the last release,
/// before a shard releases memory.
const RELEASE_AFTER_CLOSED: u64 = 256;

/// Once a second, even when no request comes: sends the shard's rollups (a
/// request sends them too once a second has passed), so totals reach the
/// store within a second or two of the calls, busy or idle, and hands partial
/// span and log batches to the OTLP exporter when their interval is up. The
/// last ones leave when the shard's sinks are dropped.
async fn tick(ctx: Rc<ShardCtx>) {
    while !ctx.draining.get() {
        monoio::time::sleep(hypergate_core::rollup::FLUSH_EVERY).await;
        let now = std::time::Instant::now();
        if let Some(rollups) = ctx
            .access_log
            .borrow()
            .as_ref()
            .and_then(|s| s.rollups.as_ref())
        {
            rollups.borrow_mut().flush(now);
        }
        if let Some(t) = &ctx.telemetry {
            t.flush_if_due(now);
        }
    }
}

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

/// Builds the shard's runtime: io_uring when asked for and possible, with
/// completion work run as `task_run` says; a kernel that refuses that mode
/// gets the next one (deferred, cooperative, interrupt), one that refuses
/// io_uring gets epoll.
fn build_runtime(io_uring: bool, task_run: IoUringTaskRun) -> std::io::Result<Runtime> {
    if io_uring && io_uring_available() {
        let modes = [
            IoUringTaskRun::Deferred,
            IoUringTaskRun::Cooperative,
            IoUringTaskRun::Interrupt,
        ];
        let first = modes.iter().position(|m| *m == task_run).unwrap_or(0);
        for mode in &modes[first..] {
            let mut ring = io_uring::IoUring::builder();
            match mode {
                IoUringTaskRun::Deferred => {
                    ring.setup_single_issuer().setup_defer_taskrun();
                }
                IoUringTaskRun::Cooperative => {
                    ring.setup_single_issuer()
                        .setup_coop_taskrun()
                        .setup_taskrun_flag();
                }
                IoUringTaskRun::Interrupt => {}
            }
            match RuntimeBuilder::<IoUringDriver>::new()
                .enable_timer()
                .uring_builder(ring)
                .with_entries(4096)
                .build()
            {
                Ok(rt) => {
                    if *mode != task_run {
                        tracing::warn!(
                            asked = ?task_run,
                            used = ?mode,
                            "the kernel refused the io_uring task-run mode asked for; this shard uses the next one"
                        );
                    }
                    return Ok(rt.into());
                }
                // The probe ring is tiny; a large one can still fail (RLIMIT_MEMLOCK on
                // older kernels), and a mode newer than the kernel fails with EINVAL.
                Err(e) => tracing::debug!(error = %e, mode = ?mode, "io_uring ring setup failed"),
            }
        }
        tracing::warn!("io_uring ring setup failed in every mode; this shard uses epoll");
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
    let mut rt = match build_runtime(spec.io_uring, spec.io_uring_task_run) {
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
        hypergate_llm::installed(&spec.config, &spec.overrides),
    );
    let drain_timeout = spec.config.raw.server.drain_timeout;
    let drain_grace = spec.config.raw.server.drain_idle_grace;
    // The layer above the proxy: the LLM gateway's per-shard state answers AI routes.
    let ai = Rc::new(hypergate_llm::AiShard::new(
        hypergate_llm::spec::of(&spec.config),
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
        token_cache: hypergate_edge::auth::TokenCache::default(),
        conn_limits: spec.conn_limits,
        limiter: hypergate_edge::ratelimit::ShardLimiter::new(spec.rate_limiter, spec.id),
        telemetry: spec.telemetry,
    });
    monoio::spawn(release_memory_after_floods(ctx.clone()));
    monoio::spawn(tick(ctx.clone()));
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
                        let ext = hypergate_llm::installed(&p.config, &p.overrides);
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
                    ai.install(hypergate_llm::spec::of(&next.config));
                    *ctx.installed.borrow_mut() = Rc::new(next);
                    ctx.token_cache.clear();
                }
                let _ = ack.send(());
            }
            ShardCommand::Abort => pending = None,
            ShardCommand::SetOverrides(overrides, ack) => {
                let next = {
                    let cur = ctx.installed.borrow();
                    let ext = hypergate_llm::installed(&cur.config, &overrides);
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
                let _ = reply.send(ShardReport {
                    stats: ctx.stats.snapshot(ctx.pool_snapshot()),
                    ai: ai.stats.snapshot(),
                });
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
    ai: Rc<hypergate_llm::AiShard>,
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
        let accepted = |r: std::io::Result<(monoio::net::TcpStream, std::net::SocketAddr)>| match r
        {
            Ok((stream, peer)) => {
                admit(&ctx, &ai, stream, peer, listener_idx);
                true
            }
            Err(e) => {
                tracing::warn!(shard = ctx.id, error = %e, "accept failed");
                false
            }
        };
        // One accept and one drain signal, each made once and polled again
        // after every connection (not rebuilt per accept).
        let mut accept = std::pin::pin!(listener.accept());
        let drain = std::pin::pin!(accepting.recv());
        accept_until(&mut accept, || listener.accept(), &accepted, drain).await;
        if let Err(e) = refuse_new_syns(listener.as_raw_fd()) {
            tracing::warn!(shard = ctx.id, error = %e, "cannot stop new handshakes on a draining listener");
        }
        let settled = std::pin::pin!(monoio::time::sleep(LISTENER_SETTLE));
        accept_until(&mut accept, || listener.accept(), &accepted, settled).await;
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

/// Takes connections from `accept` (remade with `next` after each) and hands
/// them to `accepted` until `stop` completes; a failed accept (EMFILE and
/// friends) backs off briefly instead of spinning. The pending accept is
/// left to the caller, never dropped here.
async fn accept_until<A: std::future::Future, S: std::future::Future>(
    accept: &mut std::pin::Pin<&mut A>,
    next: impl Fn() -> A,
    accepted: &impl Fn(A::Output) -> bool,
    mut stop: std::pin::Pin<&mut S>,
) {
    loop {
        monoio::select! {
            r = accept.as_mut() => {
                accept.set(next());
                if !accepted(r) {
                    monoio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            _ = stop.as_mut() => return,
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
    ai: &Rc<hypergate_llm::AiShard>,
    stream: monoio::net::TcpStream,
    peer: std::net::SocketAddr,
    listener_idx: usize,
) {
    ctx.stats
        .accepted_connections
        .set(ctx.stats.accepted_connections.get() + 1);
    let (tls, h2c) = {
        let inst = ctx.installed.borrow();
        let l = &inst.config.listeners[listener_idx];
        (l.tls.clone(), l.h2c)
    };
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
    // TCP_NODELAY is inherited from the listener (see `bind_reuseport`).
    let fd = stream.as_raw_fd();
    match tls {
        None if h2c => {
            monoio::spawn(serve_h2c(ctx.clone(), ai.clone(), stream, peer, permit));
        }
        None => {
            monoio::spawn(hypergate_proxy::serve_connection(
                ctx.clone(),
                ai.clone(),
                stream,
                fd,
                peer,
                "http",
                permit,
                bytes::BytesMut::new(),
            ));
        }
        Some(tls) => {
            monoio::spawn(serve_tls(
                ctx.clone(),
                ai.clone(),
                tls,
                stream,
                peer,
                permit,
            ));
        }
    }
}

/// Completes a TLS handshake (bounded by `limits.tls_handshake_timeout`), then serves HTTP over it.
async fn serve_tls(
    ctx: Rc<ShardCtx>,
    ai: Rc<hypergate_llm::AiShard>,
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
            if tls_stream.alpn_protocol().as_deref() == Some(&b"h2"[..]) {
                hypergate_proxy::h2::serve_h2(ctx, ai, tls_stream, fd, peer, "https", permit).await;
            } else {
                hypergate_proxy::serve_connection(
                    ctx,
                    ai,
                    tls_stream,
                    fd,
                    peer,
                    "https",
                    permit,
                    bytes::BytesMut::new(),
                )
                .await;
            }
        }
        Ok(Err(e)) => ctx
            .stats
            .tls_failure(crate::tls::classify_handshake_error(&e.into())),
        Err(_) => ctx.stats.tls_failure(crate::tls::classify_handshake_error(
            &std::io::ErrorKind::TimedOut.into(),
        )),
    }
}

/// A plaintext connection on a listener that also serves HTTP/2 with prior
/// knowledge: its first bytes (the HTTP/2 preface or not, within
/// `limits.idle_timeout`) decide which protocol serves it.
async fn serve_h2c(
    ctx: Rc<ShardCtx>,
    ai: Rc<hypergate_llm::AiShard>,
    mut stream: monoio::net::TcpStream,
    peer: std::net::SocketAddr,
    permit: ConnectionPermit,
) {
    use hypergate_proxy::h2::{self, Opening};
    let fd = stream.as_raw_fd();
    let wait = ctx.installed.borrow().config.raw.limits.idle_timeout;
    match h2::sniff(&mut stream, wait).await {
        Opening::H2(preface) => {
            let stream = h2::Prefixed::new(preface, stream);
            h2::serve_h2(ctx, ai, stream, fd, peer, "http", permit).await;
        }
        Opening::Http1(read) => {
            hypergate_proxy::serve_connection(ctx, ai, stream, fd, peer, "http", permit, read)
                .await;
        }
        Opening::Nothing => {}
    }
}

/// Answers a connection over the caps with a 503 and closes it.
async fn refuse_connection(mut stream: monoio::net::TcpStream) {
    let mut out = Vec::with_capacity(256);
    let err = GatewayError::new(ErrorKind::ConnectionLimit, "too many connections");
    write_response(&mut out, &err, ErrorShape::Json, "", true, &[]);
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
