//! The OTLP resource every exported batch carries: `service.name`,
//! `service.version` (this build's version), `host.name` when the kernel
//! tells it, and the configured attributes (which may override the last two).
//!
//! Built once, when the exporter starts, off the shards.
//!
//! Depends on: [`crate::config`] (the validated settings).

use crate::config::OtlpSettings;
use std::collections::BTreeMap;

/// The resource's attributes, in a stable order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    attributes: BTreeMap<String, String>,
}

impl Resource {
    /// The resource for `settings`.
    pub fn from_settings(settings: &OtlpSettings) -> Resource {
        let mut attributes = BTreeMap::new();
        attributes.insert(
            "service.version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        );
        if let Some(host) = host_name() {
            attributes.insert("host.name".to_string(), host);
        }
        attributes.extend(settings.resource_attributes.clone());
        attributes.insert("service.name".to_string(), settings.service_name.clone());
        Resource { attributes }
    }

    /// The attributes, by key.
    pub fn attributes(&self) -> &BTreeMap<String, String> {
        &self.attributes
    }
}

/// The kernel's host name (Linux), read once at start-up.
#[allow(
    clippy::disallowed_methods,
    reason = "read once when the exporter starts, on the control thread, never on a shard"
)]
fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}
