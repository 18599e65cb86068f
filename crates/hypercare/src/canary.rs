//! Automated canary analysis in the gateway: for each `[[hypercare.canaries]]`,
//! the engine feeds `hypergate-analysis` with what each side of the route's split
//! served since the previous tick (requests, 5xx, upstream latency histogram of
//! the side's cluster), and acts on the decision by changing the split's weights
//! itself: a runtime override (`config::overrides`) that every shard applies
//! without re-reading the file, so a reload keeps it, `/config` shows the
//! weights in force with an overlay saying the canary set them and why, and the
//! call store keeps it across restarts.
//!
//! An alias canary (`alias = "..."`) compares two targets of an LLM alias the
//! same way (calls, errors, whole-call latency), plus, when their tolerances are
//! set, the mean time to first token, the mean cost per call and the mean
//! feedback score (Welch t judges), and changes the two targets' weights.
//!
//! Promotion moves to the next step's weight, completion sends 100% to the
//! canary, and a rollback sends it nothing, fires an alert event (webhooks, log)
//! and stays until the canary's configuration changes. Every decision other than
//! a repeated hold is kept with its evidence for `/hypercare/canary`, the
//! dashboard and the report, and written to the call store's `events` table.
//! Where the rollout stands (step, rolled back, completed) is saved in the
//! store too (`hypercare::state`): after a restart the run resumes at its step,
//! and a rolled-back canary stays at 0% from the first request (its override is
//! restored before the listeners serve).

use super::series::{Scope, Series};
use hypergate_analysis::{
    CanaryAnalysis, CanaryPlan, Decision, MeanJudge, Phase, Progress, Step, Window,
};
use hypergate_core::config::hypercare::CanaryConfig;
use hypergate_core::config::overrides::{OverrideSubject, WeightOverride};
use hypergate_runtime::control::Control;
use serde_json::{json, Value};
use std::time::Instant;

/// One canary being analysed.
pub struct CanaryRun {
    /// Its configuration (a change starts a new run).
    pub config: CanaryConfig,
    analysis: CanaryAnalysis,
    started: Instant,
    /// The canary weight this run last set as a runtime override.
    applied: Option<u32>,
}

/// The plan a config describes.
pub fn plan(c: &CanaryConfig) -> CanaryPlan {
    CanaryPlan {
        steps: c
            .steps
            .iter()
            .map(|s| Step {
                weight: s.weight,
                bake: s.bake,
                min_requests: s.min_requests,
            })
            .collect(),
        error_margin: c.error_margin,
        latency_quantile: c.latency_quantile,
        latency_tolerance: c.latency_tolerance,
        alpha: c.alpha,
        extra: [
            (TTFT, true, c.ttft_tolerance),
            (COST, true, c.cost_tolerance),
            (FEEDBACK, false, c.feedback_tolerance),
        ]
        .into_iter()
        .filter_map(|(name, higher_is_worse, tolerance)| {
            tolerance.map(|tolerance| MeanJudge {
                name: name.into(),
                higher_is_worse,
                tolerance,
            })
        })
        .collect(),
    }
}

/// Names of the alias canaries' mean judges (keys of `Window::extra`).
const TTFT: &str = "ttft_ms";
const COST: &str = "cost_usd";
const FEEDBACK: &str = "feedback";

/// What a tick decided, for the engine to announce.
pub struct Outcome {
    /// A JSON record of the decision (absent for repeated holds).
    pub record: Option<Value>,
    /// The canary was rolled back on this tick.
    pub rolled_back: bool,
}

impl CanaryRun {
    /// Starts a run (the config was validated, so the plan is valid).
    pub fn new(config: CanaryConfig) -> Option<CanaryRun> {
        let analysis = CanaryAnalysis::new(plan(&config)).ok()?;
        Some(CanaryRun {
            config,
            analysis,
            started: Instant::now(),
            applied: None,
        })
    }

    /// Resumes a run where a previous process left it.
    pub fn resume(config: CanaryConfig, progress: &Progress) -> Option<CanaryRun> {
        let analysis = CanaryAnalysis::resume(plan(&config), progress).ok()?;
        tracing::info!(route = %config.subject(), canary = %config.canary, phase = ?progress.phase, weight = analysis.weight(), "canary resumed from the call store");
        Some(CanaryRun {
            config,
            analysis,
            started: Instant::now(),
            applied: None,
        })
    }

    /// Whether the canary was rolled back (and stays at 0%).
    pub fn rolled_back(&self) -> bool {
        self.analysis.phase() == Phase::RolledBack
    }

    /// Where the rollout stands, to save.
    pub fn progress(&self) -> Progress {
        self.analysis.progress()
    }

    /// Feeds the last tick's traffic, decides, and applies the weight.
    pub fn tick(&mut self, series: &Series, controller: &dyn Control) -> Outcome {
        let mut out = Outcome {
            record: None,
            rolled_back: false,
        };
        if self.analysis.phase() == Phase::Running {
            let side = |name: &str| match &self.config.alias {
                None => {
                    let f = series.last_step(&Scope {
                        route: Some(self.config.route.clone()),
                        version: None,
                        cluster: Some(name.to_string()),
                    });
                    let mut w = Window::new();
                    w.requests = f.requests;
                    w.errors = f.errors;
                    if let Some(h) = f.latency {
                        let _ = w.latency.add(&h);
                    }
                    w
                }
                Some(alias) => {
                    let f = series.llm_target_step(alias, name);
                    let mut w = Window::new();
                    w.requests = f.requests;
                    w.errors = f.errors;
                    if let Some(h) = f.latency {
                        let _ = w.latency.add(&h);
                    }
                    for (judge, sample) in [
                        (TTFT, f.ttft_ms),
                        (COST, f.cost_usd),
                        (FEEDBACK, f.feedback),
                    ] {
                        w.extra.insert(judge.into(), sample);
                    }
                    w
                }
            };
            let (stable, canary) = (side(&self.config.stable), side(&self.config.canary));
            let now = self.started.elapsed();
            if self.analysis.observe(now, &stable, &canary).is_ok() {
                let history_before = self.analysis.history().len();
                let decision = self.analysis.decide(now);
                out.rolled_back = matches!(decision, Decision::Rollback { .. });
                if !matches!(decision, Decision::Hold { .. })
                    || self.analysis.history().len() > history_before
                {
                    let record = json!({
                        "route": self.config.subject(),
                        "alias": self.config.alias,
                        "stable": self.config.stable,
                        "canary": self.config.canary,
                        "at_s": now.as_secs_f64(),
                        "decision": decision,
                    });
                    match &decision {
                        Decision::Rollback { reason, .. } => {
                            tracing::error!(route = %self.config.subject(), canary = %self.config.canary, ?reason, "canary rolled back")
                        }
                        Decision::Promote { from, to, .. } => {
                            tracing::info!(route = %self.config.subject(), canary = %self.config.canary, from, to, "canary promoted")
                        }
                        Decision::Complete { .. } => {
                            tracing::info!(route = %self.config.subject(), canary = %self.config.canary, "canary complete: all traffic on the new release")
                        }
                        Decision::Hold { .. } => {}
                    }
                    out.record = Some(record);
                }
            }
        }
        let why = match &out.record {
            Some(r) => r["decision"]["action"]
                .as_str()
                .unwrap_or("decision")
                .to_string(),
            None => "plan in force".to_string(),
        };
        self.enforce(controller, &why);
        out
    }

    /// Sets the runtime override that gives the sides their wanted weights, when
    /// the wanted weight changed since this run last set it (its first tick, a
    /// promotion, a rollback, the end). Between those the override stays as it
    /// is: an operator's override is kept until the canary's next decision. The
    /// file's config is never rewritten, so a reload (SIGHUP) keeps the decision.
    fn enforce(&mut self, controller: &dyn Control, why: &str) {
        let wanted = self.analysis.weight();
        if self.applied == Some(wanted) {
            return;
        }
        let subject = match &self.config.alias {
            Some(alias) => OverrideSubject::Alias(alias.clone()),
            None => OverrideSubject::Route(self.config.route.clone()),
        };
        let weights = [
            (self.config.canary.clone(), wanted),
            (self.config.stable.clone(), 100 - wanted),
        ]
        .into_iter()
        .collect();
        let o = WeightOverride {
            weights,
            set_by: "canary".into(),
            reason: format!("canary {} at {wanted}%: {why}", self.config.canary),
            at_ms: super::unix_ms(),
        };
        match controller.set_override(subject, o) {
            Ok(()) => self.applied = Some(wanted),
            Err(e) => {
                tracing::error!(error = %e, route = %self.config.subject(), "canary: cannot set the split weights")
            }
        }
    }

    /// `/hypercare/canary` entry.
    pub fn json(&self) -> Value {
        json!({
            "route": self.config.subject(),
            "alias": self.config.alias,
            "stable": self.config.stable,
            "canary": self.config.canary,
            "weight": self.analysis.weight(),
            "status": self.analysis.status(),
            "plan": plan(&self.config),
        })
    }
}

/// Checks `[[hypercare.canaries]]` against the routes and LLM aliases.
pub fn validate(
    canaries: &[CanaryConfig],
    raw: &hypergate_core::config::raw::RawConfig,
    issues: &mut Vec<hypergate_core::config::ConfigIssue>,
) {
    let mut push = |path: String, reason: String| {
        issues.push(hypergate_core::config::ConfigIssue { path, reason })
    };
    let mut subjects = std::collections::HashSet::new();
    for (i, c) in canaries.iter().enumerate() {
        let path = format!("hypercare.canaries[{i}]");
        if !subjects.insert(c.subject()) {
            push(path.clone(), format!("a second canary for {}", c.subject()));
        }
        match &c.alias {
            Some(alias) => {
                if !c.route.is_empty() {
                    push(
                        format!("{path}.route"),
                        "a canary names a route (clusters) or an alias (targets), not both".into(),
                    );
                }
                match raw.ai.models.iter().find(|m| m.alias == *alias) {
                    None => push(
                        format!("{path}.alias"),
                        format!("unknown alias {alias:?} (no [[ai.models]] with it)"),
                    ),
                    Some(m) => {
                        for (field, name) in [("stable", &c.stable), ("canary", &c.canary)] {
                            if !m
                                .targets
                                .iter()
                                .any(|t| format!("{}/{}", t.provider, t.model) == *name)
                            {
                                push(
                                    format!("{path}.{field}"),
                                    format!(
                                        "{name:?} is not a target (provider/model) of alias {alias:?}"
                                    ),
                                );
                            }
                        }
                    }
                }
            }
            None => {
                for (field, v) in [
                    ("ttft_tolerance", c.ttft_tolerance),
                    ("cost_tolerance", c.cost_tolerance),
                    ("feedback_tolerance", c.feedback_tolerance),
                ] {
                    if v.is_some() {
                        push(
                            format!("{path}.{field}"),
                            "only for alias canaries (LLM targets)".into(),
                        );
                    }
                }
                match raw.routes.iter().find(|r| r.name == c.route) {
                    None => push(
                        format!("{path}.route"),
                        format!("unknown route {:?}", c.route),
                    ),
                    Some(r) => match &r.split {
                        None => push(
                            format!("{path}.route"),
                            format!("route {:?} has no split", c.route),
                        ),
                        Some(s) => {
                            for (field, name) in [("stable", &c.stable), ("canary", &c.canary)] {
                                if !s.targets.iter().any(|t| t.cluster == *name) {
                                    push(
                                        format!("{path}.{field}"),
                                        format!(
                                            "cluster {name:?} is not a side of route {:?}'s split",
                                            c.route
                                        ),
                                    );
                                }
                            }
                        }
                    },
                }
            }
        }
        if c.stable == c.canary {
            push(format!("{path}.canary"), "must differ from stable".into());
        }
        if let Err(errors) = plan(c).validate() {
            for e in errors {
                push(format!("{path}.{}", e.path), e.message);
            }
        }
    }
}
