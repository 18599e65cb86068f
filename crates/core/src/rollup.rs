//! Exact per-minute totals, counted on the shards: every call is counted into
//! its rollup (minute, route, cluster, version, model) on the shard that served
//! it, whether or not its call record reaches the store, so totals are complete
//! by construction and stored rows are only the detail.
//!
//! A shard's [`ShardRollups`] keeps one accumulator per label set (with its HDR
//! latency histogram, allocated once and reset, never per call). About once a
//! second, and whenever a label set's minute changes, the accumulators' figures
//! leave as [`RollupDelta`]s (the histogram as its non-empty buckets) through a
//! bounded channel to the record writer, which merges them into the store's
//! `rollups` table. A full channel loses nothing: the deltas wait on the shard,
//! merged by (minute, labels), so what waits is bounded by the label sets (all
//! from the config) times the minutes the writer is behind; once the writer is
//! gone, nothing is kept.
//!
//! Depends on `metrics` (the histogram bounds), `error` (outcomes) and `rng`.

use crate::error::Outcome;
use crate::metrics::new_histogram;
use crossbeam_channel::{Sender, TrySendError};
use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often a shard sends its deltas.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// The labels of a rollup: route, cluster, version, model ("" when none).
pub type RollupLabels = [String; 4];

/// The figures of a rollup (or of its part from one shard and one flush).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RollupFigures {
    /// Calls by status class: `[none, 1xx, 2xx, 3xx, 4xx, 5xx]`.
    pub by_class: [u64; 6],
    /// Calls by outcome, in [`Outcome::ALL`] order.
    pub by_outcome: [u64; Outcome::COUNT],
    /// Sum of the calls' total latency, µs.
    pub latency_sum_us: u64,
    /// LLM prompt tokens.
    pub prompt_tokens: u64,
    /// LLM completion tokens.
    pub completion_tokens: u64,
    /// LLM cost, nano-dollars.
    pub cost_nanos: u64,
    /// LLM calls whose usage the gateway estimated.
    pub estimated: u64,
    /// Sum of the streamed calls' time to first token, µs.
    pub ttft_sum_us: u64,
    /// Streamed calls with a time to first token.
    pub ttft_calls: u64,
    /// Calls whose record was handed to the record writer.
    pub recorded: u64,
    /// Calls whose record was left out by the store's sampling rules.
    pub sampled_out: u64,
}

impl RollupFigures {
    /// Calls counted.
    pub fn requests(&self) -> u64 {
        self.by_outcome.iter().sum()
    }

    /// Adds `o` in.
    pub fn add(&mut self, o: &RollupFigures) {
        for (a, b) in self.by_class.iter_mut().zip(o.by_class) {
            *a += b;
        }
        for (a, b) in self.by_outcome.iter_mut().zip(o.by_outcome) {
            *a += b;
        }
        self.latency_sum_us += o.latency_sum_us;
        self.prompt_tokens += o.prompt_tokens;
        self.completion_tokens += o.completion_tokens;
        self.cost_nanos += o.cost_nanos;
        self.estimated += o.estimated;
        self.ttft_sum_us += o.ttft_sum_us;
        self.ttft_calls += o.ttft_calls;
        self.recorded += o.recorded;
        self.sampled_out += o.sampled_out;
    }
}

/// One call, as its rollup counts it.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallFacts {
    /// Status sent (0: none).
    pub status: u16,
    /// Outcome.
    pub outcome: Outcome,
    /// Total latency, µs.
    pub total_us: u64,
    /// LLM prompt and completion tokens.
    pub tokens: (u64, u64),
    /// LLM cost, nano-dollars.
    pub cost_nanos: u64,
    /// The LLM usage was estimated.
    pub estimated: bool,
    /// Time to first token, µs (streamed LLM calls).
    pub ttft_us: Option<u64>,
    /// What became of the call's record.
    pub row: RowFate,
}

/// What became of a call's record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RowFate {
    /// Handed to the record writer.
    Recorded,
    /// Left out by the store's sampling rules.
    SampledOut,
    /// Dropped: no free record or a full queue (counted in
    /// `hypergate_access_log_dropped_total`).
    #[default]
    Dropped,
}

/// A rollup's figures from one shard, on their way to the store.
#[derive(Debug, Clone)]
pub struct RollupDelta {
    /// Minutes since the Unix epoch.
    pub minute: i64,
    /// Route, cluster, version, model.
    pub labels: RollupLabels,
    /// Counts and sums.
    pub figures: RollupFigures,
    /// Latency histogram buckets (µs): `(value, count)`, non-empty ones only.
    pub latency: Vec<(u64, u64)>,
}

/// One label set's running figures on a shard.
struct Acc {
    labels: RollupLabels,
    minute: i64,
    figures: RollupFigures,
    latency: Histogram<u64>,
}

impl Acc {
    /// Takes the figures counted since the last delta, if any.
    fn take(&mut self) -> Option<RollupDelta> {
        if self.figures.requests() == 0 {
            return None;
        }
        let latency = self
            .latency
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect();
        self.latency.reset();
        Some(RollupDelta {
            minute: self.minute,
            labels: self.labels.clone(),
            figures: std::mem::take(&mut self.figures),
            latency,
        })
    }
}

/// A shard's rollups (single-threaded: the shard's own).
pub struct ShardRollups {
    /// Accumulators by a hash of their labels (a bucket holds the rare collisions).
    accs: HashMap<u64, Vec<Acc>>,
    /// Deltas the writer could not take yet.
    pending: Vec<RollupDelta>,
    tx: Sender<Vec<RollupDelta>>,
    next_flush: Instant,
}

fn label_hash(labels: &[&str; 4]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for l in labels {
        h.update(l.as_bytes());
        h.update(&[0]);
    }
    h.digest()
}

impl ShardRollups {
    /// Rollups that send their deltas to `tx`.
    pub fn new(tx: Sender<Vec<RollupDelta>>) -> Self {
        Self {
            accs: HashMap::new(),
            pending: Vec::new(),
            tx,
            next_flush: Instant::now() + FLUSH_EVERY,
        }
    }

    /// Counts a call of `minute` under `labels` (route, cluster, version,
    /// model); sends the deltas when a second has passed since the last time.
    pub fn count(&mut self, minute: i64, labels: [&str; 4], call: &CallFacts, now: Instant) {
        let bucket = self.accs.entry(label_hash(&labels)).or_default();
        let i = match bucket
            .iter()
            .position(|a| a.labels.iter().zip(labels).all(|(x, y)| x == y))
        {
            Some(i) => i,
            None => {
                bucket.push(Acc {
                    labels: labels.map(str::to_string),
                    minute,
                    figures: RollupFigures::default(),
                    latency: new_histogram(),
                });
                bucket.len() - 1
            }
        };
        let acc = &mut bucket[i];
        if acc.minute != minute {
            if let Some(d) = acc.take() {
                push_merged(&mut self.pending, d);
            }
            acc.minute = minute;
        }
        let f = &mut acc.figures;
        f.by_class[usize::from(call.status / 100).min(5)] += 1;
        f.by_outcome[call.outcome.index()] += 1;
        f.latency_sum_us += call.total_us;
        acc.latency.saturating_record(call.total_us.max(1));
        f.prompt_tokens += call.tokens.0;
        f.completion_tokens += call.tokens.1;
        f.cost_nanos += call.cost_nanos;
        f.estimated += u64::from(call.estimated);
        if let Some(t) = call.ttft_us {
            f.ttft_sum_us += t;
            f.ttft_calls += 1;
        }
        match call.row {
            RowFate::Recorded => f.recorded += 1,
            RowFate::SampledOut => f.sampled_out += 1,
            RowFate::Dropped => {}
        }
        if now >= self.next_flush {
            self.flush(now);
        }
    }

    /// Sends every figure counted so far (never blocks: what the writer
    /// cannot take yet waits for the next flush).
    pub fn flush(&mut self, now: Instant) {
        self.next_flush = now + FLUSH_EVERY;
        for bucket in self.accs.values_mut() {
            for acc in bucket.iter_mut() {
                if let Some(d) = acc.take() {
                    push_merged(&mut self.pending, d);
                }
            }
        }
        if self.pending.is_empty() {
            return;
        }
        match self.tx.try_send(std::mem::take(&mut self.pending)) {
            Ok(()) => {}
            // The writer is behind: the deltas wait here, merged.
            Err(TrySendError::Full(back)) => self.pending = back,
            // The writer is gone (the gateway is stopping): nothing will ever
            // take them, so nothing is kept (memory stays bounded).
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Sends what is left, waiting up to `wait` for room (at shutdown, off the
    /// request path); what the writer could not take stays pending.
    pub fn finish(&mut self, wait: Duration) {
        self.flush(Instant::now());
        if !self.pending.is_empty() {
            if let Err(e) = self
                .tx
                .send_timeout(std::mem::take(&mut self.pending), wait)
            {
                self.pending = e.into_inner();
            }
        }
    }
}

/// Adds `d` to `pending`, merged into a delta of the same minute and labels.
fn push_merged(pending: &mut Vec<RollupDelta>, d: RollupDelta) {
    match pending
        .iter_mut()
        .find(|p| p.minute == d.minute && p.labels == d.labels)
    {
        Some(p) => {
            p.figures.add(&d.figures);
            p.latency = merge_buckets(&p.latency, &d.latency);
        }
        None => pending.push(d),
    }
}

/// Merges two sorted bucket lists.
pub fn merge_buckets(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x.0 == y.0 => {
                out.push((x.0, x.1 + y.1));
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x.0 < y.0 => {
                out.push(*x);
                i += 1;
            }
            (Some(x), None) => {
                out.push(*x);
                i += 1;
            }
            (_, Some(y)) => {
                out.push(*y);
                j += 1;
            }
            (None, None) => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(status: u16, outcome: Outcome, us: u64) -> CallFacts {
        CallFacts {
            status,
            outcome,
            total_us: us,
            row: RowFate::Recorded,
            ..CallFacts::default()
        }
    }

    #[test]
    fn a_full_channel_loses_nothing() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let mut r = ShardRollups::new(tx);
        let t0 = Instant::now();
        let labels = ["api", "c", "v1", ""];
        let mut sent = 0;
        for second in 0..5u32 {
            let now = t0 + Duration::from_secs(u64::from(second) + 1);
            for i in 0..100 {
                let outcome = if i % 10 == 0 {
                    Outcome::UpstreamError
                } else {
                    Outcome::Ok
                };
                r.count(
                    1000 + i64::from(second / 3),
                    labels,
                    &call(200, outcome, 100 + i),
                    now,
                );
                sent += 1;
            }
        }
        r.finish(Duration::ZERO);
        // The channel holds one batch; the rest waited on the shard, merged.
        let mut total = RollupFigures::default();
        let mut buckets = 0;
        while let Ok(batch) = rx.try_recv() {
            for d in batch {
                total.add(&d.figures);
                buckets += d.latency.iter().map(|b| b.1).sum::<u64>();
            }
        }
        let mut left = RollupFigures::default();
        for d in &r.pending {
            left.add(&d.figures);
            buckets += d.latency.iter().map(|b| b.1).sum::<u64>();
        }
        total.add(&left);
        assert_eq!(total.requests(), sent);
        assert_eq!(total.by_outcome[Outcome::UpstreamError.index()], 50);
        assert_eq!(total.recorded, sent);
        assert_eq!(buckets, sent, "every latency is in some delta's histogram");
        // At most one delta per (minute, labels) waits.
        assert!(r.pending.len() <= 2, "{}", r.pending.len());
    }

    #[test]
    fn nothing_waits_once_the_writer_is_gone() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let mut r = ShardRollups::new(tx);
        drop(rx);
        let t0 = Instant::now();
        for minute in 0..100 {
            r.count(
                minute,
                ["api", "c", "v1", ""],
                &call(200, Outcome::Ok, 10),
                t0,
            );
            r.flush(t0);
        }
        assert!(r.pending.is_empty());
    }

    #[test]
    fn buckets_merge_in_order() {
        assert_eq!(
            merge_buckets(&[(1, 2), (5, 1)], &[(1, 1), (3, 4), (9, 9)]),
            [(1, 3), (3, 4), (5, 1), (9, 9)]
        );
    }
}
