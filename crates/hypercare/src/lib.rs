//! `hypergate-hypercare`: what the gateway records and concludes about the releases behind it.
//!
//! - [`store`]: every call recorded in SQLite, with per-minute rollups, written by
//!   the record writer thread off the hot path; [`blocks`]: the calls' encoding
//!   in blocks, and the `calls` SQL table that reads them back.
//! - [`query`]: read-side queries over the store, shared by the admin API and the CLI.
//! - [`engine`]: the control thread that evaluates, every few seconds, from
//!   merged shard snapshots kept in a short [`series`] history:
//!   [`alerts`] (pending / firing / resolved, webhooks, Prometheus rules export)
//!   [`canary`] analysis (promote, hold or roll back a weighted split) and
//!   hypercare [`windows`] (exit criteria, progress and verdict).
//! - [`state`]: canary and window progress kept in the store, so a restart resumes them.
//! - [`fleet`]: several gateways judged and steered as one through Redis: shared
//!   aggregates, one leader under a fenced lease, decisions with epochs.
//! - [`diff`]: release baselines compared with significance tests; [`report`]:
//!   the hypercare report in Markdown or HTML, from the store alone.
//!
//! It reaches the data plane only through the runtime's narrow
//! [`Control`](hypergate_runtime::control::Control) handle: the config and
//! merged stats snapshots in, runtime overrides (a canary's weights) out.
//!
//! Allowed dependencies: `hypergate-core`, `hypergate-upstream` (TLS for
//! webhooks), `hypergate-edge` (reason labels, the Redis address), `hypergate-llm` (feedback),
//! `hypergate-runtime`, and the pure `hypergate-analysis`.

#![allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    reason = "hypercare runs on its own threads (store, analysis, alerts), off the data plane"
)]
#![deny(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod alerts;
pub mod blocks;
pub mod canary;
pub mod diff;
pub mod engine;
pub mod fleet;
pub mod query;
pub mod report;
pub mod series;
pub mod state;
pub mod store;
pub mod windows;

pub use hypergate_core::clock::unix_ms;

use hypergate_core::config::hypercare::{AlertKind, HypercareConfig};
use hypergate_core::config::ConfigIssue;

/// Checks `[hypercare]`, adding every problem to `issues`.
pub fn validate(h: &HypercareConfig, routes: &[String], issues: &mut Vec<ConfigIssue>) {
    let mut push = |path: String, reason: String| issues.push(ConfigIssue { path, reason });
    if h.evaluation_interval.is_zero() {
        push(
            "hypercare.evaluation_interval".into(),
            "must be greater than zero".into(),
        );
    }
    for (field, share) in [
        ("capture_llm_bodies", h.store.capture_llm_bodies),
        ("capture_api_bodies", h.store.capture_api_bodies),
        ("sample_ratio", h.store.sample_ratio),
    ] {
        if !(0.0..=1.0).contains(&share) {
            push(
                format!("hypercare.store.{field}"),
                "a share between 0.0 and 1.0".into(),
            );
        }
    }
    if h.store.path.is_empty() {
        push("hypercare.store.path".into(), "must not be empty".into());
    }
    for (field, d) in [
        ("flush_interval", h.store.flush_interval),
        ("rollup_interval", h.store.rollup_interval),
        ("retention", h.store.retention),
        ("rollup_retention", h.store.rollup_retention),
    ] {
        if d.is_zero() {
            push(
                format!("hypercare.store.{field}"),
                "must be greater than zero".into(),
            );
        }
    }
    let mut names = std::collections::HashSet::new();
    for (i, a) in h.alerts.iter().enumerate() {
        let path = format!("hypercare.alerts[{i}]");
        if !names.insert(a.name.as_str()) {
            push(
                format!("{path}.name"),
                format!("duplicate alert {:?}", a.name),
            );
        }
        if !a.threshold.is_finite() || a.threshold < 0.0 {
            push(format!("{path}.threshold"), "must be a number >= 0".into());
        }
        if a.kind == AlertKind::ErrorRate && a.threshold > 1.0 {
            push(
                format!("{path}.threshold"),
                "an error rate is a share between 0 and 1".into(),
            );
        }
        if !(a.quantile > 0.0 && a.quantile < 1.0) {
            push(
                format!("{path}.quantile"),
                "must be between 0 and 1 (exclusive)".into(),
            );
        }
        if a.window.is_zero() {
            push(format!("{path}.window"), "must be greater than zero".into());
        }
        if let Some(r) = &a.route {
            if !routes.contains(r) {
                push(format!("{path}.route"), format!("unknown route {r:?}"));
            }
        }
    }
    for (i, w) in h.webhooks.iter().enumerate() {
        match alerts::WebhookTarget::parse(&w.url) {
            Err(reason) => push(format!("hypercare.webhooks[{i}].url"), reason),
            Ok(target) if target.tls => {
                if let Err(reason) = hypergate_upstream::tls::verifying_client_config(&w.ca_file) {
                    push(format!("hypercare.webhooks[{i}].ca_file"), reason);
                }
            }
            Ok(_) => {}
        }
    }
}
