//! The systems under test: Hypergate, nginx, HAProxy, and the upstream itself.
//!
//! Each proxy is configured the same way, as far as the three allow:
//! - listen on a free 127.0.0.1 port, forward everything to the one mock upstream
//!   over pooled keep-alive connections (nginx `keepalive`, HAProxy
//!   `http-reuse always`, Hypergate's pool);
//! - one worker per CPU the layout gives the proxy, each bound to its CPU when the
//!   layout is pinned (Hypergate `cpu_list`, nginx `worker_cpu_affinity`, HAProxy
//!   `cpu-map`), on top of the whole process being bound to the set, and none
//!   bound when it is not (Hypergate `pin_cores = false`);
//! - no access log, except in scenarios that ask for one, where each proxy appends
//!   a line per request to a file in the scratch directory (HAProxy cannot write
//!   files itself, so it logs to stdout, which goes to that file);
//! - no request records anywhere else: Hypergate's SQLite call store
//!   (`[hypercare.store]`, on by default) is off in every Hypergate target but
//!   `hypergate-callstore`;
//! - every file (config, pid, logs, nginx temp dirs) in the scratch directory,
//!   nothing in /etc or /var, so it runs as root or not without side effects.
//!
//! - in TLS scenarios, every proxy terminates TLS with the same certificate and
//!   key (TLS 1.2 and 1.3, ALPN `http/1.1`) and still talks plain HTTP upstream;
//! - in edge scenarios, Hypergate adds the scenario's policy (API key plus a rate
//!   limit, or JWT) on its route, while nginx and HAProxy keep the plain config;
//! - in the HTTP/2 scenario, every proxy's listener speaks cleartext HTTP/2 with
//!   prior knowledge (h2c) and still talks HTTP/1.1 upstream: Hypergate's with
//!   `protocols = ["http1", "h2c"]`, nginx's with `listen ADDR http2` (nginx
//!   1.22 then speaks h2c only on that port), HAProxy's with `bind ADDR proto h2`;
//! - in the gRPC scenario, the listeners speak h2c the same way (Hypergate's
//!   with `protocols = ["h2c"]` alone) and every proxy speaks h2c to the demo
//!   gRPC upstream too, multiplexing calls on pooled connections where it can:
//!   Hypergate's cluster with `protocol = "h2c"` and `[clusters.pool]
//!   max_streams` ([`GRPC_MAX_STREAMS`]), nginx with `grpc_pass` to its
//!   `keepalive` upstream (one call at a time per upstream connection: nginx
//!   does not multiplex upstream), HAProxy with `server ... proto h2`. The
//!   upstream is a second `hypergate` process whose config serves a
//!   `[[demo_upstreams]] kind = "grpc"` (see [`start_grpc_upstream`]), plus the
//!   listener and route every config needs, which nothing calls.
//!
//! `direct` sends the load straight to the upstream: the no-proxy limit. It does
//! not run in the HTTP/2 scenario (the mock upstream speaks HTTP/1.1 only); it
//! does in the gRPC one.
//!
//! In LLM scenarios the upstream is the mock LLM provider, Hypergate's config
//! is one AI route (`[routes.ai]`) with the mock as its only provider and model
//! [`LLM_MODEL`] as an alias of it, and the peer is LiteLLM's proxy (`litellm`,
//! installed from PyPI, optional) with the same model pointing at the mock as
//! an OpenAI-compatible endpoint, `--num_workers` as many as the proxy's CPUs.
//! nginx and HAProxy do not run there.
//!
//! `hypergate-ebpf` is Hypergate built with the `ebpf` feature, with the same
//! config plus `[observability.ebpf] enabled = true`; it runs only in the eBPF
//! scenario, beside the plain build. `hypergate-callstore` is the plain binary
//! with `[hypercare.store] enabled = true` and its database in the target's
//! scratch directory; it runs only in the call-store scenario, beside the
//! plain target, and [`call_store_counters`] reads what the store wrote.
//! `hypergate-trace-all` and `hypergate-trace-1pct` are the plain binary with
//! an `[observability.otlp]` table exporting to the scenario's OTLP collector
//! (a second `mock-upstream`, see [`TargetSetup::collector`]), every request
//! sampled (`parentbased_always_on`) or 1% (`parentbased_traceidratio`, 0.01);
//! each runs only in its tracing scenario, beside the plain target, and
//! [`otlp_span_counters`] reads what the exporter did. Every Hypergate target
//! starts without the `OTEL_*` variables of this environment: they would turn
//! the exporter on in the plain target, or change the tracing targets' sampler
//! or collector.
//! `hypergate-uring-cooperative` and `hypergate-uring-interrupt` are the plain
//! binary with `io_uring_task_run = "cooperative"` or `"interrupt"` in its
//! `[server]` table (every other Hypergate target leaves the setting out, so
//! runs the default, `"deferred"`); each runs only in its io_uring scenario,
//! beside the plain target. In those scenarios both targets must also start
//! on io_uring in the mode they ask for: a gateway whose log says it fell back
//! (a kernel that refuses a mode gets the next one, with a warning, and one
//! without io_uring gets epoll) counts as not started, since the pair would
//! then not compare what it says.
//! `hypergate-base` is the binary of the `--baseline` commit with exactly the
//! config `hypergate` gets, in every scenario `hypergate` runs in (in pair
//! scenarios, the plain one), so the configs written here must stay loadable by
//! older binaries: one that rejects them does not start.
//!
//! A target counts as started once its port accepts connections and a request
//! through it (with the scenario's credential headers; over TLS with `curl -k`
//! in TLS scenarios; over h2c with `curl --http2-prior-knowledge` in the HTTP/2
//! scenario, so a listener that does not speak it never counts as started; in
//! the gRPC scenario one Echo call over h2c, which must come back with
//! `grpc-status: 0` and the message echoed (see [`probe_grpc`]); in
//! LLM scenarios the scenario's chat completion, and up to
//! [`LITELLM_START_TIMEOUT`] for LiteLLM, which starts slowly) comes back `200`; for Hypergate, `/healthz` on its admin
//! port must also answer `200` if anything listens there. `hypergate-ebpf` must
//! also show the probe's counters on `/metrics`: a gateway whose probe did not
//! load runs on without it, which would make the comparison meaningless.

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::edge::{EdgeMaterial, CONSUMER, JWT_AUDIENCE, JWT_ISSUER};
use super::layout::Placement;
use super::process::{Guarded, Interrupt, Output};
use super::scenario::{Edge, Grpc, Llm, Scenario, LLM_MODEL};

/// How long a target gets to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// How long LiteLLM's proxy gets to start answering (it imports a lot of Python).
const LITELLM_START_TIMEOUT: Duration = Duration::from_secs(180);

/// Connection limit per proxy: far above the benchmark's 256 clients plus upstream
/// connections, and low enough that the file descriptors it needs (two per
/// proxied connection) fit the usual 20,000 hard limit of containers.
const MAX_CONNECTIONS: usize = 8192;

/// How long a single probe request may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What `hypergate-ebpf`'s config adds to Hypergate's: the kernel TCP probe, on.
const EBPF_PROBE_CONFIG: &str = "\n[observability.ebpf]\nenabled = true\n";

/// `hypergate-callstore`'s SQLite database, in the target's directory.
const CALL_STORE_FILE: &str = "hypercare.db";

/// The ratio `hypergate-trace-1pct` samples (`sampler_arg`).
pub const TRACE_SAMPLED_RATIO: f64 = 0.01;

/// How often the tracing targets' shards hand a partial batch of spans to the
/// exporter (`flush_interval`, the default): with every request sampled the
/// batches fill long before; with 1% this paces the exports.
const TRACE_FLUSH_INTERVAL: &str = "1s";

/// Streams Hypergate's h2c cluster puts on one upstream connection before it
/// opens another (`[clusters.pool] max_streams`, its default written out).
const GRPC_MAX_STREAMS: usize = 100;

/// The file, in a target's directory, holding the gRPC call the readiness
/// probe sends.
const GRPC_PROBE_BODY: &str = "grpc-call.body";

/// A counter the probe exports once it has seen a connection (the readiness
/// request made one), with its label set opening.
const EBPF_PROBE_METRIC: &str = "hypergate_tcp_connections_opened_total{";

/// How long the probe's counters get to show up on `/metrics` after readiness.
const EBPF_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The gateway's `[server] io_uring_task_run` when its config leaves it out,
/// as every target but the io_uring pairs' second one does.
pub const DEFAULT_IO_URING_TASK_RUN: &str = "deferred";

/// A Hypergate target's log (stdout and stderr), in its directory.
const HYPERGATE_LOG: &str = "hypergate.log";

/// The systems a scenario runs against, in the order each round visits them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The gateway under test.
    Hypergate,
    /// The gateway built with the `ebpf` feature, its kernel TCP probe on. Only
    /// the eBPF scenario runs it; `--proxy` cannot name it.
    HypergateEbpf,
    /// The gateway recording every request into its SQLite call store. Only the
    /// call-store scenario runs it; `--proxy` cannot name it.
    HypergateCallstore,
    /// The gateway exporting a span for every request over OTLP/HTTP. Only the
    /// `trace-all` scenario runs it; `--proxy` cannot name it.
    HypergateTraceAll,
    /// The gateway exporting the spans of 1% of requests over OTLP/HTTP. Only
    /// the `trace-1pct` scenario runs it; `--proxy` cannot name it.
    HypergateTraceOnePercent,
    /// The gateway with `io_uring_task_run = "cooperative"`. Only the
    /// `uring-cooperative` scenario runs it; `--proxy` cannot name it.
    HypergateUringCooperative,
    /// The gateway with `io_uring_task_run = "interrupt"`. Only the
    /// `uring-interrupt` scenario runs it; `--proxy` cannot name it.
    HypergateUringInterrupt,
    /// The gateway built from the `--baseline` commit, with `hypergate`'s
    /// config; `--proxy` cannot name it.
    HypergateBase,
    /// nginx as a reverse proxy.
    Nginx,
    /// HAProxy in HTTP mode.
    Haproxy,
    /// LiteLLM's proxy (LLM scenarios only).
    Litellm,
    /// No proxy: the load goes straight to the upstream.
    Direct,
}

impl Target {
    /// Every target `--proxy` can name, in round order.
    pub const ALL: [Target; 5] = [
        Target::Hypergate,
        Target::Nginx,
        Target::Haproxy,
        Target::Litellm,
        Target::Direct,
    ];

    /// Every target, in the order the report lists them.
    pub const REPORTED: [Target; 12] = [
        Target::Hypergate,
        Target::HypergateBase,
        Target::HypergateEbpf,
        Target::HypergateCallstore,
        Target::HypergateTraceAll,
        Target::HypergateTraceOnePercent,
        Target::HypergateUringCooperative,
        Target::HypergateUringInterrupt,
        Target::Nginx,
        Target::Haproxy,
        Target::Litellm,
        Target::Direct,
    ];

    /// The name used on the command line, in the table and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::Hypergate => "hypergate",
            Self::HypergateEbpf => "hypergate-ebpf",
            Self::HypergateCallstore => "hypergate-callstore",
            Self::HypergateTraceAll => "hypergate-trace-all",
            Self::HypergateTraceOnePercent => "hypergate-trace-1pct",
            Self::HypergateUringCooperative => "hypergate-uring-cooperative",
            Self::HypergateUringInterrupt => "hypergate-uring-interrupt",
            Self::HypergateBase => "hypergate-base",
            Self::Nginx => "nginx",
            Self::Haproxy => "haproxy",
            Self::Litellm => "litellm",
            Self::Direct => "direct",
        }
    }

    /// The target called `name` that `--proxy` accepts, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|target| target.name() == name)
    }

    /// The head sampler (`sampler`, and `sampler_arg` if it takes one) of a
    /// target that exports spans; `None` for the others.
    pub fn trace_sampler(self) -> Option<(&'static str, Option<f64>)> {
        match self {
            Self::HypergateTraceAll => Some(("parentbased_always_on", None)),
            Self::HypergateTraceOnePercent => {
                Some(("parentbased_traceidratio", Some(TRACE_SAMPLED_RATIO)))
            }
            _ => None,
        }
    }

    /// The `[server] io_uring_task_run` this target's config sets; `None` for
    /// the targets that leave it at the gateway's default, `"deferred"`.
    pub fn io_uring_task_run(self) -> Option<&'static str> {
        match self {
            Self::HypergateUringCooperative => Some("cooperative"),
            Self::HypergateUringInterrupt => Some("interrupt"),
            _ => None,
        }
    }

    /// Whether this is one of the third-party proxies Hypergate is compared with.
    pub fn is_peer(self) -> bool {
        matches!(self, Self::Nginx | Self::Haproxy | Self::Litellm)
    }

    /// Whether this target runs in `scenario`: LiteLLM only in LLM scenarios,
    /// nginx and HAProxy only outside them, `direct` everywhere but the HTTP/2
    /// scenario (the mock upstream speaks HTTP/1.1 only; the gRPC scenario's
    /// demo upstream speaks h2c).
    pub fn runs_in(self, scenario: &Scenario) -> bool {
        match self {
            Self::Litellm => scenario.llm.is_some(),
            Self::Nginx | Self::Haproxy => scenario.llm.is_none(),
            Self::Direct => scenario.h2c.is_none() || scenario.grpc.is_some(),
            Self::Hypergate
            | Self::HypergateEbpf
            | Self::HypergateCallstore
            | Self::HypergateTraceAll
            | Self::HypergateTraceOnePercent
            | Self::HypergateUringCooperative
            | Self::HypergateUringInterrupt
            | Self::HypergateBase => true,
        }
    }
}

/// Executables the targets run.
#[derive(Debug)]
pub struct Programs {
    /// `target/release/hypergate`.
    pub hypergate: PathBuf,
    /// Hypergate built with the `ebpf` feature, when the eBPF scenario runs.
    pub hypergate_ebpf: Option<PathBuf>,
    /// Hypergate built from the `--baseline` commit, when one is given.
    pub hypergate_base: Option<PathBuf>,
    /// nginx, if installed.
    pub nginx: Option<PathBuf>,
    /// haproxy, if installed.
    pub haproxy: Option<PathBuf>,
    /// LiteLLM's `litellm` command, if installed.
    pub litellm: Option<PathBuf>,
}

/// Everything a target needs to start for one scenario.
#[derive(Debug)]
pub struct TargetSetup<'a> {
    /// The scenario, for its path and access-log setting.
    pub scenario: &'a Scenario,
    /// The upstream's address: the mock upstream's, the mock LLM's, or the
    /// demo gRPC upstream's.
    pub upstream: SocketAddr,
    /// The proxy's CPUs and worker count.
    pub placement: &'a Placement,
    /// A fresh directory for this target's files.
    pub dir: PathBuf,
    /// Credentials and certificate of the scenario.
    pub edge: &'a EdgeMaterial,
    /// The OTLP collector the tracing targets export to: a `mock-upstream` of
    /// its own, started only in the tracing scenarios (`None` elsewhere).
    pub collector: Option<SocketAddr>,
}

/// A started target.
#[derive(Debug)]
pub struct RunningTarget {
    /// Which target.
    pub target: Target,
    /// Where the load generator connects.
    pub address: SocketAddr,
    /// Hypergate's admin listener (`/metrics`); `None` for the others.
    pub admin: Option<SocketAddr>,
    /// The proxy process; `None` for `direct`.
    pub process: Option<Guarded>,
}

impl RunningTarget {
    /// Fails if the proxy process has died.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        self.process
            .as_mut()
            .map_or(Ok(()), Guarded::ensure_running)
    }
}

/// Starts `target` for the setup and waits until it proxies a request.
pub fn start(
    target: Target,
    setup: &TargetSetup<'_>,
    programs: &Programs,
    interrupt: &Interrupt,
) -> anyhow::Result<RunningTarget> {
    std::fs::create_dir_all(&setup.dir)
        .with_context(|| format!("creating {}", setup.dir.display()))?;
    let cpus = setup.placement.cpus.as_deref();
    let (address, admin, process) = match target {
        Target::Direct => (setup.upstream, None, None),
        Target::Hypergate
        | Target::HypergateEbpf
        | Target::HypergateCallstore
        | Target::HypergateTraceAll
        | Target::HypergateTraceOnePercent
        | Target::HypergateUringCooperative
        | Target::HypergateUringInterrupt
        | Target::HypergateBase => {
            if target.trace_sampler().is_some() && setup.collector.is_none() {
                bail!("{} needs an OTLP collector, and none runs", target.name());
            }
            let address = free_port()?;
            let admin = free_port()?;
            let config = setup.dir.join("hypergate.toml");
            let program = match target {
                Target::HypergateEbpf => programs
                    .hypergate_ebpf
                    .as_ref()
                    .context("Hypergate's `ebpf` build is missing")?,
                Target::HypergateBase => programs
                    .hypergate_base
                    .as_ref()
                    .context("the baseline commit's build is missing")?,
                _ => &programs.hypergate,
            };
            std::fs::write(
                &config,
                hypergate_target_config(target, setup, address, admin),
            )?;
            let log = Output::combined(setup.dir.join(HYPERGATE_LOG));
            let process = Guarded::spawn(
                target.name(),
                hypergate_command(program, &config),
                cpus,
                log,
            )?;
            (address, Some(admin), Some(process))
        }
        Target::Nginx => {
            let nginx = programs.nginx.as_ref().context("nginx is not installed")?;
            let address = free_port()?;
            let config = setup.dir.join("nginx.conf");
            std::fs::write(&config, nginx_config(setup, address, running_as_root()))?;
            let mut command = Command::new(nginx);
            command
                .arg("-p")
                .arg(format!("{}/", setup.dir.display()))
                .arg("-c")
                .arg(&config)
                .arg("-e")
                .arg(setup.dir.join("error.log"));
            let log = Output::combined(setup.dir.join("nginx.out"));
            (
                address,
                None,
                Some(Guarded::spawn("nginx", command, cpus, log)?),
            )
        }
        Target::Haproxy => {
            let haproxy = programs
                .haproxy
                .as_ref()
                .context("haproxy is not installed")?;
            let address = free_port()?;
            let config = setup.dir.join("haproxy.cfg");
            std::fs::write(&config, haproxy_config(setup, address))?;
            let mut command = Command::new(haproxy);
            command.arg("-f").arg(&config).arg("-db");
            // With an access log, stdout carries it (see `haproxy_config`).
            let stdout = if setup.scenario.access_log {
                setup.dir.join("access.log")
            } else {
                setup.dir.join("haproxy.out")
            };
            let output = Output {
                stdout,
                stderr: setup.dir.join("haproxy.err"),
            };
            (
                address,
                None,
                Some(Guarded::spawn("haproxy", command, cpus, output)?),
            )
        }
        Target::Litellm => {
            let litellm = programs
                .litellm
                .as_ref()
                .context("LiteLLM is not installed")?;
            let address = free_port()?;
            let config = setup.dir.join("litellm.yaml");
            std::fs::write(&config, litellm_config(setup.upstream))?;
            let mut command = Command::new(litellm);
            command
                .arg("--config")
                .arg(&config)
                .arg("--host")
                .arg(address.ip().to_string())
                .arg("--port")
                .arg(address.port().to_string())
                .arg("--num_workers")
                .arg(setup.placement.workers.to_string())
                // The bundled model price list instead of a download at start.
                .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
                .env("LITELLM_LOG", "ERROR");
            let log = Output::combined(setup.dir.join("litellm.log"));
            (
                address,
                None,
                Some(Guarded::spawn("litellm", command, cpus, log)?),
            )
        }
    };
    let mut running = RunningTarget {
        target,
        address,
        admin,
        process,
    };
    // `direct` is the plain mock upstream: no TLS, no credentials needed.
    let chat_body = setup.scenario.llm.map(|llm| {
        Llm {
            stream: false,
            ..llm
        }
        .body()
    });
    let grpc_body = setup
        .scenario
        .grpc
        .map(|grpc| write_grpc_body(grpc, &setup.dir))
        .transpose()?;
    let probe = Probe {
        path: setup.scenario.path,
        headers: &setup.edge.headers,
        tls: setup.scenario.tls && target != Target::Direct,
        h2c: setup.scenario.h2c.is_some() && target != Target::Direct,
        json_body: chat_body.as_deref(),
        grpc: setup.scenario.grpc.zip(grpc_body.as_deref()),
    };
    let timeout = if target == Target::Litellm {
        LITELLM_START_TIMEOUT
    } else {
        START_TIMEOUT
    };
    wait_until_ready(&mut running, &probe, admin, timeout, interrupt)
        .with_context(|| format!("{} did not start", target.name()))?;
    if let (Target::HypergateEbpf, Some(admin)) = (target, admin) {
        wait_for_ebpf_probe(&mut running, admin, interrupt)?;
    }
    if let Some(mode) = io_uring_task_run_to_check(target, setup.scenario) {
        let path = setup.dir.join(HYPERGATE_LOG);
        let log = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        check_io_uring_task_run(&log, mode).with_context(|| {
            format!(
                "{} does not run the io_uring mode this pair compares",
                target.name()
            )
        })?;
    }
    Ok(running)
}

/// The io_uring task-run mode `target` must run in `scenario`: in an io_uring
/// pair, the one each of its two targets asks for (the plain target the
/// default); `None` elsewhere, where nothing is checked.
fn io_uring_task_run_to_check(target: Target, scenario: &Scenario) -> Option<&'static str> {
    let other = scenario.pair?.on_target();
    let mode = other.io_uring_task_run()?;
    if target == other {
        Some(mode)
    } else if target == Target::Hypergate {
        Some(DEFAULT_IO_URING_TASK_RUN)
    } else {
        None
    }
}

/// Fails when the gateway's `log` shows a shard that is not on io_uring in
/// `mode`: the warning of a kernel that refused the mode (the shard took the
/// next one), a ring that fell back to epoll, or shards started on the epoll
/// driver (no io_uring at all).
fn check_io_uring_task_run(log: &str, mode: &str) -> anyhow::Result<()> {
    let fallback = log.lines().find(|line| {
        line.contains("the kernel refused the io_uring task-run mode")
            || line.contains("this shard uses epoll")
            || (line.contains("starting shards") && line.contains("epoll"))
    });
    match fallback {
        Some(line) => bail!(
            "it asked for io_uring_task_run = \"{mode}\", and its log says: {}",
            line.trim()
        ),
        None => Ok(()),
    }
}

/// `hypergate run --config CONFIG`, without the `OTEL_*` variables of this
/// environment (see the module docs).
fn hypergate_command(program: &Path, config: &Path) -> Command {
    let mut command = Command::new(program);
    command.arg("run").arg("--config").arg(config);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("OTEL_") {
            command.env_remove(name);
        }
    }
    command
}

/// Writes the body of the gRPC call the readiness probe sends into `dir`
/// and returns its path.
fn write_grpc_body(grpc: Grpc, dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join(GRPC_PROBE_BODY);
    std::fs::write(&path, grpc.body()).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Starts the gRPC scenario's upstream: Hypergate (`program`) serving a demo
/// gRPC upstream on a free port, its files in `dir`, bound to the placement's
/// CPUs (the demo serves on one thread of its own; the one shard the config
/// asks for idles). Returns once an Echo call to `path` comes back with
/// `grpc-status: 0` and the message.
pub fn start_grpc_upstream(
    program: &Path,
    grpc: Grpc,
    path: &str,
    placement: &Placement,
    dir: &Path,
    interrupt: &Interrupt,
) -> anyhow::Result<(Guarded, SocketAddr)> {
    let demo = free_port()?;
    let config = dir.join("upstream.toml");
    std::fs::write(
        &config,
        grpc_upstream_config(demo, free_port()?, free_port()?),
    )?;
    let process = Guarded::spawn(
        "demo gRPC upstream (hypergate)",
        hypergate_command(program, &config),
        placement.cpus.as_deref(),
        Output::combined(dir.join("upstream.log")),
    )?;
    let mut running = RunningTarget {
        target: Target::Direct,
        address: demo,
        admin: None,
        process: Some(process),
    };
    let body = write_grpc_body(grpc, dir)?;
    let probe = Probe {
        path,
        headers: &[],
        tls: false,
        h2c: true,
        json_body: None,
        grpc: Some((grpc, &body)),
    };
    wait_until_ready(&mut running, &probe, None, START_TIMEOUT, interrupt)
        .context("the demo gRPC upstream did not start")?;
    let process = running.process.take().context("the upstream process")?;
    Ok((process, demo))
}

/// The config of the gRPC scenario's upstream process: the demo gRPC upstream
/// at `demo`, and what every Hypergate config must have besides (a listener at
/// `listen`, a cluster, a route, the admin listener at `admin`), which the
/// benchmark never calls; no access log, no call store.
fn grpc_upstream_config(demo: SocketAddr, listen: SocketAddr, admin: SocketAddr) -> String {
    format!(
        "[server]\nshards = 1\npin_cores = false\n\n\
         [admin]\nlisten = \"{admin}\"\n\n\
         [[listeners]]\nname = \"unused\"\naddress = \"{listen}\"\n\n\
         [access_log]\nenabled = false\n\n\
         [hypercare.store]\nenabled = false\n\n\
         [[clusters]]\nname = \"unused\"\nendpoints = [{{ address = \"{demo}\" }}]\n\n\
         [[routes]]\nname = \"unused\"\ncluster = \"unused\"\n\
         [routes.match]\npath_prefix = \"/\"\n\n\
         [[demo_upstreams]]\naddress = \"{demo}\"\nname = \"bench\"\nkind = \"grpc\"\n"
    )
}

/// What Hypergate's call store has done so far, from its admin `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallStoreCounters {
    /// Records committed to SQLite (`hypergate_callstore_written_total`).
    pub written: u64,
    /// Records dropped because the writer thread fell behind
    /// (`hypergate_access_log_dropped_total`).
    pub dropped: u64,
}

/// Reads the call store's counters from the gateway's admin `/metrics`.
pub fn call_store_counters(admin: SocketAddr) -> anyhow::Result<CallStoreCounters> {
    let metrics = get_body(admin, "/metrics").context("reading the gateway's /metrics")?;
    parse_call_store_counters(&metrics)
}

/// The call store's counters in Prometheus text; fails when the written
/// counter is missing (the store is off).
fn parse_call_store_counters(metrics: &str) -> anyhow::Result<CallStoreCounters> {
    let value = |name: &str| {
        metrics.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?;
            // Unlabelled counters only: `name value`.
            rest.strip_prefix(' ')?.trim().parse::<f64>().ok()
        })
    };
    let written = value("hypergate_callstore_written_total").context(
        "no hypergate_callstore_written_total on /metrics: the call store is not running",
    )?;
    let dropped = value("hypergate_access_log_dropped_total").unwrap_or(0.0);
    Ok(CallStoreCounters {
        written: written as u64,
        dropped: dropped as u64,
    })
}

/// What Hypergate's OTLP exporter has done with spans so far, from its admin
/// `/metrics` (`hypergate_otlp_spans_total{outcome=...}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OtlpSpanCounters {
    /// Spans the collector accepted (`outcome="exported"`).
    pub exported: u64,
    /// Spans dropped because the exporter's queue was full (`outcome="dropped"`).
    pub dropped: u64,
    /// Spans whose export request failed (`outcome="failed"`).
    pub failed: u64,
}

/// Reads the OTLP exporter's span counters from the gateway's admin `/metrics`.
pub fn otlp_span_counters(admin: SocketAddr) -> anyhow::Result<OtlpSpanCounters> {
    let metrics = get_body(admin, "/metrics").context("reading the gateway's /metrics")?;
    parse_otlp_span_counters(&metrics)
}

/// The exporter's span counters in Prometheus text; fails when the exported
/// counter is missing (no exporter: tracing is off).
fn parse_otlp_span_counters(metrics: &str) -> anyhow::Result<OtlpSpanCounters> {
    let value = |outcome: &str| {
        let series = format!("hypergate_otlp_spans_total{{outcome=\"{outcome}\"}} ");
        metrics.lines().find_map(|line| {
            let rest = line.strip_prefix(series.as_str())?;
            rest.trim().parse::<f64>().ok().map(|value| value as u64)
        })
    };
    let exported = value("exported").context(
        "no hypergate_otlp_spans_total{outcome=\"exported\"} on /metrics: the OTLP exporter \
         is not running",
    )?;
    Ok(OtlpSpanCounters {
        exported,
        dropped: value("dropped").unwrap_or(0),
        failed: value("failed").unwrap_or(0),
    })
}

/// Waits until the probe's counters show on `/metrics`; fails, with the
/// gateway's last log lines (its "eBPF probe not loaded: ..." warning), if they
/// do not.
fn wait_for_ebpf_probe(
    running: &mut RunningTarget,
    admin: SocketAddr,
    interrupt: &Interrupt,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + EBPF_PROBE_TIMEOUT;
    loop {
        running.ensure_running()?;
        interrupt.check()?;
        if get_body(admin, "/metrics").is_ok_and(|body| body.contains(EBPF_PROBE_METRIC)) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let log = running
                .process
                .as_ref()
                .map(Guarded::output_tail)
                .unwrap_or_default();
            bail!(
                "hypergate-ebpf runs without its eBPF probe (no `hypergate_tcp_*` counters on \
                 /metrics after {} s; it needs root or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN, \
                 kernel BTF and cgroup v2, see docs/ebpf.md). Its log:\n{log}",
                EBPF_PROBE_TIMEOUT.as_secs()
            );
        }
        interrupt.sleep(Duration::from_millis(100))?;
    }
}

/// The readiness request for a target: `GET path`, or `POST path` with a JSON
/// body, or a gRPC call.
#[derive(Debug)]
struct Probe<'a> {
    path: &'a str,
    headers: &'a [String],
    tls: bool,
    /// HTTP/2 with prior knowledge over cleartext TCP.
    h2c: bool,
    json_body: Option<&'a str>,
    /// A gRPC unary call over h2c, its body in this file (see [`probe_grpc`]).
    grpc: Option<(Grpc, &'a Path)>,
}

/// Polls until the target proxies a request with `200` (and admin says healthy).
fn wait_until_ready(
    running: &mut RunningTarget,
    request: &Probe<'_>,
    admin: Option<SocketAddr>,
    timeout: Duration,
    interrupt: &Interrupt,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let path = request.path;
    let method = if request.json_body.is_some() || request.grpc.is_some() {
        "POST"
    } else {
        "GET"
    };
    loop {
        running.ensure_running()?;
        interrupt.check()?;
        let outcome = match (request.grpc, request.tls, request.h2c, request.json_body) {
            (Some((grpc, body)), _, _, _) => {
                probe_grpc(running.address, path, request.headers, grpc, body)
            }
            (None, true, _, _) => {
                probe_with_curl(CurlMode::Tls, running.address, path, request.headers)
            }
            (None, false, true, _) => {
                probe_with_curl(CurlMode::H2c, running.address, path, request.headers)
            }
            (None, false, false, Some(body)) => post_json(running.address, path, body),
            (None, false, false, None) => probe(running.address, path, request.headers),
        };
        let problem = match outcome {
            Ok(200) => match admin.map(|admin| probe(admin, "/healthz", &[])) {
                // Nothing listens on the admin port: the proxied request is enough.
                None | Some(Err(_)) | Some(Ok(200)) => return Ok(()),
                Some(Ok(status)) => format!("/healthz answered {status}"),
            },
            Ok(status) => format!("{method} {path} answered {status}"),
            Err(error) => format!("{method} {path}: {error:#}"),
        };
        if Instant::now() >= deadline {
            bail!("not ready after {} s: {problem}", timeout.as_secs());
        }
        interrupt.sleep(Duration::from_millis(50))?;
    }
}

/// Sends `GET path` (plus `headers`) with `Connection: close` and returns the status code.
fn probe(address: SocketAddr, path: &str, headers: &[String]) -> anyhow::Result<u16> {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    for header in headers {
        let _ = write!(request, "{header}\r\n");
    }
    request.push_str("\r\n");
    exchange_status(address, &request)
}

/// Sends `POST path` with a JSON body and `Connection: close` and returns the status code.
fn post_json(address: SocketAddr, path: &str, body: &str) -> anyhow::Result<u16> {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    exchange_status(address, &request)
}

/// Sends one request and returns the status code of the answer.
fn exchange_status(address: SocketAddr, request: &str) -> anyhow::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&address, PROBE_TIMEOUT)?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT))?;
    stream.write_all(request.as_bytes())?;
    let mut head = [0u8; 64];
    let mut filled = 0;
    while filled < 12 {
        let read = stream.read(&mut head[filled..])?;
        if read == 0 {
            bail!("connection closed before a status line");
        }
        filled += read;
    }
    let status_line = String::from_utf8_lossy(&head[..filled]);
    status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP status line: {status_line:?}"))
}

/// Sends `GET path` with `Connection: close` and returns the body of a `200`.
fn get_body(address: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect_timeout(&address, PROBE_TIMEOUT)?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no end of the response head")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!(
            "GET {path} answered {:?}",
            head.lines().next().unwrap_or_default()
        );
    }
    Ok(body.to_owned())
}

/// How [`probe_with_curl`] talks to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CurlMode {
    /// HTTPS without verifying the certificate (`-k`: it is self-signed).
    Tls,
    /// Cleartext HTTP/2 with prior knowledge (`--http2-prior-knowledge`).
    H2c,
}

/// `probe` through curl, over TLS or h2c, which the hand-written HTTP/1.1
/// probe cannot speak.
fn probe_with_curl(
    mode: CurlMode,
    address: SocketAddr,
    path: &str,
    headers: &[String],
) -> anyhow::Result<u16> {
    let mut command = Command::new("curl");
    command
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time"])
        .arg(PROBE_TIMEOUT.as_secs().to_string());
    for header in headers {
        command.arg("-H").arg(header);
    }
    let (url, what) = match mode {
        CurlMode::Tls => {
            command.arg("-k");
            (format!("https://{address}{path}"), "an HTTPS request")
        }
        CurlMode::H2c => {
            command.arg("--http2-prior-knowledge");
            (format!("http://{address}{path}"), "an h2c request")
        }
    };
    let output = command.arg(url).output().context(
        "running curl (TLS and HTTP/2 scenarios probe with it: apt-get install -y curl)",
    )?;
    let code = String::from_utf8_lossy(&output.stdout);
    match code.trim().parse::<u16>() {
        Ok(status) if status != 0 => Ok(status),
        _ => bail!(
            "curl could not complete {what} ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    }
}

/// A gRPC unary call through curl over h2c: `POST path` with the call's body
/// (the file `body`), gRPC's headers and `headers`. Gives the HTTP status,
/// and for a `200` fails unless the answer carries `grpc-status: 0` (curl
/// prints trailers with the head) and a body as long as the call's: the echo
/// (see [`check_grpc_answer`]).
fn probe_grpc(
    address: SocketAddr,
    path: &str,
    headers: &[String],
    grpc: Grpc,
    body: &Path,
) -> anyhow::Result<u16> {
    let mut command = Command::new("curl");
    command
        .args([
            "-s",
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-D",
            "-",
        ])
        .args(["-w", "\n%{http_code} %{size_download}", "--max-time"])
        .arg(PROBE_TIMEOUT.as_secs().to_string());
    for header in Grpc::HEADERS
        .into_iter()
        .chain(headers.iter().map(String::as_str))
    {
        command.arg("-H").arg(header);
    }
    let output = command
        .arg("--data-binary")
        .arg(format!("@{}", body.display()))
        .arg(format!("http://{address}{path}"))
        .output()
        .context("running curl (the gRPC scenario probes with it: apt-get install -y curl)")?;
    check_grpc_answer(&String::from_utf8_lossy(&output.stdout), grpc.body_bytes()).with_context(
        || {
            format!(
                "curl's gRPC call ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )
        },
    )
}

/// Reads what [`probe_grpc`]'s curl printed: the head and trailers (`-D -`),
/// then a line `STATUS BYTES` (`-w`). A non-200 status is returned as is; a
/// `200` must have a last `grpc-status` of 0 and `body_bytes` of body.
fn check_grpc_answer(output: &str, body_bytes: usize) -> anyhow::Result<u16> {
    let last = output.lines().last().unwrap_or_default();
    let (status, size) = last
        .split_once(' ')
        .and_then(|(status, size)| Some((status.parse::<u16>().ok()?, size.parse::<usize>().ok()?)))
        .filter(|&(status, _)| status != 0)
        .context("no answer")?;
    if status != 200 {
        return Ok(status);
    }
    let field = |name: &str| {
        output.lines().rev().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
    };
    match field("grpc-status") {
        Some("0") => {}
        Some(code) => bail!(
            "the call ended with grpc-status {code} ({})",
            field("grpc-message").unwrap_or("no grpc-message")
        ),
        None => bail!("no grpc-status in the answer's head or trailers"),
    }
    if size != body_bytes {
        bail!("the echo has {size} bytes of body, the call sent {body_bytes}");
    }
    Ok(status)
}

/// A 127.0.0.1 address with a port that was free a moment ago.
pub fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?)
}

/// Whether this process runs as root.
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Hypergate's `[server]` section: one shard per CPU of the placement.
fn hypergate_server_section(placement: &Placement) -> String {
    let mut config = format!("[server]\nshards = {}\n", placement.workers);
    match &placement.cpus {
        Some(cpus) => {
            let list: Vec<String> = cpus.iter().map(ToString::to_string).collect();
            let _ = writeln!(config, "pin_cores = true\ncpu_list = [{}]", list.join(", "));
        }
        // Hypergate pins shards by default; unpinned means unpinned for everyone.
        None => config.push_str("pin_cores = false\n"),
    }
    config
}

/// Hypergate's TOML config for the setup.
fn hypergate_config(setup: &TargetSetup<'_>, listen: SocketAddr, admin: SocketAddr) -> String {
    let mut config = hypergate_server_section(setup.placement);
    let access_log = setup.dir.join("access.log");
    let _ = write!(
        config,
        "\n[admin]\nlisten = \"{admin}\"\n\n\
         [[listeners]]\nname = \"main\"\naddress = \"{listen}\"\n"
    );
    if setup.scenario.grpc.is_some() {
        // gRPC is HTTP/2 only: h2c alone, as on nginx's `http2` listener.
        config.push_str("protocols = [\"h2c\"]\n");
    } else if setup.scenario.h2c.is_some() {
        // h2c beside HTTP/1.1, on this scenario's listener only.
        config.push_str("protocols = [\"http1\", \"h2c\"]\n");
    }
    if let Some(tls) = &setup.edge.tls {
        let _ = write!(
            config,
            "[listeners.tls]\nmin_version = \"1.2\"\n\
             certificates = [{{ cert_file = \"{}\", key_file = \"{}\" }}]\n",
            toml_escape(&tls.cert),
            toml_escape(&tls.key)
        );
    }
    let _ = write!(
        config,
        "\n[access_log]\nenabled = {}\npath = \"{}\"\n\n\
         [[clusters]]\nname = \"backend\"\nendpoints = [{{ address = \"{}\" }}]\n",
        setup.scenario.access_log,
        toml_escape(&access_log),
        setup.upstream
    );
    if setup.scenario.grpc.is_some() {
        // HTTP/2 to the demo gRPC upstream, calls multiplexed on pooled connections.
        let _ = write!(
            config,
            "protocol = \"h2c\"\n[clusters.pool]\nmax_streams = {GRPC_MAX_STREAMS}\n"
        );
    }
    let policy = edge_policy(setup, &mut config);
    let mut route = |name: &str, prefix: &str| {
        let _ = write!(
            config,
            "\n[[routes]]\nname = \"{name}\"\ncluster = \"backend\"\n\
             [routes.match]\npath_prefix = \"{prefix}\"\n{policy}"
        );
    };
    for index in 0..setup.scenario.hypergate_prefix_routes {
        route(&format!("svc{index}"), &format!("/svc{index}/"));
    }
    route("catch-all", "/");
    config
}

/// The whole config a Hypergate target runs with: the scenario's (LLM or
/// proxy), the eBPF probe for `hypergate-ebpf`, the call store, on with its
/// database in the target's directory for `hypergate-callstore` and off for
/// the others, for the tracing targets `[observability.otlp]` exporting to
/// the scenario's collector with the target's sampler (see [`trace_config`]),
/// and for the io_uring targets their `io_uring_task_run` in `[server]`.
/// `hypergate-base` gets exactly `hypergate`'s.
fn hypergate_target_config(
    target: Target,
    setup: &TargetSetup<'_>,
    listen: SocketAddr,
    admin: SocketAddr,
) -> String {
    let mut config = if setup.scenario.llm.is_some() {
        hypergate_llm_config(setup, listen, admin)
    } else {
        hypergate_config(setup, listen, admin)
    };
    if let Some(mode) = target.io_uring_task_run() {
        // Into the `[server]` table both configs open with.
        let server = hypergate_server_section(setup.placement).len();
        config.insert_str(server, &format!("io_uring_task_run = \"{mode}\"\n"));
    }
    if target == Target::HypergateEbpf {
        config.push_str(EBPF_PROBE_CONFIG);
    }
    if target == Target::HypergateCallstore {
        let _ = write!(
            config,
            "\n[hypercare.store]\nenabled = true\npath = \"{}\"\n",
            toml_escape(&setup.dir.join(CALL_STORE_FILE))
        );
    } else {
        config.push_str("\n[hypercare.store]\nenabled = false\n");
    }
    if let (Some(sampler), Some(collector)) = (target.trace_sampler(), setup.collector) {
        config.push_str(&trace_config(sampler, collector));
    }
    config
}

/// The `[observability.otlp]` table of a tracing target: spans to
/// `http://{collector}/v1/traces` with the head sampler `sampler` (and its
/// ratio); errors and canary calls kept whatever the head decision (the
/// defaults, written out: the benchmark has neither); no log records.
fn trace_config((sampler, ratio): (&str, Option<f64>), collector: SocketAddr) -> String {
    let mut table = format!(
        "\n[observability.otlp]\nendpoint = \"http://{collector}\"\nsampler = \"{sampler}\"\n"
    );
    if let Some(ratio) = ratio {
        let _ = writeln!(table, "sampler_arg = {ratio}");
    }
    let _ = write!(
        table,
        "always_sample_errors = true\nalways_sample_canary = true\n\
         flush_interval = \"{TRACE_FLUSH_INTERVAL}\"\n"
    );
    table
}

/// Hypergate's TOML config for an LLM scenario: the server, admin and listener
/// of [`hypergate_config`], then one AI route with the mock as its provider.
fn hypergate_llm_config(setup: &TargetSetup<'_>, listen: SocketAddr, admin: SocketAddr) -> String {
    let mut config = hypergate_server_section(setup.placement);
    let _ = write!(
        config,
        "\n[admin]\nlisten = \"{admin}\"\n\n\
         [[listeners]]\nname = \"main\"\naddress = \"{listen}\"\n\n\
         [access_log]\nenabled = false\n\n\
         [[routes]]\nname = \"llm\"\n[routes.match]\npath_prefix = \"/v1\"\n[routes.ai]\n\n\
         [[ai.providers]]\nname = \"mock\"\nkind = \"openai\"\nbase_url = \"http://{upstream}/v1\"\n\n\
         [[ai.models]]\nalias = \"{LLM_MODEL}\"\n\
         targets = [{{ provider = \"mock\", model = \"{LLM_MODEL}\" }}]\n\n\
         [[ai.prices]]\nmodel = \"{LLM_MODEL}\"\ninput = 0.15\noutput = 0.60\n",
        upstream = setup.upstream
    );
    config
}

/// LiteLLM's proxy config: model [`LLM_MODEL`] served by the mock at `upstream`
/// as an OpenAI-compatible endpoint; no master key, so no authentication, as on
/// Hypergate's route (recent LiteLLM refuses to start without one unless told).
fn litellm_config(upstream: SocketAddr) -> String {
    format!(
        "model_list:\n  - model_name: {LLM_MODEL}\n    litellm_params:\n      \
         model: openai/{LLM_MODEL}\n      api_base: http://{upstream}/v1\n      api_key: x\n\
         general_settings:\n  dangerously_permit_weak_or_unset_master_key: true\n"
    )
}

/// Appends the consumers, `[auth]` and `[[rate_limits]]` of the scenario's edge
/// policy to `config` and returns the `[routes.policy]` table every route gets.
fn edge_policy(setup: &TargetSetup<'_>, config: &mut String) -> String {
    match setup.scenario.edge {
        Edge::None => String::new(),
        Edge::ApiKeyRateLimit => {
            let hash = setup.edge.api_key_hash.as_deref().unwrap_or_default();
            // 1,000,000 per second is the fastest window a policy may have, far
            // above what this benchmark can send: it never trips, yet every
            // request takes the whole rate-limit path (one hot consumer key
            // shared by all shards, leases from the process-wide budget).
            let _ = write!(
                config,
                "\n[[consumers]]\nname = \"{CONSUMER}\"\napi_keys = [\"{hash}\"]\n\n\
                 [auth.api_key]\nheader = \"x-api-key\"\nbearer = false\n\n\
                 [[rate_limits]]\nname = \"never-trips\"\nkey = \"consumer\"\n\
                 limits = [{{ requests = 1000000, per = \"1s\" }}]\n"
            );
            "[routes.policy]\nauth = [\"api_key\"]\nrate_limits = [\"never-trips\"]\n".to_owned()
        }
        Edge::JwtRs256 => {
            let public = setup
                .edge
                .jwt_public_key
                .as_deref()
                .map(toml_escape)
                .unwrap_or_default();
            let _ = write!(
                config,
                "\n[[consumers]]\nname = \"{CONSUMER}\"\n\n\
                 [[auth.jwt]]\nname = \"bench\"\nalgorithms = [\"RS256\"]\n\
                 issuer = \"{JWT_ISSUER}\"\naudiences = [\"{JWT_AUDIENCE}\"]\n\
                 keys = [{{ kid = \"bench\", pem_file = \"{public}\" }}]\n"
            );
            "[routes.policy]\nauth = [\"jwt\"]\n".to_owned()
        }
    }
}

/// nginx's config for the setup (run with `-p DIR/ -c FILE -e DIR/error.log`).
fn nginx_config(setup: &TargetSetup<'_>, listen: SocketAddr, as_root: bool) -> String {
    let placement = setup.placement;
    let dir = setup.dir.display();
    let mut config = String::new();
    // One worker runs in-process (no master); several need the master to fork them.
    let master = if placement.workers > 1 { "on" } else { "off" };
    let _ = writeln!(config, "daemon off;\nmaster_process {master};");
    let _ = writeln!(config, "worker_processes {};", placement.workers);
    if let Some(cpus) = &placement.cpus {
        let masks: Vec<String> = cpus.iter().map(|&cpu| affinity_mask(cpu)).collect();
        let _ = writeln!(config, "worker_cpu_affinity {};", masks.join(" "));
    }
    if as_root {
        // Workers would otherwise run as `nobody` and could not use the scratch dir.
        config.push_str("user root;\n");
    }
    let access_log = if setup.scenario.access_log {
        format!("{dir}/access.log")
    } else {
        "off".to_owned()
    };
    let _ = write!(
        config,
        "pid {dir}/nginx.pid;\n\
         error_log {dir}/error.log warn;\n\
         worker_rlimit_nofile {files};\n\
         events {{\n    worker_connections {MAX_CONNECTIONS};\n}}\n\
         http {{\n\
         \x20   access_log {access_log};\n\
         \x20   client_body_temp_path {dir}/client_body;\n\
         \x20   proxy_temp_path {dir}/proxy;\n\
         \x20   fastcgi_temp_path {dir}/fastcgi;\n\
         \x20   uwsgi_temp_path {dir}/uwsgi;\n\
         \x20   scgi_temp_path {dir}/scgi;\n\
         \x20   keepalive_requests 1000000;\n\
         \x20   keepalive_timeout 60s;\n\
         \x20   upstream backend {{\n\
         \x20       server {upstream};\n\
         \x20       keepalive 256;\n\
         \x20       keepalive_requests 1000000;\n\
         \x20   }}\n\
         \x20   server {{\n\
         \x20       listen {listen}{ssl}{http2} backlog=4096;\n\
         {certificate}\
         \x20       location / {{\n\
         {location}\
         \x20       }}\n\
         \x20   }}\n\
         }}\n",
        upstream = setup.upstream,
        files = 2 * MAX_CONNECTIONS + 100,
        ssl = if setup.edge.tls.is_some() { " ssl" } else { "" },
        // nginx 1.22: `http2` on a plaintext listener is h2c with prior
        // knowledge (and HTTP/1.1 no longer on that port).
        http2 = if setup.scenario.h2c.is_some() {
            " http2"
        } else {
            ""
        },
        // gRPC: HTTP/2 to the upstream too, each call on a kept-alive connection.
        location = if setup.scenario.grpc.is_some() {
            "            grpc_pass grpc://backend;\n"
        } else {
            "            proxy_pass http://backend;\n            proxy_http_version 1.1;\n            \
             proxy_set_header Connection \"\";\n            proxy_max_temp_file_size 0;\n"
        },
        certificate = setup
            .edge
            .tls
            .as_ref()
            .map_or_else(String::new, |tls| format!(
                "        ssl_certificate {};\n        ssl_certificate_key {};\n        \
             ssl_protocols TLSv1.2 TLSv1.3;\n",
                tls.cert.display(),
                tls.key.display()
            )),
    );
    config
}

/// nginx's `worker_cpu_affinity` bit mask for one CPU (rightmost digit = CPU 0).
fn affinity_mask(cpu: usize) -> String {
    let mut mask = "0".repeat(cpu + 1);
    mask.replace_range(0..1, "1");
    mask
}

/// HAProxy's config for the setup (run with `-f FILE -db`).
fn haproxy_config(setup: &TargetSetup<'_>, listen: SocketAddr) -> String {
    let placement = setup.placement;
    let mut config = format!(
        "global\n    nbthread {}\n    maxconn {MAX_CONNECTIONS}\n",
        placement.workers
    );
    if let Some(cpus) = &placement.cpus {
        for (thread, cpu) in cpus.iter().enumerate() {
            let _ = writeln!(config, "    cpu-map 1/{} {cpu}", thread + 1);
        }
    }
    if setup.scenario.access_log {
        config.push_str("    log stdout format raw local0 info\n");
    }
    config.push_str(
        "\ndefaults\n    mode http\n    timeout connect 5s\n    timeout client 60s\n    \
         timeout server 60s\n    timeout http-keep-alive 60s\n    http-reuse always\n",
    );
    if setup.scenario.access_log {
        config.push_str("    log global\n    option httplog\n");
    }
    let mut bind_options = setup.edge.tls.as_ref().map_or_else(String::new, |tls| {
        format!(
            " ssl crt {} alpn http/1.1 ssl-min-ver TLSv1.2",
            tls.combined.display()
        )
    });
    if setup.scenario.h2c.is_some() {
        // HTTP/2 with prior knowledge on a plaintext bind; the backend stays
        // HTTP/1.1 but in the gRPC scenario.
        bind_options.push_str(" proto h2");
    }
    // gRPC: HTTP/2 with prior knowledge to the upstream too.
    let server_options = if setup.scenario.grpc.is_some() {
        " proto h2"
    } else {
        ""
    };
    let _ = write!(
        config,
        "\nfrontend bench\n    bind {listen}{bind_options}\n    default_backend upstream\n\n\
         backend upstream\n    server origin {}{server_options}\n",
        setup.upstream
    );
    config
}

/// A path as the inside of a TOML basic string.
fn toml_escape(path: &Path) -> String {
    path.display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::scenario;

    fn setup<'a>(name: &str, placement: &'a Placement) -> TargetSetup<'a> {
        TargetSetup {
            scenario: scenario::find(name).expect("scenario exists"),
            upstream: SocketAddr::from(([127, 0, 0, 1], 19000)),
            placement,
            dir: PathBuf::from("/tmp/hg"),
            edge: &PLAIN,
            collector: None,
        }
    }

    static PLAIN: EdgeMaterial = EdgeMaterial::NONE;

    fn pinned_to_cpu_1() -> Placement {
        Placement {
            cpus: Some(vec![1]),
            workers: 1,
        }
    }

    #[test]
    fn hypergate_config_lists_prefix_routes_before_the_catch_all() {
        let placement = pinned_to_cpu_1();
        let listen = SocketAddr::from(([127, 0, 0, 1], 18080));
        let admin = SocketAddr::from(([127, 0, 0, 1], 18081));
        let config = hypergate_config(&setup("routes-1000", &placement), listen, admin);
        assert!(config.starts_with("[server]\nshards = 1\npin_cores = true\ncpu_list = [1]\n"));
        assert!(config.contains("address = \"127.0.0.1:18080\""));
        assert!(config.contains("endpoints = [{ address = \"127.0.0.1:19000\" }]"));
        assert!(config.contains("enabled = false"));
        assert_eq!(config.matches("[[routes]]").count(), 1000);
        let last_specific = config.find("path_prefix = \"/svc998/\"").expect("route");
        let catch_all = config.find("path_prefix = \"/\"").expect("catch-all");
        assert!(last_specific < catch_all);
    }

    #[test]
    fn only_the_callstore_target_records_calls() {
        let placement = pinned_to_cpu_1();
        let listen = SocketAddr::from(([127, 0, 0, 1], 18080));
        let store = |target: Target, scenario: &str| {
            let text =
                hypergate_target_config(target, &setup(scenario, &placement), listen, listen);
            let config: toml::Table = text.parse().expect("the config is TOML");
            config["hypercare"]["store"].clone()
        };
        for scenario in ["get-c64", "accesslog", "llm-chat"] {
            assert_eq!(
                store(Target::Hypergate, scenario)["enabled"].as_bool(),
                Some(false),
                "{scenario}"
            );
        }
        let ebpf = hypergate_target_config(
            Target::HypergateEbpf,
            &setup("ebpf-probe", &placement),
            listen,
            listen,
        );
        let ebpf: toml::Table = ebpf.parse().expect("the config is TOML");
        assert_eq!(
            ebpf["observability"]["ebpf"]["enabled"].as_bool(),
            Some(true)
        );
        assert_eq!(ebpf["hypercare"]["store"]["enabled"].as_bool(), Some(false));
        let on = store(Target::HypergateCallstore, "callstore");
        assert_eq!(on["enabled"].as_bool(), Some(true));
        assert_eq!(on["path"].as_str(), Some("/tmp/hg/hypercare.db"));
        let plain = hypergate_config(&setup("callstore", &placement), listen, listen);
        let on = hypergate_target_config(
            Target::HypergateCallstore,
            &setup("callstore", &placement),
            listen,
            listen,
        );
        assert!(on.starts_with(&plain), "the same config plus the store");
    }

    #[test]
    fn only_the_tracing_targets_export_spans_to_the_collector() {
        let placement = pinned_to_cpu_1();
        let listen = SocketAddr::from(([127, 0, 0, 1], 18080));
        let collector = SocketAddr::from(([127, 0, 0, 1], 19001));
        let config = |target: Target, scenario: &str| {
            let setup = TargetSetup {
                collector: Some(collector),
                ..setup(scenario, &placement)
            };
            hypergate_target_config(target, &setup, listen, listen)
        };
        let otlp = |text: &str| {
            let config: toml::Table = text.parse().expect("the config is TOML");
            config
                .get("observability")
                .and_then(|table| table.get("otlp"))
                .cloned()
        };
        for (target, scenario, sampler, ratio) in [
            (
                Target::HypergateTraceAll,
                "trace-all",
                "parentbased_always_on",
                None,
            ),
            (
                Target::HypergateTraceOnePercent,
                "trace-1pct",
                "parentbased_traceidratio",
                Some(0.01),
            ),
        ] {
            let text = config(target, scenario);
            let table = otlp(&text).expect("an [observability.otlp] table");
            assert_eq!(table["endpoint"].as_str(), Some("http://127.0.0.1:19001"));
            assert_eq!(table["sampler"].as_str(), Some(sampler), "{scenario}");
            assert_eq!(
                table.get("sampler_arg").and_then(toml::Value::as_float),
                ratio
            );
            assert_eq!(table["always_sample_errors"].as_bool(), Some(true));
            assert_eq!(table["always_sample_canary"].as_bool(), Some(true));
            assert_eq!(table["flush_interval"].as_str(), Some("1s"));
            // The same config as the plain target, plus the table; no store.
            let plain = config(Target::Hypergate, scenario);
            assert!(text.starts_with(&plain), "{scenario}");
            assert_eq!(otlp(&plain), None, "{scenario}");
            assert_eq!(config(Target::HypergateBase, scenario), plain, "{scenario}");
        }
        for target in [
            Target::Hypergate,
            Target::HypergateCallstore,
            Target::HypergateEbpf,
        ] {
            assert_eq!(otlp(&config(target, "get-c64")), None, "{target:?}");
        }
        assert_eq!(Target::from_name("hypergate-trace-all"), None);
        assert_eq!(Target::from_name("hypergate-trace-1pct"), None);
        assert!(Target::REPORTED.contains(&Target::HypergateTraceOnePercent));
    }

    #[test]
    fn otlp_span_counters_come_from_prometheus_text() {
        let metrics = "# TYPE hypergate_otlp_spans_total counter\n\
                       hypergate_otlp_spans_total{outcome=\"exported\"} 123456\n\
                       hypergate_otlp_spans_total{outcome=\"dropped\"} 7\n\
                       hypergate_otlp_spans_total{outcome=\"failed\"} 2\n\
                       hypergate_otlp_logs_total{outcome=\"exported\"} 99\n";
        assert_eq!(
            parse_otlp_span_counters(metrics).expect("counters"),
            OtlpSpanCounters {
                exported: 123_456,
                dropped: 7,
                failed: 2
            }
        );
        assert!(
            parse_otlp_span_counters("hypergate_otlp_logs_total{outcome=\"exported\"} 1\n")
                .is_err()
        );
    }

    #[test]
    fn only_the_io_uring_targets_set_a_task_run() {
        let listen = SocketAddr::from(([127, 0, 0, 1], 18080));
        let task_run = |text: &str| {
            let config: toml::Table = text.parse().expect("the config is TOML");
            config["server"]
                .get("io_uring_task_run")
                .and_then(|mode| mode.as_str().map(str::to_owned))
        };
        let unpinned = Placement {
            cpus: None,
            workers: 2,
        };
        for placement in [pinned_to_cpu_1(), unpinned] {
            for (target, scenario, mode) in [
                (
                    Target::HypergateUringCooperative,
                    "uring-cooperative",
                    "cooperative",
                ),
                (
                    Target::HypergateUringInterrupt,
                    "uring-interrupt",
                    "interrupt",
                ),
            ] {
                let config = |target: Target| {
                    hypergate_target_config(target, &setup(scenario, &placement), listen, listen)
                };
                let text = config(target);
                assert_eq!(task_run(&text).as_deref(), Some(mode), "{scenario}");
                // The plain config with that one line in `[server]`; the plain
                // target and the baseline leave the setting at its default.
                let line = format!("io_uring_task_run = \"{mode}\"\n");
                let plain = config(Target::Hypergate);
                assert_eq!(text.replacen(&line, "", 1), plain, "{scenario}");
                assert_eq!(task_run(&plain), None, "{scenario}");
                assert_eq!(config(Target::HypergateBase), plain, "{scenario}");
                assert!(Target::from_name(target.name()).is_none(), "{scenario}");
                assert!(Target::REPORTED.contains(&target), "{scenario}");
            }
        }
        for target in [
            Target::Hypergate,
            Target::HypergateCallstore,
            Target::HypergateEbpf,
        ] {
            let text = hypergate_target_config(
                target,
                &setup("get-c64", &pinned_to_cpu_1()),
                listen,
                listen,
            );
            assert_eq!(task_run(&text), None, "{target:?}");
            assert_eq!(target.io_uring_task_run(), None, "{target:?}");
        }
        // "deferred" is what the gateway runs when its config says nothing.
        let raw = include_str!("../../../crates/core/src/config/raw.rs");
        assert!(raw.contains("io_uring_task_run: IoUringTaskRun::Deferred,"));
        assert_eq!(DEFAULT_IO_URING_TASK_RUN, "deferred");
    }

    #[test]
    fn io_uring_pairs_check_both_targets_run_the_mode_they_ask_for() {
        let check = |target: Target, scenario: &str| {
            io_uring_task_run_to_check(target, scenario::find(scenario).expect("exists"))
        };
        assert_eq!(
            check(Target::HypergateUringInterrupt, "uring-interrupt"),
            Some("interrupt")
        );
        assert_eq!(
            check(Target::HypergateUringCooperative, "uring-cooperative"),
            Some("cooperative")
        );
        for scenario in ["uring-interrupt", "uring-cooperative"] {
            assert_eq!(check(Target::Hypergate, scenario), Some("deferred"));
            // The baseline commit may predate the setting: not checked.
            assert_eq!(check(Target::HypergateBase, scenario), None);
        }
        for scenario in ["get-c64", "callstore", "trace-all"] {
            assert_eq!(check(Target::Hypergate, scenario), None, "{scenario}");
        }

        let started = "2026-12-01T10:00:00Z  INFO hypergate_runtime::gateway: starting shards \
                       shards=1 driver=\"io_uring\"\n";
        assert!(check_io_uring_task_run(started, "deferred").is_ok());
        for fallback in [
            "2026-12-01T10:00:00Z  INFO hypergate_runtime::gateway: starting shards shards=1 \
             driver=\"epoll\"\n",
            "2026-12-01T10:00:00Z  WARN hypergate_runtime::shard: the kernel refused the \
             io_uring task-run mode asked for; this shard uses the next one asked=Deferred \
             used=Cooperative\n",
            "2026-12-01T10:00:00Z  WARN hypergate_runtime::shard: io_uring ring setup failed \
             in every mode; this shard uses epoll\n",
        ] {
            let log = format!("{started}{fallback}");
            let error = check_io_uring_task_run(&log, "deferred").expect_err(fallback);
            assert!(
                format!("{error:#}").contains("asked for io_uring_task_run = \"deferred\""),
                "{error:#}"
            );
        }
        // The lines looked for are the gateway's own.
        let shard = include_str!("../../../crates/runtime/src/shard.rs");
        assert!(shard.contains("the kernel refused the io_uring task-run mode"));
        assert!(shard.contains("this shard uses epoll"));
        let gateway = include_str!("../../../crates/runtime/src/gateway.rs");
        assert!(gateway.contains("\"starting shards\""));
        assert!(gateway.contains("\"epoll\""));
    }

    #[test]
    fn the_baseline_runs_exactly_the_plain_config() {
        let placement = pinned_to_cpu_1();
        let listen = SocketAddr::from(([127, 0, 0, 1], 18080));
        let admin = SocketAddr::from(([127, 0, 0, 1], 18081));
        for scenario in ["get-c64", "edge-apikey-rl", "callstore", "llm-chat"] {
            let setup = setup(scenario, &placement);
            assert_eq!(
                hypergate_target_config(Target::HypergateBase, &setup, listen, admin),
                hypergate_target_config(Target::Hypergate, &setup, listen, admin),
                "{scenario}"
            );
        }
        assert_eq!(Target::from_name("hypergate-base"), None);
        assert!(Target::REPORTED.contains(&Target::HypergateBase));
        assert!(Target::HypergateBase.runs_in(scenario::find("llm-stream").expect("exists")));
    }

    #[test]
    fn call_store_counters_come_from_prometheus_text() {
        let metrics = "# TYPE hypergate_access_log_dropped_total counter\n\
                       hypergate_access_log_dropped_total 7\n\
                       hypergate_callstore_written_total_x 1\n\
                       hypergate_callstore_written_total 123456\n";
        assert_eq!(
            parse_call_store_counters(metrics).expect("counters"),
            CallStoreCounters {
                written: 123_456,
                dropped: 7
            }
        );
        assert!(parse_call_store_counters("hypergate_access_log_dropped_total 0\n").is_err());
    }

    #[test]
    fn access_log_scenario_turns_logs_on_everywhere() {
        let placement = pinned_to_cpu_1();
        let setup = setup("accesslog", &placement);
        let listen = SocketAddr::from(([127, 0, 0, 1], 18080));
        assert!(hypergate_config(&setup, listen, listen).contains("enabled = true"));
        assert!(nginx_config(&setup, listen, false).contains("access_log /tmp/hg/access.log;"));
        assert!(haproxy_config(&setup, listen).contains("option httplog"));
        let quiet = self::setup("get-c64", &placement);
        assert!(nginx_config(&quiet, listen, false).contains("access_log off;"));
        assert!(!haproxy_config(&quiet, listen).contains("log"));
    }

    #[test]
    fn workers_follow_the_placement() {
        let placement = Placement {
            cpus: Some(vec![2, 3]),
            workers: 2,
        };
        let setup = setup("get-c64", &placement);
        let listen = SocketAddr::from(([127, 0, 0, 1], 18080));
        let nginx = nginx_config(&setup, listen, true);
        assert!(nginx.contains("master_process on;\nworker_processes 2;"));
        assert!(nginx.contains("worker_cpu_affinity 100 1000;"));
        assert!(nginx.contains("user root;"));
        let haproxy = haproxy_config(&setup, listen);
        assert!(haproxy.contains("nbthread 2\n"));
        assert!(haproxy.contains("cpu-map 1/1 2\n    cpu-map 1/2 3\n"));
        let single = pinned_to_cpu_1();
        let nginx = nginx_config(&self::setup("get-c64", &single), listen, false);
        assert!(nginx.contains("master_process off;"));
        assert!(!nginx.contains("user root"));
    }

    #[test]
    fn unpinned_hypergate_does_not_pin_its_shards() {
        let placement = Placement {
            cpus: None,
            workers: 2,
        };
        let listen = SocketAddr::from(([127, 0, 0, 1], 18080));
        let config = hypergate_config(&setup("get-c64", &placement), listen, listen);
        assert!(config.starts_with("[server]\nshards = 2\npin_cores = false\n"));
        assert!(!config.contains("cpu_list"));
    }

    #[test]
    fn edge_scenarios_add_the_policy_to_hypergate_only() {
        let placement = pinned_to_cpu_1();
        let listen = SocketAddr::from(([127, 0, 0, 1], 18080));
        let material = EdgeMaterial {
            headers: vec!["x-api-key: k".into()],
            api_key_hash: Some("sha256:00ff".into()),
            ..EdgeMaterial::NONE
        };
        let setup = TargetSetup {
            edge: &material,
            ..setup("edge-apikey-rl", &placement)
        };
        let config = hypergate_config(&setup, listen, listen);
        assert!(config.contains("api_keys = [\"sha256:00ff\"]"), "{config}");
        assert!(config.contains("limits = [{ requests = 1000000, per = \"1s\" }]"));
        assert!(config.ends_with(
            "path_prefix = \"/\"\n[routes.policy]\nauth = [\"api_key\"]\nrate_limits = [\"never-trips\"]\n"
        ));
        assert!(!nginx_config(&setup, listen, false).contains("api"));
        assert!(!haproxy_config(&setup, listen).contains("api"));

        let material = EdgeMaterial {
            jwt_public_key: Some(PathBuf::from("/tmp/hg/jwt.pub")),
            ..EdgeMaterial::NONE
        };
        let setup = TargetSetup {
            edge: &material,
            ..self::setup("edge-jwt", &placement)
        };
        let config = hypergate_config(&setup, listen, listen);
        assert!(config.contains("algorithms = [\"RS256\"]"));
        assert!(config.contains("pem_file = \"/tmp/hg/jwt.pub\""));
        assert!(config.ends_with("[routes.policy]\nauth = [\"jwt\"]\n"));
    }

    #[test]
    fn tls_scenarios_serve_one_certificate_from_every_proxy() {
        let placement = pinned_to_cpu_1();
        let listen = SocketAddr::from(([127, 0, 0, 1], 18080));
        let material = EdgeMaterial {
            tls: Some(crate::bench::edge::TlsFiles {
                cert: PathBuf::from("/tmp/hg/tls.crt"),
                key: PathBuf::from("/tmp/hg/tls.key"),
                combined: PathBuf::from("/tmp/hg/tls.pem"),
            }),
            ..EdgeMaterial::NONE
        };
        let setup = TargetSetup {
            edge: &material,
            ..setup("tls-keepalive", &placement)
        };
        let config = hypergate_config(&setup, listen, listen);
        assert!(config.contains(
            "address = \"127.0.0.1:18080\"\n[listeners.tls]\nmin_version = \"1.2\"\n\
             certificates = [{ cert_file = \"/tmp/hg/tls.crt\", key_file = \"/tmp/hg/tls.key\" }]\n"
        ));
        let nginx = nginx_config(&setup, listen, false);
        assert!(nginx.contains("listen 127.0.0.1:18080 ssl backlog=4096;"));
        assert!(nginx.contains(
            "ssl_certificate /tmp/hg/tls.crt;\n        ssl_certificate_key /tmp/hg/tls.key;"
        ));
        let haproxy = haproxy_config(&setup, listen);
        assert!(haproxy.contains("bind 127.0.0.1:18080 ssl crt /tmp/hg/tls.pem alpn http/1.1"));
        // Plain scenarios stay plain.
        let plain = self::setup("get-c64", &placement);
        assert!(!nginx_config(&plain, listen, false).contains("ssl"));
        assert!(!hypergate_config(&plain, listen, listen).contains("tls"));
    }

    #[test]
    fn the_http2_scenario_puts_h2c_on_every_listener_and_skips_direct() {
        let placement = pinned_to_cpu_1();
        let listen = SocketAddr::from(([127, 0, 0, 1], 18080));
        let admin = SocketAddr::from(([127, 0, 0, 1], 18081));
        let h2 = setup("h2-get", &placement);
        let text = hypergate_target_config(Target::Hypergate, &h2, listen, admin);
        let config: toml::Table = text.parse().expect("the config is TOML");
        let listener = &config["listeners"][0];
        assert_eq!(listener["address"].as_str(), Some("127.0.0.1:18080"));
        assert_eq!(
            listener["protocols"].as_array().map(Vec::as_slice),
            Some(&["http1".into(), "h2c".into()][..])
        );
        // The rest is get-c64's config: the same cluster, route and pool.
        let plain = setup("get-c64", &placement);
        assert_eq!(
            text.replace("protocols = [\"http1\", \"h2c\"]\n", ""),
            hypergate_target_config(Target::Hypergate, &plain, listen, admin)
        );
        assert!(!hypergate_config(&plain, listen, admin).contains("protocols"));
        let nginx = nginx_config(&h2, listen, false);
        assert!(nginx.contains("listen 127.0.0.1:18080 http2 backlog=4096;"));
        assert!(nginx.contains("keepalive 256;"));
        assert_eq!(
            nginx.replace(" http2", ""),
            nginx_config(&plain, listen, false)
        );
        assert!(!nginx_config(&plain, listen, false).contains("http2"));
        let haproxy = haproxy_config(&h2, listen);
        assert!(haproxy.contains("bind 127.0.0.1:18080 proto h2\n"));
        assert!(!haproxy_config(&plain, listen).contains("proto h2"));
        assert!(!Target::Direct.runs_in(h2.scenario));
        assert!(Target::Nginx.runs_in(h2.scenario) && Target::Hypergate.runs_in(h2.scenario));
    }

    #[test]
    fn the_grpc_scenario_speaks_h2c_on_both_sides_of_every_proxy() {
        let placement = pinned_to_cpu_1();
        let listen = SocketAddr::from(([127, 0, 0, 1], 18080));
        let admin = SocketAddr::from(([127, 0, 0, 1], 18081));
        let grpc = setup("grpc-unary", &placement);
        let text = hypergate_target_config(Target::Hypergate, &grpc, listen, admin);
        let config: toml::Table = text.parse().expect("the config is TOML");
        assert_eq!(
            config["listeners"][0]["protocols"]
                .as_array()
                .map(Vec::as_slice),
            Some(&["h2c".into()][..])
        );
        let cluster = &config["clusters"][0];
        assert_eq!(cluster["protocol"].as_str(), Some("h2c"));
        assert_eq!(cluster["pool"]["max_streams"].as_integer(), Some(100));
        assert_eq!(
            cluster["endpoints"][0]["address"].as_str(),
            Some("127.0.0.1:19000")
        );
        assert_eq!(config["routes"][0]["cluster"].as_str(), Some("backend"));
        // Otherwise h2-get's config: the same server, admin, route and store.
        let h2 = setup("h2-get", &placement);
        assert_eq!(
            text.replace(
                "protocols = [\"h2c\"]\n",
                "protocols = [\"http1\", \"h2c\"]\n"
            )
            .replace(
                "protocol = \"h2c\"\n[clusters.pool]\nmax_streams = 100\n",
                ""
            ),
            hypergate_target_config(Target::Hypergate, &h2, listen, admin)
        );
        assert!(!hypergate_config(&h2, listen, admin).contains("[clusters.pool]"));
        let nginx = nginx_config(&grpc, listen, false);
        assert!(nginx.contains("listen 127.0.0.1:18080 http2 backlog=4096;"));
        assert!(nginx.contains(
            "upstream backend {\n        server 127.0.0.1:19000;\n        keepalive 256;"
        ));
        assert!(nginx.contains("location / {\n            grpc_pass grpc://backend;\n        }"));
        assert!(!nginx.contains("proxy_pass"));
        assert!(!nginx_config(&h2, listen, false).contains("grpc_pass"));
        let haproxy = haproxy_config(&grpc, listen);
        assert!(haproxy.contains("bind 127.0.0.1:18080 proto h2\n"));
        assert!(haproxy.contains("server origin 127.0.0.1:19000 proto h2\n"));
        assert!(haproxy_config(&h2, listen).contains("server origin 127.0.0.1:19000\n"));
        for target in [
            Target::Hypergate,
            Target::Nginx,
            Target::Haproxy,
            Target::Direct,
        ] {
            assert!(target.runs_in(grpc.scenario), "{target:?}");
        }
    }

    #[test]
    fn the_grpc_upstream_is_a_demo_upstream_of_hypergate() {
        let demo = SocketAddr::from(([127, 0, 0, 1], 19000));
        let listen = SocketAddr::from(([127, 0, 0, 1], 19001));
        let admin = SocketAddr::from(([127, 0, 0, 1], 19002));
        let text = grpc_upstream_config(demo, listen, admin);
        let config: toml::Table = text.parse().expect("the config is TOML");
        let demos = config["demo_upstreams"].as_array().expect("a list");
        assert_eq!(demos.len(), 1);
        assert_eq!(demos[0]["kind"].as_str(), Some("grpc"));
        assert_eq!(demos[0]["address"].as_str(), Some("127.0.0.1:19000"));
        assert_eq!(config["server"]["shards"].as_integer(), Some(1));
        assert_eq!(config["admin"]["listen"].as_str(), Some("127.0.0.1:19002"));
        assert_eq!(
            config["listeners"][0]["address"].as_str(),
            Some("127.0.0.1:19001")
        );
        assert_eq!(config["access_log"]["enabled"].as_bool(), Some(false));
        assert_eq!(
            config["hypercare"]["store"]["enabled"].as_bool(),
            Some(false)
        );
    }

    #[test]
    fn a_grpc_probe_needs_status_zero_and_the_echo() {
        let answer = |trailers: &str, tail: &str| {
            format!(
                "HTTP/2 200 \r\ncontent-type: application/grpc\r\n\
                 x-demo-upstream: bench\r\n\r\n{trailers}\n{tail}"
            )
        };
        assert_eq!(
            check_grpc_answer(&answer("grpc-status: 0\r\n\r\n", "200 105"), 105).ok(),
            Some(200)
        );
        let failed = answer(
            "grpc-status: 14\r\ngrpc-message: bench: injected failure\r\n",
            "200 0",
        );
        let error = check_grpc_answer(&failed, 105).expect_err("UNAVAILABLE");
        assert!(
            format!("{error}").contains("grpc-status 14 (bench: injected failure)"),
            "{error}"
        );
        let error = check_grpc_answer(&answer("", "200 105"), 105).expect_err("no trailers");
        assert!(format!("{error}").contains("no grpc-status"), "{error}");
        let error =
            check_grpc_answer(&answer("grpc-status: 0\r\n", "200 5"), 105).expect_err("short");
        assert!(format!("{error}").contains("5 bytes"), "{error}");
        // A trailers-only answer carries the status in the head.
        let head_only = "HTTP/2 200 \r\ngrpc-status: 12\r\n\r\n\n200 0";
        assert!(check_grpc_answer(head_only, 105).is_err());
        assert_eq!(
            check_grpc_answer("HTTP/2 502 \r\n\r\n\n502 150", 105).ok(),
            Some(502)
        );
        assert!(check_grpc_answer("\n000 0", 105).is_err(), "no connection");
        assert!(check_grpc_answer("", 105).is_err());
    }

    #[test]
    fn affinity_masks_count_from_the_right() {
        assert_eq!(affinity_mask(0), "1");
        assert_eq!(affinity_mask(1), "10");
        assert_eq!(affinity_mask(3), "1000");
    }

    #[test]
    fn target_names_round_trip() {
        for target in Target::ALL {
            assert_eq!(Target::from_name(target.name()), Some(target));
        }
        assert_eq!(Target::from_name("envoy"), None);
        // The probe-on build runs only in the eBPF scenario; `--proxy` cannot pick it.
        assert_eq!(Target::from_name("hypergate-ebpf"), None);
        assert!(Target::REPORTED.contains(&Target::HypergateEbpf));
    }

    #[test]
    fn llm_scenarios_serve_the_model_from_the_mock_llm() {
        let placement = pinned_to_cpu_1();
        let listen = SocketAddr::from(([127, 0, 0, 1], 18080));
        let admin = SocketAddr::from(([127, 0, 0, 1], 18081));
        let setup = setup("llm-chat", &placement);
        let config = hypergate_llm_config(&setup, listen, admin);
        assert!(config.starts_with("[server]\nshards = 1\npin_cores = true\ncpu_list = [1]\n"));
        assert!(config.contains("address = \"127.0.0.1:18080\""));
        assert!(config.contains("path_prefix = \"/v1\"\n[routes.ai]\n"));
        assert!(config.contains("base_url = \"http://127.0.0.1:19000/v1\""));
        assert!(config.contains(
            "alias = \"mock-small\"\ntargets = [{ provider = \"mock\", model = \"mock-small\" }]"
        ));
        let litellm = litellm_config(setup.upstream);
        assert!(litellm.contains("model_name: mock-small\n"));
        assert!(litellm.contains("model: openai/mock-small\n"));
        assert!(litellm.contains("api_base: http://127.0.0.1:19000/v1\n"));
        let llm = setup.scenario;
        let plain = scenario::find("get-c64").expect("scenario exists");
        assert!(Target::Litellm.runs_in(llm) && !Target::Litellm.runs_in(plain));
        assert!(!Target::Nginx.runs_in(llm) && Target::Haproxy.runs_in(plain));
        assert!(Target::Hypergate.runs_in(llm) && Target::Direct.runs_in(llm));
    }
}
