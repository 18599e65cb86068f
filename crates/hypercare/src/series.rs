//! A short in-memory history of merged stats snapshots, so the hypercare engine
//! can ask "what happened in the last N seconds" without touching the data plane.
//!
//! Each evaluation tick adds a [`Point`]: cumulative request counts by (route,
//! cluster, version) and status class, cumulative latency histograms (per route,
//! and upstream per cluster version), LLM tokens and cost, rate-limit refusals
//! and kernel retransmits. A window's figures are the difference between the
//! newest point and the newest point at least that old (HDR histograms subtract
//! exactly), so counters restarting (a reload that drops a route) only shorten
//! what a window sees.
//!
//! A point keeps only what windows need, with each histogram reduced to its
//! non-empty buckets (a full HDR histogram is about 140 KiB; a sparse copy is a
//! few hundred pairs), so ten minutes of history stays small however busy the
//! gateway is.

use hdrhistogram::Histogram;
use hypergate_core::metrics::new_histogram;
use hypergate_runtime::observability::{Snapshot, TargetCounts};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

/// A histogram's non-empty buckets: (highest equivalent value, cumulative count), by value.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sparse(Vec<(u64, u64)>);

impl Sparse {
    fn of(h: &Histogram<u64>) -> Sparse {
        Sparse(
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        )
    }

    /// `self - then` as a histogram (counts that went down, after a reload
    /// re-created the series, count as new).
    fn minus(&self, then: Option<&Sparse>) -> Histogram<u64> {
        let mut h = new_histogram();
        let old = then.map_or(&[][..], |t| &t.0[..]);
        let mut j = 0;
        for &(value, count) in &self.0 {
            while j < old.len() && old[j].0 < value {
                j += 1;
            }
            let before = old.get(j).filter(|o| o.0 == value).map_or(0, |o| o.1);
            let n = if count >= before {
                count - before
            } else {
                count
            };
            if n > 0 {
                h.saturating_record_n(value, n);
            }
        }
        h
    }

    /// Adds to each bucket what it gained from `then` to `now` (a bucket
    /// whose count went down, after a restart or a reload, counts as new).
    fn accumulate(&mut self, now: &Sparse, then: Option<&Sparse>) {
        let old = then.map_or(&[][..], |t| &t.0[..]);
        let mut j = 0;
        let mut gained = Vec::with_capacity(now.0.len());
        for &(value, count) in &now.0 {
            while j < old.len() && old[j].0 < value {
                j += 1;
            }
            let before = old.get(j).filter(|o| o.0 == value).map_or(0, |o| o.1);
            let n = grown(count, before);
            if n > 0 {
                gained.push((value, n));
            }
        }
        if gained.is_empty() {
            return;
        }
        // Merge two lists sorted by value.
        let mut merged = Vec::with_capacity(self.0.len() + gained.len());
        let (mut a, mut b) = (self.0.iter().peekable(), gained.into_iter().peekable());
        loop {
            match (a.peek(), b.peek()) {
                (Some(&&(va, ca)), Some(&(vb, cb))) => {
                    if va == vb {
                        merged.push((va, ca + cb));
                        a.next();
                        b.next();
                    } else if va < vb {
                        merged.push((va, ca));
                        a.next();
                    } else {
                        merged.push((vb, cb));
                        b.next();
                    }
                }
                (Some(&&x), None) => {
                    merged.push(x);
                    a.next();
                }
                (None, Some(&x)) => {
                    merged.push(x);
                    b.next();
                }
                (None, None) => break,
            }
        }
        self.0 = merged;
    }
}

/// What a cumulative counter gained from `before` to `now`; all of `now` when
/// it went down (its source restarted or re-created the series).
fn grown(now: u64, before: u64) -> u64 {
    if now >= before {
        now - before
    } else {
        now
    }
}

/// The same for a float sum.
fn grown_f(now: f64, before: f64) -> f64 {
    if now >= before {
        now - before
    } else {
        now
    }
}

/// What a point keeps of a merged snapshot.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Compact {
    /// (route, cluster, version) -> counts by status class and outcome.
    targets: BTreeMap<(String, String, String), TargetCounts>,
    /// Route latency.
    routes: BTreeMap<String, Sparse>,
    /// (cluster, version) upstream latency.
    clusters: BTreeMap<(String, String), Sparse>,
    /// (route, alias) -> (tokens, nano-dollars).
    llm: BTreeMap<(String, String), (u64, u64)>,
    /// (alias, target) over all routes and consumers, for canary analysis of aliases.
    llm_targets: BTreeMap<(String, String), LlmTarget>,
    /// Rate-limit refusals.
    rate_limited: u64,
}

/// Cumulative figures of one LLM alias target.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct LlmTarget {
    ok: u64,
    errors: u64,
    cost_nanos: u64,
    cost_sq: f64,
    ttft: Sparse,
    total: Sparse,
    /// Feedback scores: count, sum, sum of squares.
    feedback: (u64, f64, f64),
}

/// One alias target's calls over a step, as canary analysis wants them.
#[derive(Debug, Default)]
pub struct LlmStep {
    /// Calls.
    pub requests: u64,
    /// Calls that ended in an error.
    pub errors: u64,
    /// Whole-call latency (µs).
    pub latency: Option<Histogram<u64>>,
    /// Time to first token, milliseconds (from the histogram's buckets).
    pub ttft_ms: hypergate_analysis::MeanSample,
    /// Cost per call, dollars.
    pub cost_usd: hypergate_analysis::MeanSample,
    /// Feedback scores received in the step.
    pub feedback: hypergate_analysis::MeanSample,
}

impl Compact {
    /// Keeps what windows need from a merged snapshot; `feedback` is the
    /// scores so far per (alias, target) (count, sum, sum of squares).
    pub fn of(m: &Snapshot, feedback: &hypergate_llm::feedback::TargetScores) -> Compact {
        let mut llm: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
        // Per (alias, target): the figures, and the TTFT and total histograms merged.
        type Merging = (LlmTarget, Histogram<u64>, Histogram<u64>);
        let mut targets: BTreeMap<(String, String), Merging> = BTreeMap::new();
        for ((route, alias, target, _), v) in &m.ai.calls {
            let e = llm.entry((route.clone(), alias.clone())).or_default();
            e.0 += v.counters[4] + v.counters[5];
            e.1 += v.counters[8];
            let (t, ttft, total) = targets
                .entry((alias.clone(), target.clone()))
                .or_insert_with(|| (LlmTarget::default(), new_histogram(), new_histogram()));
            t.ok += v.counters[0];
            t.errors += v.counters[1];
            t.cost_nanos += v.counters[8];
            t.cost_sq += v.cost_sq;
            if let Some((h, _)) = &v.ttft {
                let _ = ttft.add(h);
            }
            if let Some((h, _)) = &v.total {
                let _ = total.add(h);
            }
        }
        let llm_targets = targets
            .into_iter()
            .map(|(k, (mut t, ttft, total))| {
                t.ttft = Sparse::of(&ttft);
                t.total = Sparse::of(&total);
                t.feedback = feedback.get(&k).copied().unwrap_or_default();
                (k, t)
            })
            .collect();
        Compact {
            targets: m.targets.clone(),
            routes: m
                .routes
                .iter()
                .map(|(r, (h, _))| (r.clone(), Sparse::of(h)))
                .collect(),
            clusters: m
                .clusters
                .iter()
                .filter_map(|(k, c)| c.latency.as_ref().map(|(h, _)| (k.clone(), Sparse::of(h))))
                .collect(),
            llm,
            llm_targets,
            rate_limited: m.edge_rejections[hypergate_edge::EdgeReject::RateLimited.index()],
        }
    }

    /// Per (route, cluster, version): requests, errors of the service, counts
    /// by status class, and the upstream latency quantiles of the cluster
    /// version (µs), as JSON rows (the fleet's summary).
    pub fn targets_json(&self) -> Vec<serde_json::Value> {
        self.targets
            .iter()
            .map(|((route, cluster, version), c)| {
                let latency = self
                    .clusters
                    .get(&(cluster.clone(), version.clone()))
                    .map(|h| h.minus(None))
                    .filter(|h| !h.is_empty())
                    .map(|h| {
                        serde_json::json!({
                            "count": h.len(),
                            "p50_us": h.value_at_quantile(0.5),
                            "p99_us": h.value_at_quantile(0.99),
                        })
                    });
                let classes: serde_json::Map<String, serde_json::Value> =
                    hypergate_core::metrics::STATUS_CLASSES
                        .iter()
                        .zip(c.by_class)
                        .map(|(k, v)| (k.to_string(), v.into()))
                        .collect();
                serde_json::json!({
                    "route": route,
                    "cluster": cluster,
                    "version": version,
                    "requests": c.requests(),
                    "errors": c.errors(),
                    "by_class": classes,
                    "upstream_latency": latency,
                })
            })
            .collect()
    }

    /// Requests and errors of the service counted so far, over every target.
    pub fn totals(&self) -> (u64, u64) {
        self.targets
            .values()
            .fold((0, 0), |(r, e), c| (r + c.requests(), e + c.errors()))
    }

    /// Adds what a source's cumulative figures gained from `then` (its
    /// previous figures; `None` when first seen) to `now`: a fleet's totals
    /// are the sums of its members' gains, so they keep growing when a member
    /// leaves or restarts (a counter that went down counts as new).
    pub fn accumulate(&mut self, now: &Compact, then: Option<&Compact>) {
        for (key, counts) in &now.targets {
            let before = then
                .and_then(|t| t.targets.get(key))
                .copied()
                .unwrap_or_default();
            let total = self.targets.entry(key.clone()).or_default();
            for i in 0..counts.by_class.len() {
                total.by_class[i] += grown(counts.by_class[i], before.by_class[i]);
            }
            for i in 0..counts.by_outcome.len() {
                total.by_outcome[i] += grown(counts.by_outcome[i], before.by_outcome[i]);
            }
        }
        for (route, h) in &now.routes {
            let before = then.and_then(|t| t.routes.get(route));
            self.routes
                .entry(route.clone())
                .or_default()
                .accumulate(h, before);
        }
        for (key, h) in &now.clusters {
            let before = then.and_then(|t| t.clusters.get(key));
            self.clusters
                .entry(key.clone())
                .or_default()
                .accumulate(h, before);
        }
        for (key, &(tokens, nanos)) in &now.llm {
            let (bt, bn) = then
                .and_then(|t| t.llm.get(key))
                .copied()
                .unwrap_or_default();
            let total = self.llm.entry(key.clone()).or_default();
            total.0 += grown(tokens, bt);
            total.1 += grown(nanos, bn);
        }
        for (key, t) in &now.llm_targets {
            let before = then.and_then(|p| p.llm_targets.get(key));
            let b = before.cloned().unwrap_or_default();
            let total = self.llm_targets.entry(key.clone()).or_default();
            total.ok += grown(t.ok, b.ok);
            total.errors += grown(t.errors, b.errors);
            total.cost_nanos += grown(t.cost_nanos, b.cost_nanos);
            total.cost_sq += grown_f(t.cost_sq, b.cost_sq);
            total.ttft.accumulate(&t.ttft, before.map(|b| &b.ttft));
            total.total.accumulate(&t.total, before.map(|b| &b.total));
            total.feedback.0 += grown(t.feedback.0, b.feedback.0);
            total.feedback.1 += grown_f(t.feedback.1, b.feedback.1);
            total.feedback.2 += grown_f(t.feedback.2, b.feedback.2);
        }
        self.rate_limited += grown(now.rate_limited, then.map_or(0, |t| t.rate_limited));
    }
}

/// One sample of the cumulative figures.
pub struct Point {
    /// When it was taken.
    pub at: Instant,
    /// What windows need of the merged shard stats.
    pub stats: Compact,
    /// Kernel TCP retransmits so far (when the probe runs).
    pub retransmits: Option<u64>,
}

/// The history, oldest first.
#[derive(Default)]
pub struct Series {
    points: VecDeque<Point>,
    keep: Duration,
}

/// Figures of one scope over a window.
#[derive(Debug, Default, Clone)]
pub struct WindowFigures {
    /// Requests.
    pub requests: u64,
    /// Calls whose outcome is an error of the service (upstream errors,
    /// gateway errors, timeouts; `hypergate_core::error::Outcome::is_error`).
    pub errors: u64,
    /// Latency histogram (µs), when any was recorded.
    pub latency: Option<Histogram<u64>>,
    /// Window length actually covered.
    pub span: Duration,
}

/// Which requests a figure covers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Scope {
    /// Route (all when `None`).
    pub route: Option<String>,
    /// Version label (all when `None`).
    pub version: Option<String>,
    /// Cluster (all when `None`).
    pub cluster: Option<String>,
}

impl Scope {
    fn matches(&self, route: &str, cluster: &str, version: &str) -> bool {
        self.route.as_deref().is_none_or(|r| r == route)
            && self.version.as_deref().is_none_or(|v| v == version)
            && self.cluster.as_deref().is_none_or(|c| c == cluster)
    }
}

impl Series {
    /// A history keeping at least `keep`.
    pub fn new(keep: Duration) -> Series {
        Series {
            points: VecDeque::new(),
            keep,
        }
    }

    /// Changes how much history is kept (the longest window in use).
    pub fn set_keep(&mut self, keep: Duration) {
        self.keep = keep;
    }

    /// Adds a point and forgets what is older than needed.
    pub fn push(&mut self, p: Point) {
        let now = p.at;
        self.points.push_back(p);
        while self.points.len() > 2
            && self
                .points
                .get(1)
                .is_some_and(|q| now.duration_since(q.at) > self.keep)
        {
            self.points.pop_front();
        }
    }

    /// The newest point.
    pub fn latest(&self) -> Option<&Point> {
        self.points.back()
    }

    /// The newest point at least `window` older than the latest (else the oldest).
    fn base(&self, window: Duration) -> Option<&Point> {
        let now = self.points.back()?.at;
        self.points
            .iter()
            .rev()
            .find(|p| now.duration_since(p.at) >= window)
            .or_else(|| self.points.front())
    }

    /// Request counts and latency of `scope` over `window`. With a version or
    /// cluster in the scope, latency is the upstream latency of the matching
    /// clusters; otherwise the route's total latency.
    pub fn figures(&self, scope: &Scope, window: Duration) -> WindowFigures {
        match (self.latest(), self.base(window)) {
            (Some(now), Some(then)) => between(now, then, scope),
            _ => WindowFigures::default(),
        }
    }

    /// Figures of `scope` between the two newest points (the last tick).
    pub fn last_step(&self, scope: &Scope) -> WindowFigures {
        let n = self.points.len();
        if n < 2 {
            return WindowFigures::default();
        }
        between(&self.points[n - 1], &self.points[n - 2], scope)
    }

    /// An alias target's calls between the two newest points (the last tick).
    pub fn llm_target_step(&self, alias: &str, target: &str) -> LlmStep {
        let n = self.points.len();
        if n < 2 {
            return LlmStep::default();
        }
        let key = (alias.to_string(), target.to_string());
        let (Some(now), then) = (
            self.points[n - 1].stats.llm_targets.get(&key),
            self.points[n - 2].stats.llm_targets.get(&key),
        ) else {
            return LlmStep::default();
        };
        let zero = LlmTarget::default();
        let then = then.unwrap_or(&zero);
        let requests = (now.ok + now.errors).saturating_sub(then.ok + then.errors);
        let ttft = now.ttft.minus(Some(&then.ttft));
        let mut ttft_ms = hypergate_analysis::MeanSample::default();
        for v in ttft.iter_recorded() {
            let ms = v.value_iterated_to() as f64 / 1000.0;
            let c = v.count_at_value();
            ttft_ms.n += c;
            ttft_ms.sum += ms * c as f64;
            ttft_ms.sum_sq += ms * ms * c as f64;
        }
        let cost_usd = hypergate_analysis::MeanSample {
            n: requests,
            sum: now.cost_nanos.saturating_sub(then.cost_nanos) as f64 / 1e9,
            sum_sq: (now.cost_sq - then.cost_sq).max(0.0),
        };
        let feedback = hypergate_analysis::MeanSample {
            n: now.feedback.0.saturating_sub(then.feedback.0),
            sum: now.feedback.1 - then.feedback.1,
            sum_sq: (now.feedback.2 - then.feedback.2).max(0.0),
        };
        let latency = now.total.minus(Some(&then.total));
        LlmStep {
            requests,
            errors: now.errors.saturating_sub(then.errors),
            latency: (!latency.is_empty()).then_some(latency),
            ttft_ms,
            cost_usd,
            feedback,
        }
    }

    /// LLM (tokens, dollars) over `window`, optionally for one route and alias,
    /// with the span covered.
    pub fn llm(
        &self,
        route: Option<&str>,
        alias: Option<&str>,
        window: Duration,
    ) -> (u64, f64, Duration) {
        let (Some(now), Some(then)) = (self.latest(), self.base(window)) else {
            return (0, 0.0, Duration::ZERO);
        };
        let sum = |m: &Compact| {
            m.llm
                .iter()
                .filter(|((r, a), _)| route.is_none_or(|x| x == r) && alias.is_none_or(|x| x == a))
                .fold((0u64, 0u64), |(t, c), (_, v)| (t + v.0, c + v.1))
        };
        let (t1, c1) = sum(&now.stats);
        let (t0, c0) = sum(&then.stats);
        (
            t1.saturating_sub(t0),
            c1.saturating_sub(c0) as f64 / 1e9,
            now.at.duration_since(then.at),
        )
    }

    /// Rate-limit refusals over `window`, with the span covered.
    pub fn rate_limited(&self, window: Duration) -> (u64, Duration) {
        let (Some(now), Some(then)) = (self.latest(), self.base(window)) else {
            return (0, Duration::ZERO);
        };
        (
            now.stats
                .rate_limited
                .saturating_sub(then.stats.rate_limited),
            now.at.duration_since(then.at),
        )
    }

    /// Kernel retransmits over `window` (None without the probe).
    pub fn retransmits(&self, window: Duration) -> Option<(u64, Duration)> {
        let now = self.latest()?;
        let then = self.base(window)?;
        Some((
            now.retransmits?
                .saturating_sub(then.retransmits.unwrap_or(0)),
            now.at.duration_since(then.at),
        ))
    }
}

/// Sums every `retransmits` number in the probe's `/stats` JSON.
pub fn total_retransmits(v: &serde_json::Value) -> u64 {
    match v {
        serde_json::Value::Object(m) => m
            .iter()
            .map(|(k, v)| match (k.as_str(), v.as_u64()) {
                ("retransmits", Some(n)) => n,
                _ => total_retransmits(v),
            })
            .sum(),
        serde_json::Value::Array(a) => a.iter().map(total_retransmits).sum(),
        _ => 0,
    }
}

/// Figures of `scope` from point `then` to point `now`.
fn between(now: &Point, then: &Point, scope: &Scope) -> WindowFigures {
    let mut f = WindowFigures {
        span: now.at.duration_since(then.at),
        ..Default::default()
    };
    if std::ptr::eq(now, then) {
        return f;
    }
    for (key, counts) in &now.stats.targets {
        if !scope.matches(&key.0, &key.1, &key.2) {
            continue;
        }
        let d = counts.since(&then.stats.targets.get(key).copied().unwrap_or_default());
        f.requests += d.requests();
        f.errors += d.errors();
    }
    let mut add = |h: Histogram<u64>| match &mut f.latency {
        Some(acc) => {
            let _ = acc.add(&h);
        }
        None => f.latency = Some(h),
    };
    if scope.version.is_some() || scope.cluster.is_some() {
        let keys: BTreeSet<(String, String)> = now
            .stats
            .targets
            .keys()
            .filter(|k| scope.matches(&k.0, &k.1, &k.2))
            .map(|k| (k.1.clone(), k.2.clone()))
            .collect();
        for key in &keys {
            if let Some(h) = now.stats.clusters.get(key) {
                add(h.minus(then.stats.clusters.get(key)));
            }
        }
    } else {
        for (route, h) in &now.stats.routes {
            if scope.route.as_deref().is_none_or(|r| r == route) {
                add(h.minus(then.stats.routes.get(route)));
            }
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accumulated_gains_survive_a_member_leaving_or_restarting() {
        let sparse = |pairs: &[(u64, u64)]| Sparse(pairs.to_vec());
        let mut total = Sparse::default();
        // Member A: 3 then 5 at 10 µs; member B: 2 at 20 µs, then restarted with 1.
        total.accumulate(&sparse(&[(10, 3)]), None);
        total.accumulate(&sparse(&[(20, 2)]), None);
        total.accumulate(&sparse(&[(10, 5)]), Some(&sparse(&[(10, 3)])));
        total.accumulate(&sparse(&[(20, 1)]), Some(&sparse(&[(20, 2)])));
        assert_eq!(total, sparse(&[(10, 5), (20, 3)]));
        assert_eq!(grown(7, 4), 3);
        assert_eq!(grown(2, 4), 2, "a counter that went down counts as new");
    }

    #[test]
    fn sparse_difference_equals_the_histogram_difference() {
        let (mut then, mut now) = (new_histogram(), new_histogram());
        for v in [5, 50, 500, 5000, 50_000] {
            then.record_n(v, 3).unwrap();
            now.record_n(v, 10).unwrap();
        }
        now.record_n(777, 4).unwrap();
        let d = Sparse::of(&now).minus(Some(&Sparse::of(&then)));
        let mut expect = now.clone();
        expect.subtract(&then).unwrap();
        assert_eq!(d.len(), expect.len());
        for q in [0.1, 0.5, 0.9, 0.99] {
            assert_eq!(d.value_at_quantile(q), expect.value_at_quantile(q));
        }
        assert_eq!(Sparse::of(&now).minus(None).len(), now.len());
    }
}
