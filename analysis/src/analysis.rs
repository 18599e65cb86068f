//! The canary state machine: accumulates per-step counts and histograms from the
//! gateway's windows and turns the tests' verdicts into promote, hold, rollback or
//! complete, keeping a history of decisions with their evidence.
//!
//! 1. The gateway calls [`CanaryAnalysis::observe`] with each side's increments since
//!    the previous call; they are added to the current step's totals (O(bins), no
//!    allocation).
//! 2. Every few seconds it calls [`CanaryAnalysis::decide`], which runs every test on
//!    the step's cumulative data and decides, in this order:
//!    - any test says [`Verdict::Worse`] -> [`Decision::Rollback`] (at any time in a step);
//!    - the bake time has not passed -> [`Decision::Hold`] (`Baking`);
//!    - a side has fewer than `min_requests` requests in the step -> `Hold` (`ShortOfRequests`);
//!    - otherwise [`Decision::Promote`] to the next step, or [`Decision::Complete`]
//!      after the last one.
//! 3. The gateway applies the weight the decision names; a promotion starts a new
//!    step with fresh totals, so each step's tests see only traffic at that weight.
//!
//! Promotion does not wait for a test to say [`Verdict::NotWorse`]: proving that an
//! error rate is within half a point at a 1 % baseline takes far more requests than
//! a step sees, so a plan would never finish. Instead `min_requests` and `bake` set
//! how much evidence a step must gather without a `Worse` verdict, i.e. the power of
//! each step; the evidence records whether each test was `NotWorse` or merely
//! `Inconclusive`. Rollback and completion are final: later calls to `decide`
//! return the same decision and `observe` ignores new windows.
//!
//! The history records every promotion, rollback and completion; consecutive holds
//! for the same kind of reason are merged into one record (the latest), so the
//! history stays as long as the number of state changes however often `decide` runs.

use std::collections::BTreeMap;
use std::mem::discriminant;
use std::time::Duration;

use hdrhistogram::{AdditionError, Histogram};
use serde::{Deserialize, Serialize, Serializer};
use thiserror::Error;

use crate::error_rate::{ErrorCounts, ErrorRateEvidence, ErrorRateTest};
use crate::latency::{LatencyEvidence, LatencyTest};
use crate::mean::{MeanEvidence, MeanSample, MeanTest};
use crate::plan::{CanaryPlan, PlanError};
use crate::{new_latency_histogram, Verdict};

/// One side's traffic since the previous [`CanaryAnalysis::observe`] call.
#[derive(Clone, Debug)]
pub struct Window {
    /// Requests answered.
    pub requests: u64,
    /// Of those, errors.
    pub errors: u64,
    /// Latencies in microseconds, from [`new_latency_histogram`].
    pub latency: Histogram<u64>,
    /// Extra per-request metrics by [`crate::MeanJudge::name`]; empty when the route
    /// has none. Metrics no judge names are ignored.
    pub extra: BTreeMap<String, MeanSample>,
}

impl Window {
    /// An empty window.
    pub fn new() -> Self {
        Window {
            requests: 0,
            errors: 0,
            latency: new_latency_histogram(),
            extra: BTreeMap::new(),
        }
    }

    /// Empties the window for reuse, keeping its allocations.
    pub fn clear(&mut self) {
        self.requests = 0;
        self.errors = 0;
        self.latency.reset();
        self.extra
            .values_mut()
            .for_each(|sample| *sample = MeanSample::default());
    }
}

impl Default for Window {
    fn default() -> Self {
        Window::new()
    }
}

/// Why a window could not be taken in.
#[derive(Debug, Error)]
pub enum AnalysisError {
    /// The window's histogram holds values beyond [`crate::LATENCY_HIGHEST_US`].
    #[error("latency histogram does not fit the analysis bounds: {0}")]
    Histogram(#[from] AdditionError),
}

/// Where the rollout stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Stepping through the plan.
    Running,
    /// Rolled back: the canary gets no traffic.
    RolledBack,
    /// Completed: the canary gets all traffic.
    Completed,
}

/// Why the analysis holds at the current weight.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HoldReason {
    /// The step's bake time has not passed.
    Baking {
        /// Bake time left.
        #[serde(serialize_with = "seconds")]
        remaining: Duration,
    },
    /// A side has served fewer than the step's `min_requests`.
    ShortOfRequests {
        /// Stable requests in the step.
        stable: u64,
        /// Canary requests in the step.
        canary: u64,
        /// Requests each side needs.
        needed: u64,
    },
}

/// Which test found the canary worse.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RollbackReason {
    /// The error-rate test.
    ErrorRate,
    /// The latency-quantile test.
    Latency,
    /// An extra mean judge.
    Extra {
        /// The judge's name.
        name: String,
    },
}

/// Everything the tests saw at one decision.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Evidence {
    /// Index of the step judged.
    pub step: usize,
    /// Its canary weight.
    pub weight: u32,
    /// Time since the step began.
    #[serde(serialize_with = "seconds")]
    pub step_elapsed: Duration,
    /// Error-rate test.
    pub error_rate: ErrorRateEvidence,
    /// Latency test.
    pub latency: LatencyEvidence,
    /// Extra judges, in plan order.
    pub extra: Vec<MeanEvidence>,
}

/// What the gateway should do now.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Decision {
    /// Keep the current weight.
    Hold {
        /// Why.
        reason: HoldReason,
        /// What the tests saw.
        evidence: Evidence,
    },
    /// Move the canary from one weight to the next.
    Promote {
        /// Weight of the step passed.
        from: u32,
        /// Weight of the next step.
        to: u32,
        /// What the tests saw in the step passed.
        evidence: Evidence,
    },
    /// Send all traffic to stable; final.
    Rollback {
        /// Which test failed.
        reason: RollbackReason,
        /// What the tests saw.
        evidence: Evidence,
    },
    /// The last step passed: send all traffic to the canary; final.
    Complete {
        /// What the tests saw in the last step.
        evidence: Evidence,
    },
}

impl Decision {
    /// The evidence behind the decision.
    pub fn evidence(&self) -> &Evidence {
        match self {
            Decision::Hold { evidence, .. }
            | Decision::Promote { evidence, .. }
            | Decision::Rollback { evidence, .. }
            | Decision::Complete { evidence } => evidence,
        }
    }
}

/// One entry of the decision history.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DecisionRecord {
    /// When it was decided (time since the analysis began).
    #[serde(serialize_with = "seconds")]
    pub at: Duration,
    /// Step index at the time.
    pub step: usize,
    /// Canary weight at the time.
    pub weight: u32,
    /// The decision, with its evidence.
    pub decision: Decision,
}

/// A serialisable view of the analysis, for the admin API.
#[derive(Debug, Serialize)]
pub struct CanaryStatus<'a> {
    /// Where the rollout stands.
    pub phase: Phase,
    /// Current step index.
    pub step: usize,
    /// Weight the canary should have now.
    pub weight: u32,
    /// When the current step began.
    #[serde(serialize_with = "seconds")]
    pub step_started_at: Duration,
    /// When the last window was observed.
    #[serde(serialize_with = "seconds")]
    pub last_observed_at: Duration,
    /// Stable counts in the step.
    pub stable: ErrorCounts,
    /// Canary counts in the step.
    pub canary: ErrorCounts,
    /// Decisions so far.
    pub history: &'a [DecisionRecord],
}

/// Where a rollout stands, kept by the gateway so that a restart resumes it:
/// at the same step (which starts over: its bake time and samples begin
/// again), or rolled back, or completed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Running, rolled back or completed.
    pub phase: Phase,
    /// Current step index.
    pub step: usize,
    /// Which test rolled the canary back, once it has.
    pub rollback: Option<RollbackReason>,
}

/// One side's totals in the current step.
#[derive(Debug)]
struct SideTotals {
    counts: ErrorCounts,
    latency: Histogram<u64>,
    /// Aligned with the plan's `extra` judges.
    extra: Vec<MeanSample>,
}

impl SideTotals {
    fn new(judges: usize) -> Self {
        SideTotals {
            counts: ErrorCounts::default(),
            latency: new_latency_histogram(),
            extra: vec![MeanSample::default(); judges],
        }
    }

    fn add(&mut self, window: &Window, plan: &CanaryPlan) -> Result<(), AdditionError> {
        self.latency.add(&window.latency)?;
        self.counts.requests += window.requests;
        self.counts.errors += window.errors;
        for (total, judge) in self.extra.iter_mut().zip(&plan.extra) {
            if let Some(sample) = window.extra.get(&judge.name) {
                total.merge(sample);
            }
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.counts = ErrorCounts::default();
        self.latency.reset();
        self.extra
            .iter_mut()
            .for_each(|sample| *sample = MeanSample::default());
    }
}

/// The canary analysis of one route.
#[derive(Debug)]
pub struct CanaryAnalysis {
    plan: CanaryPlan,
    error_test: ErrorRateTest,
    latency_test: LatencyTest,
    mean_tests: Vec<MeanTest>,
    phase: Phase,
    step: usize,
    step_started_at: Duration,
    last_observed_at: Duration,
    stable: SideTotals,
    canary: SideTotals,
    history: Vec<DecisionRecord>,
    /// The rollback or completion, once decided.
    outcome: Option<Decision>,
}

impl CanaryAnalysis {
    /// Starts the analysis at the plan's first step, at time zero.
    pub fn new(plan: CanaryPlan) -> Result<Self, Vec<PlanError>> {
        plan.validate()?;
        let judges = plan.extra.len();
        Ok(CanaryAnalysis {
            error_test: plan.error_test(),
            latency_test: plan.latency_test(),
            mean_tests: plan
                .extra
                .iter()
                .map(|judge| plan.mean_test(judge))
                .collect(),
            plan,
            phase: Phase::Running,
            step: 0,
            step_started_at: Duration::ZERO,
            last_observed_at: Duration::ZERO,
            stable: SideTotals::new(judges),
            canary: SideTotals::new(judges),
            history: Vec::new(),
            outcome: None,
        })
    }

    /// Resumes a rollout where `progress` left it, at time zero: the current
    /// step starts over; a rollback or completion stands (and `decide` repeats it).
    pub fn resume(plan: CanaryPlan, progress: &Progress) -> Result<Self, Vec<PlanError>> {
        let mut analysis = Self::new(plan)?;
        analysis.step = progress.step.min(analysis.plan.steps.len() - 1);
        analysis.phase = progress.phase;
        let evidence = analysis.evidence(Duration::ZERO);
        analysis.outcome = match progress.phase {
            Phase::Running => None,
            Phase::RolledBack => Some(Decision::Rollback {
                reason: progress
                    .rollback
                    .clone()
                    .unwrap_or(RollbackReason::ErrorRate),
                evidence,
            }),
            Phase::Completed => Some(Decision::Complete { evidence }),
        };
        Ok(analysis)
    }

    /// Where the rollout stands, for [`CanaryAnalysis::resume`].
    pub fn progress(&self) -> Progress {
        Progress {
            phase: self.phase,
            step: self.step,
            rollback: match &self.outcome {
                Some(Decision::Rollback { reason, .. }) => Some(reason.clone()),
                _ => None,
            },
        }
    }

    /// Takes in each side's traffic since the previous call. Ignored once the
    /// analysis has rolled back or completed.
    pub fn observe(
        &mut self,
        now: Duration,
        stable: &Window,
        canary: &Window,
    ) -> Result<(), AnalysisError> {
        if self.phase != Phase::Running {
            return Ok(());
        }
        self.stable.add(stable, &self.plan)?;
        self.canary.add(canary, &self.plan)?;
        self.last_observed_at = now;
        Ok(())
    }

    /// Runs the tests on the current step's data and decides; see the module docs
    /// for the rules. `now` is the time since the analysis began.
    pub fn decide(&mut self, now: Duration) -> Decision {
        if let Some(outcome) = &self.outcome {
            return outcome.clone();
        }
        let evidence = self.evidence(now);
        let step = &self.plan.steps[self.step];
        let (step_index, weight) = (self.step, step.weight);
        let decision = if let Some(reason) = rollback_reason(&evidence) {
            self.phase = Phase::RolledBack;
            Decision::Rollback { reason, evidence }
        } else if evidence.step_elapsed < step.bake {
            Decision::Hold {
                reason: HoldReason::Baking {
                    remaining: step.bake - evidence.step_elapsed,
                },
                evidence,
            }
        } else if self.stable.counts.requests < step.min_requests
            || self.canary.counts.requests < step.min_requests
        {
            let reason = HoldReason::ShortOfRequests {
                stable: self.stable.counts.requests,
                canary: self.canary.counts.requests,
                needed: step.min_requests,
            };
            Decision::Hold { reason, evidence }
        } else if let Some(next) = self.plan.steps.get(self.step + 1) {
            let to = next.weight;
            self.step += 1;
            self.step_started_at = now;
            self.stable.reset();
            self.canary.reset();
            Decision::Promote {
                from: weight,
                to,
                evidence,
            }
        } else {
            self.phase = Phase::Completed;
            Decision::Complete { evidence }
        };
        if self.phase != Phase::Running {
            self.outcome = Some(decision.clone());
        }
        self.record(DecisionRecord {
            at: now,
            step: step_index,
            weight,
            decision: decision.clone(),
        });
        decision
    }

    /// Where the rollout stands.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The canary weight the gateway should route now: the step's while running,
    /// 0 after a rollback, 100 after completion.
    pub fn weight(&self) -> u32 {
        match self.phase {
            Phase::Running => self.plan.steps[self.step].weight,
            Phase::RolledBack => 0,
            Phase::Completed => 100,
        }
    }

    /// Decisions so far (holds merged, see the module docs).
    pub fn history(&self) -> &[DecisionRecord] {
        &self.history
    }

    /// A serialisable view for display.
    pub fn status(&self) -> CanaryStatus<'_> {
        CanaryStatus {
            phase: self.phase,
            step: self.step,
            weight: self.weight(),
            step_started_at: self.step_started_at,
            last_observed_at: self.last_observed_at,
            stable: self.stable.counts,
            canary: self.canary.counts,
            history: &self.history,
        }
    }

    fn evidence(&self, now: Duration) -> Evidence {
        let extra = self
            .plan
            .extra
            .iter()
            .zip(&self.mean_tests)
            .zip(self.stable.extra.iter().zip(&self.canary.extra))
            .map(|((judge, test), (stable, canary))| {
                test.evaluate(&judge.name, stable.stats(), canary.stats())
            })
            .collect();
        Evidence {
            step: self.step,
            weight: self.plan.steps[self.step].weight,
            step_elapsed: now.saturating_sub(self.step_started_at),
            error_rate: self
                .error_test
                .evaluate(self.stable.counts, self.canary.counts),
            latency: self
                .latency_test
                .evaluate(&self.stable.latency, &self.canary.latency),
            extra,
        }
    }

    /// Appends a record, replacing the previous one when both are holds for the
    /// same kind of reason.
    fn record(&mut self, record: DecisionRecord) {
        if let (Some(last), Decision::Hold { reason, .. }) =
            (self.history.last_mut(), &record.decision)
        {
            if let Decision::Hold {
                reason: last_reason,
                ..
            } = &last.decision
            {
                if last.step == record.step && discriminant(last_reason) == discriminant(reason) {
                    *last = record;
                    return;
                }
            }
        }
        self.history.push(record);
    }
}

/// The first test, in plan order (error rate, latency, extras), that says worse.
fn rollback_reason(evidence: &Evidence) -> Option<RollbackReason> {
    if evidence.error_rate.verdict == Verdict::Worse {
        return Some(RollbackReason::ErrorRate);
    }
    if evidence.latency.verdict == Verdict::Worse {
        return Some(RollbackReason::Latency);
    }
    evidence
        .extra
        .iter()
        .find(|mean| mean.verdict == Verdict::Worse)
        .map(|mean| RollbackReason::Extra {
            name: mean.name.clone(),
        })
}

/// Serialises a duration as fractional seconds, which reads better than serde's
/// `{secs, nanos}` on a dashboard.
fn seconds<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MeanJudge, Step};

    const SECOND: Duration = Duration::from_secs(1);

    /// `requests` requests with `errors` errors, latencies spread evenly over
    /// 10–20 ms, and a TTFT metric around `ttft_ms` when given.
    fn window(requests: u64, errors: u64, ttft_ms: Option<f64>) -> Window {
        let mut window = Window::new();
        window.requests = requests;
        window.errors = errors;
        let mut ttft = MeanSample::default();
        for i in 0..requests {
            window
                .latency
                .record(10_000 + (i * 10_000) / requests)
                .unwrap();
            if let Some(mean) = ttft_ms {
                ttft.record(mean + (i % 10) as f64 - 4.5);
            }
        }
        if ttft_ms.is_some() {
            window.extra.insert("ttft_ms".into(), ttft);
        }
        window
    }

    fn plan(weights: &[u32], min_requests: u64) -> CanaryPlan {
        CanaryPlan {
            steps: weights
                .iter()
                .map(|&weight| Step {
                    weight,
                    bake: 10 * SECOND,
                    min_requests,
                })
                .collect(),
            error_margin: 0.005,
            latency_quantile: 0.99,
            latency_tolerance: 0.1,
            alpha: 0.01,
            extra: vec![],
        }
    }

    /// Feeds the same windows every second from `from` to `to` seconds, deciding
    /// after each; returns the decisions.
    fn run(
        analysis: &mut CanaryAnalysis,
        from: u32,
        to: u32,
        stable: &Window,
        canary: &Window,
    ) -> Vec<Decision> {
        (from..=to)
            .map(|second| {
                let now = second * SECOND;
                analysis.observe(now, stable, canary).unwrap();
                analysis.decide(now)
            })
            .collect()
    }

    #[test]
    fn a_resumed_rollout_keeps_its_step_and_its_outcome() {
        let healthy = window(200, 2, None);
        let mut analysis = CanaryAnalysis::new(plan(&[10, 50, 80], 1_000)).unwrap();
        run(&mut analysis, 1, 10, &healthy, &healthy);
        let progress = analysis.progress();
        assert_eq!((progress.phase, progress.step), (Phase::Running, 1));
        // Through JSON, as the gateway keeps it.
        let text = serde_json::to_string(&progress).unwrap();
        let back: Progress = serde_json::from_str(&text).unwrap();
        let mut resumed = CanaryAnalysis::resume(plan(&[10, 50, 80], 1_000), &back).unwrap();
        assert_eq!(resumed.weight(), 50);
        // The step starts over: it bakes again from the resume.
        assert!(matches!(
            resumed.decide(SECOND),
            Decision::Hold {
                reason: HoldReason::Baking { .. },
                ..
            }
        ));
        // A rollback stands after a resume.
        let failing = window(200, 40, None);
        let decisions = run(&mut resumed, 2, 30, &healthy, &failing);
        assert!(decisions
            .iter()
            .any(|d| matches!(d, Decision::Rollback { .. })));
        let rolled_back = resumed.progress();
        assert_eq!(rolled_back.phase, Phase::RolledBack);
        assert_eq!(rolled_back.rollback, Some(RollbackReason::ErrorRate));
        let mut again = CanaryAnalysis::resume(plan(&[10, 50, 80], 1_000), &rolled_back).unwrap();
        assert_eq!(again.weight(), 0);
        again.observe(SECOND, &healthy, &healthy).unwrap();
        assert!(matches!(
            again.decide(SECOND),
            Decision::Rollback {
                reason: RollbackReason::ErrorRate,
                ..
            }
        ));
    }

    #[test]
    fn healthy_canary_is_promoted_through_every_step_and_completes() {
        let mut analysis = CanaryAnalysis::new(plan(&[10, 50], 1_000)).unwrap();
        let healthy = window(200, 2, None);
        assert_eq!(analysis.weight(), 10);
        let first = run(&mut analysis, 1, 10, &healthy, &healthy);
        assert!(
            matches!(&first[0], Decision::Hold { reason: HoldReason::Baking { remaining }, .. } if *remaining == 9 * SECOND)
        );
        let Decision::Promote {
            from: 10,
            to: 50,
            evidence,
        } = &first[9]
        else {
            panic!("{:?}", first[9])
        };
        assert_eq!(
            (evidence.step, evidence.weight, evidence.step_elapsed),
            (0, 10, 10 * SECOND)
        );
        assert_eq!(
            evidence.error_rate.canary,
            ErrorCounts {
                requests: 2_000,
                errors: 20
            }
        );
        // Identical sides: nothing is worse (2000 samples are too few to prove the p99 within 10 %).
        assert_eq!(evidence.latency.verdict, Verdict::Inconclusive);
        assert_eq!(evidence.latency.canary_above_bound, 0);
        assert_eq!(analysis.weight(), 50);

        // The new step starts from fresh totals.
        assert_eq!(analysis.status().canary, ErrorCounts::default());
        let second = run(&mut analysis, 11, 20, &healthy, &healthy);
        assert!(matches!(second[8], Decision::Hold { .. }));
        assert!(matches!(&second[9], Decision::Complete { evidence } if evidence.step == 1));
        assert_eq!(
            (analysis.phase(), analysis.weight()),
            (Phase::Completed, 100)
        );

        // Holds are merged: hold, promote, hold, complete.
        let kinds: Vec<(u64, usize, u32)> = analysis
            .history()
            .iter()
            .map(|r| (r.at.as_secs(), r.step, r.weight))
            .collect();
        assert_eq!(kinds, [(9, 0, 10), (10, 0, 10), (19, 1, 50), (20, 1, 50)]);

        // Completion is final.
        let bad = window(200, 200, None);
        analysis.observe(21 * SECOND, &healthy, &bad).unwrap();
        assert!(matches!(
            analysis.decide(21 * SECOND),
            Decision::Complete { .. }
        ));
        assert_eq!(analysis.history().len(), 4);
    }

    #[test]
    fn holds_while_requests_are_short_then_promotes() {
        let mut analysis = CanaryAnalysis::new(plan(&[10, 50], 1_000)).unwrap();
        let thin = window(50, 0, None);
        let decisions = run(&mut analysis, 1, 20, &thin, &thin);
        let Decision::Hold { reason, .. } = &decisions[9] else {
            panic!("{:?}", decisions[9])
        };
        assert_eq!(
            *reason,
            HoldReason::ShortOfRequests {
                stable: 500,
                canary: 500,
                needed: 1_000
            }
        );
        assert!(decisions[10..19].iter().all(|d| matches!(
            d,
            Decision::Hold {
                reason: HoldReason::ShortOfRequests { .. },
                ..
            }
        )));
        assert!(matches!(
            decisions[19],
            Decision::Promote {
                from: 10,
                to: 50,
                ..
            }
        ));
    }

    #[test]
    fn error_regression_rolls_back_mid_step_and_stays_rolled_back() {
        let mut analysis = CanaryAnalysis::new(plan(&[10, 50], 1_000)).unwrap();
        let decisions = run(
            &mut analysis,
            1,
            5,
            &window(200, 2, None),
            &window(200, 40, None),
        );
        let rollback = decisions
            .iter()
            .position(|d| matches!(d, Decision::Rollback { .. }))
            .unwrap();
        let Decision::Rollback { reason, evidence } = &decisions[rollback] else {
            unreachable!()
        };
        assert_eq!(*reason, RollbackReason::ErrorRate);
        assert_eq!(evidence.error_rate.verdict, Verdict::Worse);
        assert!(evidence.error_rate.statistic > evidence.error_rate.threshold);
        assert!(
            decisions[rollback..]
                .iter()
                .all(|d| d == &decisions[rollback]),
            "rollback is final"
        );
        assert_eq!(
            (analysis.phase(), analysis.weight()),
            (Phase::RolledBack, 0)
        );

        let json = serde_json::to_value(analysis.status()).unwrap();
        assert_eq!(json["phase"], "rolled_back");
        let history = json["history"].as_array().unwrap();
        assert_eq!(history.len(), 1, "rolled back at the first look");
        let last = &history[0]["decision"];
        assert_eq!(last["action"], "rollback");
        assert_eq!(last["reason"]["kind"], "error_rate");
        assert_eq!(last["evidence"]["error_rate"]["verdict"], "worse");
        assert!(last["evidence"]["error_rate"]["method"]
            .as_str()
            .unwrap()
            .contains("Agresti-Caffo"));
    }

    #[test]
    fn extra_judge_rolls_back_a_slower_time_to_first_token() {
        let mut plan = plan(&[10], 1_000);
        plan.extra.push(MeanJudge {
            name: "ttft_ms".into(),
            higher_is_worse: true,
            tolerance: 0.1,
        });
        let mut analysis = CanaryAnalysis::new(plan).unwrap();
        let decisions = run(
            &mut analysis,
            1,
            5,
            &window(200, 2, Some(300.0)),
            &window(200, 2, Some(400.0)),
        );
        let Some(Decision::Rollback { reason, evidence }) = decisions.last() else {
            panic!("{decisions:?}")
        };
        assert_eq!(
            *reason,
            RollbackReason::Extra {
                name: "ttft_ms".into()
            }
        );
        assert_eq!(evidence.extra[0].canary.mean, 400.0);
        assert_eq!(evidence.extra[0].verdict, Verdict::Worse);
    }

    #[test]
    fn a_histogram_beyond_the_bounds_is_refused() {
        let mut analysis = CanaryAnalysis::new(plan(&[10], 1_000)).unwrap();
        let mut wide = Window::new();
        wide.latency = Histogram::new_with_bounds(1, 10 * crate::LATENCY_HIGHEST_US, 3).unwrap();
        wide.latency.record(5 * crate::LATENCY_HIGHEST_US).unwrap();
        let result = analysis.observe(SECOND, &Window::new(), &wide);
        assert!(matches!(result, Err(AnalysisError::Histogram(_))));
    }

    #[test]
    fn an_invalid_plan_is_refused() {
        let errors = CanaryAnalysis::new(plan(&[], 1_000)).unwrap_err();
        assert_eq!(errors[0].path, "steps");
    }
}
