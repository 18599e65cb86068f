//! Raw (serde) types of the `[hypercare]` section: the call-record store.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The `[hypercare]` section.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HypercareConfig {
    /// Call records in SQLite.
    pub store: CallStoreConfig,
}

/// The call-record store (`[hypercare.store]`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallStoreConfig {
    /// Record every request (on by default).
    pub enabled: bool,
    /// SQLite database file; a relative path is relative to the config file's
    /// directory (the working directory for the embedded config).
    pub path: String,
    /// Raw call records older than this are deleted.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Most raw call records kept (the oldest go first).
    pub max_calls: u64,
    /// Per-minute rollups older than this are deleted.
    #[serde(with = "humantime_serde")]
    pub rollup_retention: Duration,
    /// Records are written in one transaction at most this often.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Rollups of the current minutes are merged into the database this often.
    #[serde(with = "humantime_serde")]
    pub rollup_interval: Duration,
}

impl Default for CallStoreConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: "hypercare.db".into(),
            retention: Duration::from_secs(7 * 86_400),
            max_calls: 5_000_000,
            rollup_retention: Duration::from_secs(90 * 86_400),
            flush_interval: Duration::from_millis(200),
            rollup_interval: Duration::from_secs(10),
        }
    }
}
