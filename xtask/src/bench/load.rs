//! Drives wrk and reads its report.
//!
//! wrk runs closed-loop (each connection sends its next request when the previous
//! response is in) for a fixed time, with `bench/wrk/report.lua` (or `post.lua`,
//! which adds a request body) making it print one JSON line at the end. Edge
//! scenarios add their credential as a `--header`; TLS scenarios use an `https`
//! URL (wrk does not verify the certificate). The run is bounded twice: by
//! wrk's own `-d` and `--timeout`, and by a hard deadline after which wrk is
//! killed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Deserialize;

use super::layout::Placement;
use super::process::{self, Guarded, Interrupt, Output};
use super::scenario::{RequestKind, Scenario};

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
    /// `bench/wrk` in the workspace.
    pub scripts: &'a Path,
    /// File for wrk's output.
    pub log: PathBuf,
}

impl LoadRun<'_> {
    /// The wrk command line, without CPU binding.
    fn command(&self, wrk: &Path) -> Command {
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
            .arg(format!("--script={}", self.scripts.join(script).display()))
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

    /// Runs wrk to completion and returns its report.
    pub fn run(&self, wrk: &Path, interrupt: &Interrupt) -> anyhow::Result<LoadReport> {
        let mut child = Guarded::spawn(
            "wrk",
            self.command(wrk),
            self.generator.cpus.as_deref(),
            Output::combined(self.log.clone()),
        )?;
        let status =
            child.wait_until(Instant::now() + self.duration + DEADLINE_SLACK, interrupt)?;
        let output = std::fs::read_to_string(&self.log)
            .with_context(|| format!("reading {}", self.log.display()))?;
        if !status.success() {
            bail!(
                "wrk failed ({status}): {}",
                process::tail_of_file(&self.log, 1024).trim()
            );
        }
        parse_report(&output).with_context(|| {
            format!(
                "no report line in wrk's output:\n{}",
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
        let run = LoadRun {
            scenario,
            target: SocketAddr::from(([127, 0, 0, 1], 8080)),
            headers: &[],
            tls: false,
            generator: &placement,
            duration: Duration::from_secs(3),
            scripts: Path::new("/w/bench/wrk"),
            log: PathBuf::from("/tmp/wrk.log"),
        };
        let args: Vec<String> = run
            .command(Path::new("wrk"))
            .get_args()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect();
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
}
