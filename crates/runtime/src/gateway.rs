//! The running gateway: binds listeners, starts shards and side threads, and
//! carries out reloads, stats snapshots and drains for the admin API and signals.
//!
//! Start-up order: health checkers, access-log writer, listener sockets (bound
//! here with SO_REUSEPORT, one per shard, so `:0` resolves to one port), shard
//! threads, demo upstreams, admin listener.
//!
//! A reload is a transaction: parse and validate, diff against the running
//! config (start-bound sections refuse the reload), then *prepare* on every
//! shard (each builds its new state from its running one, so pools survive) and
//! *commit* on all only when every shard is ready; if one fails or does not
//! answer in time, every shard *aborts* and nothing anywhere changes. The
//! controller's config, the health checkers, the rate limiter and the LLM
//! state switch in the same commit.
//!
//! Runtime overrides (canary and admin weight decisions, see
//! `config::overrides`) are a layer over the file's config: applied by a shard
//! command, persisted in the call store, kept across reloads and restarts.

#![allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    reason = "the controller runs on the admin and signal threads and at start-up, never on a shard"
)]

use crate::observability::ebpf::TcpProbe;
use crate::observability::export::ProcessInfo;
use crate::observability::Snapshot;
use crate::shard::{self, Prepare, ShardCommand, ShardHandle, ShardSpec};
use hypergate_core::config::diff::{diff, ConfigDiff};
use hypergate_core::config::overrides::{OverrideSubject, Overrides, WeightOverride};
use hypergate_core::config::ConfigError;
use hypergate_edge::ratelimit::RateLimiter;
use hypergate_proxy::spec::Config;
use hypergate_upstream::health::HealthRegistry;
use socket2::{Domain, Socket, Type};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Failure to start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A socket could not be bound.
    #[error("cannot bind {what} {addr}: {source}")]
    Bind {
        /// Which listener.
        what: String,
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// Any other I/O failure while starting.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new file is invalid.
    #[error("{0}")]
    Invalid(#[from] ConfigError),
    /// Start-bound sections changed.
    #[error("these sections can only change with a restart: {0:?}")]
    RestartRequired(Vec<String>),
    /// No file to reload from (embedded config).
    #[error("the gateway runs on the embedded config; there is no file to reload")]
    NoFile,
    /// A shard did not acknowledge in time.
    #[error("shard {0} did not acknowledge the new config")]
    ShardTimeout(usize),
    /// A shard could not prepare the new config: every shard kept the old one.
    #[error("shard {shard} could not prepare the new config ({reason}); no shard changed")]
    Prepare {
        /// Which shard.
        shard: usize,
        /// Why.
        reason: String,
    },
}

/// Why a runtime override was refused.
#[derive(Debug, thiserror::Error)]
pub enum OverrideError {
    /// The override does not fit the running config.
    #[error("{}", .0.iter().map(|i| format!("{}: {}", i.path, i.reason)).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<hypergate_core::config::ConfigIssue>),
    /// A shard did not install it in time (the others have).
    #[error("shard {0} did not acknowledge the overrides")]
    ShardTimeout(usize),
    /// A fleet decision that was not written (this instance does not lead
    /// the fleet, or Redis is unreachable): nothing changed.
    #[error("fleet: {0}")]
    Fleet(String),
}

/// Reads and validates a config file (the whole validation, the checks of the
/// layers above the runtime included): what a reload runs.
pub type Loader = Box<dyn Fn(&Path) -> Result<Config, ConfigError> + Send + Sync>;

/// Persists the runtime overrides layer (the call store keeps it).
pub type SaveOverrides = Box<dyn Fn(&Overrides) + Send + Sync>;

/// What the layers above the runtime give it at start.
pub struct Hooks {
    /// The file reloads re-read (`None`: the embedded config, no reload).
    pub config_path: Option<PathBuf>,
    /// Reads and validates a config file, for reloads.
    pub loader: Loader,
    /// The runtime overrides to start with (restored from the call store).
    pub overrides: Overrides,
    /// Persists the overrides layer whenever it changes.
    pub save_overrides: Option<SaveOverrides>,
    /// Where the record writer keeps calls besides the JSON log (the call store).
    pub store: Option<Box<dyn hypergate_core::record::RecordStore>>,
    /// The call store's database (for the admin API and the hypercare engine).
    pub store_path: Option<PathBuf>,
}

/// Shared control state, used by the admin thread and signal handlers.
pub struct Controller {
    config: Mutex<Arc<Config>>,
    config_path: Option<PathBuf>,
    shards: Vec<async_channel::Sender<ShardCommand>>,
    health: Arc<HealthRegistry>,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    draining: AtomicBool,
    io_uring: bool,
    reload_lock: Mutex<()>,
    rate_limiter: Arc<RateLimiter>,
    conn_limits: Arc<hypergate_edge::policy::ConnectionLimits>,
    /// Process-wide LLM state (budgets, feedback).
    ai: Arc<hypergate_llm::AiShared>,
    /// The call store's database, when enabled.
    store_path: Option<PathBuf>,
    /// Reads and validates a config file, for reloads.
    loader: Loader,
    /// Persists the overrides layer whenever it changes.
    save_overrides: Option<SaveOverrides>,
    /// The kernel TCP probe, when `[observability.ebpf]` is enabled and it loaded.
    tcp_probe: Option<Arc<TcpProbe>>,
    /// Runtime overrides in force (the layer over the file's config).
    overrides: Mutex<Arc<Overrides>>,
    /// A failure to inject into the next reload's prepare: (shard, reason).
    prepare_fault: Mutex<Option<(usize, String)>>,
    /// The OTLP exporter's counters, when export is on.
    otlp: Option<Arc<hypergate_otel::OtlpStats>>,
}

/// How long a shard may take to answer a control command.
const SHARD_ACK_TIMEOUT: Duration = Duration::from_secs(5);

impl Controller {
    /// The running config.
    pub fn config(&self) -> Arc<Config> {
        self.config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The kernel TCP probe, if loaded.
    pub fn tcp_probe(&self) -> Option<&TcpProbe> {
        self.tcp_probe.as_deref()
    }

    /// Whether a drain has started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Reloads from the config file.
    pub fn reload_from_file(&self) -> Result<ConfigDiff, ReloadError> {
        let result = match &self.config_path {
            None => Err(ReloadError::NoFile),
            Some(p) => (self.loader)(p).map_err(ReloadError::from),
        };
        match result {
            Ok(cfg) => self.apply(cfg),
            Err(e) => {
                self.reloads_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "reload refused; the running config stays in place");
                Err(e)
            }
        }
    }

    /// Installs a validated config on every shard, all or nothing: prepare
    /// everywhere, then commit everywhere, or abort everywhere if any shard
    /// fails or does not answer in time (see the module docs).
    pub fn apply(&self, new: Config) -> Result<ConfigDiff, ReloadError> {
        let _guard = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.config();
        let d = diff(&old.raw, &new.raw);
        let refuse = |e: ReloadError| {
            self.reloads_failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "reload refused; the running config stays in place");
            Err(e)
        };
        if !d.restart_required.is_empty() {
            return refuse(ReloadError::RestartRequired(d.restart_required));
        }
        let new = Arc::new(new);
        let overrides = self.overrides();
        let fault = self
            .prepare_fault
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let mut ready = Vec::new();
        for (i, tx) in self.shards.iter().enumerate() {
            let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
            let _ = tx.send_blocking(ShardCommand::Prepare(Prepare {
                config: new.clone(),
                overrides: overrides.clone(),
                fail: fault
                    .as_ref()
                    .filter(|(shard, _)| *shard == i)
                    .map(|(_, reason)| reason.clone()),
                ready: ready_tx,
            }));
            ready.push(ready_rx);
        }
        let deadline = std::time::Instant::now() + SHARD_ACK_TIMEOUT;
        for (i, rx) in ready.iter().enumerate() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let failure = match rx.recv_timeout(left) {
                Ok(Ok(())) => continue,
                Ok(Err(reason)) => ReloadError::Prepare { shard: i, reason },
                Err(_) => ReloadError::ShardTimeout(i),
            };
            for tx in &self.shards {
                let _ = tx.send_blocking(ShardCommand::Abort);
            }
            return refuse(failure);
        }
        // Every shard is ready: commit everywhere, and switch the process-wide
        // parts with them.
        let acks: Vec<_> = self
            .shards
            .iter()
            .map(|tx| {
                let (ack_tx, ack_rx) = crossbeam_channel::bounded(1);
                let _ = tx.send_blocking(ShardCommand::Commit(ack_tx));
                ack_rx
            })
            .collect();
        self.health.sync(&new.clusters);
        self.rate_limiter
            .install(&new.rate_limits, new.raw.redis.as_ref());
        if let Some(probe) = &self.tcp_probe {
            probe.update_config(&new);
        }
        self.ai.install(&new);
        *self.config.lock().unwrap_or_else(|e| e.into_inner()) = new;
        for (i, ack) in acks.iter().enumerate() {
            if ack.recv_timeout(SHARD_ACK_TIMEOUT).is_err() {
                // Committing cannot fail; a shard this late installs it when it gets there.
                tracing::warn!(shard = i, "a shard was slow to commit the new config");
            }
        }
        self.reloads_ok.fetch_add(1, Ordering::Relaxed);
        tracing::info!(diff = %serde_json::to_string(&d).unwrap_or_default(), "config reloaded");
        Ok(d)
    }

    /// Makes the next reload's prepare fail on `shard` with `reason`, as a shard
    /// that cannot build its state would: for failure drills and tests of the
    /// all-or-nothing reload.
    pub fn fail_next_prepare(&self, shard: usize, reason: &str) {
        *self.prepare_fault.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((shard, reason.to_string()));
    }

    /// The runtime overrides in force.
    pub fn overrides(&self) -> Arc<Overrides> {
        self.overrides
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sets the weights of `subject` (replacing any earlier override of it), on
    /// every shard, without touching the file's config; persisted in the call
    /// store. Nothing changes when it does not fit the running config.
    pub fn set_override(
        &self,
        subject: OverrideSubject,
        o: WeightOverride,
    ) -> Result<(), OverrideError> {
        let _guard = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let issues = crate::config::resolve::check(&self.config(), &subject, &o);
        if !issues.is_empty() {
            return Err(OverrideError::Invalid(issues));
        }
        tracing::info!(%subject, weights = ?o.weights, set_by = %o.set_by, reason = %o.reason, "runtime override set");
        let mut next = (*self.overrides()).clone();
        next.weights.insert(subject, o);
        self.install_overrides(next)
    }

    /// Clears the override of `subject` (all of them with `None`): the file's
    /// weights apply again. Returns how many were cleared.
    pub fn clear_overrides(
        &self,
        subject: Option<&OverrideSubject>,
    ) -> Result<usize, OverrideError> {
        let _guard = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = (*self.overrides()).clone();
        let before = next.weights.len();
        match subject {
            Some(s) => {
                next.weights.remove(s);
            }
            None => next.weights.clear(),
        }
        let cleared = before - next.weights.len();
        if cleared > 0 {
            tracing::info!(subject = ?subject, cleared, "runtime overrides cleared");
            self.install_overrides(next)?;
        }
        Ok(cleared)
    }

    /// Installs `next` (its epoch advanced) on every shard and persists it.
    fn install_overrides(&self, mut next: Overrides) -> Result<(), OverrideError> {
        next.epoch = self.overrides().epoch + 1;
        let next = Arc::new(next);
        *self.overrides.lock().unwrap_or_else(|e| e.into_inner()) = next.clone();
        if let Some(save) = &self.save_overrides {
            save(&next);
        }
        let acks: Vec<_> = self
            .shards
            .iter()
            .map(|tx| {
                let (ack_tx, ack_rx) = crossbeam_channel::bounded(1);
                let _ = tx.send_blocking(ShardCommand::SetOverrides(next.clone(), ack_tx));
                ack_rx
            })
            .collect();
        for (i, ack) in acks.iter().enumerate() {
            if ack.recv_timeout(SHARD_ACK_TIMEOUT).is_err() {
                return Err(OverrideError::ShardTimeout(i));
            }
        }
        Ok(())
    }

    /// The call store's database file, when the store is enabled.
    pub fn store_path(&self) -> Option<&std::path::Path> {
        self.store_path.as_deref()
    }

    /// Budget accounts and what they used in their current windows.
    pub fn budgets(&self) -> Vec<hypergate_llm::budget::AccountView> {
        self.ai.budgets.view()
    }

    /// Feedback scores so far per (alias, target): count, sum, sum of squares.
    pub fn feedback_scores(&self) -> std::collections::BTreeMap<(String, String), (u64, f64, f64)> {
        self.ai.feedback.target_scores()
    }

    /// Collects and merges stats from every shard.
    pub fn snapshot(&self) -> Snapshot {
        let rxs: Vec<_> = self
            .shards
            .iter()
            .map(|tx| {
                let (stx, srx) = crossbeam_channel::bounded(1);
                let _ = tx.send_blocking(ShardCommand::Snapshot(stx));
                srx
            })
            .collect();
        let snaps: Vec<_> = rxs
            .iter()
            .filter_map(|rx| rx.recv_timeout(Duration::from_secs(2)).ok())
            .collect();
        Snapshot::merge(&snaps)
    }

    /// Figures the exporter adds.
    pub fn process_info(&self) -> ProcessInfo {
        ProcessInfo {
            reloads_ok: self.reloads_ok.load(Ordering::Relaxed),
            reloads_failed: self.reloads_failed.load(Ordering::Relaxed),
            io_uring: self.io_uring,
        }
    }

    /// Appends what each local LLM budget account has left in its current
    /// windows (tokens this minute, dollars today and this month). Redis
    /// budgets are kept in Redis and not shown here.
    fn budget_metrics(&self, out: &mut String) {
        use hypergate_core::metrics::{escape, header};
        use std::fmt::Write;
        let config = self.config();
        let spec = hypergate_llm::spec::of(&config);
        header(
            out,
            "hypergate_llm_budget_remaining",
            "gauge",
            "What a budget account has left in its current window: tokens this minute \
             (window=\"tokens_per_minute\"), dollars today or this month (cost_per_day, cost_per_month).",
        );
        for a in self.budgets() {
            let Some(b) = spec.budgets.iter().find(|b| *b.name == *a.budget) else {
                continue;
            };
            let label = |w: &str| {
                format!(
                    "budget=\"{}\",key=\"{}\",window=\"{w}\"",
                    escape(&a.budget),
                    escape(&a.key)
                )
            };
            if let Some(l) = b.tokens_per_minute {
                let _ = writeln!(
                    out,
                    "hypergate_llm_budget_remaining{{{}}} {}",
                    label("tokens_per_minute"),
                    l.saturating_sub(a.tokens_this_minute)
                );
            }
            for (w, limit, used) in [
                ("cost_per_day", b.cost_per_day, a.cost_today),
                ("cost_per_month", b.cost_per_month, a.cost_this_month),
            ] {
                if let Some(l) = limit {
                    let _ = writeln!(
                        out,
                        "hypergate_llm_budget_remaining{{{}}} {}",
                        label(w),
                        (l as f64 / 1e9 - used).max(0.0)
                    );
                }
            }
        }
    }

    /// Appends the process-wide edge figures: rate limiting and connection caps.
    pub fn edge_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        if let Some(otlp) = &self.otlp {
            otlp.prometheus(out);
        }
        self.budget_metrics(out);
        self.rate_limiter.prometheus(out);
        self.ai.feedback.prometheus(out);
        let _ = writeln!(
            out,
            "# HELP hypergate_connection_tracked_ips Client IPs holding connections (per-IP cap).\n# TYPE hypergate_connection_tracked_ips gauge\nhypergate_connection_tracked_ips {}",
            self.conn_limits.tracked_ips()
        );
    }

    /// Starts a graceful shutdown (SIGTERM, SIGINT): `/readyz` answers 503 at
    /// once while the shards keep accepting and serving for `server.drain_delay`
    /// (the lame-duck period, so a load balancer notices), then the shards drain.
    pub fn start_drain(self: &Arc<Self>) {
        if self.draining.swap(true, Ordering::Relaxed) {
            return;
        }
        let delay = self.config().raw.server.drain_delay;
        if delay.is_zero() {
            self.drain_shards();
            return;
        }
        tracing::info!(
            delay = %humantime::format_duration(delay),
            "lame duck: /readyz answers 503; still serving until the drain starts"
        );
        let controller = self.clone();
        let spawned = std::thread::Builder::new()
            .name("lame-duck".into())
            .spawn(move || {
                std::thread::sleep(delay);
                controller.drain_shards();
            });
        if spawned.is_err() {
            self.drain_shards();
        }
    }

    /// Drains now, without a lame-duck period (an embedding program shutting down).
    pub fn drain_now(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.drain_shards();
    }

    fn drain_shards(&self) {
        tracing::info!(
            "draining: listeners closed, answers carry Connection: close, finishing in-flight requests"
        );
        for tx in &self.shards {
            let _ = tx.send_blocking(ShardCommand::Drain);
        }
    }
}

/// A started gateway.
pub struct Gateway {
    /// Control state.
    pub controller: Arc<Controller>,
    /// Resolved data-plane addresses, by listener.
    pub listener_addrs: Vec<(String, SocketAddr)>,
    /// Resolved admin address.
    pub admin_addr: SocketAddr,
    /// The bound admin listener, for whoever serves the admin API to take.
    pub admin_listener: Option<std::net::TcpListener>,
    threads: Vec<std::thread::JoinHandle<()>>,
    access_log_thread: Option<std::thread::JoinHandle<()>>,
    /// The OTLP exporter thread, when export is on.
    exporter: Option<hypergate_otel::Exporter>,
}

/// Warns when the open-file limit cannot hold `max_connections` client
/// connections and as many upstream ones: accepts would then fail with EMFILE
/// before the cap is reached.
fn warn_if_files_short(max_connections: usize) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the valid `rlimit` struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    let needed = (max_connections as u64).saturating_mul(2);
    if max_connections > 0 && lim.rlim_cur < needed {
        tracing::warn!(
            open_file_limit = lim.rlim_cur,
            max_connections,
            "the open-file limit holds fewer than 2 x protection.max_connections descriptors; \
             raise it (LimitNOFILE in systemd) or lower protection.max_connections"
        );
    }
}

fn bind_reuseport(addr: SocketAddr, backlog: i32) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    // Accepted connections inherit TCP_NODELAY from the listener on Linux:
    // set once here, not with a system call per connection.
    socket.set_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

impl Gateway {
    /// Starts the data plane for `config`: binds the listeners and the admin
    /// listener, starts the record writer, the health checkers and the shards.
    /// The layers above (hypercare, the admin API) start on what it returns.
    pub fn start(config: Config, hooks: Hooks) -> Result<Gateway, StartError> {
        let Hooks {
            config_path,
            loader,
            overrides,
            save_overrides,
            store,
            store_path,
        } = hooks;
        let overrides = Arc::new(overrides);
        let config = Arc::new(config);
        let health = Arc::new(HealthRegistry::default());
        health.sync(&config.clusters);
        // Before any listener or pool socket exists: the probe only sees sockets
        // created after it moved the process into its cgroup.
        let tcp_probe = if config.raw.observability.ebpf.enabled {
            match crate::observability::ebpf::start(&config) {
                Ok(probe) => Some(Arc::new(probe)),
                Err(e) => {
                    tracing::warn!(
                        "eBPF probe not loaded: {e}; continuing without kernel TCP metrics"
                    );
                    None
                }
            }
        } else {
            None
        };
        let use_uring = config.raw.server.io_uring && shard::io_uring_available();
        tracing::info!(
            shards = config.shards,
            driver = if use_uring { "io_uring" } else { "epoll" },
            "starting shards"
        );

        let mut per_shard: Vec<Vec<std::net::TcpListener>> =
            (0..config.shards).map(|_| Vec::new()).collect();
        let mut listener_addrs = Vec::new();
        for l in &config.listeners {
            let mut addr = l.addr;
            for (i, slot) in per_shard.iter_mut().enumerate() {
                let sock = bind_reuseport(addr, l.backlog).map_err(|source| StartError::Bind {
                    what: format!("listener {:?}", l.name),
                    addr,
                    source,
                })?;
                if i == 0 {
                    addr = sock.local_addr()?;
                    listener_addrs.push((l.name.to_string(), addr));
                    tracing::info!(listener = %l.name, %addr, "listening");
                }
                slot.push(sock);
            }
        }
        let admin_listener =
            std::net::TcpListener::bind(config.admin_addr).map_err(|source| StartError::Bind {
                what: "admin listener".into(),
                addr: config.admin_addr,
                source,
            })?;
        let admin_addr = admin_listener.local_addr()?;
        if let Some(probe) = &tcp_probe {
            probe.listeners_bound(&listener_addrs, admin_addr);
        }

        let (mut sinks, access_log_thread) = if config.raw.access_log.enabled || store.is_some() {
            let log = crate::observability::access_log::start(
                config
                    .raw
                    .access_log
                    .enabled
                    .then_some(config.raw.access_log.path.as_str()),
                config.raw.hypercare.store.capture_max_bytes,
                store,
                config.shards,
                config.raw.access_log.buffer,
            )?;
            (log.sinks.into_iter().map(Some).collect(), Some(log.thread))
        } else {
            ((0..config.shards).map(|_| None).collect::<Vec<_>>(), None)
        };

        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.as_nanos() as u64);
        let conn_limits = hypergate_edge::policy::ConnectionLimits::new(&config.raw.protection);
        warn_if_files_short(config.raw.protection.max_connections);
        let rate_limiter = RateLimiter::new();
        rate_limiter.install(&config.rate_limits, config.raw.redis.as_ref());
        let ai = hypergate_llm::AiShared::new(&config);
        if !hypergate_llm::spec::of(&config).aliases.is_empty() {
            let _ = hypergate_ai::tokens::warm_up(shard::release_memory);
        }
        let (exporter, mut telemetry) = match &config.otlp {
            Some(settings) => {
                let resource = hypergate_otel::Resource::from_settings(settings);
                let (exporter, sinks) =
                    hypergate_otel::Exporter::start(settings, &resource, config.shards)?;
                tracing::info!(
                    traces = settings.traces_endpoint.url(),
                    "exporting OpenTelemetry spans over OTLP/HTTP"
                );
                (Some(exporter), sinks.into_iter().map(Some).collect())
            }
            None => (None, (0..config.shards).map(|_| None).collect::<Vec<_>>()),
        };
        let mut handles: Vec<ShardHandle> = Vec::new();
        for (id, listeners) in per_shard.into_iter().enumerate() {
            handles.push(shard::spawn(ShardSpec {
                id,
                cpu: config.shard_cpus[id],
                io_uring: config.raw.server.io_uring,
                io_uring_task_run: config.raw.server.io_uring_task_run,
                listeners,
                config: config.clone(),
                overrides: overrides.clone(),
                access_log: sinks[id].take(),
                health: health.clone(),
                seed: seed ^ (id as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                conn_limits: conn_limits.clone(),
                rate_limiter: rate_limiter.clone(),
                ai: ai.clone(),
                shards: config.shards,
                telemetry: telemetry[id].take(),
            })?);
        }
        let controller = Arc::new(Controller {
            config: Mutex::new(config.clone()),
            config_path,
            shards: handles.iter().map(|h| h.tx.clone()).collect(),
            health,
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            io_uring: use_uring,
            reload_lock: Mutex::new(()),
            rate_limiter: rate_limiter.clone(),
            conn_limits: conn_limits.clone(),
            tcp_probe,
            ai,
            store_path,
            loader,
            save_overrides,
            overrides: Mutex::new(overrides),
            prepare_fault: Mutex::new(None),
            otlp: exporter.as_ref().map(|e| e.stats().clone()),
        });
        Ok(Gateway {
            controller,
            listener_addrs,
            admin_addr,
            admin_listener: Some(admin_listener),
            threads: handles.into_iter().map(|h| h.thread).collect(),
            access_log_thread,
            exporter,
        })
    }

    /// Drains at once (no lame-duck period) and waits for every shard to finish
    /// (and the access log to flush).
    pub fn shutdown(self) {
        self.controller.drain_now();
        self.wait();
    }

    /// Waits for the shards to exit (after a drain started elsewhere).
    pub fn wait(self) {
        for t in self.threads {
            let _ = t.join();
        }
        self.controller.health.stop_all();
        if let Some(t) = self.access_log_thread {
            let _ = t.join();
        }
        // The shards are gone, and their sinks with them (each handed over
        // what it held): export what is queued, within a bound.
        if let Some(e) = self.exporter {
            if !e.shutdown(Duration::from_secs(5)) {
                tracing::warn!("OTLP exporter: spans still queued after 5s were not sent");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::bind_reuseport;

    #[test]
    #[allow(
        clippy::disallowed_methods,
        reason = "a test connects with a blocking socket, off any shard"
    )]
    fn accepted_connections_inherit_tcp_nodelay_from_the_listener() {
        let listener = bind_reuseport("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        listener.set_nonblocking(false).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}
