//! The configuration as data: raw serde types that mirror the TOML file, the
//! parser that reports every type error with its path, the `${ENV}` expander,
//! reload diffs and the runtime-overrides layer.
//!
//! Nothing here builds runtime objects: each feature crate validates its own
//! section into its own spec (`upstream` clusters, `edge` consumers and limits,
//! `proxy` routes, `llm` aliases...), and the runtime assembles them.
//!
//! 1. [`raw`] (with [`edge`], [`ai`], [`hypercare`]) holds serde types that mirror the file.
//! 2. [`parse_raw`] parses the TOML section by section so that type errors in
//!    several places are all reported, each with its path.
//! 3. [`diff`] compares two raw configs for a reload (added / changed / removed).
//! 4. [`overrides`] is the layer of runtime decisions over the file.

pub mod ai;
pub mod diff;
pub mod edge;
pub mod hypercare;
pub mod overrides;
pub mod raw;

use raw::RawConfig;
use serde::de::DeserializeOwned;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

/// One configuration problem, with the path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Field path, e.g. `routes[2].cluster`.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

/// Every problem found in a configuration file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    /// The file (or `<embedded>`), for messages.
    pub source_name: String,
    /// All problems, in file order.
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} configuration error(s)",
            self.source_name,
            self.issues.len()
        )?;
        for issue in &self.issues {
            writeln!(
                f,
                "  {}: {}: {}",
                self.source_name, issue.path, issue.reason
            )?;
        }
        Ok(())
    }
}

/// Expands `${NAME}` in a config value from the environment (anywhere in the
/// value, any number of times); a missing variable is an issue at `path`.
pub fn expand_env(text: &str, path: &str, issues: &mut Vec<ConfigIssue>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            issues.push(ConfigIssue {
                path: path.to_string(),
                reason: "unterminated `${` (expected `${NAME}`)".into(),
            });
            return out;
        };
        let name = &after[..end];
        match std::env::var(name) {
            Ok(v) => out.push_str(&v),
            Err(_) => issues.push(ConfigIssue {
                path: path.to_string(),
                reason: format!("environment variable {name:?} is not set"),
            }),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Parses TOML into [`RawConfig`], one section (and one array element) at a time,
/// so that a type error in one route does not hide another in a cluster.
pub fn parse_raw(text: &str) -> Result<RawConfig, Vec<ConfigIssue>> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        vec![ConfigIssue {
            path: String::from("(syntax)"),
            reason: e.to_string().trim().replace('\n', " "),
        }]
    })?;
    let mut issues = Vec::new();
    let mut raw = RawConfig::default();
    for (key, value) in table {
        match key.as_str() {
            "server" => section(&key, value, &mut raw.server, &mut issues),
            "admin" => section(&key, value, &mut raw.admin, &mut issues),
            "limits" => section(&key, value, &mut raw.limits, &mut issues),
            "path" => section(&key, value, &mut raw.path, &mut issues),
            "access_log" => section(&key, value, &mut raw.access_log, &mut issues),
            "listeners" => list(&key, value, &mut raw.listeners, &mut issues),
            "clusters" => list(&key, value, &mut raw.clusters, &mut issues),
            "routes" => list(&key, value, &mut raw.routes, &mut issues),
            "demo_upstreams" => list(&key, value, &mut raw.demo_upstreams, &mut issues),
            "observability" => section(&key, value, &mut raw.observability, &mut issues),
            "consumers" => list(&key, value, &mut raw.consumers, &mut issues),
            "auth" => section(&key, value, &mut raw.auth, &mut issues),
            "rate_limits" => list(&key, value, &mut raw.rate_limits, &mut issues),
            "redis" => {
                let mut redis = raw::RedisConfig::default();
                section(&key, value, &mut redis, &mut issues);
                raw.redis = Some(redis);
            }
            "protection" => section(&key, value, &mut raw.protection, &mut issues),
            "ai" => section(&key, value, &mut raw.ai, &mut issues),
            "hypercare" => section(&key, value, &mut raw.hypercare, &mut issues),
            "fleet" => section(&key, value, &mut raw.fleet, &mut issues),
            other => issues.push(ConfigIssue {
                path: other.to_string(),
                reason: "unknown section (expected server, admin, limits, path, access_log, listeners, clusters, routes, demo_upstreams, observability, consumers, auth, rate_limits, redis, protection, ai, hypercare, fleet)".into(),
            }),
        }
    }
    if issues.is_empty() {
        Ok(raw)
    } else {
        Err(issues)
    }
}

fn section<T: DeserializeOwned>(
    key: &str,
    value: toml::Value,
    out: &mut T,
    issues: &mut Vec<ConfigIssue>,
) {
    match value.try_into::<T>() {
        Ok(v) => *out = v,
        Err(e) => issues.push(ConfigIssue {
            path: key.to_string(),
            reason: e.to_string().trim().replace('\n', " "),
        }),
    }
}

fn list<T: DeserializeOwned>(
    key: &str,
    value: toml::Value,
    out: &mut Vec<T>,
    issues: &mut Vec<ConfigIssue>,
) {
    let toml::Value::Array(items) = value else {
        issues.push(ConfigIssue {
            path: key.to_string(),
            reason: "expected an array of tables (`[[...]]`)".into(),
        });
        return;
    };
    for (i, item) in items.into_iter().enumerate() {
        match item.try_into::<T>() {
            Ok(v) => out.push(v),
            Err(e) => issues.push(ConfigIssue {
                path: format!("{key}[{i}]"),
                reason: e.to_string().trim().replace('\n', " "),
            }),
        }
    }
}

/// An `ip:port` or `host:port` (resolved now); an issue at `path` when it does
/// not parse or resolves to nothing.
#[allow(
    clippy::disallowed_methods,
    reason = "addresses are resolved while a config is built, off the shards"
)]
pub fn parse_addr(text: &str, path: &str, issues: &mut Vec<ConfigIssue>) -> Option<SocketAddr> {
    if let Ok(addr) = text.parse() {
        return Some(addr);
    }
    let reason = match text.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(addr)) => return Some(addr),
        Ok(None) => format!("{text:?} resolves to no address"),
        Err(e) => format!("invalid address {text:?}: {e}"),
    };
    issues.push(ConfigIssue {
        path: path.to_string(),
        reason,
    });
    None
}
