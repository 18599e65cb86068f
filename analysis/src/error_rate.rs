//! One-sided sequential test on the difference of two error rates: is the canary's
//! error rate worse than the stable's by more than a margin?
//!
//! Hypotheses, with `d = p_canary - p_stable` and the plan's `margin`:
//! H0: `d <= margin` (the canary is acceptable) against H1: `d > margin`.
//!
//! The estimate is the Agresti–Caffo adjusted difference: each side's rate is
//! taken as `(errors + 1) / (requests + 2)`, which keeps the variance away from
//! zero when a side has seen no errors yet (the plain Wald estimate would declare a
//! single canary error against zero stable errors infinitely significant). The
//! statistic is
//!
//! `z = (p~_canary - p~_stable - margin) / sqrt(p~_c (1 - p~_c) / (n_c + 2) + p~_s (1 - p~_s) / (n_s + 2))`
//!
//! and it is compared with the normal-mixture boundary of [`crate::stats`], so the
//! test stays at level `alpha` however often it is evaluated on the cumulative
//! counts. `z >= boundary` is [`Verdict::Worse`]; `z <= -boundary` means the
//! canary is demonstrably within the margin ([`Verdict::NotWorse`]); anything in
//! between, or fewer than `min_requests` requests on either side, is
//! [`Verdict::Inconclusive`].

use serde::Serialize;

use crate::stats::{information, mixture_critical_z};
use crate::Verdict;

/// Name recorded in [`ErrorRateEvidence::method`].
pub const ERROR_RATE_METHOD: &str =
    "normal-mixture SPRT on the Agresti-Caffo difference of two proportions";

/// Requests each side needs before the error-rate test is evaluated: below this,
/// the normal approximation of a rate near 1 % rests on one or two errors.
pub const DEFAULT_MIN_ERROR_REQUESTS: u64 = 200;

/// Request and error counts of one side, cumulative since the step began.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ErrorCounts {
    /// Requests answered.
    pub requests: u64,
    /// Of those, requests that counted as errors.
    pub errors: u64,
}

impl ErrorCounts {
    /// Observed error rate, zero with no requests.
    pub fn rate(self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// Configuration of the error-rate test.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ErrorRateTest {
    /// Absolute difference in error rate the canary may have before it is worse
    /// (0.005 = half a percentage point).
    pub margin: f64,
    /// Probability of ever calling an acceptable canary worse, over all looks.
    pub alpha: f64,
    /// Requests each side needs before the test is evaluated.
    pub min_requests: u64,
}

/// What the error-rate test saw and concluded.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ErrorRateEvidence {
    /// The statistical method, in words.
    pub method: &'static str,
    /// Stable counts.
    pub stable: ErrorCounts,
    /// Canary counts.
    pub canary: ErrorCounts,
    /// Observed stable error rate.
    pub stable_rate: f64,
    /// Observed canary error rate.
    pub canary_rate: f64,
    /// Allowed excess of the canary's rate.
    pub margin: f64,
    /// The z statistic (adjusted difference minus margin over its standard error);
    /// absent while a side has fewer than `min_requests` requests.
    pub statistic: Option<f64>,
    /// The always-valid boundary `z` must reach; absent with the statistic.
    pub threshold: Option<f64>,
    /// Level of the test.
    pub alpha: f64,
    /// The conclusion.
    pub verdict: Verdict,
}

impl ErrorRateTest {
    /// Evaluates the test on cumulative counts since the step began.
    pub fn evaluate(&self, stable: ErrorCounts, canary: ErrorCounts) -> ErrorRateEvidence {
        let mut evidence = ErrorRateEvidence {
            method: ERROR_RATE_METHOD,
            stable,
            canary,
            stable_rate: stable.rate(),
            canary_rate: canary.rate(),
            margin: self.margin,
            statistic: None,
            threshold: None,
            alpha: self.alpha,
            verdict: Verdict::Inconclusive,
        };
        let needed = self.min_requests.max(1);
        if stable.requests < needed || canary.requests < needed {
            return evidence;
        }
        let z = adjusted_difference_z(stable, canary, self.margin);
        let threshold =
            mixture_critical_z(information(stable.requests, canary.requests), self.alpha);
        evidence.statistic = Some(z);
        evidence.threshold = Some(threshold);
        evidence.verdict = Verdict::from_z(z, threshold);
        evidence
    }
}

/// The Agresti–Caffo z statistic of `p_canary - p_stable - margin`.
fn adjusted_difference_z(stable: ErrorCounts, canary: ErrorCounts, margin: f64) -> f64 {
    let adjusted = |c: ErrorCounts| {
        let n = c.requests as f64 + 2.0;
        let p = (c.errors as f64 + 1.0) / n;
        (p, p * (1.0 - p) / n)
    };
    let (p_stable, var_stable) = adjusted(stable);
    let (p_canary, var_canary) = adjusted(canary);
    (p_canary - p_stable - margin) / (var_stable + var_canary).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(requests: u64, errors: u64) -> ErrorCounts {
        ErrorCounts { requests, errors }
    }

    fn test(margin: f64) -> ErrorRateTest {
        ErrorRateTest {
            margin,
            alpha: 0.01,
            min_requests: DEFAULT_MIN_ERROR_REQUESTS,
        }
    }

    #[test]
    fn z_of_a_known_two_by_two_table() {
        // 10/1000 stable vs 30/1000 canary: adjusted rates 11/1002 and 31/1002,
        // variance (11*991 + 31*971) / 1002^3, z = 3.12652.
        let z = adjusted_difference_z(counts(1_000, 10), counts(1_000, 30), 0.0);
        assert!((z - 3.126_52).abs() < 1e-4, "z = {z}");
        // A margin shifts the numerator only.
        let z = adjusted_difference_z(counts(1_000, 10), counts(1_000, 30), 0.01);
        assert!((z - 1.560_13).abs() < 1e-4, "z = {z}");
    }

    #[test]
    fn a_large_clear_regression_is_worse() {
        let evidence = test(0.005).evaluate(counts(20_000, 200), counts(20_000, 600));
        assert_eq!(evidence.verdict, Verdict::Worse);
        let (z, threshold) = (evidence.statistic.unwrap(), evidence.threshold.unwrap());
        assert!(
            z > threshold && threshold > 3.0,
            "z {z} threshold {threshold}"
        );
        assert_eq!(evidence.canary_rate, 0.03);
    }

    #[test]
    fn a_modest_difference_on_little_data_is_inconclusive() {
        // 3 % vs 1 % on 1000 requests each is "significant" at a fixed 5 % level,
        // but not against a boundary valid under continuous monitoring at 1 %.
        let evidence = test(0.0).evaluate(counts(1_000, 10), counts(1_000, 30));
        assert_eq!(evidence.verdict, Verdict::Inconclusive);
    }

    #[test]
    fn identical_rates_on_much_data_are_not_worse() {
        let evidence = test(0.005).evaluate(counts(200_000, 2_000), counts(200_000, 2_000));
        assert_eq!(evidence.verdict, Verdict::NotWorse);
    }

    #[test]
    fn too_few_requests_yield_no_statistic() {
        let evidence = test(0.0).evaluate(counts(199, 0), counts(5_000, 5_000));
        assert_eq!(evidence.verdict, Verdict::Inconclusive);
        assert_eq!(evidence.statistic, None);
    }

    #[test]
    fn a_single_error_against_none_is_not_significant() {
        let evidence = test(0.0).evaluate(counts(200, 0), counts(200, 1));
        assert_eq!(evidence.verdict, Verdict::Inconclusive);
        assert!(evidence.statistic.unwrap() < 1.0);
    }
}
