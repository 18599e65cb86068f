//! One-sided sequential test on a latency quantile: is the canary's q-quantile
//! (p99 by default) above the stable's q-quantile times `1 + tolerance`?
//!
//! Hypotheses, with `Q_s` and `Q_c` the true q-quantiles:
//! H0: `Q_c <= (1 + tolerance) * Q_s` against H1: `Q_c > (1 + tolerance) * Q_s`.
//!
//! Under H0 at most a fraction `p0 = 1 - q` of canary requests are slower than
//! `B = (1 + tolerance) * Q_s`, so the test counts them. `B` is estimated from the
//! stable histogram (`B^ = (1 + tolerance) * Q^_s`) and `X` is the number of canary
//! samples above it. By the delta method, `X / n_c - p0` then has variance
//! `p0 (1 - p0) (1/n_c + 1/n_s)`: the first term is the binomial noise of the canary
//! count, the second the noise of the stable quantile estimate, carried through the
//! canary's tail (exact at the edge of H0 when the canary's tail is the stable's
//! stretched by `1 + tolerance`). The statistic
//!
//! `z = (X / n_c - p0) / sqrt(p0 (1 - p0) (1/n_c + 1/n_s))`
//!
//! is compared with the normal-mixture boundary of [`crate::stats`], so it can be
//! evaluated on the cumulative histograms as often as wanted. The null variance is
//! fixed by `p0`, so a canary without slow requests cannot fake precision.
//!
//! Histogram resolution only makes the test more cautious: `Q^_s` is the highest
//! value equivalent to the stable's quantile bucket, and a canary sample counts as
//! above `B^` only when its whole bucket lies above it.
//!
//! Why not Mann-Whitney on the bins: it tests a shift of the whole distribution, is
//! dominated by the body (a +30 % p99 with an unchanged median barely moves it),
//! and has no natural notion of a relative tolerance. The tail-count test asks
//! exactly the question the plan states and costs one pass over each histogram.
//!
//! The test is [`Verdict::Inconclusive`] until each side has at least
//! `max(min_samples, 10 / (1 - q))` samples, so that about ten requests are
//! expected above the quantile.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::stats::{information, mixture_critical_z};
use crate::Verdict;

/// Name recorded in [`LatencyEvidence::method`].
pub const LATENCY_METHOD: &str =
    "normal-mixture SPRT on the canary tail mass above the stable quantile times (1 + tolerance)";

/// Configuration of the latency test.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LatencyTest {
    /// The quantile compared, in (0, 1): 0.99 for p99.
    pub quantile: f64,
    /// Relative slowdown of the quantile that is still acceptable (0.1 = 10 %).
    pub tolerance: f64,
    /// Probability of ever calling an acceptable canary worse, over all looks.
    pub alpha: f64,
    /// Samples each side needs before the test is evaluated, on top of the
    /// `10 / (1 - quantile)` the quantile itself needs.
    pub min_samples: u64,
}

/// What the latency test saw and concluded. Latencies are in the histograms' unit
/// (microseconds in the gateway).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LatencyEvidence {
    /// The statistical method, in words.
    pub method: &'static str,
    /// The quantile compared.
    pub quantile: f64,
    /// Allowed relative slowdown.
    pub tolerance: f64,
    /// Stable samples.
    pub stable_count: u64,
    /// Canary samples.
    pub canary_count: u64,
    /// Stable's observed quantile (0 without samples).
    pub stable_quantile: u64,
    /// Canary's observed quantile (0 without samples).
    pub canary_quantile: u64,
    /// `stable_quantile * (1 + tolerance)`, rounded up.
    pub bound: u64,
    /// Canary samples above `bound`.
    pub canary_above_bound: u64,
    /// Fraction of canary samples above `bound`; at most `1 - quantile` under H0.
    pub canary_fraction_above: f64,
    /// The z statistic; absent while a side is short of samples.
    pub statistic: Option<f64>,
    /// The always-valid boundary `z` must reach; absent with the statistic.
    pub threshold: Option<f64>,
    /// Level of the test.
    pub alpha: f64,
    /// The conclusion.
    pub verdict: Verdict,
}

impl LatencyTest {
    /// Samples each side needs before the test is evaluated.
    pub fn required_samples(&self) -> u64 {
        let for_quantile = (10.0 / (1.0 - self.quantile)).ceil() as u64;
        self.min_samples.max(for_quantile)
    }

    /// Evaluates the test on cumulative histograms since the step began. Runs in
    /// a pass over each histogram's buckets up to the quantile, plus the canary's
    /// buckets above the bound, and allocates nothing.
    pub fn evaluate(&self, stable: &Histogram<u64>, canary: &Histogram<u64>) -> LatencyEvidence {
        let (stable_count, canary_count) = (stable.len(), canary.len());
        let quantile_of = |h: &Histogram<u64>| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(self.quantile)
            }
        };
        let stable_quantile = quantile_of(stable);
        let bound = (stable_quantile as f64 * (1.0 + self.tolerance)).ceil() as u64;
        // Whole buckets above the one holding `bound`, scanning only up to the max.
        let canary_above_bound =
            if canary_count == 0 || canary.highest_equivalent(bound) >= canary.max() {
                0
            } else {
                canary.count_between(canary.highest_equivalent(bound) + 1, canary.max())
            };
        let canary_fraction_above = if canary_count == 0 {
            0.0
        } else {
            canary_above_bound as f64 / canary_count as f64
        };
        let mut evidence = LatencyEvidence {
            method: LATENCY_METHOD,
            quantile: self.quantile,
            tolerance: self.tolerance,
            stable_count,
            canary_count,
            stable_quantile,
            canary_quantile: quantile_of(canary),
            bound,
            canary_above_bound,
            canary_fraction_above,
            statistic: None,
            threshold: None,
            alpha: self.alpha,
            verdict: Verdict::Inconclusive,
        };
        let needed = self.required_samples();
        if stable_count < needed || canary_count < needed {
            return evidence;
        }
        let p0 = 1.0 - self.quantile;
        let variance = p0 * (1.0 - p0) * (1.0 / canary_count as f64 + 1.0 / stable_count as f64);
        let z = (canary_fraction_above - p0) / variance.sqrt();
        let threshold = mixture_critical_z(information(stable_count, canary_count), self.alpha);
        evidence.statistic = Some(z);
        evidence.threshold = Some(threshold);
        evidence.verdict = Verdict::from_z(z, threshold);
        evidence
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::new_latency_histogram;

    fn histogram(values: impl IntoIterator<Item = u64>) -> Histogram<u64> {
        let mut h = new_latency_histogram();
        for v in values {
            h.record(v).unwrap();
        }
        h
    }

    fn p99(tolerance: f64) -> LatencyTest {
        LatencyTest {
            quantile: 0.99,
            tolerance,
            alpha: 0.01,
            min_samples: 0,
        }
    }

    #[test]
    fn statistic_of_a_known_tail() {
        // Stable 1..=1000 µs: p99 = 990, bound with 10 % tolerance = 1089.
        // Canary: 950 fast samples and 50 at 5000 µs, so X = 50 of 1000:
        // z = (0.05 - 0.01) / sqrt(0.01 * 0.99 * 2 / 1000) = 8.9893.
        let stable = histogram(1..=1_000);
        let canary = histogram((0..950).map(|_| 100).chain((0..50).map(|_| 5_000)));
        let evidence = p99(0.1).evaluate(&stable, &canary);
        assert_eq!(evidence.stable_quantile, 990);
        assert_eq!(evidence.bound, 1_089);
        assert_eq!(evidence.canary_above_bound, 50);
        // 5000 lies in a bucket of width 4 at three significant digits.
        assert_eq!(evidence.canary_quantile, 5_003);
        let z = evidence.statistic.unwrap();
        assert!((z - 8.989_3).abs() < 1e-3, "z = {z}");
        assert!(z > evidence.threshold.unwrap());
        assert_eq!(evidence.verdict, Verdict::Worse);
    }

    #[test]
    fn a_slowdown_within_tolerance_is_not_worse() {
        // Canary is the stable stretched by 5 % against a 10 % tolerance.
        let stable = histogram((0..100_000u64).map(|i| 1_000 + i % 1_000));
        let canary = histogram((0..100_000u64).map(|i| (1_000 + i % 1_000) * 105 / 100));
        let evidence = p99(0.1).evaluate(&stable, &canary);
        assert_eq!(evidence.canary_above_bound, 0);
        assert_eq!(evidence.verdict, Verdict::NotWorse);
    }

    #[test]
    fn the_same_stretch_beyond_tolerance_is_worse() {
        let stable = histogram((0..100_000u64).map(|i| 1_000 + i % 1_000));
        let canary = histogram((0..100_000u64).map(|i| (1_000 + i % 1_000) * 13 / 10));
        assert_eq!(p99(0.1).evaluate(&stable, &canary).verdict, Verdict::Worse);
    }

    #[test]
    fn short_samples_are_inconclusive() {
        // p99 needs 10 / 0.01 = 1000 samples per side.
        assert_eq!(p99(0.1).required_samples(), 1_000);
        let stable = histogram(1..=999);
        let canary = histogram((0..999).map(|_| 1_000_000));
        let evidence = p99(0.1).evaluate(&stable, &canary);
        assert_eq!(evidence.verdict, Verdict::Inconclusive);
        assert_eq!(evidence.statistic, None);
        let empty = new_latency_histogram();
        assert_eq!(p99(0.1).evaluate(&empty, &empty).stable_quantile, 0);
    }
}
