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

use crate::observability::metrics::MergedStats;
use hdrhistogram::Histogram;
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One sample of the cumulative figures.
pub struct Point {
    /// When it was taken.
    pub at: Instant,
    /// The merged shard stats.
    pub stats: Arc<MergedStats>,
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
    /// 5xx answers (and answers never sent).
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

fn sub_hist(now: &Histogram<u64>, then: Option<&Histogram<u64>>) -> Histogram<u64> {
    let mut h = now.clone();
    if let Some(t) = then {
        // Counters only grow, except after a reload re-created them: then the
        // subtraction fails and the whole current histogram is the window.
        if h.subtract(t).is_err() {
            return now.clone();
        }
    }
    h
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

    /// LLM (tokens, micro-dollars) over `window`, optionally for one route and alias,
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
        let sum = |m: &MergedStats| {
            m.ai.calls
                .iter()
                .filter(|((r, a, _, _), _)| {
                    route.is_none_or(|x| x == r) && alias.is_none_or(|x| x == a)
                })
                .fold((0u64, 0u64), |(t, c), (_, v)| {
                    (t + v.counters[4] + v.counters[5], c + v.counters[8])
                })
        };
        let (t1, c1) = sum(&now.stats);
        let (t0, c0) = sum(&then.stats);
        (
            t1.saturating_sub(t0),
            c1.saturating_sub(c0) as f64 / 1e6,
            now.at.duration_since(then.at),
        )
    }

    /// Rate-limit refusals over `window`, with the span covered.
    pub fn rate_limited(&self, window: Duration) -> (u64, Duration) {
        let (Some(now), Some(then)) = (self.latest(), self.base(window)) else {
            return (0, Duration::ZERO);
        };
        let count =
            |m: &MergedStats| m.edge_rejections[crate::proxy::EdgeReject::RateLimited.index()];
        (
            count(&now.stats).saturating_sub(count(&then.stats)),
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
        let old = then.stats.targets.get(key).copied().unwrap_or([0; 6]);
        let d: Vec<u64> = counts
            .iter()
            .zip(old)
            .map(|(a, b)| a.saturating_sub(b))
            .collect();
        f.requests += d.iter().sum::<u64>();
        f.errors += d[0] + d[5];
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
            let latency = now.stats.clusters.get(key).and_then(|c| c.latency.as_ref());
            if let Some((h, _)) = latency {
                let old = then
                    .stats
                    .clusters
                    .get(key)
                    .and_then(|c| c.latency.as_ref())
                    .map(|(h, _)| h);
                add(sub_hist(h, old));
            }
        }
    } else {
        for (route, (h, _)) in &now.stats.routes {
            if scope.route.as_deref().is_none_or(|r| r == route) {
                add(sub_hist(h, then.stats.routes.get(route).map(|(h, _)| h)));
            }
        }
    }
    f
}
