//! Drives wrk or `loadgen` and reads their report.
//!
//! wrk runs closed-loop (each connection sends its next request when the previous
//! response is in) for a fixed time, with `bench/wrk/report.lua` (or `post.lua`,
//! which adds a request body) making it print one JSON line at the end. Edge
//! scenarios add their credential as a `--header`; TLS scenarios use an `https`
//! URL (wrk does not verify the certificate). The run is bounded twice: by
//! wrk's own `-d` and `--timeout`, and by a hard deadline after which wrk is
//! killed.
//!
//! LLM scenarios use `loadgen` instead: open loop at a fixed rate, `POST`ing the
//! scenario's chat completion as JSON, with `--ttfb` for streamed answers (see
//! `bench/src/bin/loadgen.rs`). It prints the same JSON line as wrk's script.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Deserialize;

use super::layout::Placement;
use super::process::{self, Guarded, Interrupt, Output};
use super::scenario::{Llm, RequestKind, Scenario};

/// wrk's per-request timeout.
const REQUEST_TIMEOUT_SECS: u64 = 5;

/// Time wrk gets beyond its run time to connect, finish and report.
const DEADLINE_SLACK: Duration = Duration::from_secs(20);

/// The JSON line `bench/wrk/report.lua` prints (and `loadgen` too).
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct LoadReport {
    /// Responses received.
    pub requests: u64,
    /// Connect, read, write and timeout errors plus error statuses.
    pub errors: u64,
    /// Requests per second over the run.
    pub rps: f64,
    /// Median latency, µs.
    pub p50_us: u64,
    /// 99th percentile latency, µs.
    pub p99_us: u64,
    /// 99.9th percentile latency, µs.
    pub p999_us: u64,
    /// Requests a fixed-rate run was still behind on when time was up
    /// (`loadgen` only; wrk does not say).
    #[serde(default)]
    pub unsent: u64,
}

/// The load generators.
#[derive(Debug)]
pub struct LoadTools {
    /// wrk, needed when a closed-loop scenario runs.
    pub wrk: Option<PathBuf>,
    /// `target/release/loadgen`.
    pub loadgen: PathBuf,
    /// `bench/wrk` in the workspace (wrk's scripts).
    pub scripts: PathBuf,
}

/// One wrk invocation.
#[derive(Debug)]
pub struct LoadRun<'a> {
    /// What to send.
    pub scenario: &'a Scenario,
    /// Where to send it.
    pub target: SocketAddr,
    /// Extra headers (`Name: value`) on every request (credentials).
    pub headers: &'a [String],
    /// Use `https`.
    pub tls: bool,
    /// Where wrk runs and with how many threads.
    pub generator: &'a Placement,
    /// Run time.
    pub duration: Duration,
    /// Requests per second of a fixed-rate (LLM) run.
    pub rate: f64,
    /// The generators.
    pub tools: &'a LoadTools,
    /// File for the generator's output.
    pub log: PathBuf,
}

impl LoadRun<'_> {
    /// The generator's name and command line, without CPU binding.
    fn command(&self) -> anyhow::Result<(&'static str, Command)> {
        if let Some(llm) = self.scenario.llm {
            return Ok(("loadgen", self.loadgen_command(llm)));
        }
        let wrk = self.tools.wrk.as_deref().context("wrk is not installed")?;
        Ok(("wrk", self.wrk_command(wrk)))
    }

    /// The `loadgen` command line of an LLM scenario, without CPU binding.
    fn loadgen_command(&self, llm: Llm) -> Command {
        let threads = self.generator.workers.clamp(1, self.scenario.connections);
        let mut command = Command::new(&self.tools.loadgen);
        command
            .arg(format!("--target={}", self.target))
            .arg(format!("--path={}", self.scenario.path))
            .arg(format!("--rate={}", self.rate))
            .arg(format!("--connections={}", self.scenario.connections))
            .arg(format!("--duration={}", self.duration.as_secs_f64()))
            .arg(format!("--threads={threads}"))
            .arg(format!("--timeout-ms={}", REQUEST_TIMEOUT_SECS * 1000))
            .arg("--method=POST")
            .arg(format!("--body={}", llm.body()));
        if llm.stream {
            command.arg("--ttfb");
        }
        command
    }

    /// The wrk command line, without CPU binding.
    fn wrk_command(&self, wrk: &Path) -> Command {
        let threads = self.generator.workers.clamp(1, self.scenario.connections);
        let mut command = Command::new(wrk);
        command
            .arg(format!("--threads={threads}"))
            .arg(format!("--connections={}", self.scenario.connections))
            .arg(format!("--duration={}s", self.duration.as_secs().max(1)))
            .arg(format!("--timeout={REQUEST_TIMEOUT_SECS}s"));
        if self.scenario.new_connection_per_request {
            command.arg("--header=Connection: close");
        }
        for header in self.headers {
            command.arg(format!("--header={header}"));
        }
        let script = match self.scenario.request {
            RequestKind::Get => "report.lua",
            RequestKind::Post { .. } => "post.lua",
        };
        command
            .arg(format!(
                "--script={}",
                self.tools.scripts.join(script).display()
            ))
            .arg(format!(
                "{}://{}{}",
                if self.tls { "https" } else { "http" },
                self.target,
                self.scenario.path
            ));
        if let RequestKind::Post { body_bytes } = self.scenario.request {
            command.arg("--").arg(body_bytes.to_string());
        }
        command
    }

    /// Runs the generator to completion and returns its report.
    pub fn run(&self, interrupt: &Interrupt) -> anyhow::Result<LoadReport> {
        self.run_sampling(interrupt, self.duration + DEADLINE_SLACK, |_| Ok(()))
    }

    /// Runs the generator to completion, calling `sample` with the time since it
    /// started every `every` while it runs, and returns its report.
    pub fn run_sampling(
        &self,
        interrupt: &Interrupt,
        every: Duration,
        mut sample: impl FnMut(Duration) -> anyhow::Result<()>,
    ) -> anyhow::Result<LoadReport> {
        let (name, command) = self.command()?;
        let mut child = Guarded::spawn(
            name,
            command,
            self.generator.cpus.as_deref(),
            Output::combined(self.log.clone()),
        )?;
        let started = Instant::now();
        let deadline = started + self.duration + DEADLINE_SLACK;
        let status = loop {
            let next = (Instant::now() + every).min(deadline);
            if let Some(status) = child.wait_for(next, interrupt)? {
                break status;
            }
            if Instant::now() >= deadline {
                bail!("{name} did not finish in time");
            }
            sample(started.elapsed())?;
        };
        let output = std::fs::read_to_string(&self.log)
            .with_context(|| format!("reading {}", self.log.display()))?;
        if !status.success() {
            bail!(
                "{name} failed ({status}): {}",
                process::tail_of_file(&self.log, 1024).trim()
            );
        }
        parse_report(&output).with_context(|| {
            format!(
                "no report line in {name}'s output:\n{}",
                process::tail_of_file(&self.log, 1024).trim()
            )
        })
    }
}

/// Finds and parses the last JSON line in wrk's output.
fn parse_report(output: &str) -> anyhow::Result<LoadReport> {
    let line = output
        .lines()
        .rev()
        .map(str::trim)
        .find(|line| line.starts_with('{'))
        .context("no JSON line")?;
    serde_json::from_str(line).with_context(|| format!("parsing {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::scenario;

    fn tools() -> LoadTools {
        LoadTools {
            wrk: Some(PathBuf::from("wrk")),
            loadgen: PathBuf::from("/t/release/loadgen"),
            scripts: PathBuf::from("/w/bench/wrk"),
        }
    }

    fn arguments(run: &LoadRun<'_>) -> Vec<String> {
        let (_, command) = run.command().expect("a generator");
        command
            .get_args()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn parses_the_report_line_among_wrk_output() {
        let output = "Running 1s test @ http://127.0.0.1:1/\n  1 threads and 16 connections\n\
            {\"requests\":100,\"errors\":2,\"errors_connect\":0,\"errors_read\":2,\
            \"errors_write\":0,\"errors_timeout\":0,\"errors_status\":0,\"duration_us\":1000000,\
            \"rps\":100.0,\"p50_us\":120,\"p99_us\":240,\"p999_us\":1091,\"max_us\":2004}\n";
        let report = parse_report(output).expect("parses");
        assert_eq!(report.requests, 100);
        assert_eq!(report.errors, 2);
        assert_eq!(report.p999_us, 1091);
        assert!(parse_report("Running 1s test\n").is_err());
    }

    #[test]
    fn post_scenarios_pass_the_body_size_to_the_script() {
        let scenario = scenario::find("post-10k").expect("exists");
        let placement = Placement {
            cpus: None,
            workers: 2,
        };
        let tools = tools();
        let run = LoadRun {
            scenario,
            target: SocketAddr::from(([127, 0, 0, 1], 8080)),
            headers: &[],
            tls: false,
            generator: &placement,
            duration: Duration::from_secs(3),
            rate: 1000.0,
            tools: &tools,
            log: PathBuf::from("/tmp/wrk.log"),
        };
        let args = arguments(&run);
        assert_eq!(
            args,
            [
                "--threads=2",
                "--connections=64",
                "--duration=3s",
                "--timeout=5s",
                "--script=/w/bench/wrk/post.lua",
                "http://127.0.0.1:8080/",
                "--",
                "10240"
            ]
        );
    }

    #[test]
    fn llm_scenarios_post_the_chat_at_a_fixed_rate_with_loadgen() {
        let placement = Placement {
            cpus: Some(vec![0]),
            workers: 1,
        };
        let tools = LoadTools {
            wrk: None,
            ..tools()
        };
        let run = |name: &str| {
            let scenario = scenario::find(name).expect("exists");
            let run = LoadRun {
                scenario,
                target: SocketAddr::from(([127, 0, 0, 1], 8080)),
                headers: &[],
                tls: false,
                generator: &placement,
                duration: Duration::from_millis(2500),
                rate: 1000.0,
                tools: &tools,
                log: PathBuf::from("/tmp/loadgen.log"),
            };
            (run.command().map(|(name, _)| name).ok(), arguments(&run))
        };
        let (name, chat) = run("llm-chat");
        assert_eq!(name, Some("loadgen"));
        assert_eq!(
            chat[..8],
            [
                "--target=127.0.0.1:8080",
                "--path=/v1/chat/completions",
                "--rate=1000",
                "--connections=64",
                "--duration=2.5",
                "--threads=1",
                "--timeout-ms=5000",
                "--method=POST",
            ]
        );
        assert!(chat[8].starts_with("--body={") && chat[8].contains(r#""stream":false"#));
        assert_eq!(chat.len(), 9);
        let (_, stream) = run("llm-stream");
        assert!(stream[8].contains(r#""stream":true"#));
        assert_eq!(stream.last().map(String::as_str), Some("--ttfb"));
    }
}
