//! Reload diffs: what a new config adds, changes and removes, by name.
//!
//! Clusters and routes are compared by their raw sections. Sections that are
//! bound at start (server, the admin address, listeners, access log, observability, fleet) cannot
//! change on a reload; such a reload is refused with the sections named, so the operator
//! knows a restart is needed and the running config stays in place. The admin's
//! `token` and `allowed_hosts` apply from the next admin request.
//!
//! Fingerprints are the serialised sections, where every secret reads `<redacted>`:
//! a reload that changes only a secret (a header value, a key) installs it but does
//! not list the route as changed.

use super::raw::RawConfig;
use serde::Serialize;
use std::collections::BTreeMap;

/// Names added, changed and removed in one kind of object.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct NamedChanges {
    /// New names.
    pub added: Vec<String>,
    /// Names whose section differs.
    pub changed: Vec<String>,
    /// Names gone.
    pub removed: Vec<String>,
}

/// The difference between a running and a new config.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ConfigDiff {
    /// Cluster changes (pools of unchanged clusters survive the reload).
    pub clusters: NamedChanges,
    /// Route changes.
    pub routes: NamedChanges,
    /// Sections that differ but can only change with a restart.
    pub restart_required: Vec<String>,
}

impl ConfigDiff {
    /// Whether anything at all differs.
    pub fn is_empty(&self) -> bool {
        self.clusters == NamedChanges::default()
            && self.routes == NamedChanges::default()
            && self.restart_required.is_empty()
    }
}

fn fingerprint<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

fn named<T: Serialize>(old: &[T], new: &[T], name: impl Fn(&T) -> &str) -> NamedChanges {
    let old: BTreeMap<&str, String> = old.iter().map(|x| (name(x), fingerprint(x))).collect();
    let new: BTreeMap<&str, String> = new.iter().map(|x| (name(x), fingerprint(x))).collect();
    let mut out = NamedChanges::default();
    for (k, v) in &new {
        match old.get(k) {
            None => out.added.push(k.to_string()),
            Some(o) if o != v => out.changed.push(k.to_string()),
            Some(_) => {}
        }
    }
    out.removed = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .map(|k| k.to_string())
        .collect();
    out
}

/// Computes the diff from `old` to `new`.
pub fn diff(o: &RawConfig, n: &RawConfig) -> ConfigDiff {
    let mut restart_required = Vec::new();
    if fingerprint(&o.server) != fingerprint(&n.server) {
        restart_required.push("server".to_string());
    }
    if o.admin.listen != n.admin.listen {
        restart_required.push("admin.listen".to_string());
    }
    // TLS settings of a listener (certificates) reload in place; the rest is bound at start.
    let without_tls = |ls: &[super::raw::ListenerConfig]| {
        ls.iter()
            .map(|l| {
                (
                    l.name.clone(),
                    l.address.clone(),
                    l.backlog,
                    l.tls.is_some(),
                )
            })
            .collect::<Vec<_>>()
    };
    if fingerprint(&without_tls(&o.listeners)) != fingerprint(&without_tls(&n.listeners)) {
        restart_required.push("listeners".to_string());
    }
    if (
        o.protection.max_connections,
        o.protection.max_connections_per_ip,
    ) != (
        n.protection.max_connections,
        n.protection.max_connections_per_ip,
    ) {
        restart_required.push("protection.max_connections".to_string());
    }
    if fingerprint(&o.access_log) != fingerprint(&n.access_log) {
        restart_required.push("access_log".to_string());
    }
    if fingerprint(&o.demo_upstreams) != fingerprint(&n.demo_upstreams) {
        restart_required.push("demo_upstreams".to_string());
    }
    if fingerprint(&o.hypercare.store) != fingerprint(&n.hypercare.store) {
        restart_required.push("hypercare.store".to_string());
    }
    if fingerprint(&o.observability) != fingerprint(&n.observability) {
        restart_required.push("observability".to_string());
    }
    if fingerprint(&o.fleet) != fingerprint(&n.fleet) {
        restart_required.push("fleet".to_string());
    }
    ConfigDiff {
        clusters: named(&o.clusters, &n.clusters, |c| &c.name),
        routes: named(&o.routes, &n.routes, |r| &r.name),
        restart_required,
    }
}
