//! Runtime overrides: decisions made while the gateway runs (a canary's weights,
//! weights an operator set through the admin API, later a fleet leader's), kept
//! as a layer over the file's config instead of edits to it.
//!
//! The layer is plain data keyed by names (a route's split, an LLM alias's
//! targets), each entry saying who set it, why and when. Shards resolve it
//! against the config they run into effective weights,
//! so applying a decision never re-reads or re-validates the file, and a reload
//! of the file keeps every override (an entry whose route or sides are gone
//! simply has no effect until they are back). Overrides are persisted in the
//! call store and restored before the listeners serve; they end when cleared
//! (admin API) or replaced by a newer decision for the same subject.

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

impl WeightOverride {
    /// The weights of `sides` (name, file weight) under this override: the
    /// override's where it names the side, the file's otherwise; `None` when
    /// that would leave no weight at all (such an override changes nothing).
    pub fn effective(&self, sides: &[(String, u32)]) -> Option<Vec<u32>> {
        let weights: Vec<u32> = sides
            .iter()
            .map(|(name, file)| self.weights.get(name).copied().unwrap_or(*file))
            .collect();
        weights.iter().any(|w| *w > 0).then_some(weights)
    }
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
