//! Turns measured runs into the table, the ratios and `latest.json`.
//!
//! Every run becomes a [`Row`]. The table shows, per layout, scenario and target,
//! the median over rounds of each figure (errors are summed, peak RSS is the
//! maximum). Ratios compare Hypergate with each peer *within* a round (both ran
//! back to back on the same machine state), then take the median over rounds and
//! show the spread as `[min-max]`. With `--baseline`, the current tree is
//! compared the same way with the baseline commit (`hypergate` over
//! `hypergate-base`, round by round) on req/s, p99 and CPU per request, the
//! last held to [`BASELINE_MAX_CPU_RATIO`]. Scenarios with a CPU baseline
//! (edge policy, TLS) also get Hypergate's CPU per request divided by its own figure in the
//! baseline scenario, round by round: the cost of the feature. Each pair
//! scenario gets its own section: feature on over off, paired by round, for
//! throughput, the whole machine's CPU per request and the gateway process's.
//! The eBPF probe is held to the targets of issue 5 ([`EBPF_MIN_RPS_RATIO`],
//! [`EBPF_MAX_MACHINE_CPU_RATIO`]); the call store to
//! [`CALLSTORE_MAX_CPU_RATIO`] on the gateway's own CPU per request, and its
//! section adds the records per second the store committed during the "on"
//! runs and the records dropped. The tracing pairs are held on the gateway's
//! own CPU per request too, to [`TRACE_ALL_MAX_CPU_RATIO`] with every request
//! sampled and [`TRACE_SAMPLED_MAX_CPU_RATIO`] with 1%, and their sections add
//! the spans per second the collector accepted during the "on" runs and the
//! spans dropped or failed, with a warning line when any were. The io_uring
//! pairs compare a task-run mode with the default (`"deferred"`), its columns
//! named after the two modes, with no target: they report which costs less.
//!
//! LLM scenarios get a section of their own: what each gateway adds over
//! calling the mock directly, at p50 and p99, as the difference of its
//! percentile and direct's in the same round (median over rounds), and
//! Hypergate's added latency over LiteLLM's, paired by round, against the
//! targets ([`LLM_MAX_ADDED_P99_US`], [`LLM_MAX_ADDED_RATIO`]). The soak gets
//! the gateway's resident set at the start, the end and its maximum.

use std::fmt::Write as _;

use serde::Serialize;

use super::scenario::{self, Pair, Scenario};
use super::targets::{Target, DEFAULT_IO_URING_TASK_RUN};

/// Throughput with the eBPF probe on over off should be at least this.
pub const EBPF_MIN_RPS_RATIO: f64 = 0.97;

/// Whole-machine CPU per request with the eBPF probe on over off should be at
/// most this.
pub const EBPF_MAX_MACHINE_CPU_RATIO: f64 = 1.05;

/// Gateway CPU per request with every call recorded to the SQLite call store
/// over without should be at most this.
pub const CALLSTORE_MAX_CPU_RATIO: f64 = 1.10;

/// Gateway CPU per request with OpenTelemetry tracing on, every request
/// sampled and exported over OTLP/HTTP, over without should be at most this.
pub const TRACE_ALL_MAX_CPU_RATIO: f64 = 1.10;

/// Gateway CPU per request with OpenTelemetry tracing on, 1% of requests
/// sampled, over without should be at most this.
pub const TRACE_SAMPLED_MAX_CPU_RATIO: f64 = 1.02;

/// Hypergate's CPU per request over the baseline commit's should be at most
/// this: within 3%.
pub const BASELINE_MAX_CPU_RATIO: f64 = 1.03;

/// Hypergate's added p99 latency over calling the mock LLM directly should be
/// below this, µs.
pub const LLM_MAX_ADDED_P99_US: f64 = 200.0;

/// Hypergate's added latency over LiteLLM's should be below this.
pub const LLM_MAX_ADDED_RATIO: f64 = 0.1;

/// One reading of the gateway's resident set during a soak.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct RssSample {
    /// Seconds since the load started.
    pub at_s: u64,
    /// Resident set (VmRSS, summed over the process tree), KiB.
    pub rss_kb: u64,
}

/// One measured run, as written to `latest.json`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Row {
    /// Scenario name.
    pub scenario: String,
    /// Target name (`hypergate`, `hypergate-base`, `nginx`, `haproxy`, `direct`, ...).
    pub proxy: String,
    /// `pinned` or `unpinned`.
    pub layout: String,
    /// Round number, from 1.
    pub round: u32,
    /// Requests per second.
    pub rps: f64,
    /// Median latency, µs.
    pub p50_us: u64,
    /// 99th percentile latency, µs.
    pub p99_us: u64,
    /// 99.9th percentile latency, µs.
    pub p999_us: u64,
    /// Proxy CPU time (user + system, all threads and worker processes) per
    /// completed request, µs; `null` for `direct`.
    pub cpu_us_per_req: Option<f64>,
    /// Proxy peak resident set (VmHWM, summed over its processes) at the end of the
    /// run, KiB. VmHWM is the peak over the process's life, which spans all rounds
    /// of the scenario so far. `null` for `direct`.
    pub rss_kb: Option<u64>,
    /// Proxy resident set (VmRSS) at the end of the run, KiB; `null` for `direct`.
    pub rss_end_kb: Option<u64>,
    /// Mock upstream CPU time per completed request, µs (`null` if none completed).
    pub upstream_cpu_us_per_req: Option<f64>,
    /// The whole machine's busy CPU time (`/proc/stat`: user, nice, system, irq
    /// and softirq of all CPUs) during the run per completed request, µs: the
    /// proxy, the upstream, the load generator, kernel work charged to no
    /// process (eBPF programs included) and anything else running. `null` if
    /// none completed.
    pub machine_cpu_us_per_req: Option<f64>,
    /// Responses received.
    pub requests: u64,
    /// Connect, read, write and timeout errors plus error statuses.
    pub errors: u64,
    /// Requests a fixed-rate run was still behind on when time was up (0 for wrk).
    pub unsent: u64,
    /// Soak only: the proxy's resident set (VmRSS) when the load started, KiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_start_kb: Option<u64>,
    /// Soak only: the proxy's resident set every few seconds, first and last
    /// reading included.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rss_samples: Vec<RssSample>,
    /// `hypergate-callstore` only: call records the store committed per second
    /// of the measured run (`hypergate_callstore_written_total`, read from
    /// `/metrics` before and after it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callstore_records_per_s: Option<f64>,
    /// `hypergate-callstore` only: records dropped during the measured run
    /// because the writer fell behind (`hypergate_access_log_dropped_total`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callstore_dropped: Option<u64>,
    /// Tracing targets only: spans the OTLP collector accepted per second of
    /// the measured run (`hypergate_otlp_spans_total{outcome="exported"}`,
    /// read from `/metrics` before and after it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_spans_exported_per_s: Option<f64>,
    /// Tracing targets only: spans dropped during the measured run because the
    /// exporter's queue was full (`outcome="dropped"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_spans_dropped: Option<u64>,
    /// Tracing targets only: spans whose export request failed during the
    /// measured run (`outcome="failed"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_spans_failed: Option<u64>,
    /// `hypergate-base` only: the full hash of the `--baseline` commit it was
    /// built from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

/// The median of `values` (mean of the middle two for an even count).
fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    Some(if values.len() % 2 == 0 {
        (values[middle - 1] + values[middle]) / 2.0
    } else {
        values[middle]
    })
}

/// Median, minimum and maximum of a set of ratios.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// Median.
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Spread {
    fn of(mut values: Vec<f64>) -> Option<Self> {
        let median = median(&mut values)?;
        Some(Self {
            median,
            min: values[0],
            max: values[values.len() - 1],
        })
    }

    fn describe(self) -> String {
        format!("{:.2} [{:.2}-{:.2}]", self.median, self.min, self.max)
    }
}

/// Per-round ratios of `ours`' figure to `theirs`', for one layout and scenario.
fn paired_ratios(
    rows: &[&Row],
    ours: Target,
    theirs: Target,
    figure: impl Fn(&Row) -> Option<f64>,
) -> Option<Spread> {
    let ratios: Vec<f64> = rows
        .iter()
        .filter(|row| row.proxy == ours.name())
        .filter_map(|ours| {
            let theirs = rows
                .iter()
                .find(|row| row.proxy == theirs.name() && row.round == ours.round)?;
            let (ours, theirs) = (figure(ours)?, figure(theirs)?);
            (theirs > 0.0).then(|| ours / theirs)
        })
        .collect();
    Spread::of(ratios)
}

/// Formats a number with thousands separators.
fn grouped(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

fn median_of(rows: &[&Row], figure: impl Fn(&Row) -> Option<f64>) -> Option<f64> {
    let mut values: Vec<f64> = rows.iter().filter_map(|row| figure(row)).collect();
    median(&mut values)
}

fn or_dash(value: Option<String>) -> String {
    value.unwrap_or_else(|| "-".to_owned())
}

/// A table column's width: `usual`, or the longest of `names` if longer.
fn column_width<'a>(usual: usize, names: impl IntoIterator<Item = &'a str>) -> usize {
    names.into_iter().map(str::len).fold(usual, usize::max)
}

/// The human-readable table: medians per target, then Hypergate/peer ratios.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let mut keys: Vec<(&str, &str)> = Vec::new();
    for row in rows {
        if !keys.contains(&(row.layout.as_str(), row.scenario.as_str())) {
            keys.push((row.layout.as_str(), row.scenario.as_str()));
        }
    }
    // Wider columns only when a longer name than usual ran.
    let scenario_width = column_width(15, keys.iter().map(|&(_, scenario)| scenario));
    let proxy_width = column_width(20, rows.iter().map(|row| row.proxy.as_str()));
    let mut current_layout = "";
    for &(layout, scenario) in &keys {
        if layout != current_layout {
            current_layout = layout;
            let _ = writeln!(
                out,
                "\n== layout {layout} (medians over rounds) ==\n{:<scenario_width$} {:<proxy_width$} {:>10} {:>8} {:>8} {:>9} {:>11} {:>10} {:>7}",
                "scenario", "proxy", "req/s", "p50 us", "p99 us", "p99.9 us", "CPU us/req", "RSS KiB", "errors"
            );
        }
        let scenario_rows: Vec<&Row> = rows
            .iter()
            .filter(|row| row.layout == layout && row.scenario == scenario)
            .collect();
        for target in Target::REPORTED {
            let runs: Vec<&Row> = scenario_rows
                .iter()
                .copied()
                .filter(|row| row.proxy == target.name())
                .collect();
            if runs.is_empty() {
                continue;
            }
            let rps = median_of(&runs, |row| Some(row.rps));
            let p50 = median_of(&runs, |row| Some(row.p50_us as f64));
            let p99 = median_of(&runs, |row| Some(row.p99_us as f64));
            let p999 = median_of(&runs, |row| Some(row.p999_us as f64));
            let cpu = median_of(&runs, |row| row.cpu_us_per_req);
            let rss = runs.iter().filter_map(|row| row.rss_kb).max();
            let errors: u64 = runs.iter().map(|row| row.errors).sum();
            let _ = writeln!(
                out,
                "{:<scenario_width$} {:<proxy_width$} {:>10} {:>8} {:>8} {:>9} {:>11} {:>10} {:>7}",
                scenario,
                target.name(),
                or_dash(rps.map(grouped)),
                or_dash(p50.map(grouped)),
                or_dash(p99.map(grouped)),
                or_dash(p999.map(grouped)),
                or_dash(cpu.map(|cpu| format!("{cpu:.1}"))),
                or_dash(rss.map(|rss| grouped(rss as f64))),
                errors
            );
        }
    }

    if keys
        .iter()
        .any(|&(_, name)| llm_of(name).is_some_and(|llm| llm.stream))
    {
        out.push_str("(streamed LLM scenarios: latency to the first chunk of the answer)\n");
    }
    out.push_str(&baseline_commit_table(rows, &keys));
    out.push_str(&baseline_table(rows, &keys));
    out.push_str(&pair_table(rows, &keys, Pair::EbpfProbe));
    out.push_str(&pair_table(rows, &keys, Pair::CallStore));
    out.push_str(&pair_table(rows, &keys, Pair::TraceAll));
    out.push_str(&pair_table(rows, &keys, Pair::TraceOnePercent));
    out.push_str(&pair_table(rows, &keys, Pair::IoUringCooperative));
    out.push_str(&pair_table(rows, &keys, Pair::IoUringInterrupt));
    out.push_str(&llm_table(rows, &keys));
    out.push_str(&soak_table(rows, &keys));
    // LLM scenarios have their own comparison (above).
    let keys: Vec<(&str, &str)> = keys
        .into_iter()
        .filter(|&(_, name)| llm_of(name).is_none())
        .collect();
    let peers: Vec<Target> = Target::ALL
        .into_iter()
        .filter(|peer| {
            peer.is_peer()
                && rows.iter().any(|row| {
                    row.proxy == peer.name() && keys.iter().any(|&(_, name)| name == row.scenario)
                })
        })
        .collect();
    let has_hypergate = rows.iter().any(|row| row.proxy == Target::Hypergate.name());
    if !has_hypergate || peers.is_empty() {
        return out;
    }
    let _ = write!(
        out,
        "\n== Hypergate / peer, per-round ratios: median [min-max] ==\n{:<10} {:<15}",
        "layout", "scenario"
    );
    for peer in &peers {
        let _ = write!(
            out,
            " {:>20} {:>20} {:>20}",
            format!("req/s vs {}", peer.name()),
            format!("p99 vs {}", peer.name()),
            format!("CPU/req vs {}", peer.name())
        );
    }
    out.push('\n');
    for &(layout, scenario) in &keys {
        if scenario::find(scenario).is_some_and(|s| s.pair.is_some()) {
            // Hypergate alone: no peer to compare with.
            continue;
        }
        let scenario_rows: Vec<&Row> = rows
            .iter()
            .filter(|row| row.layout == layout && row.scenario == scenario)
            .collect();
        let _ = write!(out, "{layout:<10} {scenario:<15}");
        for &peer in &peers {
            let ours = Target::Hypergate;
            let rps = paired_ratios(&scenario_rows, ours, peer, |row| Some(row.rps));
            let p99 = paired_ratios(&scenario_rows, ours, peer, |row| Some(row.p99_us as f64));
            let cpu = paired_ratios(&scenario_rows, ours, peer, |row| row.cpu_us_per_req);
            for spread in [rps, p99, cpu] {
                let _ = write!(out, " {:>20}", or_dash(spread.map(Spread::describe)));
            }
        }
        out.push('\n');
    }
    out.push_str(
        "(req/s above 1 means Hypergate is faster; p99 and CPU/req below 1 mean it is better)\n",
    );
    out
}

/// The current tree against the `--baseline` commit in each scenario where
/// `hypergate` ran: per-round ratios of `hypergate` over `hypergate-base` (same
/// config, back to back) for req/s, p99 and CPU per request; nothing without a
/// `hypergate-base` run.
fn baseline_commit_table(rows: &[Row], keys: &[(&str, &str)]) -> String {
    let Some(commit) = rows
        .iter()
        .filter(|row| row.proxy == Target::HypergateBase.name())
        .find_map(|row| row.commit.as_deref())
    else {
        return String::new();
    };
    let width = column_width(15, keys.iter().map(|&(_, name)| name));
    let mut out = format!(
        "\n== Hypergate against the baseline commit {} (current / baseline; per-round \
         ratios: median [min-max]) ==\n{:<10} {:<width$} {:>20} {:>20} {:>20} {:>8} {:>7}\n",
        super::baseline::short_hash(commit),
        "layout",
        "scenario",
        "req/s",
        "p99",
        "CPU/req",
        "target",
        "median"
    );
    for &(layout, name) in keys {
        let runs: Vec<&Row> = rows
            .iter()
            .filter(|row| row.layout == layout && row.scenario == name)
            .collect();
        if !runs.iter().any(|row| row.proxy == Target::Hypergate.name()) {
            continue;
        }
        let ratio = |figure: fn(&Row) -> Option<f64>| {
            paired_ratios(&runs, Target::Hypergate, Target::HypergateBase, figure)
        };
        let cpu = ratio(|row| row.cpu_us_per_req);
        let verdict = match cpu {
            Some(cpu) if cpu.median <= BASELINE_MAX_CPU_RATIO => "meets",
            Some(_) => "misses",
            None => "-",
        };
        let _ = writeln!(
            out,
            "{layout:<10} {name:<width$} {:>20} {:>20} {:>20} {:>8} {verdict:>7}",
            or_dash(ratio(|row| Some(row.rps)).map(Spread::describe)),
            or_dash(ratio(|row| Some(row.p99_us as f64)).map(Spread::describe)),
            or_dash(cpu.map(Spread::describe)),
            format!("<= {BASELINE_MAX_CPU_RATIO:.2}"),
        );
    }
    let _ = writeln!(
        out,
        "(req/s above 1 means the current tree is faster, p99 and CPU/req below 1 that it is \
         better; the target is on CPU/req: within 3% of the baseline; `-`: hypergate-base did \
         not run there, the log says why; baseline commit {commit})"
    );
    out
}

/// Hypergate's CPU per request in each scenario that names a baseline, against
/// its own figure in that baseline (same layout, paired by round).
fn baseline_table(rows: &[Row], keys: &[(&str, &str)]) -> String {
    let mut out = String::new();
    let ours = |layout: &str, scenario: &str| -> Vec<&Row> {
        rows.iter()
            .filter(|row| {
                row.layout == layout
                    && row.scenario == scenario
                    && row.proxy == Target::Hypergate.name()
            })
            .collect()
    };
    for &(layout, name) in keys {
        let Some(baseline) = scenario::find(name).and_then(|s| s.cpu_baseline) else {
            continue;
        };
        let runs = ours(layout, name);
        if runs.is_empty() {
            continue;
        }
        if out.is_empty() {
            let _ = writeln!(
                out,
                "\n== Hypergate CPU per request against its own baseline scenario ==\n\
                 {:<10} {:<15} {:<9} {:>11} {:>13} {:>20}",
                "layout",
                "scenario",
                "baseline",
                "CPU us/req",
                "baseline us",
                "ratio median [min-max]"
            );
        }
        let base = ours(layout, baseline);
        let cpu = median_of(&runs, |row| row.cpu_us_per_req);
        let base_cpu = median_of(&base, |row| row.cpu_us_per_req);
        let ratios: Vec<f64> = runs
            .iter()
            .filter_map(|row| {
                let theirs = base.iter().find(|b| b.round == row.round)?;
                let (a, b) = (row.cpu_us_per_req?, theirs.cpu_us_per_req?);
                (b > 0.0).then(|| a / b)
            })
            .collect();
        let ratio = match Spread::of(ratios) {
            Some(spread) => format!(
                "{} ({:+.0}%)",
                spread.describe(),
                (spread.median - 1.0) * 100.0
            ),
            None => format!("- (run --scenario {baseline} too)"),
        };
        let _ = writeln!(
            out,
            "{layout:<10} {name:<15} {baseline:<9} {:>11} {:>13} {:>20}",
            or_dash(cpu.map(|cpu| format!("{cpu:.1}"))),
            or_dash(base_cpu.map(|cpu| format!("{cpu:.1}"))),
            ratio
        );
    }
    if !out.is_empty() {
        out.push_str(
            "(edge scenarios: Hypergate applies the policy, peers run their plain config)\n",
        );
    }
    out
}

/// A limit on a ratio of a pair's section.
#[derive(Debug, Clone, Copy)]
enum Bound {
    /// The median ratio should be at least this.
    AtLeast(f64),
    /// The median ratio should be at most this.
    AtMost(f64),
}

impl Bound {
    fn describe(self) -> String {
        match self {
            Self::AtLeast(limit) => format!(">= {limit:.2}"),
            Self::AtMost(limit) => format!("<= {limit:.2}"),
        }
    }

    fn met_by(self, ratio: f64) -> bool {
        match self {
            Self::AtLeast(limit) => ratio >= limit,
            Self::AtMost(limit) => ratio <= limit,
        }
    }
}

/// One line of a pair's section.
#[derive(Debug, Clone, Copy)]
struct PairFigure {
    /// What the line shows.
    name: &'static str,
    /// The figure of a run.
    value: fn(&Row) -> Option<f64>,
    /// Shown as a whole number with thousands separators, not with one decimal.
    whole: bool,
    /// The target for the on/off ratio, if any.
    bound: Option<Bound>,
}

/// The figures the eBPF section compares, probe on over off.
const EBPF_FIGURES: [PairFigure; 4] = [
    PairFigure {
        name: "req/s",
        value: |row| Some(row.rps),
        whole: true,
        bound: Some(Bound::AtLeast(EBPF_MIN_RPS_RATIO)),
    },
    PairFigure {
        name: "machine CPU us/req",
        value: |row| row.machine_cpu_us_per_req,
        whole: false,
        bound: Some(Bound::AtMost(EBPF_MAX_MACHINE_CPU_RATIO)),
    },
    PairFigure {
        name: "process CPU us/req",
        value: |row| row.cpu_us_per_req,
        whole: false,
        bound: None,
    },
    PairFigure {
        name: "p99 us",
        value: |row| Some(row.p99_us as f64),
        whole: true,
        bound: None,
    },
];

/// The figures the call-store section compares, store on over off: the
/// target is on the gateway's own CPU, where the store's writer thread runs.
const CALLSTORE_FIGURES: [PairFigure; 4] = process_cpu_figures(Some(CALLSTORE_MAX_CPU_RATIO));

/// The figures the tracing sections compare, tracing on over off, every
/// request sampled: the target is on the gateway's own CPU, where spans are
/// built, encoded and exported (the exporter thread), not on the collector's.
const TRACE_ALL_FIGURES: [PairFigure; 4] = process_cpu_figures(Some(TRACE_ALL_MAX_CPU_RATIO));

/// As [`TRACE_ALL_FIGURES`], with 1% of requests sampled.
const TRACE_SAMPLED_FIGURES: [PairFigure; 4] =
    process_cpu_figures(Some(TRACE_SAMPLED_MAX_CPU_RATIO));

/// The figures the io_uring sections compare, the other task-run mode over
/// the default: the same lines, with no target (they report which mode costs
/// less; nothing is held to a limit).
const IO_URING_FIGURES: [PairFigure; 4] = process_cpu_figures(None);

/// req/s, the gateway process's CPU per request (held to at most
/// `max_cpu_ratio`, on over off, if given), the whole machine's and p99.
const fn process_cpu_figures(max_cpu_ratio: Option<f64>) -> [PairFigure; 4] {
    [
        PairFigure {
            name: "req/s",
            value: |row| Some(row.rps),
            whole: true,
            bound: None,
        },
        PairFigure {
            name: "process CPU us/req",
            value: |row| row.cpu_us_per_req,
            whole: false,
            bound: match max_cpu_ratio {
                Some(limit) => Some(Bound::AtMost(limit)),
                None => None,
            },
        },
        PairFigure {
            name: "machine CPU us/req",
            value: |row| row.machine_cpu_us_per_req,
            whole: false,
            bound: None,
        },
        PairFigure {
            name: "p99 us",
            value: |row| Some(row.p99_us as f64),
            whole: true,
            bound: None,
        },
    ]
}

/// The note under both tracing sections.
const TRACE_NOTE: &str = "(process CPU includes the shards writing each span as protobuf into \
     their batch buffers and the exporter thread POSTing the batches over OTLP/HTTP; the collector is a mock-upstream on the upstream's CPUs, in \
     machine CPU but never in process CPU; spans exported/s is what the collector accepted per \
     second of each measured \"on\" run, from hypergate_otlp_spans_total{outcome=\"exported\"}, \
     and dropped (exporter queue full) and failed (export request failed) are the sums over \
     them; the load sends no traceparent, so the head sampler alone decides)\n";

/// The note under both io_uring sections.
const IO_URING_NOTE: &str = "(ratios are the other mode over the default, deferred: above 1 in \
     CPU/req or p99, or below 1 in req/s, mean the default does better; process CPU includes the \
     completion work the kernel runs in the shard's thread, machine CPU also what it runs \
     elsewhere (interrupts included), charged to no process or to another; a target whose log \
     shows a fallback to another mode or to epoll does not run)\n";

/// Hypergate with `pair`'s feature on against off (for the io_uring pairs,
/// the other task-run mode against the default), in each scenario of that
/// pair: medians of both, and per-round ratios checked against the targets
/// where the pair has any; for the call store also what the store wrote and
/// dropped, for tracing the spans exported, dropped and failed.
fn pair_table(rows: &[Row], keys: &[(&str, &str)], pair: Pair) -> String {
    let (title, figures, note) = match pair {
        Pair::EbpfProbe => (
            "eBPF probe on / off",
            EBPF_FIGURES,
            "(machine CPU is the busy time of all CPUs in /proc/stat over the run, per request: \
             the probe runs in the kernel and is not charged to the gateway process, whose own \
             CPU is the process line)\n",
        ),
        Pair::CallStore => (
            "call store on / off",
            CALLSTORE_FIGURES,
            "(process CPU includes the call store's writer thread; store records/s is what \
             SQLite committed per second of each measured \"on\" run, from \
             hypergate_callstore_written_total, and dropped is the sum over them of \
             hypergate_access_log_dropped_total)\n",
        ),
        Pair::TraceAll => (
            "tracing on / off, every request sampled",
            TRACE_ALL_FIGURES,
            TRACE_NOTE,
        ),
        Pair::TraceOnePercent => (
            "tracing on / off, 1% of requests sampled",
            TRACE_SAMPLED_FIGURES,
            TRACE_NOTE,
        ),
        Pair::IoUringCooperative | Pair::IoUringInterrupt => {
            ("io_uring task run", IO_URING_FIGURES, IO_URING_NOTE)
        }
    };
    let on_target = pair.on_target();
    // The io_uring pairs compare another mode with the default, not a
    // feature on with off: their columns and title name the modes.
    let (off_label, on_label, title) = match on_target.io_uring_task_run() {
        Some(mode) => (
            DEFAULT_IO_URING_TASK_RUN,
            mode,
            format!("{title}: {mode} / {DEFAULT_IO_URING_TASK_RUN}"),
        ),
        None => ("off", "on", title.to_owned()),
    };
    let keys: Vec<(&str, &str)> = keys
        .iter()
        .copied()
        .filter(|&(_, name)| scenario::find(name).and_then(|s| s.pair) == Some(pair))
        .collect();
    let name_width = column_width(15, keys.iter().map(|&(_, name)| name));
    let value_width = column_width(10, [off_label, on_label]);
    // A section whose figures have no target has no target columns.
    let judged = figures.iter().any(|figure| figure.bound.is_some());
    let mut out = String::new();
    for &(layout, name) in &keys {
        if out.is_empty() {
            let _ = write!(
                out,
                "\n== {title} (Hypergate; per-round ratios: median [min-max]) ==\n\
                 {:<10} {:<name_width$} {:<19} {off_label:>value_width$} \
                 {on_label:>value_width$} {:>20}",
                "layout",
                "scenario",
                "figure",
                format!("{on_label}/{off_label}"),
            );
            if judged {
                let _ = write!(out, " {:>8} {:>7}", "target", "median");
            }
            out.push('\n');
        }
        let runs: Vec<&Row> = rows
            .iter()
            .filter(|row| row.layout == layout && row.scenario == name)
            .collect();
        let of = |target: Target| -> Vec<&Row> {
            runs.iter()
                .copied()
                .filter(|row| row.proxy == target.name())
                .collect()
        };
        let (off, on) = (of(Target::Hypergate), of(on_target));
        for figure in figures {
            let shown = |value: Option<f64>| {
                or_dash(value.map(|value| {
                    if figure.whole {
                        grouped(value)
                    } else {
                        format!("{value:.1}")
                    }
                }))
            };
            let ratio = paired_ratios(&runs, on_target, Target::Hypergate, figure.value);
            let verdict = match (figure.bound, ratio) {
                (Some(bound), Some(ratio)) if bound.met_by(ratio.median) => "meets",
                (Some(_), Some(_)) => "misses",
                (Some(_), None) => "-",
                (None, _) => "",
            };
            let _ = write!(
                out,
                "{layout:<10} {name:<name_width$} {:<19} {:>value_width$} {:>value_width$} {:>20}",
                figure.name,
                shown(median_of(&off, figure.value)),
                shown(median_of(&on, figure.value)),
                or_dash(ratio.map(Spread::describe)),
            );
            if judged {
                let _ = write!(
                    out,
                    " {:>8} {verdict:>7}",
                    figure.bound.map(Bound::describe).unwrap_or_default()
                );
            }
            out.push('\n');
        }
        if pair == Pair::CallStore {
            let records = median_of(&on, |row| row.callstore_records_per_s);
            let dropped = on
                .iter()
                .filter_map(|row| row.callstore_dropped)
                .reduce(|a, b| a + b);
            let _ = writeln!(
                out,
                "{layout:<10} {name:<15} {:<19} {:>10} {:>10}\n\
                 {layout:<10} {name:<15} {:<19} {:>10} {:>10}",
                "store records/s",
                "-",
                or_dash(records.map(grouped)),
                "records dropped",
                "-",
                or_dash(dropped.map(|dropped| grouped(dropped as f64))),
            );
        }
        if pair.traces() {
            out.push_str(&span_lines(layout, name, &on));
        }
    }
    if !out.is_empty() {
        out.push_str(note);
    }
    out
}

/// A tracing section's span lines: what the collector accepted per second
/// (median over the "on" runs), the spans dropped and failed (sums), and a
/// warning when any were lost.
fn span_lines(layout: &str, name: &str, on: &[&Row]) -> String {
    let exported = median_of(on, |row| row.otlp_spans_exported_per_s);
    let sum = |figure: fn(&Row) -> Option<u64>| {
        on.iter().filter_map(|row| figure(row)).reduce(|a, b| a + b)
    };
    let dropped = sum(|row| row.otlp_spans_dropped);
    let failed = sum(|row| row.otlp_spans_failed);
    let count = |value: Option<u64>| or_dash(value.map(|value| grouped(value as f64)));
    let mut out = String::new();
    for (figure, value) in [
        ("spans exported/s", or_dash(exported.map(grouped))),
        ("spans dropped", count(dropped)),
        ("spans failed", count(failed)),
    ] {
        let _ = writeln!(
            out,
            "{layout:<10} {name:<15} {figure:<19} {:>10} {value:>10}",
            "-"
        );
    }
    let lost = dropped.unwrap_or(0) + failed.unwrap_or(0);
    if lost > 0 {
        let _ = writeln!(
            out,
            "{layout:<10} {name:<15} warning: {} span(s) of the \"on\" runs were not exported \
             ({} dropped, {} failed): the gateway did less than the full export work",
            grouped(lost as f64),
            grouped(dropped.unwrap_or(0) as f64),
            grouped(failed.unwrap_or(0) as f64),
        );
    }
    out
}

/// The LLM load of the scenario called `name`, if it is an LLM scenario.
fn llm_of(name: &str) -> Option<scenario::Llm> {
    scenario::find(name).and_then(|scenario: &Scenario| scenario.llm)
}

/// A latency percentile of a run, µs.
type Percentile = fn(&Row) -> u64;

/// The percentiles the LLM section compares, with their labels.
const LLM_PERCENTILES: [(&str, Percentile); 2] =
    [("p50", |row| row.p50_us), ("p99", |row| row.p99_us)];

/// Per-round differences of `target`'s percentile and direct's, as (round,
/// µs): what the gateway adds over calling the provider directly.
fn added_per_round(rows: &[&Row], target: Target, percentile: Percentile) -> Vec<(u32, f64)> {
    rows.iter()
        .filter(|row| row.proxy == target.name())
        .filter_map(|ours| {
            let direct = rows
                .iter()
                .find(|row| row.proxy == Target::Direct.name() && row.round == ours.round)?;
            let added = percentile(ours) as f64 - percentile(direct) as f64;
            Some((ours.round, added))
        })
        .collect()
}

/// The values of per-round figures, rounds dropped.
fn values(per_round: &[(u32, f64)]) -> Vec<f64> {
    per_round.iter().map(|&(_, value)| value).collect()
}

/// The LLM section: each gateway's latency added over direct at p50 and p99,
/// and Hypergate's added latency over LiteLLM's, paired by round.
fn llm_table(rows: &[Row], keys: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for &(layout, name) in keys {
        if llm_of(name).is_none_or(|llm| llm.soak) {
            continue;
        }
        if out.is_empty() {
            let _ = writeln!(
                out,
                "\n== LLM gateways: latency added over calling the mock directly, same rounds \
                 (median [min-max] over rounds) ==\n{:<10} {:<11} {:<14} {:>9} {:>10} {:>10} {:>26} {:>26} {:>7}",
                "layout",
                "scenario",
                "proxy",
                "req/s",
                "p50 us",
                "p99 us",
                "added p50 us",
                "added p99 us",
                "unsent"
            );
        }
        let runs: Vec<&Row> = rows
            .iter()
            .filter(|row| row.layout == layout && row.scenario == name)
            .collect();
        for target in [
            Target::Hypergate,
            Target::HypergateBase,
            Target::Litellm,
            Target::Direct,
        ] {
            let own: Vec<&Row> = runs
                .iter()
                .copied()
                .filter(|row| row.proxy == target.name())
                .collect();
            if own.is_empty() {
                continue;
            }
            let added = |percentile: Percentile| {
                if target == Target::Direct {
                    return String::new();
                }
                let spread = Spread::of(values(&added_per_round(&runs, target, percentile)));
                or_dash(spread.map(|spread| {
                    format!("{:.0} [{:.0}-{:.0}]", spread.median, spread.min, spread.max)
                }))
            };
            let _ = writeln!(
                out,
                "{layout:<10} {name:<11} {:<14} {:>9} {:>10} {:>10} {:>26} {:>26} {:>7}",
                target.name(),
                or_dash(median_of(&own, |row| Some(row.rps)).map(grouped)),
                or_dash(median_of(&own, |row| Some(row.p50_us as f64)).map(grouped)),
                or_dash(median_of(&own, |row| Some(row.p99_us as f64)).map(grouped)),
                added(LLM_PERCENTILES[0].1),
                added(LLM_PERCENTILES[1].1),
                own.iter().map(|row| row.unsent).sum::<u64>()
            );
        }
        let hypergate_p99 = Spread::of(values(&added_per_round(
            &runs,
            Target::Hypergate,
            LLM_PERCENTILES[1].1,
        )));
        let verdict = |met: bool| if met { "meets" } else { "misses" };
        if let Some(added) = hypergate_p99 {
            let _ = writeln!(
                out,
                "{layout:<10} {name:<11} hypergate added p99 {:.0} us: target < {LLM_MAX_ADDED_P99_US:.0} us, {}",
                added.median,
                verdict(added.median < LLM_MAX_ADDED_P99_US)
            );
        }
        for (label, percentile) in LLM_PERCENTILES {
            let ours = added_per_round(&runs, Target::Hypergate, percentile);
            let theirs = added_per_round(&runs, Target::Litellm, percentile);
            let ratios: Vec<f64> = ours
                .iter()
                .filter_map(|&(round, ours)| {
                    let &(_, theirs) = theirs.iter().find(|&&(other, _)| other == round)?;
                    (theirs > 0.0).then(|| ours / theirs)
                })
                .collect();
            if let Some(spread) = Spread::of(ratios) {
                let _ = writeln!(
                    out,
                    "{layout:<10} {name:<11} hypergate / litellm added {label}: \
                     {:.3} [{:.3}-{:.3}]: target < {LLM_MAX_ADDED_RATIO:.2}, {}",
                    spread.median,
                    spread.min,
                    spread.max,
                    verdict(spread.median < LLM_MAX_ADDED_RATIO)
                );
            }
        }
    }
    if !out.is_empty() {
        out.push_str(
            "(added = the gateway's percentile minus direct's in the same round; fixed-rate \
             open-loop load, so a target that cannot keep up shows its queueing in p99 and \
             `unsent`)\n",
        );
    }
    out
}

/// The soak section: the gateway's resident set at the start and end of the
/// run, its maximum over the samples, and the growth.
fn soak_table(rows: &[Row], keys: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for &(layout, name) in keys {
        if !llm_of(name).is_some_and(|llm| llm.soak) {
            continue;
        }
        for row in rows
            .iter()
            .filter(|row| row.layout == layout && row.scenario == name)
        {
            if out.is_empty() {
                let _ = writeln!(
                    out,
                    "\n== Soak: gateway resident set (KiB) ==\n{:<10} {:<9} {:<14} {:>6} {:>9} {:>10} {:>10} {:>10} {:>16} {:>16} {:>7}",
                    "layout", "scenario", "proxy", "secs", "req/s", "start", "end", "max",
                    "end - start", "2nd half", "errors"
                );
            }
            let end = row.rss_samples.last().map(|sample| sample.rss_kb);
            let max = row.rss_samples.iter().map(|sample| sample.rss_kb).max();
            let half_time = row.rss_samples.last().map_or(0, |sample| sample.at_s / 2);
            let middle = row
                .rss_samples
                .iter()
                .find(|sample| sample.at_s >= half_time)
                .map(|sample| sample.rss_kb);
            let growth = |from: Option<u64>| {
                or_dash(from.zip(end).map(|(from, end)| {
                    let change = end as f64 - from as f64;
                    format!(
                        "{change:+.0} ({:+.1}%)",
                        change * 100.0 / from.max(1) as f64
                    )
                }))
            };
            let _ = writeln!(
                out,
                "{layout:<10} {name:<9} {:<14} {:>6} {:>9} {:>10} {:>10} {:>10} {:>16} {:>16} {:>7}",
                row.proxy,
                row.rss_samples.last().map_or(0, |sample| sample.at_s),
                grouped(row.rps),
                or_dash(row.rss_start_kb.map(|kb| grouped(kb as f64))),
                or_dash(end.map(|kb| grouped(kb as f64))),
                or_dash(max.map(|kb| grouped(kb as f64))),
                growth(row.rss_start_kb),
                growth(middle),
                row.errors
            );
        }
    }
    if !out.is_empty() {
        out.push_str(
            "(VmRSS sampled every 10 s while the load runs, in latest.json as `rss_samples`; \
             2nd half = the change from the sample at half time to the end)\n",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pinned-layout line of `table` for `scenario` that shows `figure`.
    fn pinned_line(table: &str, scenario: &str, figure: &str) -> String {
        table
            .lines()
            .find(|line| {
                line.starts_with(&format!("pinned     {scenario:<15} ")) && line.contains(figure)
            })
            .unwrap_or_else(|| panic!("no {scenario} {figure} line in:\n{table}"))
            .to_owned()
    }

    fn row(proxy: &str, round: u32, rps: f64, cpu: Option<f64>) -> Row {
        Row {
            scenario: "get-c64".into(),
            proxy: proxy.into(),
            layout: "pinned".into(),
            round,
            rps,
            p50_us: 100,
            p99_us: 200,
            p999_us: 400,
            cpu_us_per_req: cpu,
            rss_kb: cpu.map(|_| 4096),
            rss_end_kb: cpu.map(|_| 4000),
            upstream_cpu_us_per_req: Some(5.0),
            machine_cpu_us_per_req: Some(30.0),
            requests: 1000,
            errors: 0,
            unsent: 0,
            rss_start_kb: None,
            rss_samples: Vec::new(),
            callstore_records_per_s: None,
            callstore_dropped: None,
            otlp_spans_exported_per_s: None,
            otlp_spans_dropped: None,
            otlp_spans_failed: None,
            commit: None,
        }
    }

    #[test]
    fn medians() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn ratios_pair_runs_of_the_same_round() {
        let rows = [
            row("hypergate", 1, 200.0, Some(10.0)),
            row("nginx", 1, 100.0, Some(20.0)),
            row("hypergate", 2, 300.0, Some(10.0)),
            row("nginx", 2, 100.0, Some(10.0)),
            row("hypergate", 3, 100.0, Some(10.0)),
            row("nginx", 3, 100.0, Some(10.0)),
        ];
        let refs: Vec<&Row> = rows.iter().collect();
        let spread = paired_ratios(&refs, Target::Hypergate, Target::Nginx, |row| Some(row.rps))
            .expect("ratios");
        assert_eq!(
            spread,
            Spread {
                median: 2.0,
                min: 1.0,
                max: 3.0
            }
        );
        assert_eq!(
            paired_ratios(&refs, Target::Hypergate, Target::Haproxy, |row| {
                Some(row.rps)
            }),
            None
        );
    }

    #[test]
    fn table_shows_medians_and_ratios() {
        let rows = vec![
            row("hypergate", 1, 120_000.0, Some(8.0)),
            row("nginx", 1, 60_000.0, Some(16.0)),
            row("direct", 1, 200_000.0, None),
        ];
        let table = table(&rows);
        assert!(table.contains("hypergate"));
        assert!(table.contains("120,000"));
        assert!(table.contains("2.00 [2.00-2.00]"));
        assert!(table.contains("0.50 [0.50-0.50]"));
        let direct = table
            .lines()
            .find(|line| line.contains("direct"))
            .expect("direct row");
        assert!(direct.contains(" - "));
    }

    #[test]
    fn edge_cost_is_hypergate_against_its_own_baseline() {
        let mut rows = vec![
            row("hypergate", 1, 100_000.0, Some(10.0)),
            row("nginx", 1, 100_000.0, Some(30.0)),
        ];
        for (proxy, round, cpu) in [("hypergate", 1, 11.0), ("nginx", 1, 30.0)] {
            let mut edge = row(proxy, round, 90_000.0, Some(cpu));
            edge.scenario = "edge-apikey-rl".into();
            rows.push(edge);
        }
        let table = table(&rows);
        let line = table
            .lines()
            .find(|line| line.starts_with("pinned") && line.contains("edge-apikey-rl  get-c64"))
            .unwrap_or_else(|| panic!("no baseline line in:\n{table}"));
        assert!(line.contains("11.0"), "{line}");
        assert!(line.contains("10.0"), "{line}");
        assert!(line.contains("1.10 [1.10-1.10] (+10%)"), "{line}");
        // Without the baseline scenario, the line says how to get it.
        let alone: Vec<Row> = rows[2..].to_vec();
        assert!(table_has(&alone, "run --scenario get-c64 too"));
    }

    #[test]
    fn callstore_pair_reports_cpu_ratio_records_and_drops() {
        let mut rows = Vec::new();
        for (proxy, round, cpu, records, dropped) in [
            ("hypergate", 1, 10.0, None, None),
            ("hypergate-callstore", 1, 10.5, Some(100_000.0), Some(0)),
            ("hypergate-callstore", 2, 11.4, Some(90_000.0), Some(3)),
            ("hypergate", 2, 10.0, None, None),
        ] {
            let mut run = row(proxy, round, 100_000.0, Some(cpu));
            run.scenario = "callstore".into();
            run.callstore_records_per_s = records;
            run.callstore_dropped = dropped;
            rows.push(run);
        }
        let table = table(&rows);
        let line = |figure: &str| {
            table
                .lines()
                .find(|line| {
                    line.starts_with("pinned     callstore       ") && line.contains(figure)
                })
                .unwrap_or_else(|| panic!("no {figure} line in:\n{table}"))
                .to_owned()
        };
        assert!(table.contains("== call store on / off"), "{table}");
        assert!(!table.contains("eBPF probe on / off"), "{table}");
        let process = line("process CPU us/req");
        assert!(process.contains("1.10 [1.05-1.14]"), "{process}");
        assert!(
            process.contains("<= 1.10") && process.ends_with("meets"),
            "{process}"
        );
        assert!(line("store records/s").ends_with("95,000"), "{table}");
        assert!(line("records dropped").ends_with(" 3"), "{table}");
        assert!(!line("req/s").ends_with("meets"), "no target on throughput");
        assert!(!table.contains("Hypergate / peer"), "{table}");
    }

    #[test]
    fn io_uring_pairs_report_the_other_mode_over_the_default_without_a_target() {
        let mut rows = vec![row("hypergate", 1, 100_000.0, Some(10.0))];
        for (scenario, proxy, round, rps, cpu) in [
            ("uring-interrupt", "hypergate", 1, 100_000.0, 10.0),
            (
                "uring-interrupt",
                "hypergate-uring-interrupt",
                1,
                90_000.0,
                11.0,
            ),
            (
                "uring-interrupt",
                "hypergate-uring-interrupt",
                2,
                80_000.0,
                12.5,
            ),
            ("uring-interrupt", "hypergate", 2, 100_000.0, 10.0),
            ("uring-cooperative", "hypergate", 1, 100_000.0, 10.0),
            (
                "uring-cooperative",
                "hypergate-uring-cooperative",
                1,
                100_000.0,
                9.0,
            ),
        ] {
            let mut run = row(proxy, round, rps, Some(cpu));
            run.scenario = scenario.into();
            rows.push(run);
        }
        let table = table(&rows);
        let line = |scenario: &str, figure: &str| pinned_line(&table, scenario, figure);
        for (mode, header) in [
            ("interrupt", "deferred  interrupt   interrupt/deferred"),
            ("cooperative", "deferred cooperative cooperative/deferred"),
        ] {
            let title = format!("== io_uring task run: {mode} / deferred (Hypergate;");
            let at = table
                .find(&title)
                .unwrap_or_else(|| panic!("no {mode} section in:\n{table}"));
            let columns = table[at..].lines().nth(1).expect("a header line");
            assert!(columns.ends_with(header), "no target columns: {columns}");
        }
        let interrupt = line("uring-interrupt", "process CPU us/req");
        assert!(interrupt.contains("1.18 [1.10-1.25]"), "{interrupt}");
        assert!(
            interrupt.ends_with("1.18 [1.10-1.25]"),
            "no target: {interrupt}"
        );
        assert!(line("uring-interrupt", "req/s").contains("0.85 [0.80-0.90]"));
        let cooperative = line("uring-cooperative", "process CPU us/req");
        assert!(cooperative.contains("0.90 [0.90-0.90]"), "{cooperative}");
        assert!(!table.contains("on / off"), "{table}");
        assert!(!table.contains("Hypergate / peer"), "{table}");
        // The main table widens to the longest name, every line aligned.
        let main: Vec<&str> = table
            .lines()
            .skip_while(|line| !line.starts_with("== layout pinned"))
            .skip(1)
            .take_while(|line| !line.is_empty())
            .collect();
        assert_eq!(main.len(), 6, "{table}");
        assert!(
            main.iter().all(|line| line.len() == main[0].len()),
            "{table}"
        );
        assert!(main
            .iter()
            .any(|line| line.starts_with("uring-cooperative hypergate-uring-cooperative ")));
        // Without the longer names, the usual widths.
        let plain = super::table(&rows[..1]);
        assert!(
            plain.contains("\nget-c64         hypergate            "),
            "{plain}"
        );
    }

    #[test]
    fn tracing_pairs_report_cpu_ratios_against_their_targets_and_spans() {
        let mut rows = Vec::new();
        for (scenario, proxy, round, cpu, spans) in [
            ("trace-all", "hypergate", 1, 10.0, None),
            (
                "trace-all",
                "hypergate-trace-all",
                1,
                10.5,
                Some((200_000.0, 0, 0)),
            ),
            (
                "trace-all",
                "hypergate-trace-all",
                2,
                11.4,
                Some((180_000.0, 512, 0)),
            ),
            ("trace-all", "hypergate", 2, 10.0, None),
            ("trace-1pct", "hypergate", 1, 10.0, None),
            (
                "trace-1pct",
                "hypergate-trace-1pct",
                1,
                10.1,
                Some((2_000.0, 0, 0)),
            ),
            (
                "trace-1pct",
                "hypergate-trace-1pct",
                2,
                10.5,
                Some((1_800.0, 0, 0)),
            ),
            ("trace-1pct", "hypergate", 2, 10.0, None),
        ] {
            let mut run = row(proxy, round, 100_000.0, Some(cpu));
            run.scenario = scenario.into();
            if let Some((exported, dropped, failed)) = spans {
                run.otlp_spans_exported_per_s = Some(exported);
                run.otlp_spans_dropped = Some(dropped);
                run.otlp_spans_failed = Some(failed);
            }
            rows.push(run);
        }
        let table = table(&rows);
        let line = |scenario: &str, figure: &str| pinned_line(&table, scenario, figure);
        assert!(
            table.contains("== tracing on / off, every request sampled"),
            "{table}"
        );
        assert!(
            table.contains("== tracing on / off, 1% of requests sampled"),
            "{table}"
        );
        assert!(!table.contains("call store on / off"), "{table}");
        let all = line("trace-all", "process CPU us/req");
        assert!(all.contains("1.10 [1.05-1.14]"), "{all}");
        assert!(all.contains("<= 1.10") && all.ends_with("meets"), "{all}");
        assert!(line("trace-all", "spans exported/s").ends_with("190,000"));
        assert!(line("trace-all", "spans dropped").ends_with(" 512"));
        assert!(line("trace-all", "spans failed").ends_with(" 0"));
        let warning = line("trace-all", "warning:");
        assert!(warning.contains("512 span(s)"), "{warning}");
        let sampled = line("trace-1pct", "process CPU us/req");
        assert!(sampled.contains("1.03 [1.01-1.05]"), "{sampled}");
        assert!(
            sampled.contains("<= 1.02") && sampled.ends_with("misses"),
            "{sampled}"
        );
        assert!(line("trace-1pct", "spans exported/s").ends_with("1,900"));
        assert!(
            !table.contains("trace-1pct      warning"),
            "nothing lost: {table}"
        );
        // Both targets are in the main table, the proxy column wide enough.
        assert!(
            table.contains("trace-1pct      hypergate-trace-1pct "),
            "{table}"
        );
        assert!(!table.contains("Hypergate / peer"), "{table}");
        let json = serde_json::to_value(&rows).expect("rows serialise");
        assert_eq!(json[1]["otlp_spans_exported_per_s"], 200_000.0);
        assert!(json[0].get("otlp_spans_dropped").is_none());
    }

    #[test]
    fn ebpf_pair_gets_its_own_section_with_on_over_off_ratios() {
        let mut rows = Vec::new();
        for (proxy, round, rps, cpu, machine) in [
            ("hypergate", 1, 100_000.0, 10.0, 30.0),
            ("hypergate-ebpf", 1, 98_000.0, 10.0, 31.5),
            ("hypergate-ebpf", 2, 90_000.0, 10.4, 33.3),
            ("hypergate", 2, 100_000.0, 10.0, 30.0),
        ] {
            let mut run = row(proxy, round, rps, Some(cpu));
            run.scenario = "ebpf-probe".into();
            run.machine_cpu_us_per_req = Some(machine);
            rows.push(run);
        }
        let table = table(&rows);
        let line = |figure: &str| {
            table
                .lines()
                .find(|line| {
                    line.starts_with("pinned     ebpf-probe      ") && line.contains(figure)
                })
                .unwrap_or_else(|| panic!("no {figure} line in:\n{table}"))
                .to_owned()
        };
        let rps = line("req/s");
        assert!(rps.contains("100,000"), "{rps}");
        assert!(rps.contains("94,000"), "{rps}");
        assert!(rps.contains("0.94 [0.90-0.98]"), "{rps}");
        assert!(rps.contains(">= 0.97") && rps.ends_with("misses"), "{rps}");
        let machine = line("machine CPU us/req");
        assert!(machine.contains("1.08 [1.05-1.11]"), "{machine}");
        assert!(machine.ends_with("misses"), "{machine}");
        let process = line("process CPU us/req");
        assert!(process.contains("1.02 [1.00-1.04]"), "{process}");
        // The rows are in the main table too, and no peer section is printed.
        assert!(table.contains("ebpf-probe      hypergate-ebpf"), "{table}");
        assert!(!table.contains("Hypergate / peer"), "{table}");
    }

    #[test]
    fn llm_section_shows_added_latency_and_the_ratio_to_litellm() {
        let mut rows = Vec::new();
        for round in [1, 2] {
            for (proxy, p50, p99) in [
                ("hypergate", 150, 400),
                ("litellm", 10_150, 20_400),
                ("direct", 100, 300),
            ] {
                let mut run = row(proxy, round, 1000.0, Some(10.0));
                run.scenario = "llm-chat".into();
                (run.p50_us, run.p99_us) = (p50, p99);
                rows.push(run);
            }
        }
        let table = table(&rows);
        let line = |start: &str| {
            table
                .lines()
                .find(|line| line.starts_with(start))
                .unwrap_or_else(|| panic!("no {start:?} line in:\n{table}"))
                .to_owned()
        };
        let hypergate = line("pinned     llm-chat    hypergate ");
        assert!(hypergate.contains("50 [50-50]"), "{hypergate}");
        assert!(hypergate.contains("100 [100-100]"), "{hypergate}");
        let litellm = line("pinned     llm-chat    litellm ");
        assert!(litellm.contains("20100 [20100-20100]"), "{litellm}");
        assert!(line("pinned     llm-chat    hypergate added p99")
            .ends_with("100 us: target < 200 us, meets"));
        assert!(line("pinned     llm-chat    hypergate / litellm added p99")
            .contains("0.005 [0.005-0.005]: target < 0.10, meets"));
        assert!(!table.contains("Hypergate / peer"), "{table}");
    }

    #[test]
    fn soak_section_shows_start_end_and_growth() {
        let mut run = row("hypergate", 1, 1000.0, Some(10.0));
        run.scenario = "llm-soak".into();
        run.rss_start_kb = Some(1000);
        run.rss_samples = [(0, 1000), (10, 1400), (20, 1500), (30, 1100), (40, 1200)]
            .map(|(at_s, rss_kb)| RssSample { at_s, rss_kb })
            .to_vec();
        let table = table(&[run]);
        let line = table
            .lines()
            .find(|line| line.starts_with("pinned     llm-soak "))
            .unwrap_or_else(|| panic!("no soak line in:\n{table}"));
        for figure in ["1,000", "1,200", "1,500", "+200 (+20.0%)", "-300 (-20.0%)"] {
            assert!(line.contains(figure), "{figure} in {line}");
        }
    }

    #[test]
    fn baseline_commit_section_pairs_current_with_the_baseline_by_round() {
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let mut rows = Vec::new();
        for (proxy, round, rps, p99, cpu) in [
            ("hypergate", 1, 100_000.0, 200, 10.0),
            ("hypergate-base", 1, 100_000.0, 200, 10.0),
            ("hypergate", 2, 102_000.0, 180, 10.4),
            ("hypergate-base", 2, 100_000.0, 200, 10.0),
            ("hypergate", 3, 99_000.0, 220, 10.2),
            ("hypergate-base", 3, 100_000.0, 200, 10.0),
        ] {
            let mut run = row(proxy, round, rps, Some(cpu));
            run.p99_us = p99;
            run.commit = (proxy == "hypergate-base").then(|| commit.to_owned());
            rows.push(run);
        }
        // The baseline did not start in this one (a config field it rejects).
        let mut alone = row("hypergate", 1, 90_000.0, Some(12.0));
        alone.scenario = "newconn".into();
        rows.push(alone);
        // Here it costs 5% more CPU.
        for (proxy, cpu) in [("hypergate", 10.5), ("hypergate-base", 10.0)] {
            let mut run = row(proxy, 1, 100_000.0, Some(cpu));
            run.scenario = "post-10k".into();
            run.commit = (proxy == "hypergate-base").then(|| commit.to_owned());
            rows.push(run);
        }
        let table = table(&rows);
        assert!(
            table.contains("== Hypergate against the baseline commit 0123456789ab "),
            "{table}"
        );
        let line = |scenario: &str| {
            table
                .lines()
                .find(|line| {
                    line.starts_with(&format!("pinned     {scenario:<15} "))
                        && line.contains("<= 1.03")
                })
                .unwrap_or_else(|| panic!("no {scenario} line in:\n{table}"))
                .to_owned()
        };
        let get = line("get-c64");
        assert!(get.contains("1.00 [0.99-1.02]"), "req/s: {get}");
        assert!(get.contains("1.00 [0.90-1.10]"), "p99: {get}");
        assert!(
            get.contains("1.02 [1.00-1.04]") && get.ends_with("meets"),
            "{get}"
        );
        assert!(line("post-10k").contains("1.05 [1.05-1.05]"));
        assert!(line("post-10k").ends_with("misses"));
        let newconn = line("newconn");
        assert_eq!(newconn.split_whitespace().filter(|&w| w == "-").count(), 4);
        assert!(table.contains(&format!("baseline commit {commit})")));
        // The baseline's runs are in the main table, and in the JSON with the hash.
        assert!(table.contains("get-c64         hypergate-base "), "{table}");
        let json = serde_json::to_value(&rows).expect("rows serialise");
        assert_eq!(json[1]["proxy"], "hypergate-base");
        assert_eq!(json[1]["commit"], commit);
        assert!(
            json[0].get("commit").is_none(),
            "only baseline rows carry it"
        );
        // No baseline run, no section.
        assert!(!table_has(&rows[..1], "baseline commit"));
    }

    fn table_has(rows: &[Row], text: &str) -> bool {
        table(rows).contains(text)
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(grouped(0.0), "0");
        assert_eq!(grouped(999.4), "999");
        assert_eq!(grouped(1_234_567.0), "1,234,567");
    }
}
