//! `cargo xtask bench`: Hypergate against nginx, HAProxy and the bare upstream.
//!
//! How a run goes:
//! 1. Check that wrk, nginx and HAProxy are installed; a missing peer is skipped
//!    with the line that installs it (nothing is installed here), a missing wrk
//!    stops the run.
//! 2. `cargo build --release` the benchmark tools and Hypergate; a Hypergate that
//!    does not build stops the run with that message. When the eBPF scenario is
//!    selected, also Hypergate with `--features ebpf`, into its own target
//!    directory (`<target dir>/bench-ebpf`) so the plain binary is untouched;
//!    without the probe object (`cargo xtask build-ebpf`) or root, that scenario
//!    is skipped with the reason and the rest runs.
//! 3. For each layout (see [`layout`]) and scenario (see [`scenario`]): start the
//!    mock upstream, then every target on free 127.0.0.1 ports with configs in a
//!    scratch directory (see [`targets`]), then run the rounds, visiting the
//!    targets in turn (A B C D A B C D ...) so slow drifts of the machine hit all
//!    of them alike; the eBPF scenario's pair goes off-on, then on-off, and so
//!    on. Each visit is a short wrk warm-up, then a measured wrk run with the
//!    proxy's CPU time and memory and the whole machine's CPU time sampled from
//!    `/proc` around it.
//! 4. Print the table, the Hypergate/peer ratios, for edge and TLS scenarios
//!    Hypergate's CPU per request against its own plain scenario, and for the
//!    eBPF scenario probe on against off (see [`report`]), and write every run
//!    to `<target dir>/bench/latest.json`.
//!
//! The exit status is non-zero only when something broke: a target that did not
//! start or died, a run that failed or saw errors. Slow numbers never fail it.
//! Every child process dies with the run, including on error and Ctrl-C (see
//! [`process`]).

mod edge;
mod layout;
mod load;
mod process;
mod procfs;
mod report;
mod scenario;
mod targets;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::ValueEnum;

use edge::EdgeMaterial;
use layout::{Layout, LayoutKind, Placement};
use load::LoadRun;
use process::{Guarded, Interrupt, Output, ScratchDir};
use report::Row;
use scenario::Scenario;
use targets::{Programs, RunningTarget, Target, TargetSetup};

/// The line that installs every external tool the benchmark uses.
const INSTALL_LINE: &str = "apt-get install -y nginx haproxy wrk";

/// How long the mock upstream gets to say it listens.
const UPSTREAM_START_TIMEOUT: Duration = Duration::from_secs(10);

/// The target directory, under cargo's, of Hypergate's `ebpf` build.
const EBPF_TARGET_SUBDIR: &str = "bench-ebpf";

/// Command-line options of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// CI smoke check: 1 round of 3 s over get-c64, post-10k, newconn,
    /// edge-apikey-rl and tls-keepalive. Fails only if something broke, never
    /// because of the numbers.
    #[arg(long)]
    quick: bool,
    /// Rounds per scenario [default: 3, or 1 with --quick].
    #[arg(long, value_name = "N")]
    rounds: Option<u32>,
    /// Seconds per measured run [default: 10, or 3 with --quick].
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
    /// Seconds of warm-up load before each measured run (0 for none).
    #[arg(long, value_name = "SECS", default_value_t = 1)]
    warmup: u64,
    /// Run only this scenario; repeatable [default: all, or the quick subset].
    #[arg(long = "scenario", value_name = "NAME")]
    scenarios: Vec<String>,
    /// CPU layout; the pinned one is the headline.
    #[arg(long, value_enum, default_value_t = LayoutChoice::Pinned)]
    layout: LayoutChoice,
    /// Leave out nginx and HAProxy: Hypergate and direct only.
    #[arg(long)]
    no_peers: bool,
    /// Run only this target (hypergate, nginx, haproxy, direct); repeatable.
    #[arg(long = "proxy", value_name = "NAME")]
    proxies: Vec<String>,
    /// Use the release binaries already built instead of running cargo.
    #[arg(long)]
    no_build: bool,
}

/// The `--layout` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LayoutChoice {
    Pinned,
    Unpinned,
    Both,
}

impl LayoutChoice {
    fn kinds(self) -> &'static [LayoutKind] {
        match self {
            Self::Pinned => &[LayoutKind::Pinned],
            Self::Unpinned => &[LayoutKind::Unpinned],
            Self::Both => &[LayoutKind::Pinned, LayoutKind::Unpinned],
        }
    }
}

/// What to run, resolved from the options.
#[derive(Debug)]
struct Plan {
    scenarios: Vec<&'static Scenario>,
    targets: Vec<Target>,
    layouts: &'static [LayoutKind],
    rounds: u32,
    duration: Duration,
    warmup: Duration,
}

impl Plan {
    fn from_args(args: &BenchArgs) -> anyhow::Result<Self> {
        let scenarios: Vec<&'static Scenario> = if args.scenarios.is_empty() {
            scenario::SCENARIOS
                .iter()
                .filter(|scenario| !args.quick || scenario.quick)
                .collect()
        } else {
            args.scenarios
                .iter()
                .map(|name| {
                    scenario::find(name).with_context(|| {
                        let known: Vec<&str> = scenario::SCENARIOS.iter().map(|s| s.name).collect();
                        format!("unknown scenario {name:?}; known: {}", known.join(", "))
                    })
                })
                .collect::<anyhow::Result<_>>()?
        };
        let mut targets: Vec<Target> = if args.proxies.is_empty() {
            Target::ALL.to_vec()
        } else {
            let mut chosen = Vec::new();
            for name in &args.proxies {
                let target = Target::from_name(name).with_context(|| {
                    format!("unknown proxy {name:?}; known: hypergate, nginx, haproxy, direct")
                })?;
                if !chosen.contains(&target) {
                    chosen.push(target);
                }
            }
            // Keep the canonical round order whatever the command-line order.
            Target::ALL
                .into_iter()
                .filter(|target| chosen.contains(target))
                .collect()
        };
        if args.no_peers {
            targets.retain(|target| !target.is_peer());
        }
        if targets.is_empty() {
            bail!("no target left to benchmark");
        }
        let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 3 });
        let duration = args.duration.unwrap_or(if args.quick { 3 } else { 10 });
        if rounds == 0 || duration == 0 {
            bail!("--rounds and --duration must be at least 1");
        }
        Ok(Self {
            scenarios,
            targets,
            layouts: args.layout.kinds(),
            rounds,
            duration: Duration::from_secs(duration),
            warmup: Duration::from_secs(args.warmup),
        })
    }

    /// The targets `scenario` runs, in round order: the selected ones, or for
    /// the eBPF pair, Hypergate without and with the probe (none if Hypergate
    /// is not selected).
    fn targets_for(&self, scenario: &Scenario) -> Vec<Target> {
        if !scenario.ebpf_pair {
            return self.targets.clone();
        }
        if self.targets.contains(&Target::Hypergate) {
            vec![Target::Hypergate, Target::HypergateEbpf]
        } else {
            Vec::new()
        }
    }

    /// Drops the eBPF scenario, saying why.
    fn skip_ebpf_pair(&mut self, reason: &str) {
        for scenario in self.scenarios.iter().filter(|s| s.ebpf_pair) {
            eprintln!("bench: skipping {}: {reason}", scenario.name);
        }
        self.scenarios.retain(|scenario| !scenario.ebpf_pair);
    }
}

/// Runs `cargo xtask bench`.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let interrupt = Interrupt::install()?;
    let mut plan = Plan::from_args(&args)?;
    let root = workspace_root();
    let tools = find_tools(&mut plan.targets)?;
    let target_dir = target_dir(&root);
    let release = target_dir.join("release");
    let with_hypergate = plan.targets.contains(&Target::Hypergate);
    if !args.no_build {
        build(&root, with_hypergate)?;
    }
    let mut failures = Vec::new();
    let hypergate_ebpf = prepare_ebpf_build(&mut plan, &root, &target_dir, !args.no_build)
        .unwrap_or_else(|error| {
            failures.push(format!("ebpf-probe: {}", brief(&error)));
            plan.skip_ebpf_pair(&format!("{error:#}"));
            None
        });
    if plan.scenarios.is_empty() {
        if failures.is_empty() {
            eprintln!("bench: no scenario left to run");
            return Ok(());
        }
        bail!("no scenario left to run: {}", failures.join("; "));
    }
    let upstream = release.join("mock-upstream");
    let programs = Programs {
        hypergate: release.join("hypergate"),
        hypergate_ebpf,
        nginx: tools.nginx,
        haproxy: tools.haproxy,
    };
    for (binary, needed) in [(&upstream, true), (&programs.hypergate, with_hypergate)] {
        if needed && !binary.is_file() {
            bail!(
                "{} is missing; build it with `cargo build --release -p hypergate -p hypergate-bench` \
                 (or run without --no-build)",
                binary.display()
            );
        }
    }

    let available = process::available_cpus()?;
    let mut scratch = ScratchDir::create()?;
    let bench = Bench {
        plan: &plan,
        programs: &programs,
        wrk: &tools.wrk,
        upstream: &upstream,
        scripts: root.join("bench").join("wrk"),
        scratch: scratch.path().to_owned(),
        ticks_per_second: procfs::ticks_per_second()?,
        interrupt: &interrupt,
    };
    let runs_per_layout: usize = plan
        .scenarios
        .iter()
        .map(|scenario| plan.targets_for(scenario).len() * plan.rounds as usize)
        .sum();
    eprintln!(
        "bench: {}; {} scenario(s), {} run(s) per layout: {} round(s) of {} s (+{} s warm-up) \
         per target",
        machine_summary(available.len()),
        plan.scenarios.len(),
        runs_per_layout,
        plan.rounds,
        plan.duration.as_secs(),
        plan.warmup.as_secs()
    );
    if load_average().is_some_and(|load| load > 0.5 * available.len() as f64) {
        eprintln!(
            "bench: warning: the machine is busy (load average above half its CPUs); \
             other work will distort the numbers"
        );
    }
    let mut outcome = Outcome {
        rows: Vec::new(),
        failures,
        step: 0,
        steps: plan.layouts.len() * runs_per_layout,
    };
    for &kind in plan.layouts {
        let layout = Layout::new(kind, &available);
        eprintln!("bench: layout {}", layout.describe());
        for scenario in &plan.scenarios {
            bench.run_scenario(&layout, scenario, &mut outcome)?;
        }
    }

    println!("{}", machine_summary(available.len()));
    print!("{}", report::table(&outcome.rows));
    let json_path = target_dir.join("bench").join("latest.json");
    std::fs::create_dir_all(json_path.parent().unwrap_or(&target_dir))?;
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&outcome.rows)? + "\n",
    )
    .with_context(|| format!("writing {}", json_path.display()))?;
    println!("\nwrote {}", json_path.display());

    if outcome.failures.is_empty() {
        scratch.discard_on_drop();
        return Ok(());
    }
    eprintln!("\nbench: {} problem(s):", outcome.failures.len());
    for failure in &outcome.failures {
        eprintln!("  - {failure}");
    }
    bail!("the benchmark hit problems (listed above)")
}

/// Runs, failures and progress so far.
#[derive(Debug)]
struct Outcome {
    rows: Vec<Row>,
    failures: Vec<String>,
    step: usize,
    steps: usize,
}

/// Everything fixed for the whole benchmark.
#[derive(Debug)]
struct Bench<'a> {
    plan: &'a Plan,
    programs: &'a Programs,
    wrk: &'a Path,
    upstream: &'a Path,
    scripts: PathBuf,
    scratch: PathBuf,
    ticks_per_second: u64,
    interrupt: &'a Interrupt,
}

impl Bench<'_> {
    /// Starts the upstream and the targets for one scenario and runs its rounds.
    fn run_scenario(
        &self,
        layout: &Layout,
        scenario: &Scenario,
        outcome: &mut Outcome,
    ) -> anyhow::Result<()> {
        let label = format!("{} {}", layout.kind, scenario.name);
        eprintln!("bench: scenario {}: {}", scenario.name, scenario.summary);
        let dir = self
            .scratch
            .join(format!("{}-{}", layout.kind, scenario.name));
        std::fs::create_dir_all(&dir)?;
        let edge = EdgeMaterial::prepare(scenario, &dir.join("edge"))
            .with_context(|| format!("{label}: preparing credentials and certificates"))?;
        let (mut upstream, upstream_address) =
            self.start_upstream(scenario, &layout.upstream, &dir)?;

        // A target that died is `None` from then on.
        let mut running: Vec<Option<RunningTarget>> = Vec::new();
        for target in self.plan.targets_for(scenario) {
            let setup = TargetSetup {
                scenario,
                upstream: upstream_address,
                placement: &layout.proxy,
                dir: dir.join(target.name()),
                edge: &edge,
            };
            match targets::start(target, &setup, self.programs, self.interrupt) {
                Ok(started) => running.push(Some(started)),
                Err(error) => {
                    self.interrupt.check()?;
                    eprintln!("bench: {label}: {error:#}");
                    outcome.failures.push(format!("{label}: {}", brief(&error)));
                    outcome.steps -= self.plan.rounds as usize;
                }
            }
        }

        for round in 1..=self.plan.rounds {
            let mut order: Vec<usize> = (0..running.len()).collect();
            if scenario.ebpf_pair && round % 2 == 0 {
                // Off-on, then on-off: a drift within a round favours neither.
                order.reverse();
            }
            for index in order {
                let Some(target) = running[index].as_mut() else {
                    continue;
                };
                outcome.step += 1;
                eprint!(
                    "[{:>3}/{}] {label} round {round}/{} {:<14} ",
                    outcome.step,
                    outcome.steps,
                    self.plan.rounds,
                    target.target.name()
                );
                match self.measure(layout, scenario, &edge, round, target, &mut upstream, &dir) {
                    Ok(row) => {
                        let us = |cpu: Option<f64>| {
                            cpu.map_or_else(|| "-".to_owned(), |cpu| format!("{cpu:.1}"))
                        };
                        eprintln!(
                            "{:>9.0} req/s  p99 {:>6} us  {} CPU us/req (machine {})  {} errors",
                            row.rps,
                            row.p99_us,
                            us(row.cpu_us_per_req),
                            us(row.machine_cpu_us_per_req),
                            row.errors
                        );
                        if row.errors > 0 {
                            outcome.failures.push(format!(
                                "{label} round {round} {}: {} errors out of {} requests",
                                target.target.name(),
                                row.errors,
                                row.requests
                            ));
                        }
                        outcome.rows.push(row);
                    }
                    Err(error) => {
                        if let Err(stop) = self.interrupt.check() {
                            eprintln!("interrupted");
                            return Err(stop);
                        }
                        eprintln!("FAILED");
                        upstream
                            .ensure_running()
                            .context("the mock upstream died")?;
                        eprintln!("bench: {label} {}: {error:#}", target.target.name());
                        outcome.failures.push(format!(
                            "{label} round {round} {}: {}",
                            target.target.name(),
                            brief(&error)
                        ));
                        if target.ensure_running().is_err() {
                            // Dead: its remaining rounds are skipped.
                            outcome.steps -= (self.plan.rounds - round) as usize;
                            running[index] = None;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Starts `mock-upstream` for the scenario and returns it with its address.
    fn start_upstream(
        &self,
        scenario: &Scenario,
        placement: &Placement,
        dir: &Path,
    ) -> anyhow::Result<(Guarded, SocketAddr)> {
        let mut command = Command::new(self.upstream);
        command
            .arg("--listen=127.0.0.1:0")
            .arg(format!("--threads={}", placement.workers))
            .arg(format!("--body-size={}", scenario.upstream_body_bytes));
        if placement.cpus.is_some() {
            command.arg(format!("--cpu-list={}", placement.describe()));
        }
        let log = dir.join("upstream.log");
        let mut upstream = Guarded::spawn(
            "mock-upstream",
            command,
            placement.cpus.as_deref(),
            Output::combined(log.clone()),
        )?;
        let deadline = Instant::now() + UPSTREAM_START_TIMEOUT;
        loop {
            upstream.ensure_running()?;
            let output = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(address) = output
                .lines()
                .find_map(|line| line.strip_prefix("listening on "))
            {
                let address = address
                    .trim()
                    .parse()
                    .with_context(|| format!("mock-upstream printed {address:?}"))?;
                return Ok((upstream, address));
            }
            if Instant::now() >= deadline {
                bail!(
                    "mock-upstream did not start listening:\n{}",
                    upstream.output_tail()
                );
            }
            self.interrupt.sleep(Duration::from_millis(20))?;
        }
    }

    /// Warms up, then measures one run of `scenario` against `target`.
    #[allow(clippy::too_many_arguments)]
    fn measure(
        &self,
        layout: &Layout,
        scenario: &Scenario,
        edge: &EdgeMaterial,
        round: u32,
        target: &mut RunningTarget,
        upstream: &mut Guarded,
        dir: &Path,
    ) -> anyhow::Result<Row> {
        target.ensure_running()?;
        let name = target.target.name();
        let load = |seconds: Duration, log: String| LoadRun {
            scenario,
            target: target.address,
            headers: &edge.headers,
            // `direct` is the plain mock upstream.
            tls: scenario.tls && target.target != Target::Direct,
            generator: &layout.generator,
            duration: seconds,
            scripts: &self.scripts,
            log: dir.join(log),
        };
        if !self.plan.warmup.is_zero() {
            load(self.plan.warmup, format!("wrk-{name}-{round}-warmup.log"))
                .run(self.wrk, self.interrupt)
                .context("warm-up")?;
        }
        let proxy_pid = target.process.as_ref().map(Guarded::pid);
        let proxy_before = proxy_pid.map(procfs::sample_tree).transpose()?;
        let upstream_before = procfs::sample_tree(upstream.pid())?;
        let machine_before = procfs::machine_busy_ticks()?;
        let report = load(self.plan.duration, format!("wrk-{name}-{round}.log"))
            .run(self.wrk, self.interrupt)?;
        let machine_after = procfs::machine_busy_ticks()?;
        let proxy_after = proxy_pid.map(procfs::sample_tree).transpose()?;
        let upstream_after = procfs::sample_tree(upstream.pid())?;
        target.ensure_running()?;
        upstream.ensure_running()?;

        let ticks_per_request = |before: u64, after: u64| {
            let ticks = after.saturating_sub(before);
            (report.requests > 0)
                .then(|| ticks as f64 * 1e6 / self.ticks_per_second as f64 / report.requests as f64)
        };
        let per_request = |before: procfs::Sample, after: procfs::Sample| {
            ticks_per_request(before.cpu_ticks, after.cpu_ticks)
        };
        let proxy = proxy_before.zip(proxy_after);
        Ok(Row {
            scenario: scenario.name.to_owned(),
            proxy: name.to_owned(),
            layout: layout.kind.to_string(),
            round,
            rps: report.rps,
            p50_us: report.p50_us,
            p99_us: report.p99_us,
            p999_us: report.p999_us,
            cpu_us_per_req: proxy.and_then(|(before, after)| per_request(before, after)),
            rss_kb: proxy.map(|(_, after)| after.peak_rss_kb),
            rss_end_kb: proxy.map(|(_, after)| after.rss_kb),
            upstream_cpu_us_per_req: per_request(upstream_before, upstream_after),
            machine_cpu_us_per_req: ticks_per_request(machine_before, machine_after),
            requests: report.requests,
            errors: report.errors,
        })
    }
}

/// An error in one line for the closing list: its first line and, when the
/// details run over several lines (a child's output), their last one.
fn brief(error: &anyhow::Error) -> String {
    let text = format!("{error:#}");
    let mut lines = text.lines().map(str::trim).filter(|line| !line.is_empty());
    let first = lines.next().unwrap_or_default().to_owned();
    match lines.next_back() {
        Some(last) => format!("{first} ... {last}"),
        None => first,
    }
}

/// External tools found on this machine.
#[derive(Debug)]
struct Tools {
    wrk: PathBuf,
    nginx: Option<PathBuf>,
    haproxy: Option<PathBuf>,
}

/// Finds wrk, nginx and haproxy; drops missing peers from `targets` with a note.
fn find_tools(targets: &mut Vec<Target>) -> anyhow::Result<Tools> {
    let wrk = find_program("wrk");
    let nginx = find_program("nginx");
    let haproxy = find_program("haproxy");
    let missing: Vec<&str> = [("nginx", &nginx), ("haproxy", &haproxy), ("wrk", &wrk)]
        .into_iter()
        .filter(|(_, path)| path.is_none())
        .map(|(name, _)| name)
        .collect();
    if !missing.is_empty() {
        eprintln!(
            "bench: not installed: {}\nbench: install them with:\n    {INSTALL_LINE}",
            missing.join(", ")
        );
    }
    let Some(wrk) = wrk else {
        bail!("wrk is required to generate load; install it with `{INSTALL_LINE}`");
    };
    for (target, path) in [(Target::Nginx, &nginx), (Target::Haproxy, &haproxy)] {
        if path.is_none() && targets.contains(&target) {
            eprintln!("bench: skipping {} (not installed)", target.name());
            targets.retain(|&kept| kept != target);
        }
    }
    if targets.is_empty() {
        bail!("no target left to benchmark");
    }
    Ok(Tools {
        wrk,
        nginx,
        haproxy,
    })
}

/// Looks `name` up in PATH and the sbin directories (nginx lives in /usr/sbin).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Builds the release binaries the benchmark runs.
fn build(root: &Path, with_hypergate: bool) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut packages = vec!["hypergate-bench"];
    if with_hypergate {
        packages.push("hypergate");
    }
    for package in packages {
        eprintln!("bench: cargo build --release -p {package}");
        let status = Command::new(&cargo)
            .current_dir(root)
            .args(["build", "--release", "-p", package])
            .status()
            .context("running cargo")?;
        if !status.success() {
            if package == "hypergate" {
                bail!(
                    "Hypergate did not build in release mode (cargo's errors are above), so it \
                     cannot be benchmarked. Fix the build, or benchmark the peers alone with \
                     `--proxy nginx --proxy haproxy --proxy direct`."
                );
            }
            bail!("the benchmark tools (hypergate-bench) did not build; cargo's errors are above");
        }
    }
    Ok(())
}

/// Readies Hypergate's `ebpf` build when the plan has the eBPF scenario: checks
/// that it can run (Hypergate selected, root, the probe object there), builds it
/// with `build`, and returns its path. A missing prerequisite drops the scenario
/// with a note and returns `None`; a build that fails is an error.
fn prepare_ebpf_build(
    plan: &mut Plan,
    root: &Path,
    target_dir: &Path,
    build: bool,
) -> anyhow::Result<Option<PathBuf>> {
    if !plan.scenarios.iter().any(|scenario| scenario.ebpf_pair) {
        return Ok(None);
    }
    if !plan.targets.contains(&Target::Hypergate) {
        plan.skip_ebpf_pair("it runs Hypergate only, and Hypergate is not selected (--proxy)");
        return Ok(None);
    }
    if !targets::running_as_root() {
        plan.skip_ebpf_pair(
            "the eBPF probe needs root (it loads BPF programs and moves the gateway into \
             its own cgroup); run the benchmark as root",
        );
        return Ok(None);
    }
    let target_subdir = target_dir.join(EBPF_TARGET_SUBDIR);
    let binary = target_subdir.join("release").join("hypergate");
    if !build {
        if binary.is_file() {
            return Ok(Some(binary));
        }
        plan.skip_ebpf_pair(&format!(
            "{} is missing; build it with `cargo build --release -p hypergate --features ebpf \
             --target-dir {}` (or run without --no-build)",
            binary.display(),
            target_subdir.display()
        ));
        return Ok(None);
    }
    // The same object the gateway's build.rs embeds.
    let object = std::env::var_os("HYPERGATE_EBPF_OBJECT")
        .map_or_else(crate::ebpf::object_path, PathBuf::from);
    if !object.is_file() {
        plan.skip_ebpf_pair(&format!(
            "the eBPF probe object {} is missing; build it with `cargo xtask build-ebpf`, \
             then run the benchmark again",
            object.display()
        ));
        return Ok(None);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!(
        "bench: cargo build --release -p hypergate --features ebpf --target-dir {}",
        target_subdir.display()
    );
    let status = Command::new(&cargo)
        .current_dir(root)
        .args([
            "build",
            "--release",
            "-p",
            "hypergate",
            "--features",
            "ebpf",
        ])
        .arg("--target-dir")
        .arg(&target_subdir)
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("Hypergate did not build with `--features ebpf` (cargo's errors are above)");
    }
    Ok(Some(binary))
}

/// The workspace root (xtask lives one level below it).
fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_owned()
}

/// Where cargo puts build output: `$CARGO_TARGET_DIR`, or `target/`.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// The 1-minute load average, if the kernel says.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU model, CPU count and load, for the report header.
fn machine_summary(cpus: usize) -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .and_then(|rest| rest.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let load = load_average().map_or_else(String::new, |load| format!(", load average {load:.2}"));
    format!("machine: {cpus} CPU(s) available, {model}{load}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn plan(args: &[&str]) -> anyhow::Result<Plan> {
        let cli = Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))?;
        Plan::from_args(&cli.bench)
    }

    fn names(plan: &Plan) -> Vec<&'static str> {
        plan.scenarios
            .iter()
            .map(|scenario| scenario.name)
            .collect()
    }

    #[test]
    fn defaults_run_everything_three_times() {
        let plan = plan(&[]).expect("valid");
        assert_eq!(plan.scenarios.len(), scenario::SCENARIOS.len());
        assert_eq!(plan.targets, Target::ALL);
        assert_eq!((plan.rounds, plan.duration.as_secs()), (3, 10));
        assert_eq!(plan.layouts, [LayoutKind::Pinned]);
    }

    #[test]
    fn quick_is_one_short_round_of_the_smoke_set() {
        let plan = plan(&["--quick"]).expect("valid");
        assert_eq!(
            names(&plan),
            [
                "get-c64",
                "post-10k",
                "newconn",
                "edge-apikey-rl",
                "tls-keepalive"
            ]
        );
        assert_eq!((plan.rounds, plan.duration.as_secs()), (1, 3));
    }

    #[test]
    fn selections_and_their_errors() {
        let plan = plan(&[
            "--scenario=newconn",
            "--proxy=direct",
            "--proxy=nginx",
            "--layout=both",
        ])
        .expect("valid");
        assert_eq!(names(&plan), ["newconn"]);
        assert_eq!(plan.targets, [Target::Nginx, Target::Direct]);
        assert_eq!(plan.layouts.len(), 2);
        let no_peers = self::plan(&["--no-peers"]).expect("valid");
        assert_eq!(no_peers.targets, [Target::Hypergate, Target::Direct]);
        assert!(self::plan(&["--scenario=nope"]).is_err());
        assert!(self::plan(&["--proxy=envoy"]).is_err());
        assert!(self::plan(&["--no-peers", "--proxy=nginx"]).is_err());
        assert!(self::plan(&["--rounds=0"]).is_err());
    }

    #[test]
    fn ebpf_pair_runs_hypergate_twice_and_nothing_else() {
        let plan = plan(&["--scenario=ebpf-probe", "--scenario=get-c64"]).expect("valid");
        let [pair, plain] = plan.scenarios[..] else {
            panic!("two scenarios");
        };
        assert_eq!(
            plan.targets_for(pair),
            [Target::Hypergate, Target::HypergateEbpf]
        );
        assert_eq!(plan.targets_for(plain), Target::ALL);
        let peers_only = self::plan(&["--scenario=ebpf-probe", "--proxy=nginx"]).expect("valid");
        assert!(peers_only.targets_for(peers_only.scenarios[0]).is_empty());
        let mut skipped =
            self::plan(&["--scenario=ebpf-probe", "--scenario=newconn"]).expect("valid");
        skipped.skip_ebpf_pair("test");
        assert_eq!(names(&skipped), ["newconn"]);
        assert!(!names(&self::plan(&["--quick"]).expect("valid")).contains(&"ebpf-probe"));
    }
}
