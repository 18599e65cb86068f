//! Runtime overrides: decisions made while the gateway runs (a canary's weights,
//! weights an operator set through the admin API, later a fleet leader's), kept
//! as a layer over the file's config instead of edits to it.
//!
//! The layer is plain data keyed by names (a route's split, an LLM alias's
//! targets), each entry saying who set it, why and when. Shards resolve it
//! against the config they run ([`Overrides::resolve`]) into effective weights,
//! so applying a decision never re-reads or re-validates the file, and a reload
//! of the file keeps every override (an entry whose route or sides are gone
//! simply has no effect until they are back). Overrides are persisted in the
//! call store and restored before the listeners serve; they end when cleared
//! (admin API) or replaced by a newer decision for the same subject.

use super::{Config, ConfigIssue, RouteAction};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What an override changes the weights of.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "name")]
pub enum OverrideSubject {
    /// A route's weighted split; sides are cluster names.
    Route(String),
    /// An LLM alias's targets; sides are `provider/model`.
    Alias(String),
}

impl std::fmt::Display for OverrideSubject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OverrideSubject::Route(r) => write!(f, "route {r:?}"),
            OverrideSubject::Alias(a) => write!(f, "alias {a:?}"),
        }
    }
}

/// One decision: new weights for some sides of a subject.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct WeightOverride {
    /// Weight by side name; sides not named keep the file's weight.
    pub weights: BTreeMap<String, u32>,
    /// Who decided: `canary`, `admin`, ...
    pub set_by: String,
    /// Why, in words (a canary's decision, an operator's note).
    pub reason: String,
    /// When, in Unix milliseconds.
    pub at_ms: u64,
}

/// The whole layer.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct Overrides {
    /// Increases with every change, so a shard (or a fleet member) can tell a
    /// newer layer from an older one.
    pub epoch: u64,
    /// The overrides in force, by subject (a list of `{subject, override}` in
    /// JSON, whose map keys must be strings).
    #[serde(with = "as_list")]
    pub weights: BTreeMap<OverrideSubject, WeightOverride>,
}

/// (De)serialises the subject map as a list of entries.
mod as_list {
    use super::{OverrideSubject, WeightOverride};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    #[derive(Serialize, Deserialize)]
    struct Entry {
        subject: OverrideSubject,
        #[serde(flatten)]
        weights: WeightOverride,
    }

    pub fn serialize<S: Serializer>(
        map: &BTreeMap<OverrideSubject, WeightOverride>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let list: Vec<Entry> = map
            .iter()
            .map(|(subject, weights)| Entry {
                subject: subject.clone(),
                weights: weights.clone(),
            })
            .collect();
        list.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<OverrideSubject, WeightOverride>, D::Error> {
        Ok(Vec::<Entry>::deserialize(d)?
            .into_iter()
            .map(|e| (e.subject, e.weights))
            .collect())
    }
}

/// Effective weights of one shard's config: the file's, with the overrides in
/// force applied (indices into `config.routes` and `config.ai.aliases`).
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
        OverrideSubject::Route(name) => {
            let (i, route) = config
                .routes
                .iter()
                .enumerate()
                .find(|(_, r)| &*r.name == name)
                .ok_or_else(|| format!("no route named {name:?}"))?;
            let RouteAction::Split(split) = &route.action else {
                return Err(format!("route {name:?} has no weighted split"));
            };
            let sides = split
                .targets
                .iter()
                .map(|(c, w)| (config.clusters[*c].name.to_string(), *w))
                .collect();
            Ok((i, sides))
        }
        OverrideSubject::Alias(name) => {
            let i = *config
                .ai
                .alias_index
                .get(name)
                .ok_or_else(|| format!("no LLM alias named {name:?}"))?;
            let sides = config.ai.aliases[i]
                .targets
                .iter()
                .map(|t| (t.label.to_string(), t.weight))
                .collect();
            Ok((i, sides))
        }
    }
}

impl Overrides {
    /// The weights `config` runs with once the overrides are applied. An override
    /// naming a subject or side that `config` does not have changes nothing for
    /// it; one that would leave a subject with no weight at all is ignored.
    pub fn resolve(&self, config: &Config) -> ResolvedWeights {
        let mut out = ResolvedWeights::default();
        for (subject, o) in &self.weights {
            let Ok((index, sides)) = sides(config, subject) else {
                continue;
            };
            let weights: Vec<u32> = sides
                .iter()
                .map(|(name, file)| o.weights.get(name).copied().unwrap_or(*file))
                .collect();
            if weights.iter().all(|w| *w == 0) {
                continue;
            }
            match subject {
                OverrideSubject::Route(_) => out.routes.insert(index, weights),
                OverrideSubject::Alias(_) => out.aliases.insert(index, weights),
            };
        }
        out
    }

    /// Every problem with setting `o` on `subject` under `config`, with paths.
    pub fn check(
        config: &Config,
        subject: &OverrideSubject,
        o: &WeightOverride,
    ) -> Vec<ConfigIssue> {
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
    pub fn overlay(&self, config: &Config) -> serde_json::Value {
        let entries: Vec<serde_json::Value> = self
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
        serde_json::json!({ "epoch": self.epoch, "weights": entries })
    }

    /// `raw` (the file's config as `/config` shows it) with the effective weights
    /// written in, so it says what runs; the overlay says why it differs.
    pub fn apply_to_json(&self, config: &Config, raw: &mut serde_json::Value) {
        let resolved = self.resolve(config);
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
            let name = &config.ai.aliases[*ai].name;
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layer_round_trips_through_json() {
        let mut o = Overrides {
            epoch: 7,
            ..Default::default()
        };
        o.weights.insert(
            OverrideSubject::Route("checkout".into()),
            WeightOverride {
                weights: [("v1".to_string(), 100), ("v2".to_string(), 0)].into(),
                set_by: "canary".into(),
                reason: "rollback".into(),
                at_ms: 1,
            },
        );
        o.weights.insert(
            OverrideSubject::Alias("demo".into()),
            WeightOverride {
                weights: [("p/m".to_string(), 3)].into(),
                set_by: "admin".into(),
                reason: String::new(),
                at_ms: 2,
            },
        );
        let text = serde_json::to_string(&o).unwrap();
        assert_eq!(serde_json::from_str::<Overrides>(&text).unwrap(), o);
    }
}
