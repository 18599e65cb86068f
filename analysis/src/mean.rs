//! One-sided sequential Welch test on a per-request mean (time to first token, cost
//! per request, feedback score): is the canary's mean worse than the stable's by
//! more than a relative tolerance?
//!
//! With `mu_s`, `mu_c` the true means and `k = tolerance`, the acceptable edge is
//! `b = mu_s + k * |mu_s|` when higher is worse (`mu_s - k * |mu_s|` when lower is
//! worse), i.e. `b = c * mu_s` with `c = 1 +/- k * sign(mu_s)`. H0: the canary is on
//! the good side of `b`. The statistic is Welch's
//!
//! `t = (mean_c - c * mean_s) / sqrt(var_c / n_c + c^2 * var_s / n_s)` (sign flipped
//! when lower is worse),
//!
//! with the Welch–Satterthwaite degrees of freedom
//! `df = V^2 / ((var_c / n_c)^2 / (n_c - 1) + (c^2 var_s / n_s)^2 / (n_s - 1))`,
//! `V` being the squared denominator. A fixed-sample one-sided test would reject
//! when `P(T_df > t) <= alpha`; looking every few seconds would inflate that, so the
//! rejection level is instead the normal tail of the always-valid boundary of
//! [`crate::stats`], `alpha* = P(Z > z_crit(n_eff))`: the test rejects when the
//! Welch p-value is at most `alpha*`. For large samples this is the mixture test on
//! the z statistic; for small ones the t tail keeps it honest about estimated
//! variances.

use serde::{Deserialize, Serialize};

use crate::stats::{information, mixture_critical_z, normal_upper_tail, student_t_upper_tail};
use crate::Verdict;

/// Name recorded in [`MeanEvidence::method`].
pub const MEAN_METHOD: &str = "Welch t-test against a normal-mixture always-valid level";

/// Observations each side needs before a mean is tested.
pub const DEFAULT_MIN_MEAN_SAMPLES: u64 = 30;

/// Running sums of one metric over requests: what a shard accumulates cheaply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MeanSample {
    /// Observations.
    pub n: u64,
    /// Sum of the observations.
    pub sum: f64,
    /// Sum of their squares.
    pub sum_sq: f64,
}

impl MeanSample {
    /// Records one observation.
    pub fn record(&mut self, value: f64) {
        self.n += 1;
        self.sum += value;
        self.sum_sq += value * value;
    }

    /// Adds another sample's sums to this one.
    pub fn merge(&mut self, other: &MeanSample) {
        self.n += other.n;
        self.sum += other.sum;
        self.sum_sq += other.sum_sq;
    }

    /// Mean and unbiased variance (zero variance below two observations).
    pub fn stats(&self) -> MeanStats {
        if self.n == 0 {
            return MeanStats {
                n: 0,
                mean: 0.0,
                variance: 0.0,
            };
        }
        let n = self.n as f64;
        let mean = self.sum / n;
        let variance = if self.n < 2 {
            0.0
        } else {
            ((self.sum_sq - self.sum * mean) / (n - 1.0)).max(0.0)
        };
        MeanStats {
            n: self.n,
            mean,
            variance,
        }
    }
}

/// Summary statistics of one side.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct MeanStats {
    /// Observations.
    pub n: u64,
    /// Sample mean.
    pub mean: f64,
    /// Unbiased sample variance.
    pub variance: f64,
}

/// Configuration of a mean test.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MeanTest {
    /// Whether a higher canary mean is worse (latency, cost) or a lower one (score).
    pub higher_is_worse: bool,
    /// Relative change of the mean that is still acceptable (0.1 = 10 %).
    pub tolerance: f64,
    /// Probability of ever calling an acceptable canary worse, over all looks.
    pub alpha: f64,
    /// Observations each side needs before the test is evaluated (at least 2).
    pub min_samples: u64,
}

/// What a mean test saw and concluded.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MeanEvidence {
    /// The metric's name, from the plan.
    pub name: String,
    /// The statistical method, in words.
    pub method: &'static str,
    /// Whether a higher mean is worse.
    pub higher_is_worse: bool,
    /// Allowed relative change.
    pub tolerance: f64,
    /// Stable summary.
    pub stable: MeanStats,
    /// Canary summary.
    pub canary: MeanStats,
    /// The acceptable edge `c * mean_s`.
    pub bound: f64,
    /// Welch's t, oriented so that positive means worse; absent while short of samples.
    pub statistic: Option<f64>,
    /// Welch–Satterthwaite degrees of freedom.
    pub degrees_of_freedom: Option<f64>,
    /// One-sided Welch p-value for "worse".
    pub p_value: Option<f64>,
    /// The always-valid level the p-value must reach.
    pub threshold: Option<f64>,
    /// Level of the test.
    pub alpha: f64,
    /// The conclusion.
    pub verdict: Verdict,
}

impl MeanTest {
    /// Evaluates the test on cumulative summaries since the step began.
    pub fn evaluate(&self, name: &str, stable: MeanStats, canary: MeanStats) -> MeanEvidence {
        let direction = if self.higher_is_worse { 1.0 } else { -1.0 };
        let c = 1.0 + direction * self.tolerance * stable.mean.signum();
        let bound = c * stable.mean;
        let mut evidence = MeanEvidence {
            name: name.to_owned(),
            method: MEAN_METHOD,
            higher_is_worse: self.higher_is_worse,
            tolerance: self.tolerance,
            stable,
            canary,
            bound,
            statistic: None,
            degrees_of_freedom: None,
            p_value: None,
            threshold: None,
            alpha: self.alpha,
            verdict: Verdict::Inconclusive,
        };
        let needed = self.min_samples.max(2);
        if stable.n < needed || canary.n < needed {
            return evidence;
        }
        let (n_s, n_c) = (stable.n as f64, canary.n as f64);
        let canary_part = canary.variance / n_c;
        let stable_part = c * c * stable.variance / n_s;
        let variance = canary_part + stable_part;
        let difference = direction * (canary.mean - bound);
        let (t, df) = if variance > 0.0 {
            let df = variance * variance
                / (canary_part * canary_part / (n_c - 1.0)
                    + stable_part * stable_part / (n_s - 1.0));
            (difference / variance.sqrt(), df)
        } else {
            // Both sides constant: the difference is exact.
            let t = if difference == 0.0 {
                0.0
            } else {
                difference.signum() * f64::INFINITY
            };
            (t, n_s + n_c - 2.0)
        };
        let level = normal_upper_tail(mixture_critical_z(
            information(stable.n, canary.n),
            self.alpha,
        ));
        let p_worse = student_t_upper_tail(t, df);
        let p_better = student_t_upper_tail(-t, df);
        evidence.statistic = Some(t);
        evidence.degrees_of_freedom = Some(df);
        evidence.p_value = Some(p_worse);
        evidence.threshold = Some(level);
        evidence.verdict = if p_worse <= level {
            Verdict::Worse
        } else if p_better <= level {
            Verdict::NotWorse
        } else {
            Verdict::Inconclusive
        };
        evidence
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(n: u64, mean: f64, variance: f64) -> MeanStats {
        MeanStats { n, mean, variance }
    }

    fn test(higher_is_worse: bool, tolerance: f64) -> MeanTest {
        MeanTest {
            higher_is_worse,
            tolerance,
            alpha: 0.01,
            min_samples: DEFAULT_MIN_MEAN_SAMPLES,
        }
    }

    #[test]
    fn welch_t_and_degrees_of_freedom_on_known_numbers() {
        // Stable: n 10, mean 20, var 4; canary: n 15, mean 22, var 9.
        // t = 2 / sqrt(0.4 + 0.6) = 2; df = 1 / (0.16/9 + 0.36/14) = 22.9927;
        // one-sided p = 0.028 72 (numerical integration of the t density).
        let test = MeanTest {
            min_samples: 2,
            ..test(true, 0.0)
        };
        let evidence = test.evaluate("ttft_ms", stats(10, 20.0, 4.0), stats(15, 22.0, 9.0));
        assert!((evidence.statistic.unwrap() - 2.0).abs() < 1e-12);
        assert!((evidence.degrees_of_freedom.unwrap() - 22.992_7).abs() < 1e-3);
        assert!(
            (evidence.p_value.unwrap() - 0.028_72).abs() < 2e-5,
            "{:?}",
            evidence.p_value
        );
        // Nominally significant at 5 %, but far from the always-valid level.
        assert!(evidence.threshold.unwrap() < 1e-3);
        assert_eq!(evidence.verdict, Verdict::Inconclusive);
    }

    #[test]
    fn tolerance_moves_the_bound() {
        let test = test(true, 0.1);
        let evidence = test.evaluate(
            "cost",
            stats(5_000, 100.0, 400.0),
            stats(5_000, 125.0, 400.0),
        );
        assert!((evidence.bound - 110.0).abs() < 1e-12);
        assert_eq!(evidence.verdict, Verdict::Worse);
        let evidence = test.evaluate(
            "cost",
            stats(5_000, 100.0, 400.0),
            stats(5_000, 105.0, 400.0),
        );
        assert_eq!(evidence.verdict, Verdict::NotWorse);
    }

    #[test]
    fn lower_is_worse_for_scores() {
        let test = test(false, 0.05);
        let evidence = test.evaluate("feedback", stats(4_000, 0.8, 0.16), stats(4_000, 0.6, 0.24));
        assert!((evidence.bound - 0.76).abs() < 1e-12);
        assert!(evidence.statistic.unwrap() > 0.0, "positive means worse");
        assert_eq!(evidence.verdict, Verdict::Worse);
        let evidence = test.evaluate("feedback", stats(4_000, 0.8, 0.16), stats(4_000, 0.9, 0.09));
        assert_eq!(evidence.verdict, Verdict::NotWorse);
        // A negative score mean: 5 % worse is further below zero.
        let evidence = test.evaluate("feedback", stats(4_000, -1.0, 0.1), stats(4_000, -1.0, 0.1));
        assert!((evidence.bound + 1.05).abs() < 1e-12);
    }

    #[test]
    fn constant_values_compare_exactly() {
        let test = test(true, 0.0);
        let evidence = test.evaluate("cost", stats(100, 1.0, 0.0), stats(100, 2.0, 0.0));
        assert_eq!(evidence.verdict, Verdict::Worse);
        let evidence = test.evaluate("cost", stats(100, 1.0, 0.0), stats(100, 1.0, 0.0));
        assert_eq!(evidence.verdict, Verdict::Inconclusive);
    }

    #[test]
    fn short_samples_are_inconclusive() {
        let evidence =
            test(true, 0.0).evaluate("cost", stats(29, 1.0, 1.0), stats(1_000, 9.0, 1.0));
        assert_eq!(evidence.verdict, Verdict::Inconclusive);
        assert_eq!(evidence.p_value, None);
    }

    #[test]
    fn sums_give_mean_and_unbiased_variance() {
        let mut sample = MeanSample::default();
        for v in [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0] {
            sample.record(v);
        }
        let mut merged = MeanSample::default();
        merged.merge(&sample);
        let stats = merged.stats();
        assert_eq!(stats.n, 8);
        assert!((stats.mean - 5.0).abs() < 1e-12);
        assert!((stats.variance - 32.0 / 7.0).abs() < 1e-12);
        assert_eq!(MeanSample::default().stats().variance, 0.0);
    }
}
