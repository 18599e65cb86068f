//! Statistics engine for Hypergate's automated canary analysis, with no I/O: the
//! gateway feeds it each side's per-request counts and latency histograms and asks
//! it to promote, hold or roll back; every decision comes with its evidence.
//!
//! - [`stats`]: the always-valid normal-mixture boundary that makes every test safe
//!   to evaluate every few seconds, plus normal and Student t tails.
//! - [`error_rate`]: one-sided sequential test on the difference of two error rates
//!   (Agresti–Caffo z against the mixture boundary), with an absolute margin.
//! - [`latency`]: one-sided sequential test on a latency quantile from HDR
//!   histograms: the canary's tail mass above the stable's quantile times
//!   `1 + tolerance`, against the `1 - q` allowed under the null.
//! - [`mean`]: one-sided Welch t-test on per-request means (TTFT, cost, feedback
//!   score) with a relative tolerance, at an always-valid level.
//! - [`plan`]: the steps, tolerances and false-rollback budget, validated.
//! - [`analysis`]: the state machine that turns verdicts into decisions and keeps
//!   the history.
//!
//! # Why sequential tests
//!
//! The gateway looks at the data every few seconds and acts on the first bad
//! look. A fixed-sample test checked that often rejects a healthy canary far more
//! often than its nominal level (at 5 % and a look per second for ten minutes, most
//! A/A rollouts would be rolled back). Each test here compares its z statistic with
//! the boundary of a normal-mixture sequential probability ratio test (mSPRT), whose
//! false-alarm probability over *all* looks is at most its level. The plan's budget
//! `alpha` (default 1 %) is split evenly over steps and tests, so the chance that an
//! acceptable canary is rolled back at any point of the rollout is at most `alpha`.
//! The approximations involved (normal approximation of counts, plug-in variances,
//! the delta method for the quantile) are asymptotic; the simulation tests check the
//! resulting error rates at the sample sizes a gateway sees.
//!
//! # Simulated performance
//!
//! The simulation tests (`cargo test -p hypergate-analysis -- --nocapture` prints
//! these lines) feed 200 stable and 200 canary requests per second (equal traffic on
//! both sides, as at a 50 % split or when the stable side is subsampled to the
//! canary's rate), with lognormal latencies (median 50 ms, sigma 0.5, so p99 about
//! 160 ms), through a three-step plan (5 %, 25 %, 50 %; 200 s and 5000 requests
//! each; error margin 0.5 points, p99 within +10 %, alpha 1 %). Regressions get
//! one-second windows and a decision after each; A/A rollouts run the whole ten
//! minutes with a decision every five seconds. Over 100 seeds each:
//!
//! | scenario | rolled back | time to rollback |
//! |---|---|---|
//! | error rate 1 % -> 3 % | 100/100 within 60 s | median 15 s, max 39 s |
//! | p99 +30 % (whole distribution x1.3) | 100/100 within 60 s | median 7 s, max 39 s |
//! | p99 +30 % (only the slowest 10 % x1.3) | 100/100 within 60 s | median 7 s, max 39 s |
//! | A/A at 0.5 %, 1 %, 5 % errors, 10 min | 0/100 each (all 100 completed) | - |
//!
//! The latency test cannot conclude before each side has 1000 samples (5 s here),
//! which bounds its fastest rollback.

pub mod analysis;
pub mod error_rate;
pub mod latency;
pub mod mean;
pub mod plan;
pub mod stats;

#[cfg(test)]
mod simulation;

use hdrhistogram::Histogram;
use serde::Serialize;

pub use analysis::{
    AnalysisError, CanaryAnalysis, CanaryStatus, Decision, DecisionRecord, Evidence, HoldReason,
    Phase, Progress, RollbackReason, Window,
};
pub use error_rate::{ErrorCounts, ErrorRateEvidence, ErrorRateTest};
pub use latency::{LatencyEvidence, LatencyTest};
pub use mean::{MeanEvidence, MeanSample, MeanStats, MeanTest};
pub use plan::{
    default_alpha, default_error_margin, default_latency_quantile, default_latency_tolerance,
    CanaryPlan, MeanJudge, PlanError, Step,
};

/// Lowest latency the histograms distinguish, in microseconds.
pub const LATENCY_LOWEST_US: u64 = 1;
/// Highest latency the histograms hold, in microseconds (100 s).
pub const LATENCY_HIGHEST_US: u64 = 100_000_000;
/// Significant decimal digits the histograms keep (0.1 % resolution).
pub const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;

/// A latency histogram with the bounds the analysis expects; windows given to
/// [`CanaryAnalysis::observe`] must not hold values beyond them.
pub fn new_latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(
        LATENCY_LOWEST_US,
        LATENCY_HIGHEST_US,
        LATENCY_SIGNIFICANT_DIGITS,
    )
    .expect("constant histogram bounds are valid")
}

/// The conclusion of one test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The canary is worse than the tolerance allows, at the test's level.
    Worse,
    /// The canary is within the tolerance, at the test's level.
    NotWorse,
    /// Neither can be concluded yet (or too few samples to test).
    Inconclusive,
}

impl Verdict {
    /// `Worse` when `z` reaches the boundary, `NotWorse` when it reaches its mirror
    /// image, `Inconclusive` in between.
    fn from_z(z: f64, threshold: f64) -> Self {
        if z >= threshold {
            Verdict::Worse
        } else if z <= -threshold {
            Verdict::NotWorse
        } else {
            Verdict::Inconclusive
        }
    }
}
