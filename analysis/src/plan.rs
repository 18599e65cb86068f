//! The canary plan: the traffic steps, the tolerances of each test and the overall
//! false-rollback budget, as a serde type with a `validate` step that reports every
//! problem with its path.
//!
//! The budget `alpha` is the probability of rolling back a canary that is in fact
//! acceptable, over the whole rollout. Each step restarts the tests on fresh counts,
//! and each step runs the error-rate test, the latency test and one test per extra
//! judge, so every test gets `alpha / (steps * tests per step)` (Bonferroni); the
//! sequential boundaries make each of those hold however often `decide` runs.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::error_rate::{ErrorRateTest, DEFAULT_MIN_ERROR_REQUESTS};
use crate::latency::LatencyTest;
use crate::mean::{MeanTest, DEFAULT_MIN_MEAN_SAMPLES};

/// A staged rollout and how to judge it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryPlan {
    /// The steps, in order, each with a higher canary weight than the one before.
    /// After the last step passes, the canary takes all traffic ([`crate::Decision::Complete`]).
    pub steps: Vec<Step>,
    /// Absolute error-rate excess the canary may have (0.005 = half a point).
    #[serde(default = "default_error_margin")]
    pub error_margin: f64,
    /// Latency quantile compared, in (0, 1) (0.99 = p99).
    #[serde(default = "default_latency_quantile")]
    pub latency_quantile: f64,
    /// Relative slowdown of that quantile still acceptable (0.1 = 10 %).
    #[serde(default = "default_latency_tolerance")]
    pub latency_tolerance: f64,
    /// Probability of rolling back an acceptable canary, over the whole rollout.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Extra per-request means to judge (LLM routes: TTFT, cost, feedback score).
    #[serde(default)]
    pub extra: Vec<MeanJudge>,
}

/// One traffic step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Percentage of traffic sent to the canary, 1 to 99 (100 is [`crate::Decision::Complete`]).
    pub weight: u32,
    /// Minimum time at this weight before promotion.
    pub bake: Duration,
    /// Requests each side must have served in this step before promotion; at least
    /// what the latency quantile needs (`10 / (1 - latency_quantile)`).
    pub min_requests: u64,
}

/// An extra metric compared as a mean with a relative tolerance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeanJudge {
    /// Key of the metric in [`crate::Window::extra`].
    pub name: String,
    /// True for costs (TTFT, price), false for scores (feedback).
    pub higher_is_worse: bool,
    /// Relative change of the mean still acceptable (0.1 = 10 %).
    pub tolerance: f64,
}

/// A problem in a plan, with the path of the offending field.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{path}: {message}")]
pub struct PlanError {
    /// Where, e.g. `steps[2].weight`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Default `error_margin`: half a point.
pub fn default_error_margin() -> f64 {
    0.005
}

/// Default `latency_quantile`: p99.
pub fn default_latency_quantile() -> f64 {
    0.99
}

/// Default `latency_tolerance`: 10% slower.
pub fn default_latency_tolerance() -> f64 {
    0.1
}

/// Default `alpha`: one false rollback in a hundred rollouts of an acceptable canary.
pub fn default_alpha() -> f64 {
    0.01
}

impl CanaryPlan {
    /// Checks the plan, returning every problem found.
    pub fn validate(&self) -> Result<(), Vec<PlanError>> {
        let mut errors = Vec::new();
        let mut fail = |path: String, message: String| errors.push(PlanError { path, message });
        if self.steps.is_empty() {
            fail("steps".into(), "at least one step is needed".into());
        }
        let quantile_ok = self.latency_quantile > 0.0 && self.latency_quantile < 1.0;
        let needed = if quantile_ok {
            self.latency_test().required_samples()
        } else {
            0
        };
        let mut previous = 0;
        for (i, step) in self.steps.iter().enumerate() {
            if !(1..=99).contains(&step.weight) {
                fail(
                    format!("steps[{i}].weight"),
                    format!("{} is not in 1..=99 (completion sends 100)", step.weight),
                );
            } else if step.weight <= previous {
                fail(
                    format!("steps[{i}].weight"),
                    format!("{} does not increase on {previous}", step.weight),
                );
            }
            previous = previous.max(step.weight);
            if step.min_requests < needed {
                fail(
                    format!("steps[{i}].min_requests"),
                    format!(
                        "{} is below the {needed} the latency quantile needs",
                        step.min_requests
                    ),
                );
            }
        }
        if !(0.0..1.0).contains(&self.error_margin) {
            fail(
                "error_margin".into(),
                format!("{} is not in [0, 1)", self.error_margin),
            );
        }
        if !quantile_ok {
            fail(
                "latency_quantile".into(),
                format!("{} is not in (0, 1)", self.latency_quantile),
            );
        }
        if !(self.latency_tolerance >= 0.0 && self.latency_tolerance.is_finite()) {
            fail(
                "latency_tolerance".into(),
                format!(
                    "{} is not a finite non-negative number",
                    self.latency_tolerance
                ),
            );
        }
        if !(self.alpha > 0.0 && self.alpha <= 0.5) {
            fail("alpha".into(), format!("{} is not in (0, 0.5]", self.alpha));
        }
        for (i, judge) in self.extra.iter().enumerate() {
            if judge.name.is_empty() {
                fail(format!("extra[{i}].name"), "must not be empty".into());
            } else if self.extra[..i].iter().any(|other| other.name == judge.name) {
                fail(
                    format!("extra[{i}].name"),
                    format!("{:?} is judged twice", judge.name),
                );
            }
            if !(judge.tolerance >= 0.0 && judge.tolerance.is_finite()) {
                fail(
                    format!("extra[{i}].tolerance"),
                    format!("{} is not a finite non-negative number", judge.tolerance),
                );
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// The level each individual test runs at: `alpha / (steps * tests per step)`.
    pub fn alpha_per_test(&self) -> f64 {
        let tests = 2 + self.extra.len();
        self.alpha / (self.steps.len().max(1) * tests) as f64
    }

    /// The error-rate test this plan runs in each step.
    pub fn error_test(&self) -> ErrorRateTest {
        ErrorRateTest {
            margin: self.error_margin,
            alpha: self.alpha_per_test(),
            min_requests: DEFAULT_MIN_ERROR_REQUESTS,
        }
    }

    /// The latency test this plan runs in each step.
    pub fn latency_test(&self) -> LatencyTest {
        LatencyTest {
            quantile: self.latency_quantile,
            tolerance: self.latency_tolerance,
            alpha: self.alpha_per_test(),
            min_samples: 0,
        }
    }

    /// The mean test for one extra judge.
    pub fn mean_test(&self, judge: &MeanJudge) -> MeanTest {
        MeanTest {
            higher_is_worse: judge.higher_is_worse,
            tolerance: judge.tolerance,
            alpha: self.alpha_per_test(),
            min_samples: DEFAULT_MIN_MEAN_SAMPLES,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(weight: u32, min_requests: u64) -> Step {
        Step {
            weight,
            bake: Duration::from_secs(60),
            min_requests,
        }
    }

    #[test]
    fn defaults_fill_in_from_json() {
        let plan: CanaryPlan = serde_json::from_str(
            r#"{"steps": [{"weight": 10, "bake": {"secs": 300, "nanos": 0}, "min_requests": 2000}]}"#,
        )
        .unwrap();
        assert_eq!(plan.error_margin, 0.005);
        assert_eq!(plan.latency_quantile, 0.99);
        assert_eq!(plan.alpha, 0.01);
        assert_eq!(plan.validate(), Ok(()));
        // One step, two tests.
        assert!((plan.alpha_per_test() - 0.005).abs() < 1e-15);
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let plan = CanaryPlan {
            steps: vec![step(10, 5_000), step(10, 5_000), step(100, 500)],
            error_margin: -0.1,
            latency_quantile: 0.99,
            latency_tolerance: f64::NAN,
            alpha: 0.0,
            extra: vec![
                MeanJudge {
                    name: "ttft_ms".into(),
                    higher_is_worse: true,
                    tolerance: 0.1,
                },
                MeanJudge {
                    name: "ttft_ms".into(),
                    higher_is_worse: true,
                    tolerance: -1.0,
                },
            ],
        };
        let paths: Vec<String> = plan
            .validate()
            .unwrap_err()
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(
            paths,
            [
                "steps[1].weight",
                "steps[2].weight",
                "steps[2].min_requests",
                "error_margin",
                "latency_tolerance",
                "alpha",
                "extra[1].name",
                "extra[1].tolerance"
            ]
        );
        let empty = CanaryPlan {
            steps: vec![],
            latency_quantile: 1.0,
            ..plan
        };
        let errors = empty.validate().unwrap_err();
        assert_eq!(errors[0].to_string(), "steps: at least one step is needed");
        assert!(errors.iter().any(|e| e.path == "latency_quantile"));
    }
}
