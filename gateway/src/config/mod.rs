//! Configuration: raw TOML types, validation into an immutable config, and reload diffs.
//!
//! 1. [`raw`] holds serde types that mirror the file.
//! 2. [`load_str`] parses the TOML section by section so that type errors in
//!    several places are all reported, then [`validate`] checks references and
//!    values, collecting *every* error with its path (`routes[2].cluster: ...`).
//! 3. The result is a [`Config`]: immutable, shared by all shards through `Arc`.
//! 4. [`diff`] compares two configs for reload (added / changed / removed).

pub use hypergate_runtime::config::resolve;

pub use hypergate_core::config::{
    ai, diff, edge, expand_env, hypercare, overrides, parse_raw, raw, ConfigError, ConfigIssue,
};

pub use hypergate_core::keys::KeySource;
pub use hypergate_proxy::spec::{
    Config, DirectResponse, HeaderOps, ListenerSpec, Route, RouteAction, RoutePolicy, Split,
};
pub use hypergate_upstream::cluster::{Cluster, Endpoint};

use std::path::Path;

/// The quickstart config compiled into the binary: what `hypergate run` uses without `--config`.
pub const EMBEDDED_QUICKSTART: &str = include_str!("../../../examples/quickstart.toml");

/// Reads and validates a configuration file.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        source_name: name.clone(),
        issues: vec![ConfigIssue {
            path: String::new(),
            reason: format!("cannot read file: {e}"),
        }],
    })?;
    load_str(&text, &name)
}

/// Parses and validates configuration text; `source_name` names it in errors.
pub fn load_str(text: &str, source_name: &str) -> Result<Config, ConfigError> {
    let fail = |issues| ConfigError {
        source_name: source_name.to_string(),
        issues,
    };
    let raw = parse_raw(text).map_err(fail)?;
    validate(raw).map_err(fail)
}

/// Validates a raw config with every layer's checks (the runtime's, and
/// hypercare's alerts, canaries and windows), returning every issue found.
pub fn validate(raw: raw::RawConfig) -> Result<Config, Vec<ConfigIssue>> {
    hypergate_runtime::config::validate(raw, &|raw, issues| {
        let routes: Vec<String> = raw.routes.iter().map(|r| r.name.clone()).collect();
        crate::hypercare::validate(&raw.hypercare, &routes, issues);
        crate::hypercare::canary::validate(&raw.hypercare.canaries, raw, issues);
        crate::hypercare::windows::validate(&raw.hypercare.windows, &routes, issues);
        crate::hypercare::fleet::validate(raw, issues);
    })
}
