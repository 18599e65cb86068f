//! Metric primitives every crate records into: lazily allocated HDR latency
//! histograms, status classes, and the Prometheus text helpers the exporters of
//! each crate share (families, escaping, fixed-bucket histograms) plus exact
//! quantiles for `/stats`.
//!
//! Recording is single-writer (a shard's own cells); merging and rendering
//! happen off the request path.

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::cell::{Cell, RefCell};
use std::fmt::Write;

/// Status classes counted: index 0 is "no response sent" (client gone), 1..=5 are 1xx..5xx.
pub const STATUS_CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// Highest latency tracked, in microseconds (100 s); larger values are clamped.
const MAX_TRACKED_US: u64 = 100_000_000;

/// A new latency histogram (microseconds, 3 significant figures).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKED_US, 3).expect("static histogram bounds are valid")
}

/// A latency histogram allocated on first use, so idle routes cost no memory.
#[derive(Default)]
pub struct LazyHistogram {
    hist: RefCell<Option<Histogram<u64>>>,
    sum_us: Cell<u64>,
}

impl LazyHistogram {
    /// Records one value in microseconds.
    pub fn record(&self, us: u64) {
        let mut h = self.hist.borrow_mut();
        let h = h.get_or_insert_with(new_histogram);
        h.saturating_record(us.clamp(1, MAX_TRACKED_US));
        self.sum_us.set(self.sum_us.get() + us);
    }

    /// A copy of the histogram and the exact sum of its values (µs), if any was recorded.
    pub fn snapshot(&self) -> Option<(Histogram<u64>, u64)> {
        self.hist
            .borrow()
            .as_ref()
            .map(|h| (h.clone(), self.sum_us.get()))
    }
}

/// Prometheus bucket bounds in seconds.
const BUCKETS_S: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Escapes a Prometheus label value.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes the `# HELP` and `# TYPE` lines of a metric family.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Writes a Prometheus histogram (fixed second buckets) from an HDR histogram of µs.
pub fn histogram(out: &mut String, name: &str, labels: &str, h: &Histogram<u64>, sum_us: u64) {
    let sep = if labels.is_empty() { "" } else { "," };
    for b in BUCKETS_S {
        let le_us = (b * 1e6) as u64;
        let count = h.count_between(0, le_us);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", h.len());
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", sum_us as f64 / 1e6);
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.len());
}

/// Exact quantiles (µs), count and mean of an HDR histogram, as JSON.
pub fn quantiles(h: &Histogram<u64>, sum_us: u64) -> Value {
    json!({
        "count": h.len(),
        "mean_us": if h.is_empty() { 0.0 } else { sum_us as f64 / h.len() as f64 },
        "p50_us": h.value_at_quantile(0.50),
        "p90_us": h.value_at_quantile(0.90),
        "p99_us": h.value_at_quantile(0.99),
        "p999_us": h.value_at_quantile(0.999),
        "max_us": h.max(),
    })
}
