//! The narrow handle through which the layers above the data plane
//! (hypercare's analysis, and later the fleet) read it and steer it: the
//! running config, merged stats in; runtime overrides out. Nothing else of the
//! controller (reloads, drains, shards) is reachable through it.
//!
//! Depends on `gateway` (the [`Controller`] implements it) and `observability`.

use crate::gateway::{Controller, OverrideError};
use crate::observability::Snapshot;
use hypergate_core::config::overrides::{OverrideSubject, Overrides, WeightOverride};
/// The running config, as [`Control::config`] gives it.
pub use hypergate_proxy::spec::Config;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// What hypercare may do to the data plane.
pub trait Control: Send + Sync {
    /// The running config (the file's, validated).
    fn config(&self) -> Arc<Config>;
    /// Whether the gateway is shutting down (hypercare stops then).
    fn is_draining(&self) -> bool;
    /// Every shard's stats, merged.
    fn snapshot(&self) -> Snapshot;
    /// LLM feedback by (alias, target): (count, sum, sum of squares).
    fn feedback_scores(&self) -> BTreeMap<(String, String), (u64, f64, f64)>;
    /// The kernel TCP probe's figures, when it is loaded.
    fn tcp_stats(&self) -> Option<serde_json::Value>;
    /// The call store's file, when the store is enabled.
    fn store_path(&self) -> Option<&Path>;
    /// The runtime overrides in force.
    fn overrides(&self) -> Arc<Overrides>;
    /// Sets the weights of `subject` as a runtime override (see
    /// [`Controller::set_override`]).
    fn set_override(
        &self,
        subject: OverrideSubject,
        o: WeightOverride,
    ) -> Result<(), OverrideError>;
}

impl Control for Controller {
    fn config(&self) -> Arc<Config> {
        Controller::config(self)
    }

    fn is_draining(&self) -> bool {
        Controller::is_draining(self)
    }

    fn snapshot(&self) -> Snapshot {
        Controller::snapshot(self)
    }

    fn feedback_scores(&self) -> BTreeMap<(String, String), (u64, f64, f64)> {
        Controller::feedback_scores(self)
    }

    fn tcp_stats(&self) -> Option<serde_json::Value> {
        self.tcp_probe().map(|p| p.stats_json())
    }

    fn store_path(&self) -> Option<&Path> {
        Controller::store_path(self)
    }

    fn overrides(&self) -> Arc<Overrides> {
        Controller::overrides(self)
    }

    fn set_override(
        &self,
        subject: OverrideSubject,
        o: WeightOverride,
    ) -> Result<(), OverrideError> {
        Controller::set_override(self, subject, o)
    }
}
