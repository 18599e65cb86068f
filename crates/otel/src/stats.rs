//! The exporter's counters: relaxed atomics the shards (drops) and the
//! exporter thread (outcomes) add to, and their Prometheus text.
//!
//! Every span or record handed to a sink ends in exactly one outcome:
//! exported, dropped (the exporter's queue was full, or gone) or failed (the
//! export request failed).
//!
//! Depends on nothing.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters shared (in an `Arc`) by the sinks and the exporter thread.
#[derive(Debug, Default)]
pub struct OtlpStats {
    /// Spans the collector accepted.
    pub spans_exported: AtomicU64,
    /// Spans dropped because the exporter's queue was full.
    pub spans_dropped: AtomicU64,
    /// Spans whose export request failed (I/O error or non-2xx).
    pub spans_failed: AtomicU64,
    /// Log records the collector accepted.
    pub logs_exported: AtomicU64,
    /// Log records dropped because the exporter's queue was full.
    pub logs_dropped: AtomicU64,
    /// Log records whose export request failed.
    pub logs_failed: AtomicU64,
    /// Export requests sent (a retry counts again).
    pub export_requests: AtomicU64,
    /// Batches whose export failed.
    pub export_failures: AtomicU64,
}

/// Adds `n` to a counter (relaxed: these are statistics, read on their own).
pub(crate) fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl OtlpStats {
    /// Writes the counters in Prometheus text format, with HELP and TYPE lines.
    pub fn prometheus(&self, out: &mut String) {
        let outcomes = |out: &mut String, name: &str, what: &str, counters: [&AtomicU64; 3]| {
            let _ = writeln!(
                out,
                "# HELP {name} {what} handed to the OTLP exporter, by outcome: exported, \
                 dropped (exporter queue full) or failed (export request failed)."
            );
            let _ = writeln!(out, "# TYPE {name} counter");
            for (outcome, counter) in ["exported", "dropped", "failed"].iter().zip(counters) {
                let _ = writeln!(out, "{name}{{outcome=\"{outcome}\"}} {}", get(counter));
            }
        };
        outcomes(
            out,
            "hypergate_otlp_spans_total",
            "Spans",
            [
                &self.spans_exported,
                &self.spans_dropped,
                &self.spans_failed,
            ],
        );
        outcomes(
            out,
            "hypergate_otlp_logs_total",
            "Log records",
            [&self.logs_exported, &self.logs_dropped, &self.logs_failed],
        );
        let single = |out: &mut String, name: &str, help: &str, counter: &AtomicU64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", get(counter));
        };
        single(
            out,
            "hypergate_otlp_export_requests_total",
            "OTLP/HTTP export requests sent, retries included.",
            &self.export_requests,
        );
        single(
            out,
            "hypergate_otlp_export_failures_total",
            "OTLP export batches that failed (I/O error or non-2xx status).",
            &self.export_failures,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text() {
        let stats = OtlpStats::default();
        add(&stats.spans_exported, 3);
        add(&stats.spans_dropped, 2);
        add(&stats.logs_failed, 1);
        add(&stats.export_requests, 4);
        let mut out = String::new();
        stats.prometheus(&mut out);
        for line in [
            "# TYPE hypergate_otlp_spans_total counter",
            "hypergate_otlp_spans_total{outcome=\"exported\"} 3",
            "hypergate_otlp_spans_total{outcome=\"dropped\"} 2",
            "hypergate_otlp_spans_total{outcome=\"failed\"} 0",
            "# TYPE hypergate_otlp_logs_total counter",
            "hypergate_otlp_logs_total{outcome=\"failed\"} 1",
            "hypergate_otlp_export_requests_total 4",
            "hypergate_otlp_export_failures_total 0",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
        }
        assert_eq!(out.lines().filter(|l| l.starts_with("# HELP")).count(), 4);
    }
}
