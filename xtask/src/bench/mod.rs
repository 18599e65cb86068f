//! `cargo xtask bench`: Hypergate against nginx, HAProxy and the bare upstream,
//! and as an LLM gateway against LiteLLM and the bare mock provider.
//!
//! How a run goes:
//! 1. Check that wrk, nginx and HAProxy are installed (and LiteLLM, when an LLM
//!    scenario runs, and h2load, when an HTTP/2 scenario does); a missing peer
//!    is skipped with the line that installs it (nothing is installed here), a
//!    missing wrk stops a run that needs it, a missing h2load skips the HTTP/2
//!    scenarios with the line that installs it.
//! 2. `cargo build --release` the benchmark tools (and the mock LLM provider for
//!    LLM scenarios) and Hypergate (needed by the gRPC scenario even without
//!    the hypergate target: it serves the demo gRPC upstream); a Hypergate that
//!    does not build stops the run with that message. When the eBPF scenario is
//!    selected, also Hypergate with `--features ebpf`, into its own target
//!    directory (`<target dir>/bench-ebpf`) so the plain binary is untouched;
//!    without the probe object (`cargo xtask build-ebpf`) or root, that scenario
//!    is skipped with the reason and the rest runs. With `--baseline REV`, also
//!    that commit of Hypergate, in a worktree of its own with its own target
//!    directory (see [`baseline`]); a baseline that does not build stops the run.
//! 3. For each layout (see [`layout`]) and scenario (see [`scenario`]): start the
//!    mock upstream (the mock LLM in LLM scenarios, a `hypergate` serving only
//!    its demo gRPC upstream in the gRPC scenario, see
//!    [`targets::start_grpc_upstream`]; and, in the tracing scenarios, a second `mock-upstream` as
//!    the OTLP collector, see [`Bench::start_collector`]), then every target on
//!    free 127.0.0.1 ports with configs in a
//!    scratch directory (see [`targets`]), then run the rounds, visiting the
//!    targets in turn (A B C D A B C D ...) so slow drifts of the machine hit all
//!    of them alike; a pair scenario's two Hypergate targets (eBPF probe, call
//!    store, tracing, an io_uring task-run mode against the default) go
//!    off-on, then on-off, and so on. With `--baseline`, the target
//!    `hypergate-base` (the baseline commit's binary with exactly the config
//!    `hypergate` gets; in pair scenarios the plain one) runs in every scenario
//!    `hypergate` runs in, right after it (after the pair in pair scenarios); if
//!    it does not start there (an older commit may reject a config field added
//!    since), it is skipped in that scenario with the reason, and that alone
//!    does not fail the run. Each visit is a short wrk warm-up, then a measured
//!    wrk run with the proxy's CPU time and memory and the whole machine's CPU
//!    time sampled from `/proc` around it. The HTTP/2 scenarios do the same
//!    with h2load (h2c, several streams per connection), `h2-get` without
//!    `direct`, `grpc-unary` with gRPC calls. LLM
//!    scenarios do the same with the mock LLM provider
//!    and `loadgen` at a fixed rate; the soak is one long run through Hypergate
//!    with its memory sampled every few seconds.
//! 4. Print the table, the Hypergate/peer ratios, with `--baseline` the
//!    current tree over the baseline commit, for edge and TLS scenarios
//!    Hypergate's CPU per request against its own plain scenario, and for the
//!    pair scenarios the feature on against off (with the records per second
//!    the call store wrote, read from the gateway's `/metrics` around each
//!    call-store run, and the spans per second the OTLP exporter got accepted,
//!    dropped or failed to export around each tracing run; for the io_uring
//!    pairs the other mode against the default), for LLM scenarios the latency each
//!    gateway adds over direct and for the soak the memory (see [`report`]),
//!    and write every run (the baseline's rows with its commit hash)
//!    to `<target dir>/bench/latest.json`.
//!
//! The exit status is non-zero only when something broke: a target that did not
//! start or died, a run that failed or saw errors. Slow numbers never fail it.
//! Every child process dies with the run, including on error and Ctrl-C (see
//! [`process`]).

mod baseline;
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

use baseline::Baseline;
use edge::EdgeMaterial;
use layout::{Layout, LayoutKind, Placement};
use load::{LoadRun, LoadTools};
use process::{Guarded, Interrupt, Output, ScratchDir};
use report::{Row, RssSample};
use scenario::{Pair, Scenario};
use targets::{Programs, RunningTarget, Target, TargetSetup};

/// The line that installs every external tool the benchmark uses.
const INSTALL_LINE: &str = "apt-get install -y nginx haproxy wrk nghttp2-client";

/// The line that installs h2load, the HTTP/2 scenarios' load generator.
const H2LOAD_INSTALL_LINE: &str = "apt-get install -y nghttp2-client";

/// Where the benchmark looks for LiteLLM's `litellm` command besides PATH,
/// under the home directory: the virtualenv [`LITELLM_INSTALL_LINE`] makes.
const LITELLM_VENV_COMMAND: &str = ".cache/hypergate/litellm/bin/litellm";

/// The lines that install LiteLLM's proxy where the benchmark finds it.
const LITELLM_INSTALL_LINE: &str = "python3 -m venv ~/.cache/hypergate/litellm && \
     ~/.cache/hypergate/litellm/bin/pip install 'litellm[proxy]'";

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
    /// Seconds per measured run [default: 10, or 3 with --quick; llm-soak: 600,
    /// or 30 with --quick].
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
    /// Seconds of warm-up load before each measured run (0 for none).
    #[arg(long, value_name = "SECS", default_value_t = 1)]
    warmup: u64,
    /// Run only this scenario; repeatable [default: all but llm-soak, or the
    /// quick subset].
    #[arg(long = "scenario", value_name = "NAME")]
    scenarios: Vec<String>,
    /// CPU layout; the pinned one is the headline.
    #[arg(long, value_enum, default_value_t = LayoutChoice::Pinned)]
    layout: LayoutChoice,
    /// Leave out nginx, HAProxy and LiteLLM: Hypergate and direct only.
    #[arg(long)]
    no_peers: bool,
    /// Run only this target (hypergate, nginx, haproxy, litellm, direct); repeatable.
    #[arg(long = "proxy", value_name = "NAME")]
    proxies: Vec<String>,
    /// Also run Hypergate built from this git revision (HEAD~1, a hash,
    /// main@{1}, ...) as `hypergate-base`, with the same config as `hypergate`
    /// in every scenario it runs in, and report current / baseline ratios.
    /// Needs the hypergate target.
    #[arg(long, value_name = "REV")]
    baseline: Option<String>,
    /// Requests per second of the LLM scenarios (a fixed rate, open loop).
    #[arg(long, value_name = "REQ_PER_SEC", default_value_t = scenario::LLM_DEFAULT_RATE)]
    rate: f64,
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
    /// Requests per second of the LLM scenarios.
    rate: f64,
    /// Length of the soak's one run.
    soak_duration: Duration,
    /// The git revision `hypergate-base` is built from (`--baseline`).
    baseline: Option<String>,
}

impl Plan {
    fn from_args(args: &BenchArgs) -> anyhow::Result<Self> {
        let scenarios: Vec<&'static Scenario> = if args.scenarios.is_empty() {
            scenario::SCENARIOS
                .iter()
                .filter(|scenario| !args.quick || scenario.quick)
                .filter(|scenario| !scenario.llm.is_some_and(|llm| llm.soak))
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
                    format!(
                        "unknown proxy {name:?}; known: hypergate, nginx, haproxy, litellm, direct"
                    )
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
        if let Some(revision) = &args.baseline {
            if revision.trim().is_empty() {
                bail!("--baseline needs a git revision, e.g. --baseline HEAD~1");
            }
            let Some(hypergate) = targets.iter().position(|&t| t == Target::Hypergate) else {
                bail!(
                    "--baseline compares Hypergate with its build of another commit, so it \
                     needs the hypergate target; add --proxy hypergate"
                );
            };
            // Right after `hypergate`: the two run back to back in each round.
            targets.insert(hypergate + 1, Target::HypergateBase);
        }
        if targets.is_empty() {
            bail!("no target left to benchmark");
        }
        let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 3 });
        let duration = args.duration.unwrap_or(if args.quick { 3 } else { 10 });
        if rounds == 0 || duration == 0 {
            bail!("--rounds and --duration must be at least 1");
        }
        if !(args.rate.is_finite() && args.rate > 0.0) {
            bail!("--rate must be a positive number");
        }
        let soak = args.duration.unwrap_or(if args.quick {
            scenario::SOAK_QUICK_SECS
        } else {
            scenario::SOAK_DEFAULT_SECS
        });
        Ok(Self {
            scenarios,
            targets,
            layouts: args.layout.kinds(),
            rounds,
            duration: Duration::from_secs(duration),
            warmup: Duration::from_secs(args.warmup),
            rate: args.rate,
            soak_duration: Duration::from_secs(soak),
            baseline: args.baseline.clone(),
        })
    }

    /// Rounds of `scenario`: one for the soak.
    fn rounds_for(&self, scenario: &Scenario) -> u32 {
        if scenario.llm.is_some_and(|llm| llm.soak) {
            1
        } else {
            self.rounds
        }
    }

    /// Length of each measured run of `scenario`.
    fn duration_for(&self, scenario: &Scenario) -> Duration {
        if scenario.llm.is_some_and(|llm| llm.soak) {
            self.soak_duration
        } else {
            self.duration
        }
    }

    /// Whether any selected scenario is an LLM one.
    fn has_llm(&self) -> bool {
        self.scenarios.iter().any(|scenario| scenario.llm.is_some())
    }

    /// Whether the run needs the `hypergate` binary: as a target, or as the
    /// gRPC scenario's upstream.
    fn needs_hypergate_binary(&self) -> bool {
        self.targets.contains(&Target::Hypergate)
            || self
                .scenarios
                .iter()
                .any(|scenario| scenario.grpc.is_some())
    }

    /// The targets `scenario` runs, in round order: the selected ones that
    /// apply to it (see [`Target::runs_in`]); for a pair, Hypergate without
    /// and with the feature; for the soak, Hypergate alone (none if
    /// Hypergate is not selected). `hypergate-base`, when selected, follows
    /// `hypergate` (the pair, in a pair scenario) everywhere.
    fn targets_for(&self, scenario: &Scenario) -> Vec<Target> {
        let hypergate = self.targets.contains(&Target::Hypergate);
        if let Some(pair) = scenario.pair {
            return if hypergate {
                let mut targets = vec![Target::Hypergate, pair.on_target()];
                if self.targets.contains(&Target::HypergateBase) {
                    targets.push(Target::HypergateBase);
                }
                targets
            } else {
                Vec::new()
            };
        }
        if scenario.llm.is_some_and(|llm| llm.soak) {
            // `hypergate-base` is selected only together with `hypergate`.
            return self
                .targets
                .iter()
                .copied()
                .filter(|&target| matches!(target, Target::Hypergate | Target::HypergateBase))
                .collect();
        }
        self.targets
            .iter()
            .copied()
            .filter(|target| target.runs_in(scenario))
            .collect()
    }

    /// Drops the eBPF scenario, saying why.
    fn skip_ebpf_pair(&mut self, reason: &str) {
        let ebpf = |scenario: &Scenario| scenario.pair == Some(Pair::EbpfProbe);
        for scenario in self.scenarios.iter().filter(|s| ebpf(s)) {
            eprintln!("bench: skipping {}: {reason}", scenario.name);
        }
        self.scenarios.retain(|scenario| !ebpf(scenario));
    }
}

/// Runs `cargo xtask bench`.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let interrupt = Interrupt::install()?;
    let mut plan = Plan::from_args(&args)?;
    let root = workspace_root();
    let tools = find_tools(&mut plan)?;
    let target_dir = target_dir(&root);
    let release = target_dir.join("release");
    let with_hypergate = plan.needs_hypergate_binary();
    let with_llm = plan.has_llm();
    if !args.no_build {
        build(&root, with_hypergate, with_llm)?;
    }
    let baseline = plan
        .baseline
        .as_deref()
        .map(|revision| baseline::prepare(&root, &target_dir, revision, !args.no_build))
        .transpose()?;
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
    let mock_llm = release.join("mock-llm");
    let load_tools = LoadTools {
        wrk: tools.wrk,
        h2load: tools.h2load,
        loadgen: release.join("loadgen"),
        scripts: root.join("bench").join("wrk"),
    };
    let programs = Programs {
        hypergate: release.join("hypergate"),
        hypergate_ebpf,
        hypergate_base: baseline.as_ref().map(|baseline| baseline.binary.clone()),
        nginx: tools.nginx,
        haproxy: tools.haproxy,
        litellm: tools.litellm,
    };
    for (binary, needed) in [
        (&upstream, true),
        (&load_tools.loadgen, with_llm),
        (&mock_llm, with_llm),
        (&programs.hypergate, with_hypergate),
    ] {
        if needed && !binary.is_file() {
            bail!(
                "{} is missing; build it with `cargo build --release -p hypergate -p hypergate-bench \
                 -p hypergate-mock-llm` (or run without --no-build)",
                binary.display()
            );
        }
    }

    let available = process::available_cpus()?;
    let mut scratch = ScratchDir::create()?;
    let bench = Bench {
        plan: &plan,
        programs: &programs,
        load_tools: &load_tools,
        upstream: &upstream,
        mock_llm: &mock_llm,
        scratch: scratch.path().to_owned(),
        ticks_per_second: procfs::ticks_per_second()?,
        interrupt: &interrupt,
        baseline: baseline.as_ref(),
    };
    let runs_per_layout: usize = plan
        .scenarios
        .iter()
        .map(|scenario| plan.targets_for(scenario).len() * plan.rounds_for(scenario) as usize)
        .sum();
    let soak = plan
        .scenarios
        .iter()
        .find(|scenario| scenario.llm.is_some_and(|llm| llm.soak))
        .map_or_else(String::new, |scenario| {
            format!(
                "; {}: one run of {} s",
                scenario.name,
                plan.soak_duration.as_secs()
            )
        });
    eprintln!(
        "bench: {}; {} scenario(s), {} run(s) per layout: {} round(s) of {} s (+{} s warm-up) \
         per target{soak}",
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
        skipped: Vec::new(),
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

    if !outcome.skipped.is_empty() {
        eprintln!("\nbench: skipped:");
        for skipped in &outcome.skipped {
            eprintln!("  - {skipped}");
        }
    }

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
    /// Targets left out of a scenario without anything being broken: the
    /// baseline commit refusing a scenario's config.
    skipped: Vec<String>,
    step: usize,
    steps: usize,
}

/// Everything fixed for the whole benchmark.
#[derive(Debug)]
struct Bench<'a> {
    plan: &'a Plan,
    programs: &'a Programs,
    load_tools: &'a LoadTools,
    upstream: &'a Path,
    mock_llm: &'a Path,
    scratch: PathBuf,
    ticks_per_second: u64,
    interrupt: &'a Interrupt,
    /// The commit `hypergate-base` runs (`--baseline`).
    baseline: Option<&'a Baseline>,
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
        let rounds = self.plan.rounds_for(scenario);
        eprintln!("bench: scenario {}: {}", scenario.name, scenario.summary);
        let dir = self
            .scratch
            .join(format!("{}-{}", layout.kind, scenario.name));
        std::fs::create_dir_all(&dir)?;
        let edge = EdgeMaterial::prepare(scenario, &dir.join("edge"))
            .with_context(|| format!("{label}: preparing credentials and certificates"))?;
        let (mut upstream, upstream_address) =
            self.start_upstream(scenario, &layout.upstream, &dir)?;
        let mut collector = if scenario.pair.is_some_and(Pair::traces) {
            Some(self.start_collector(&layout.upstream, &dir)?)
        } else {
            None
        };

        // A target that died is `None` from then on.
        let mut running: Vec<Option<RunningTarget>> = Vec::new();
        for target in self.plan.targets_for(scenario) {
            let setup = TargetSetup {
                scenario,
                upstream: upstream_address,
                placement: &layout.proxy,
                dir: dir.join(target.name()),
                edge: &edge,
                collector: collector.as_ref().map(|(_, address)| *address),
            };
            match targets::start(target, &setup, self.programs, self.interrupt) {
                Ok(started) => running.push(Some(started)),
                Err(error) => {
                    self.interrupt.check()?;
                    outcome.steps -= rounds as usize;
                    if let (Target::HypergateBase, Some(baseline)) = (target, self.baseline) {
                        let skipped = format!(
                            "{label}: hypergate-base skipped in this scenario: the baseline \
                             commit {} did not start with the config this scenario generates \
                             (an older commit may reject a config field added since)",
                            baseline::short_hash(&baseline.commit)
                        );
                        eprintln!("bench: {skipped}: {error:#}");
                        outcome
                            .skipped
                            .push(format!("{skipped}: {}", brief(&error)));
                    } else {
                        eprintln!("bench: {label}: {error:#}");
                        outcome.failures.push(format!("{label}: {}", brief(&error)));
                    }
                }
            }
        }

        // The progress lines' target column: 20 wide, or the longest name here.
        let name_width = running
            .iter()
            .flatten()
            .map(|target| target.target.name().len())
            .fold(20, usize::max);
        for round in 1..=rounds {
            let mut order: Vec<usize> = (0..running.len()).collect();
            if scenario.pair.is_some() && round % 2 == 0 {
                // Off-on, then on-off: a drift within a round favours neither.
                order.reverse();
            }
            for index in order {
                let Some(target) = running[index].as_mut() else {
                    continue;
                };
                outcome.step += 1;
                eprint!(
                    "[{:>3}/{}] {label} round {round}/{rounds} {:<name_width$} ",
                    outcome.step,
                    outcome.steps,
                    target.target.name()
                );
                let measured =
                    self.measure(layout, scenario, &edge, round, target, &mut upstream, &dir);
                if let Some((collector, _)) = collector.as_mut() {
                    // Spans exported to nothing would fail: stop rather than mismeasure.
                    collector
                        .ensure_running()
                        .context("the OTLP collector (mock-upstream) died")?;
                }
                match measured {
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
                            outcome.steps -= (rounds - round) as usize;
                            running[index] = None;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Starts the scenario's upstream (`mock-upstream`, `mock-llm` without
    /// any delay for LLM scenarios, or Hypergate's demo gRPC upstream for the
    /// gRPC scenario) and returns it with its address.
    fn start_upstream(
        &self,
        scenario: &Scenario,
        placement: &Placement,
        dir: &Path,
    ) -> anyhow::Result<(Guarded, SocketAddr)> {
        if let Some(grpc) = scenario.grpc {
            return targets::start_grpc_upstream(
                &self.programs.hypergate,
                grpc,
                scenario.path,
                placement,
                dir,
                self.interrupt,
            );
        }
        let (name, command) = if scenario.llm.is_some() {
            let mut command = Command::new(self.mock_llm);
            command.args([
                "--listen=127.0.0.1:0",
                "--no-auth",
                "--latency-ms=0",
                "--chunk-delay-ms=0",
            ]);
            ("mock-llm", command)
        } else {
            let mut command = Command::new(self.upstream);
            command
                .arg("--listen=127.0.0.1:0")
                .arg(format!("--threads={}", placement.workers))
                .arg(format!("--body-size={}", scenario.upstream_body_bytes));
            if placement.cpus.is_some() {
                command.arg(format!("--cpu-list={}", placement.describe()));
            }
            ("mock-upstream", command)
        };
        self.spawn_listening(name, command, placement, &dir.join("upstream.log"))
    }

    /// Starts the OTLP collector of a tracing scenario and returns it with its
    /// address: `mock-upstream` again, which reads and discards each export
    /// request's protobuf body (Content-Length framing, across reads) and
    /// answers `200` with an empty body, which the exporter counts as
    /// exported. One thread serves it, as the gateway's exporter thread keeps
    /// one connection to its endpoint. It runs on the upstream's CPUs (its
    /// one thread bound to the first), not the generator's: the generator is
    /// what saturates its CPUs in these closed-loop runs, so stealing from it
    /// would slow the "on" runs' offered load, while the upstream's CPUs have
    /// room and already host the other process that answers the gateway. Its
    /// CPU time is its own process's: never counted in the gateway's process
    /// CPU per request, only in the whole machine's.
    fn start_collector(
        &self,
        placement: &Placement,
        dir: &Path,
    ) -> anyhow::Result<(Guarded, SocketAddr)> {
        let mut command = Command::new(self.upstream);
        command.args(["--listen=127.0.0.1:0", "--threads=1", "--body-size=0"]);
        if placement.cpus.is_some() {
            command.arg(format!("--cpu-list={}", placement.describe()));
        }
        self.spawn_listening(
            "OTLP collector (mock-upstream)",
            command,
            placement,
            &dir.join("collector.log"),
        )
    }

    /// Spawns `command` bound to `placement`'s CPUs, its output in `log`, and
    /// waits for the `listening on ADDR` line the mock servers print.
    fn spawn_listening(
        &self,
        name: &str,
        command: Command,
        placement: &Placement,
        log: &Path,
    ) -> anyhow::Result<(Guarded, SocketAddr)> {
        let mut upstream = Guarded::spawn(
            name,
            command,
            placement.cpus.as_deref(),
            Output::combined(log.to_owned()),
        )?;
        let deadline = Instant::now() + UPSTREAM_START_TIMEOUT;
        loop {
            upstream.ensure_running()?;
            let output = std::fs::read_to_string(log).unwrap_or_default();
            if let Some(address) = output
                .lines()
                .find_map(|line| line.strip_prefix("listening on "))
            {
                let address = address
                    .trim()
                    .parse()
                    .with_context(|| format!("{name} printed {address:?}"))?;
                return Ok((upstream, address));
            }
            if Instant::now() >= deadline {
                bail!(
                    "{name} did not start listening:\n{}",
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
        let generator = if scenario.llm.is_some() {
            "loadgen"
        } else if scenario.h2c.is_some() {
            "h2load"
        } else {
            "wrk"
        };
        let load = |seconds: Duration, log: String| LoadRun {
            scenario,
            target: target.address,
            headers: &edge.headers,
            // `direct` is the plain mock upstream.
            tls: scenario.tls && target.target != Target::Direct,
            generator: &layout.generator,
            duration: seconds,
            rate: self.plan.rate,
            tools: self.load_tools,
            log: dir.join(log),
        };
        if !self.plan.warmup.is_zero() {
            load(
                self.plan.warmup,
                format!("{generator}-{name}-{round}-warmup.log"),
            )
            .run(self.interrupt)
            .context("warm-up")?;
        }
        let proxy_pid = target.process.as_ref().map(Guarded::pid);
        let proxy_before = proxy_pid.map(procfs::sample_tree).transpose()?;
        let upstream_before = procfs::sample_tree(upstream.pid())?;
        let machine_before = procfs::machine_busy_ticks()?;
        let store_before = self.call_store_counters(target)?;
        let spans_before = self.otlp_span_counters(target)?;
        let run = load(
            self.plan.duration_for(scenario),
            format!("{generator}-{name}-{round}.log"),
        );
        let mut rss_samples = Vec::new();
        let report = match (scenario.llm, proxy_pid.zip(proxy_before)) {
            (Some(llm), Some((pid, before))) if llm.soak => {
                rss_samples.push(RssSample {
                    at_s: 0,
                    rss_kb: before.rss_kb,
                });
                let started = Instant::now();
                let every = Duration::from_secs(scenario::SOAK_SAMPLE_SECS);
                let report = run.run_sampling(self.interrupt, every, |elapsed| {
                    rss_samples.push(RssSample {
                        at_s: elapsed.as_secs(),
                        rss_kb: procfs::sample_tree(pid)?.rss_kb,
                    });
                    Ok(())
                })?;
                rss_samples.push(RssSample {
                    at_s: started.elapsed().as_secs(),
                    rss_kb: procfs::sample_tree(pid)?.rss_kb,
                });
                report
            }
            _ => run.run(self.interrupt)?,
        };
        let machine_after = procfs::machine_busy_ticks()?;
        let proxy_after = proxy_pid.map(procfs::sample_tree).transpose()?;
        let upstream_after = procfs::sample_tree(upstream.pid())?;
        let store_after = self.call_store_counters(target)?;
        let spans_after = self.otlp_span_counters(target)?;
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
            unsent: report.unsent,
            rss_start_kb: rss_samples.first().map(|sample| sample.rss_kb),
            rss_samples,
            callstore_records_per_s: per_second(store_before.zip(store_after), |c| c.written),
            callstore_dropped: store_before
                .zip(store_after)
                .map(|((before, _), (after, _))| after.dropped.saturating_sub(before.dropped)),
            otlp_spans_exported_per_s: per_second(spans_before.zip(spans_after), |c| c.exported),
            otlp_spans_dropped: spans_before
                .zip(spans_after)
                .map(|((before, _), (after, _))| after.dropped.saturating_sub(before.dropped)),
            otlp_spans_failed: spans_before
                .zip(spans_after)
                .map(|((before, _), (after, _))| after.failed.saturating_sub(before.failed)),
            commit: self
                .baseline
                .filter(|_| target.target == Target::HypergateBase)
                .map(|baseline| baseline.commit.clone()),
        })
    }

    /// For `hypergate-callstore`, its call store's counters and when they were
    /// read (`None` for every other target). The store commits every
    /// `flush_interval` (200 ms), so a reading lags the requests by up to that.
    fn call_store_counters(
        &self,
        target: &RunningTarget,
    ) -> anyhow::Result<Option<(targets::CallStoreCounters, Instant)>> {
        match (target.target, target.admin) {
            (Target::HypergateCallstore, Some(admin)) => {
                let counters = targets::call_store_counters(admin)?;
                Ok(Some((counters, Instant::now())))
            }
            _ => Ok(None),
        }
    }

    /// For the tracing targets, the OTLP exporter's span counters and when
    /// they were read (`None` for every other target). A span is counted once
    /// its batch's export request is answered: with 1% sampled, a batch goes
    /// every `flush_interval` (1 s), so a reading lags the requests by up to
    /// that; with every request sampled, batches fill in milliseconds.
    fn otlp_span_counters(
        &self,
        target: &RunningTarget,
    ) -> anyhow::Result<Option<(targets::OtlpSpanCounters, Instant)>> {
        match (target.target.trace_sampler(), target.admin) {
            (Some(_), Some(admin)) => {
                let counters = targets::otlp_span_counters(admin)?;
                Ok(Some((counters, Instant::now())))
            }
            _ => Ok(None),
        }
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
    wrk: Option<PathBuf>,
    h2load: Option<PathBuf>,
    nginx: Option<PathBuf>,
    haproxy: Option<PathBuf>,
    litellm: Option<PathBuf>,
}

/// Finds the tools the plan's scenarios need: nginx and haproxy for the
/// closed-loop ones, wrk for those over HTTP/1.1, h2load for the HTTP/2 ones,
/// LiteLLM for the LLM ones. Drops missing peers from the targets with a note
/// that says how to install them; a missing h2load drops the HTTP/2 scenarios
/// the same way; a missing wrk is an error.
fn find_tools(plan: &mut Plan) -> anyhow::Result<Tools> {
    let find = |name: &str, needed: bool| needed.then(|| find_program(name)).flatten();
    let h2load = find("h2load", plan.scenarios.iter().any(|s| s.h2c.is_some()));
    if h2load.is_none() {
        for scenario in plan.scenarios.iter().filter(|s| s.h2c.is_some()) {
            eprintln!(
                "bench: skipping {}: h2load is not installed; install it with \
                 `{H2LOAD_INSTALL_LINE}`",
                scenario.name
            );
        }
        plan.scenarios.retain(|scenario| scenario.h2c.is_none());
    }
    let closed_loop = plan.scenarios.iter().any(|s| s.llm.is_none());
    let wrk = find("wrk", needs_wrk(plan));
    let nginx = find(
        "nginx",
        closed_loop && plan.targets.contains(&Target::Nginx),
    );
    let haproxy = find(
        "haproxy",
        closed_loop && plan.targets.contains(&Target::Haproxy),
    );
    if closed_loop {
        // Only what this run would use: `--no-peers` or `--proxy` need no nginx.
        let wanted = |target: Target| plan.targets.contains(&target);
        let missing: Vec<&str> = [
            ("nginx", nginx.is_none() && wanted(Target::Nginx)),
            ("haproxy", haproxy.is_none() && wanted(Target::Haproxy)),
            ("wrk", wrk.is_none() && needs_wrk(plan)),
        ]
        .into_iter()
        .filter(|&(_, missing)| missing)
        .map(|(name, _)| name)
        .collect();
        if !missing.is_empty() {
            eprintln!(
                "bench: not installed: {}\nbench: install them with:\n    {INSTALL_LINE}",
                missing.join(", ")
            );
        }
        if wrk.is_none() && needs_wrk(plan) {
            bail!("wrk is required to generate load; install it with `{INSTALL_LINE}`");
        }
    }
    let litellm_runs = plan.targets.contains(&Target::Litellm)
        && plan
            .scenarios
            .iter()
            .any(|scenario| Target::Litellm.runs_in(scenario));
    let litellm = litellm_runs.then(find_litellm).flatten();
    if litellm_runs && litellm.is_none() {
        eprintln!(
            "bench: LiteLLM (the LLM scenarios' peer) is not installed; install it with:\n    \
             {LITELLM_INSTALL_LINE}"
        );
    }
    for (target, path) in [
        (Target::Nginx, &nginx),
        (Target::Haproxy, &haproxy),
        (Target::Litellm, &litellm),
    ] {
        if path.is_none() && plan.targets.contains(&target) {
            if closed_loop || target == Target::Litellm {
                eprintln!("bench: skipping {} (not installed)", target.name());
            }
            plan.targets.retain(|&kept| kept != target);
        }
    }
    if plan.targets.is_empty() {
        bail!("no target left to benchmark");
    }
    Ok(Tools {
        wrk,
        h2load,
        nginx,
        haproxy,
        litellm,
    })
}

/// Whether a selected scenario sends HTTP/1.1 closed-loop load (wrk's).
fn needs_wrk(plan: &Plan) -> bool {
    plan.scenarios
        .iter()
        .any(|scenario| scenario.llm.is_none() && scenario.h2c.is_none())
}

/// LiteLLM's `litellm` command: on PATH, or in the virtualenv under the home
/// directory that [`LITELLM_INSTALL_LINE`] creates.
fn find_litellm() -> Option<PathBuf> {
    find_program("litellm").or_else(|| {
        let home = std::env::var_os("HOME")?;
        let command = Path::new(&home).join(LITELLM_VENV_COMMAND);
        command.is_file().then_some(command)
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
fn build(root: &Path, with_hypergate: bool, with_mock_llm: bool) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut packages = vec!["hypergate-bench"];
    if with_mock_llm {
        packages.push("hypergate-mock-llm");
    }
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
            bail!("the benchmark tools ({package}) did not build; cargo's errors are above");
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
    if !plan
        .scenarios
        .iter()
        .any(|scenario| scenario.pair == Some(Pair::EbpfProbe))
    {
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

/// A counter's rate between two timed readings.
fn per_second<T>(
    readings: Option<((T, Instant), (T, Instant))>,
    count: impl Fn(&T) -> u64,
) -> Option<f64> {
    readings.map(|((before, at), (after, until))| {
        let seconds = until.duration_since(at).as_secs_f64();
        count(&after).saturating_sub(count(&before)) as f64 / seconds.max(1e-3)
    })
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
    fn defaults_run_everything_but_the_soak_three_times() {
        let plan = plan(&[]).expect("valid");
        assert_eq!(plan.scenarios.len(), scenario::SCENARIOS.len() - 1);
        assert!(!names(&plan).contains(&"llm-soak"));
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
    fn the_http2_scenario_runs_every_proxy_but_not_direct_and_not_in_quick() {
        let plan = plan(&["--scenario=h2-get", "--scenario=get-c64"]).expect("valid");
        let [h2, plain] = plan.scenarios[..] else {
            panic!("two scenarios");
        };
        assert_eq!(
            plan.targets_for(h2),
            [Target::Hypergate, Target::Nginx, Target::Haproxy]
        );
        assert!(plan.targets_for(plain).contains(&Target::Direct));
        assert!(!needs_wrk(
            &self::plan(&["--scenario=h2-get"]).expect("valid")
        ));
        assert!(needs_wrk(&plan));
        assert!(names(&self::plan(&[]).expect("valid")).contains(&"h2-get"));
        assert!(!names(&self::plan(&["--quick"]).expect("valid")).contains(&"h2-get"));
        let with_base =
            self::plan(&["--scenario=h2-get", "--baseline=HEAD~1", "--no-peers"]).expect("valid");
        assert_eq!(
            with_base.targets_for(with_base.scenarios[0]),
            [Target::Hypergate, Target::HypergateBase]
        );
    }

    #[test]
    fn the_grpc_scenario_runs_every_proxy_and_direct_not_in_quick() {
        let plan = plan(&["--scenario=grpc-unary"]).expect("valid");
        let [grpc] = plan.scenarios[..] else {
            panic!("one scenario");
        };
        assert_eq!(
            plan.targets_for(grpc),
            [
                Target::Hypergate,
                Target::Nginx,
                Target::Haproxy,
                Target::Direct
            ]
        );
        assert!(!needs_wrk(&plan));
        assert!(names(&self::plan(&[]).expect("valid")).contains(&"grpc-unary"));
        assert!(!names(&self::plan(&["--quick"]).expect("valid")).contains(&"grpc-unary"));
        // The upstream is Hypergate's demo: built even when only peers run.
        let peers = self::plan(&["--scenario=grpc-unary", "--proxy=nginx"]).expect("valid");
        assert!(peers.needs_hypergate_binary());
        let plain = self::plan(&["--scenario=h2-get", "--proxy=nginx"]).expect("valid");
        assert!(!plain.needs_hypergate_binary());
        let with_base = self::plan(&["--scenario=grpc-unary", "--baseline=HEAD~1", "--no-peers"])
            .expect("valid");
        assert_eq!(
            with_base.targets_for(with_base.scenarios[0]),
            [Target::Hypergate, Target::HypergateBase, Target::Direct]
        );
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
        assert_eq!(
            plan.targets_for(plain),
            [
                Target::Hypergate,
                Target::Nginx,
                Target::Haproxy,
                Target::Direct
            ]
        );
        let peers_only = self::plan(&["--scenario=ebpf-probe", "--proxy=nginx"]).expect("valid");
        assert!(peers_only.targets_for(peers_only.scenarios[0]).is_empty());
        let mut skipped =
            self::plan(&["--scenario=ebpf-probe", "--scenario=newconn"]).expect("valid");
        skipped.skip_ebpf_pair("test");
        assert_eq!(names(&skipped), ["newconn"]);
        assert!(!names(&self::plan(&["--quick"]).expect("valid")).contains(&"ebpf-probe"));
    }

    #[test]
    fn callstore_pair_runs_the_plain_binary_twice_and_survives_the_ebpf_skip() {
        let mut plan = plan(&["--scenario=callstore", "--scenario=ebpf-probe"]).expect("valid");
        let callstore = scenario::find("callstore").expect("scenario exists");
        assert_eq!(
            plan.targets_for(callstore),
            [Target::Hypergate, Target::HypergateCallstore]
        );
        plan.skip_ebpf_pair("test");
        assert_eq!(names(&plan), ["callstore"]);
        assert!(Target::from_name("hypergate-callstore").is_none());
        assert!(!names(&self::plan(&["--quick"]).expect("valid")).contains(&"callstore"));
    }

    #[test]
    fn tracing_pairs_run_the_plain_binary_twice_and_survive_the_ebpf_skip() {
        let mut plan = plan(&[
            "--scenario=trace-all",
            "--scenario=ebpf-probe",
            "--scenario=trace-1pct",
            "--no-peers",
        ])
        .expect("valid");
        for (name, on) in [
            ("trace-all", Target::HypergateTraceAll),
            ("trace-1pct", Target::HypergateTraceOnePercent),
        ] {
            let scenario = scenario::find(name).expect("scenario exists");
            assert_eq!(
                plan.targets_for(scenario),
                [Target::Hypergate, on],
                "{name}"
            );
            assert!(scenario.pair.is_some_and(Pair::traces), "{name}");
            assert!(on.trace_sampler().is_some() && Target::Hypergate.trace_sampler().is_none());
            assert!(Target::from_name(on.name()).is_none(), "{name}");
        }
        plan.skip_ebpf_pair("test");
        assert_eq!(names(&plan), ["trace-all", "trace-1pct"]);
        let quick = names(&self::plan(&["--quick"]).expect("valid"));
        assert!(!quick.contains(&"trace-all") && !quick.contains(&"trace-1pct"));
        let with_base = self::plan(&["--scenario=trace-1pct", "--baseline=HEAD~1"]).expect("valid");
        assert_eq!(
            with_base.targets_for(with_base.scenarios[0]),
            [
                Target::Hypergate,
                Target::HypergateTraceOnePercent,
                Target::HypergateBase
            ]
        );
    }

    #[test]
    fn io_uring_pairs_run_the_plain_binary_twice_in_the_default_set_only() {
        let mut plan = plan(&[
            "--scenario=uring-cooperative",
            "--scenario=ebpf-probe",
            "--scenario=uring-interrupt",
        ])
        .expect("valid");
        for (name, on) in [
            ("uring-cooperative", Target::HypergateUringCooperative),
            ("uring-interrupt", Target::HypergateUringInterrupt),
        ] {
            let scenario = scenario::find(name).expect("scenario exists");
            assert_eq!(
                plan.targets_for(scenario),
                [Target::Hypergate, on],
                "{name}"
            );
            assert!(!scenario.pair.is_some_and(Pair::traces), "{name}");
            assert!(Target::from_name(on.name()).is_none(), "{name}");
        }
        plan.skip_ebpf_pair("test");
        assert_eq!(names(&plan), ["uring-cooperative", "uring-interrupt"]);
        let defaults = names(&self::plan(&[]).expect("valid"));
        assert!(defaults.contains(&"uring-cooperative") && defaults.contains(&"uring-interrupt"));
        let quick = names(&self::plan(&["--quick"]).expect("valid"));
        assert!(!quick.contains(&"uring-cooperative") && !quick.contains(&"uring-interrupt"));
        // The baseline runs the plain config, which leaves the mode at its default.
        let with_base =
            self::plan(&["--scenario=uring-interrupt", "--baseline=HEAD~1"]).expect("valid");
        assert_eq!(
            with_base.targets_for(with_base.scenarios[0]),
            [
                Target::Hypergate,
                Target::HypergateUringInterrupt,
                Target::HypergateBase
            ]
        );
    }

    #[test]
    fn baseline_follows_hypergate_wherever_it_runs() {
        let plan = plan(&[
            "--baseline=HEAD~1",
            "--scenario=get-c64",
            "--scenario=callstore",
            "--scenario=llm-chat",
            "--scenario=llm-soak",
        ])
        .expect("valid");
        assert_eq!(plan.baseline.as_deref(), Some("HEAD~1"));
        let [get, callstore, chat, soak] = plan.scenarios[..] else {
            panic!("four scenarios");
        };
        use Target::*;
        assert_eq!(
            plan.targets_for(get),
            [Hypergate, HypergateBase, Nginx, Haproxy, Direct]
        );
        // The pair keeps off and on adjacent; the baseline runs the plain config.
        assert_eq!(
            plan.targets_for(callstore),
            [Hypergate, HypergateCallstore, HypergateBase]
        );
        assert_eq!(
            plan.targets_for(chat),
            [Hypergate, HypergateBase, Litellm, Direct]
        );
        assert_eq!(plan.targets_for(soak), [Hypergate, HypergateBase]);
        let without = self::plan(&["--scenario=get-c64"]).expect("valid");
        assert_eq!(without.baseline, None);
        assert!(!without.targets.contains(&HypergateBase));
    }

    #[test]
    fn baseline_combines_with_no_peers_and_proxy() {
        use Target::*;
        let no_peers = plan(&["--no-peers", "--baseline", "HEAD"]).expect("valid");
        assert_eq!(no_peers.targets, [Hypergate, HypergateBase, Direct]);
        let chosen =
            plan(&["--proxy=direct", "--proxy=hypergate", "--baseline=cd35d1a"]).expect("valid");
        assert_eq!(chosen.targets, [Hypergate, HypergateBase, Direct]);
        let error = plan(&["--proxy=nginx", "--baseline=HEAD"]).expect_err("no hypergate");
        assert!(
            format!("{error:#}").contains("--proxy hypergate"),
            "{error:#}"
        );
        assert!(plan(&["--baseline="]).is_err());
        assert!(plan(&["--baseline"]).is_err(), "a revision is required");
        assert!(plan(&["--proxy=hypergate-base"]).is_err());
    }

    #[test]
    fn llm_scenarios_run_hypergate_litellm_and_direct() {
        let plan = plan(&["--scenario=llm-chat", "--scenario=llm-soak"]).expect("valid");
        let [chat, soak] = plan.scenarios[..] else {
            panic!("two scenarios");
        };
        assert_eq!(
            plan.targets_for(chat),
            [Target::Hypergate, Target::Litellm, Target::Direct]
        );
        assert_eq!(plan.targets_for(soak), [Target::Hypergate]);
        assert_eq!((plan.rounds_for(chat), plan.rounds_for(soak)), (3, 1));
        assert_eq!(plan.duration_for(chat).as_secs(), 10);
        assert_eq!(plan.duration_for(soak).as_secs(), 600);
        assert_eq!(plan.rate, 1000.0);
        let no_peers = self::plan(&["--scenario=llm-stream", "--no-peers"]).expect("valid");
        assert_eq!(
            no_peers.targets_for(no_peers.scenarios[0]),
            [Target::Hypergate, Target::Direct]
        );
        let short =
            self::plan(&["--scenario=llm-soak", "--duration=120", "--rate=500"]).expect("valid");
        assert_eq!(short.duration_for(short.scenarios[0]).as_secs(), 120);
        assert_eq!(short.rate, 500.0);
        let quick = self::plan(&["--quick", "--scenario=llm-soak"]).expect("valid");
        assert_eq!(quick.duration_for(quick.scenarios[0]).as_secs(), 30);
        assert!(self::plan(&["--rate=0"]).is_err());
    }
}
