//! Release baselines and their comparison (`hypergate diff`, `/hypercare/diff`).
//!
//! A release's baseline is everything the rollups hold for its version label over
//! the chosen window: requests, error rate, a merged latency histogram, tokens
//! and cost per request. Two baselines are compared with tests that say whether
//! a difference is more than noise:
//! - error rate: two-proportion z-test (pooled), two-sided p-value;
//! - latency: Mann-Whitney U on the two histograms' buckets (ties share their
//!   mid-rank, normal approximation with the tie correction), two-sided p-value,
//!   plus the ratio of each quantile;
//!
//! A change is flagged `significant` at p < 0.01.

use super::query::{aggregate, Aggregate, QueryError};
use hdrhistogram::Histogram;
use hypergate_analysis::stats::normal_upper_tail;
use rusqlite::Connection;
use serde_json::{json, Value};
use std::time::Duration;

/// Significance level for the `significant` flags.
const ALPHA: f64 = 0.01;

/// The baseline of `version` (optionally on one route) over the rollups in the window.
pub fn baseline(
    conn: &Connection,
    version: &str,
    route: Option<&str>,
    window: Duration,
    now_ms: i64,
) -> Result<Aggregate, QueryError> {
    let until = now_ms / 60_000 + 1;
    let since = (now_ms - window.as_millis() as i64) / 60_000;
    let mut total = Aggregate::default();
    for ((r, _, v, _), a) in aggregate(conn, since, until)? {
        if v != version || route.is_some_and(|x| x != r) {
            continue;
        }
        total.absorb(&a);
    }
    Ok(total)
}

/// Two-sided p-value that two error rates differ (pooled two-proportion z-test).
pub fn error_rate_p_value(n1: u64, e1: u64, n2: u64, e2: u64) -> Option<(f64, f64)> {
    if n1 == 0 || n2 == 0 {
        return None;
    }
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let pooled = (e1 + e2) as f64 / (n1f + n2f);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1f + 1.0 / n2f)).sqrt();
    let diff = e2 as f64 / n2f - e1 as f64 / n1f;
    if se == 0.0 {
        return Some((0.0, if diff == 0.0 { 1.0 } else { 0.0 }));
    }
    let z = diff / se;
    Some((z, (2.0 * normal_upper_tail(z.abs())).min(1.0)))
}

/// Mann-Whitney U test on two histograms: (z of `b` being larger, two-sided p).
pub fn mann_whitney(a: &Histogram<u64>, b: &Histogram<u64>) -> Option<(f64, f64)> {
    let (n1, n2) = (a.len() as f64, b.len() as f64);
    if n1 == 0.0 || n2 == 0.0 {
        return None;
    }
    // Walk the union of buckets in value order; each bucket is a block of ties.
    let mut buckets: Vec<(u64, u64, u64)> = Vec::new();
    for v in a.iter_recorded() {
        buckets.push((v.value_iterated_to(), v.count_at_value(), 0));
    }
    for v in b.iter_recorded() {
        buckets.push((v.value_iterated_to(), 0, v.count_at_value()));
    }
    buckets.sort_by_key(|x| x.0);
    let mut rank = 0.0;
    let mut rank_sum_b = 0.0;
    let mut tie_term = 0.0;
    let mut i = 0;
    while i < buckets.len() {
        let value = buckets[i].0;
        let (mut ca, mut cb) = (0u64, 0u64);
        while i < buckets.len() && buckets[i].0 == value {
            ca += buckets[i].1;
            cb += buckets[i].2;
            i += 1;
        }
        let t = (ca + cb) as f64;
        let mid = rank + (t + 1.0) / 2.0;
        rank_sum_b += mid * cb as f64;
        tie_term += t * t * t - t;
        rank += t;
    }
    let u_b = rank_sum_b - n2 * (n2 + 1.0) / 2.0;
    let mean = n1 * n2 / 2.0;
    let n = n1 + n2;
    let var = n1 * n2 / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0)));
    if var <= 0.0 {
        return Some((0.0, 1.0));
    }
    let z = (u_b - mean) / var.sqrt();
    Some((z, (2.0 * normal_upper_tail(z.abs())).min(1.0)))
}

/// Compares release `to` with release `from`.
pub fn diff(
    conn: &Connection,
    from: &str,
    to: &str,
    route: Option<&str>,
    window: Duration,
    now_ms: i64,
) -> Result<Value, QueryError> {
    let a = baseline(conn, from, route, window, now_ms)?;
    let b = baseline(conn, to, route, window, now_ms)?;
    let errors = error_rate_p_value(a.requests, a.errors, b.requests, b.errors).map(|(z, p)| {
        json!({
            "from": a.error_rate(), "to": b.error_rate(),
            "change_points": (b.error_rate() - a.error_rate()) * 100.0,
            "z": z, "p_value": p, "significant": p < ALPHA,
        })
    });
    let latency = match (&a.latency, &b.latency) {
        (Some(ha), Some(hb)) => mann_whitney(ha, hb).map(|(z, p)| {
            let q = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            json!({
                "p50_ms": [q(ha, 0.5), q(hb, 0.5)],
                "p90_ms": [q(ha, 0.9), q(hb, 0.9)],
                "p99_ms": [q(ha, 0.99), q(hb, 0.99)],
                "p99_ratio": q(hb, 0.99) / q(ha, 0.99).max(0.001),
                "mann_whitney_z": z, "p_value": p, "significant": p < ALPHA,
                "direction": if z > 0.0 { "slower" } else { "faster" },
            })
        }),
        _ => None,
    };
    let per_request = |x: &Aggregate, v: f64| {
        if x.requests == 0 {
            0.0
        } else {
            v / x.requests as f64
        }
    };
    Ok(json!({
        "from": {"version": from, "baseline": a.json()},
        "to": {"version": to, "baseline": b.json()},
        "route": route,
        "window": humantime::format_duration(window).to_string(),
        "error_rate": errors,
        "latency": latency,
        "llm": {
            "tokens_per_request": [per_request(&a, (a.prompt_tokens + a.completion_tokens) as f64), per_request(&b, (b.prompt_tokens + b.completion_tokens) as f64)],
            "cost_per_request_usd": [per_request(&a, a.cost_usd()), per_request(&b, b.cost_usd())],
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypergate_core::metrics::new_histogram;

    #[test]
    fn two_proportion_z_on_a_known_table() {
        // 10/1000 vs 30/1000: pooled 0.02, se = sqrt(0.02 * 0.98 * 0.002) = 0.00626, z = 3.194.
        let (z, p) = error_rate_p_value(1000, 10, 1000, 30).unwrap();
        assert!((z - 3.194).abs() < 0.01, "{z}");
        assert!(p < 0.002 && p > 0.001, "{p}");
        let (_, p) = error_rate_p_value(1000, 10, 1000, 11).unwrap();
        assert!(p > 0.5);
    }

    #[test]
    fn mann_whitney_sees_a_shift_and_not_noise() {
        let mut a = new_histogram();
        let mut b = new_histogram();
        let mut same = new_histogram();
        for v in 1..=1000u64 {
            a.record(1000 + v).unwrap();
            same.record(1000 + v).unwrap();
            b.record(1300 + v).unwrap();
        }
        let (z, p) = mann_whitney(&a, &b).unwrap();
        assert!(z > 5.0 && p < 1e-6, "{z} {p}");
        let (z, p) = mann_whitney(&a, &same).unwrap();
        assert!(z.abs() < 1e-9 && p > 0.99, "{z} {p}");
        // Small exact example: {1,2,3} vs {4,5,6}: U_b = 9 (all larger), z = 1.96.
        let (mut x, mut y) = (new_histogram(), new_histogram());
        for v in [1, 2, 3] {
            x.record(v).unwrap();
        }
        for v in [4, 5, 6] {
            y.record(v).unwrap();
        }
        let (z, _) = mann_whitney(&x, &y).unwrap();
        assert!((z - 1.964).abs() < 0.01, "{z}");
    }
}
