//! Resolving the runtime-overrides layer (`hypergate_core::config::overrides`)
//! against a validated config: the effective weights a shard runs with, the
//! checks an override must pass, and the overlay `/config` shows.

use hypergate_core::config::overrides::{OverrideSubject, Overrides, WeightOverride};
use hypergate_core::config::ConfigIssue;
use hypergate_proxy::spec::Config;
use std::collections::BTreeMap;

/// Effective weights of one shard's config: the file's, with the overrides in
/// force applied (indices into `config.routes` and the LLM spec's aliases).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ResolvedWeights {
    /// Per route index: its split's weights, when an override changes them.
    pub routes: BTreeMap<usize, Vec<u32>>,
    /// Per alias index: its targets' weights, when an override changes them.
    pub aliases: BTreeMap<usize, Vec<u32>>,
}

/// The sides of a subject in `config` with their file weights, or why there are none.
fn sides(
    config: &Config,
    subject: &OverrideSubject,
) -> Result<(usize, Vec<(String, u32)>), String> {
    match subject {
        OverrideSubject::Route(name) => config.split_sides(name),
        OverrideSubject::Alias(name) => hypergate_llm::spec::of(config).alias_sides(name),
    }
}

/// The weights `config` runs with once `overrides` are applied. An override
/// naming a subject or side that `config` does not have changes nothing for
/// it; one that would leave a subject with no weight at all is ignored.
pub fn resolve(overrides: &Overrides, config: &Config) -> ResolvedWeights {
    let mut out = ResolvedWeights::default();
    for (subject, o) in &overrides.weights {
        let Some((index, weights)) = sides(config, subject)
            .ok()
            .and_then(|(i, sides)| Some((i, o.effective(&sides)?)))
        else {
            continue;
        };
        match subject {
            OverrideSubject::Route(_) => out.routes.insert(index, weights),
            OverrideSubject::Alias(_) => out.aliases.insert(index, weights),
        };
    }
    out
}

/// Every problem with setting `o` on `subject` under `config`, with paths.
pub fn check(config: &Config, subject: &OverrideSubject, o: &WeightOverride) -> Vec<ConfigIssue> {
    let issue = |path: String, reason: String| ConfigIssue { path, reason };
    let (_, sides) = match sides(config, subject) {
        Ok(s) => s,
        Err(reason) => return vec![issue("subject".into(), reason)],
    };
    let mut issues = Vec::new();
    if o.weights.is_empty() {
        issues.push(issue(
            "weights".into(),
            "at least one side is required".into(),
        ));
    }
    for (name, w) in &o.weights {
        if !sides.iter().any(|(s, _)| s == name) {
            let known: Vec<&str> = sides.iter().map(|(s, _)| s.as_str()).collect();
            issues.push(issue(
                format!("weights.{name}"),
                format!("{subject} has no side {name:?} (sides: {known:?})"),
            ));
        }
        if *w > 1_000_000 {
            issues.push(issue(
                format!("weights.{name}"),
                "must be at most 1000000".into(),
            ));
        }
    }
    let total: u64 = sides
        .iter()
        .map(|(name, file)| u64::from(o.weights.get(name).copied().unwrap_or(*file)))
        .sum();
    if issues.is_empty() && total == 0 {
        issues.push(issue("weights".into(), "weights must not all be 0".into()));
    }
    issues
}

/// The overlay `/config` shows: every override with the file's weights it
/// replaces, who set it, why and when, and whether the running config has it.
pub fn overlay(overrides: &Overrides, config: &Config) -> serde_json::Value {
    let entries: Vec<serde_json::Value> = overrides
        .weights
        .iter()
        .map(|(subject, o)| {
            let (active, file) = match sides(config, subject) {
                Ok((_, sides)) => (true, sides.into_iter().collect::<BTreeMap<String, u32>>()),
                Err(_) => (false, BTreeMap::new()),
            };
            serde_json::json!({
                "subject": subject,
                "weights": o.weights,
                "file_weights": file,
                "set_by": o.set_by,
                "reason": o.reason,
                "at_ms": o.at_ms,
                "active": active,
            })
        })
        .collect();
    serde_json::json!({ "epoch": overrides.epoch, "weights": entries })
}

/// `raw` (the file's config as `/config` shows it) with the effective weights
/// written in, so it says what runs; the overlay says why it differs.
pub fn apply_to_json(overrides: &Overrides, config: &Config, raw: &mut serde_json::Value) {
    let resolved = resolve(overrides, config);
    for (ri, weights) in &resolved.routes {
        let name = &config.routes[*ri].name;
        let Some(route) = raw["routes"]
            .as_array_mut()
            .and_then(|rs| rs.iter_mut().find(|r| r["name"] == **name))
        else {
            continue;
        };
        if let Some(targets) = route["split"]["targets"].as_array_mut() {
            for (t, w) in targets.iter_mut().zip(weights) {
                t["weight"] = (*w).into();
            }
        }
    }
    for (ai, weights) in &resolved.aliases {
        let name = &hypergate_llm::spec::of(config).aliases[*ai].name;
        let Some(model) = raw["ai"]["models"]
            .as_array_mut()
            .and_then(|ms| ms.iter_mut().find(|m| m["alias"] == **name))
        else {
            continue;
        };
        if let Some(targets) = model["targets"].as_array_mut() {
            for (t, w) in targets.iter_mut().zip(weights) {
                t["weight"] = (*w).into();
            }
        }
    }
}
