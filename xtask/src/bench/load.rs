//! Drives wrk, `h2load` or `loadgen` and reads their report.
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
//!
//! The HTTP/2 scenarios use `h2load` (nghttp2): closed loop like wrk, cleartext
//! HTTP/2 with prior knowledge, `-c` connections with `-m` streams in flight on
//! each, for `-D` seconds, bound to the generator's CPUs like wrk. Its summary
//! gives the request counts and req/s (see [`parse_h2load_summary`]); the
//! latency percentiles are exact, computed from its `--log-file` (one line per
//! request: start time, status or -1 for a failed stream, µs until the end of
//! the response), read line by line into a count per distinct latency (see
//! [`LatencyCounts`]), so memory follows the spread of latencies, not the
//! number of requests. h2load appends to that file, so it is removed first.
//! Its `-N` (connection inactivity timeout) plays wrk's `--timeout`. In the
//! gRPC scenario each request is a unary call: h2load `POST`s the scenario's
//! one-message body from a file written beside the log before each run
//! (`--data`), with gRPC's headers. h2load counts a `200` as success; the
//! `grpc-status` in the trailers it does not read (the targets' readiness
//! probe checks it, see `targets`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Deserialize;

use super::layout::Placement;
use super::process::{self, Guarded, Interrupt, Output};
use super::scenario::{Grpc, H2c, Llm, RequestKind, Scenario};

/// wrk's per-request timeout (h2load's connection inactivity timeout).
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
    /// (`loadgen` only; wrk and h2load do not say).
    #[serde(default)]
    pub unsent: u64,
}

/// The counts on h2load's `requests:` summary line and its req/s.
#[derive(Debug, Clone, Copy, PartialEq)]
struct H2loadSummary {
    /// Streams that ended, answered or not (`done`).
    done: u64,
    /// Streams answered with a 2xx or 3xx status (`succeeded`).
    succeeded: u64,
    /// Streams that did not succeed: reset or abandoned (`errored`, which
    /// counts timed-out ones too) and answered with another status.
    failed: u64,
    /// Streams reset, abandoned or timed out (`errored`, a part of `failed`).
    errored: u64,
    /// Succeeded streams per second of the measured duration.
    rps: f64,
}

/// The load generators.
#[derive(Debug)]
pub struct LoadTools {
    /// wrk, needed when a closed-loop HTTP/1.1 scenario runs.
    pub wrk: Option<PathBuf>,
    /// h2load, needed when an HTTP/2 scenario runs.
    pub h2load: Option<PathBuf>,
    /// `target/release/loadgen`.
    pub loadgen: PathBuf,
    /// `bench/wrk` in the workspace (wrk's scripts).
    pub scripts: PathBuf,
}

/// One load generator invocation.
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
    /// File for the generator's output; h2load's per-request log goes beside
    /// it (see [`LoadRun::request_log`]), and so does a gRPC call's body (see
    /// [`LoadRun::body_file`]).
    pub log: PathBuf,
}

impl LoadRun<'_> {
    /// The generator's name and command line, without CPU binding.
    fn command(&self) -> anyhow::Result<(&'static str, Command)> {
        if let Some(llm) = self.scenario.llm {
            return Ok(("loadgen", self.loadgen_command(llm)));
        }
        if let Some(h2c) = self.scenario.h2c {
            let h2load = self
                .tools
                .h2load
                .as_deref()
                .context("h2load is not installed (apt-get install -y nghttp2-client)")?;
            return Ok(("h2load", self.h2load_command(h2load, h2c)));
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

    /// h2load's per-request log (`--log-file`): the output file with the
    /// extension `requests.tsv`.
    fn request_log(&self) -> PathBuf {
        self.log.with_extension("requests.tsv")
    }

    /// The body h2load sends with every gRPC call (`--data`): the output file
    /// with the extension `body`.
    fn body_file(&self) -> PathBuf {
        self.log.with_extension("body")
    }

    /// The h2load command line of the HTTP/2 scenarios, without CPU binding;
    /// gRPC calls `POST` [`LoadRun::body_file`] with gRPC's headers.
    fn h2load_command(&self, h2load: &Path, h2c: H2c) -> Command {
        let threads = self.generator.workers.clamp(1, self.scenario.connections);
        let mut command = Command::new(h2load);
        command
            .arg(format!("--clients={}", self.scenario.connections))
            .arg(format!(
                "--max-concurrent-streams={}",
                h2c.streams_per_connection
            ))
            .arg(format!("--threads={threads}"))
            .arg(format!("--duration={}", self.duration.as_secs().max(1)))
            .arg(format!(
                "--connection-inactivity-timeout={REQUEST_TIMEOUT_SECS}"
            ))
            .arg(format!("--log-file={}", self.request_log().display()));
        if self.scenario.grpc.is_some() {
            command.arg(format!("--data={}", self.body_file().display()));
            for header in Grpc::HEADERS {
                command.arg(format!("--header={header}"));
            }
        }
        for header in self.headers {
            command.arg(format!("--header={header}"));
        }
        command.arg(format!("http://{}{}", self.target, self.scenario.path));
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
        if name == "h2load" {
            // h2load appends to its log; a warm-up's or earlier run's lines must go.
            remove_if_present(&self.request_log())?;
        }
        if let Some(grpc) = self.scenario.grpc {
            let body = self.body_file();
            std::fs::write(&body, grpc.body())
                .with_context(|| format!("writing {}", body.display()))?;
        }
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
        if name == "h2load" {
            return self.h2load_report(&output).with_context(|| {
                format!(
                    "reading h2load's results:\n{}",
                    process::tail_of_file(&self.log, 1024).trim()
                )
            });
        }
        parse_report(&output).with_context(|| {
            format!(
                "no report line in {name}'s output:\n{}",
                process::tail_of_file(&self.log, 1024).trim()
            )
        })
    }

    /// The report of an h2load run: counts and req/s from its summary,
    /// latency percentiles from its per-request log. Errors are the streams
    /// that did not succeed (reset, timed out, or an error status).
    fn h2load_report(&self, output: &str) -> anyhow::Result<LoadReport> {
        let summary = parse_h2load_summary(output)?;
        let path = self.request_log();
        let file = std::fs::File::open(&path)
            .with_context(|| format!("opening h2load's log {}", path.display()))?;
        let latencies = LatencyCounts::read_h2load_log(std::io::BufReader::new(file))
            .with_context(|| format!("reading h2load's log {}", path.display()))?;
        if summary.done == 0 || latencies.total() == 0 {
            bail!("h2load completed no request");
        }
        Ok(LoadReport {
            requests: latencies.total(),
            errors: summary
                .failed
                .max(summary.errored)
                .max(summary.done.saturating_sub(summary.succeeded)),
            rps: summary.rps,
            p50_us: latencies.percentile(50.0),
            p99_us: latencies.percentile(99.0),
            p999_us: latencies.percentile(99.9),
            unsent: 0,
        })
    }
}

/// Removes `path`; fine if it is not there.
fn remove_if_present(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(error).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Exact latency percentiles in memory that grows with the number of
/// distinct latencies (µs), not of requests: a count per latency.
#[derive(Debug, Default)]
struct LatencyCounts {
    counts: BTreeMap<u64, u64>,
    total: u64,
}

impl LatencyCounts {
    /// Reads h2load's `--log-file` line by line (`start_us<TAB>status<TAB>
    /// duration_us`, maybe more columns later) and counts the latency of every
    /// answered stream; failed streams (status -1) have no answer and are left
    /// out, as wrk leaves out requests that got none.
    fn read_h2load_log(mut reader: impl std::io::BufRead) -> anyhow::Result<Self> {
        let mut counts = Self::default();
        let mut line = String::new();
        let mut number = 0u64;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(counts);
            }
            number += 1;
            let text = line.trim_end();
            if text.is_empty() {
                continue;
            }
            let mut columns = text.split('\t');
            let (Some(_start), Some(status), Some(duration)) =
                (columns.next(), columns.next(), columns.next())
            else {
                bail!("line {number}: expected start, status and duration: {text:?}");
            };
            let status: i64 = status
                .parse()
                .with_context(|| format!("line {number}: status {status:?}"))?;
            if status < 0 {
                continue;
            }
            let duration: u64 = duration
                .parse()
                .with_context(|| format!("line {number}: duration {duration:?}"))?;
            counts.record(duration);
        }
    }

    fn record(&mut self, latency_us: u64) {
        *self.counts.entry(latency_us).or_default() += 1;
        self.total += 1;
    }

    /// Latencies counted.
    fn total(&self) -> u64 {
        self.total
    }

    /// The nearest-rank percentile: the smallest latency at or below which
    /// `percent`% of them lie (0 when there are none).
    fn percentile(&self, percent: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((percent / 100.0 * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (&latency, &count) in &self.counts {
            seen += count;
            if seen >= rank {
                return latency;
            }
        }
        0
    }
}

/// Reads h2load's summary: the `requests:` line's counts and the req/s of the
/// `finished in` line.
fn parse_h2load_summary(output: &str) -> anyhow::Result<H2loadSummary> {
    let finished = output
        .lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix("finished in "))
        .context("no `finished in` line")?;
    let rps = finished
        .split(',')
        .find_map(|part| part.trim().strip_suffix(" req/s"))
        .and_then(|rps| rps.trim().parse().ok())
        .with_context(|| format!("no req/s in `finished in {finished}`"))?;
    let requests = output
        .lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix("requests: "))
        .context("no `requests:` line")?;
    // `4033 total, 4036 started, 4033 done, 4000 succeeded, 33 failed, 33 errored, 0 timeout`
    let count = |name: &str| -> anyhow::Result<u64> {
        requests
            .split(',')
            .find_map(|part| {
                let (value, label) = part.trim().split_once(' ')?;
                (label == name).then(|| value.parse().ok()).flatten()
            })
            .with_context(|| format!("no {name} count in `requests: {requests}`"))
    };
    Ok(H2loadSummary {
        done: count("done")?,
        succeeded: count("succeeded")?,
        failed: count("failed")?,
        errored: count("errored")?,
        rps,
    })
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
            h2load: Some(PathBuf::from("/usr/bin/h2load")),
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

    /// h2load 1.52's output around a run where nginx closed 4 connections
    /// with streams in flight.
    const H2LOAD_OUTPUT: &str = "starting benchmark...\n\
        spawning thread #0: 4 total client(s). Timing-based test with 0s of warm-up time and \
        1s of main duration for measurements.\n\
        Application protocol: h2c\n\
        Process Request Failure:2\n\
        \n\
        finished in 1.00s, 4000.00 req/s, 312.76KB/s\n\
        requests: 4033 total, 4036 started, 4033 done, 4000 succeeded, 33 failed, 33 errored, \
        0 timeout\n\
        status codes: 4000 2xx, 0 3xx, 0 4xx, 0 5xx\n\
        traffic: 312.76KB (320264) total, 191.41KB (196000) headers (space savings 50.51%), \
        50.78KB (52000) data\n\
        \x20                    min         max         mean         sd        +/- sd\n\
        time for request:       50us      1.50ms       643us       262us    67.13%\n\
        req/s           :   14281.53    15076.20    14575.35      348.59    75.00%\n";

    fn h2_run<'a>(tools: &'a LoadTools, placement: &'a Placement, log: PathBuf) -> LoadRun<'a> {
        LoadRun {
            scenario: scenario::find("h2-get").expect("exists"),
            target: SocketAddr::from(([127, 0, 0, 1], 8080)),
            headers: &[],
            tls: false,
            generator: placement,
            duration: Duration::from_secs(4),
            rate: 1000.0,
            tools,
            log,
        }
    }

    #[test]
    fn the_http2_scenario_runs_h2load_with_streams_and_a_request_log() {
        let placement = Placement {
            cpus: Some(vec![0]),
            workers: 1,
        };
        let without_wrk = LoadTools {
            wrk: None,
            ..tools()
        };
        let run = h2_run(
            &without_wrk,
            &placement,
            PathBuf::from("/tmp/h2load-hypergate-1.log"),
        );
        assert_eq!(run.command().map(|(name, _)| name).ok(), Some("h2load"));
        assert_eq!(
            arguments(&run),
            [
                "--clients=64",
                "--max-concurrent-streams=10",
                "--threads=1",
                "--duration=4",
                "--connection-inactivity-timeout=5",
                "--log-file=/tmp/h2load-hypergate-1.requests.tsv",
                "http://127.0.0.1:8080/",
            ]
        );
        let missing = LoadTools {
            h2load: None,
            ..tools()
        };
        let run = h2_run(&missing, &placement, PathBuf::from("/tmp/h2load.log"));
        let error = run.command().map(|(name, _)| name).expect_err("no h2load");
        assert!(format!("{error:#}").contains("nghttp2-client"));
    }

    #[test]
    fn the_grpc_scenario_posts_one_message_with_grpc_headers() {
        let placement = Placement {
            cpus: Some(vec![0]),
            workers: 1,
        };
        let tools = tools();
        let run = LoadRun {
            scenario: scenario::find("grpc-unary").expect("exists"),
            ..h2_run(&tools, &placement, PathBuf::from("/tmp/h2load-nginx-2.log"))
        };
        assert_eq!(run.command().map(|(name, _)| name).ok(), Some("h2load"));
        assert_eq!(run.body_file(), Path::new("/tmp/h2load-nginx-2.body"));
        assert_eq!(
            arguments(&run),
            [
                "--clients=64",
                "--max-concurrent-streams=10",
                "--threads=1",
                "--duration=4",
                "--connection-inactivity-timeout=5",
                "--log-file=/tmp/h2load-nginx-2.requests.tsv",
                "--data=/tmp/h2load-nginx-2.body",
                "--header=content-type: application/grpc",
                "--header=te: trailers",
                "http://127.0.0.1:8080/hypergate.demo.Echo/Echo",
            ]
        );
        // h2-get sends no body.
        let get = h2_run(&tools, &placement, PathBuf::from("/tmp/h2load.log"));
        assert!(!arguments(&get).iter().any(|arg| arg.starts_with("--data")));
    }

    #[test]
    fn h2load_summary_gives_counts_and_rate() {
        let summary = parse_h2load_summary(H2LOAD_OUTPUT).expect("parses");
        assert_eq!(
            summary,
            H2loadSummary {
                done: 4033,
                succeeded: 4000,
                failed: 33,
                errored: 33,
                rps: 4000.0
            }
        );
        assert!(parse_h2load_summary("starting benchmark...\n").is_err());
        assert!(parse_h2load_summary("finished in 1.00s, 5.00 req/s, 1KB/s\n").is_err());
    }

    #[test]
    fn latency_percentiles_from_the_request_log_are_exact() {
        // 1..=1000 µs once each, a failed stream, and a 5xx answer (counted).
        let mut log = String::new();
        for duration in 1..=1000 {
            log.push_str(&format!("1796674846823140\t200\t{duration}\n"));
        }
        log.push_str("1796674846823141\t-1\t77\n1796674846823142\t502\t2000\textra\n");
        let counts = LatencyCounts::read_h2load_log(log.as_bytes()).expect("parses");
        assert_eq!(counts.total(), 1001);
        assert_eq!(counts.percentile(50.0), 501);
        assert_eq!(counts.percentile(99.0), 991);
        assert_eq!(counts.percentile(99.9), 1000);
        assert_eq!(counts.percentile(100.0), 2000);
        assert_eq!(LatencyCounts::default().percentile(99.0), 0);
        // Memory follows distinct latencies: 100,000 requests at two latencies.
        let mut many = LatencyCounts::default();
        for index in 0..100_000 {
            many.record(if index % 100 == 0 { 900 } else { 120 });
        }
        assert_eq!(many.counts.len(), 2);
        assert_eq!((many.percentile(50.0), many.percentile(99.9)), (120, 900));
        assert!(LatencyCounts::read_h2load_log("1\t200\n".as_bytes()).is_err());
        assert!(LatencyCounts::read_h2load_log("1\tok\t5\n".as_bytes()).is_err());
    }

    #[test]
    fn h2load_report_counts_answers_and_errors() {
        let dir = std::env::temp_dir().join(format!("xtask-h2load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let placement = Placement {
            cpus: None,
            workers: 2,
        };
        let tools = tools();
        let run = h2_run(&tools, &placement, dir.join("h2load-nginx-1.log"));
        let mut log = String::new();
        for duration in [100, 200, 300, 400] {
            log.push_str(&format!("1\t200\t{duration}\n"));
        }
        log.push_str("1\t-1\t9\n");
        std::fs::write(run.request_log(), log).expect("write");
        let report = run.h2load_report(H2LOAD_OUTPUT).expect("a report");
        assert_eq!((report.requests, report.errors), (4, 33));
        assert_eq!(
            (report.p50_us, report.p99_us, report.p999_us),
            (200, 400, 400)
        );
        assert_eq!(report.rps, 4000.0);
        std::fs::write(run.request_log(), "").expect("write");
        assert!(run.h2load_report(H2LOAD_OUTPUT).is_err(), "no request");
        remove_if_present(&run.request_log()).expect("removed");
        remove_if_present(&run.request_log()).expect("already gone is fine");
        std::fs::remove_dir_all(&dir).expect("cleanup");
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
