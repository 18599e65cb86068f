//! Validated clusters: endpoints resolved, the hash key parsed, the
//! consistent-hash ring built once, TLS to the endpoints set up.

use hypergate_core::config::raw::{self, LbPolicy, UpstreamProtocol};
use hypergate_core::config::ConfigIssue;
use hypergate_core::keys::KeySource;
use std::net::SocketAddr;
use std::sync::Arc;

fn push(issues: &mut Vec<ConfigIssue>, path: impl Into<String>, reason: impl Into<String>) {
    issues.push(ConfigIssue {
        path: path.into(),
        reason: reason.into(),
    });
}

/// A validated cluster.
#[derive(Debug)]
pub struct Cluster {
    /// Name.
    pub name: Arc<str>,
    /// Release label.
    pub version: Arc<str>,
    /// Endpoints.
    pub endpoints: Vec<Endpoint>,
    /// Policy.
    pub lb: LbPolicy,
    /// Hash key for `Hash`.
    pub hash_on: Option<KeySource>,
    /// Consistent-hash ring: sorted `(point, endpoint index)`.
    pub ring: Vec<(u64, u32)>,
    /// The raw section, for diffs and pools.
    pub raw: raw::ClusterConfig,
    /// TLS to the endpoints.
    pub tls: Option<crate::tls::UpstreamTls>,
}

/// A validated endpoint.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Resolved address.
    pub addr: SocketAddr,
    /// Label for metrics (the configured address text).
    pub label: Arc<str>,
    /// Weight.
    pub weight: u32,
}

impl Cluster {
    /// Validates one `[[clusters]]` section (or an LLM provider's hidden
    /// cluster): every problem is pushed with its path; `None` when there was any.
    pub fn build(
        c: &raw::ClusterConfig,
        path: &str,
        issues: &mut Vec<ConfigIssue>,
    ) -> Option<Cluster> {
        let before = issues.len();
        if c.name.is_empty() {
            push(issues, format!("{path}.name"), "must not be empty");
        }
        if c.endpoints.is_empty() {
            push(
                issues,
                format!("{path}.endpoints"),
                "at least one endpoint is required",
            );
        }
        let mut endpoints = Vec::new();
        for (j, e) in c.endpoints.iter().enumerate() {
            let epath = format!("{path}.endpoints[{j}]");
            if e.weight == 0 || e.weight > 1000 {
                push(
                    issues,
                    format!("{epath}.weight"),
                    "must be between 1 and 1000",
                );
            }
            if let Some(addr) =
                hypergate_core::config::parse_addr(&e.address, &format!("{epath}.address"), issues)
            {
                endpoints.push(Endpoint {
                    addr,
                    label: e.address.as_str().into(),
                    weight: e.weight,
                });
            }
        }
        let hash_on = match (&c.hash_on, c.lb) {
            (Some(h), _) => KeySource::parse(h, &format!("{path}.hash_on"), issues),
            (None, LbPolicy::Hash) => {
                push(
                    issues,
                    format!("{path}.hash_on"),
                    "required when lb = \"hash\"",
                );
                None
            }
            (None, _) => None,
        };
        if c.connect_timeout.is_zero() {
            push(
                issues,
                format!("{path}.connect_timeout"),
                "must be greater than zero",
            );
        }
        if c.read_timeout.is_zero() {
            push(
                issues,
                format!("{path}.read_timeout"),
                "must be greater than zero",
            );
        }
        if c.pool.max_connections == 0 {
            push(
                issues,
                format!("{path}.pool.max_connections"),
                "must be at least 1",
            );
        }
        match (c.protocol, c.tls.is_some()) {
            (UpstreamProtocol::H2, false) => push(
                issues,
                format!("{path}.protocol"),
                "\"h2\" is HTTP/2 over TLS: set [clusters.tls] (or use \"h2c\" for plain TCP)",
            ),
            (UpstreamProtocol::H2c, true) => push(
                issues,
                format!("{path}.protocol"),
                "\"h2c\" is HTTP/2 over plain TCP: remove [clusters.tls] (or use \"h2\")",
            ),
            _ => {}
        }
        if c.protocol.is_h2() && c.pool.max_streams == 0 {
            push(
                issues,
                format!("{path}.pool.max_streams"),
                "must be at least 1",
            );
        }
        if let Some(hc) = &c.health_check {
            if hc.grpc_service.is_some() {
                if !c.protocol.is_h2() {
                    push(
                        issues,
                        format!("{path}.health_check.grpc_service"),
                        "gRPC health checks need protocol = \"h2\" or \"h2c\"",
                    );
                }
                if !hc.path.is_empty() {
                    push(
                        issues,
                        format!("{path}.health_check.path"),
                        "a gRPC health check has no path (it calls grpc.health.v1.Health/Check)",
                    );
                }
            } else if !hc.path.starts_with('/') {
                push(
                    issues,
                    format!("{path}.health_check.path"),
                    "must start with '/' (or set grpc_service for a gRPC check)",
                );
            }
            if hc.interval.is_zero() || hc.timeout.is_zero() {
                push(
                    issues,
                    format!("{path}.health_check"),
                    "interval and timeout must be greater than zero",
                );
            }
            if hc.healthy_threshold == 0 || hc.unhealthy_threshold == 0 {
                push(
                    issues,
                    format!("{path}.health_check"),
                    "thresholds must be at least 1",
                );
            }
            if hc.expected_status[0] > hc.expected_status[1] {
                push(
                    issues,
                    format!("{path}.health_check.expected_status"),
                    "must be [min, max] with min <= max",
                );
            }
        }
        if c.outlier.max_ejection_percent > 100 {
            push(
                issues,
                format!("{path}.outlier.max_ejection_percent"),
                "must be at most 100",
            );
        }
        if c.outlier.base_ejection > c.outlier.max_ejection {
            push(
                issues,
                format!("{path}.outlier.base_ejection"),
                "must not exceed max_ejection",
            );
        }
        if !(0.0..=1.0).contains(&c.retry.budget_ratio) {
            push(
                issues,
                format!("{path}.retry.budget_ratio"),
                "must be between 0.0 and 1.0",
            );
        }
        if c.retry.attempts > 5 {
            push(
                issues,
                format!("{path}.retry.attempts"),
                "at most 5 extra attempts",
            );
        }
        let tls = c.tls.as_ref().and_then(|t| {
            crate::tls::client_config(t, &format!("{path}.tls"), c.protocol.is_h2(), issues)
        });
        if issues.len() > before {
            return None;
        }
        let ring = if c.lb == LbPolicy::Hash {
            build_ring(&endpoints)
        } else {
            Vec::new()
        };
        Some(Cluster {
            name: c.name.as_str().into(),
            version: c.version.as_str().into(),
            endpoints,
            lb: c.lb,
            hash_on,
            ring,
            raw: c.clone(),
            tls,
        })
    }
}

/// Points on the consistent-hash ring per unit of weight.
const RING_POINTS_PER_WEIGHT: u32 = 160;

fn build_ring(endpoints: &[Endpoint]) -> Vec<(u64, u32)> {
    let mut ring = Vec::new();
    for (i, e) in endpoints.iter().enumerate() {
        for v in 0..e.weight * RING_POINTS_PER_WEIGHT {
            let key = format!("{}#{v}", e.label);
            ring.push((xxhash_rust::xxh3::xxh3_64(key.as_bytes()), i as u32));
        }
    }
    ring.sort_unstable();
    ring
}
