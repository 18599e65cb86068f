//! `hypergate-edge`: the policy building blocks the request pipeline calls at
//! the edge, before anything goes upstream.
//!
//! - [`auth`]: consumers, API keys (hashed) and JWTs (HS/RS/ES/EdDSA, JWKS),
//!   with a per-shard cache of verified tokens.
//! - [`policy`]: per-route IP allow/deny lists, CORS, body limits, the
//!   process-wide connection caps, and the trusted-proxy rule for the client IP.
//! - [`ratelimit`]: GCRA rate limits, lock-free per shard and exact for the
//!   process, optionally cluster-wide through Redis.
//! - [`EdgeReject`]: why the edge refused a request or connection (metric labels).
//!
//! Each builds its own spec from its config section (`FooConfig` ->
//! `Foo::build`/`from_raw`, every error with its path).
//!
//! Allowed dependencies: `hypergate-core` (and third-party crates).
#![deny(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod auth;
pub mod policy;
pub mod ratelimit;

use hypergate_core::{config, http};

/// Why the edge phase refused a request (metric labels: phase and reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeReject {
    /// Client IP denied by the route's CIDR rules (403).
    IpDenied,
    /// Authentication failed (401).
    Unauthenticated,
    /// Authenticated consumer not in an allowed group (403).
    Forbidden,
    /// CORS preflight from an origin or for a method/header not allowed (403).
    CorsDenied,
    /// Rate limit exceeded (429).
    RateLimited,
    /// Rate-limit backend unreachable in fail-closed mode (503).
    RateLimitUnavailable,
    /// Connection refused: `max_connections` reached (503).
    ConnectionLimit,
    /// Connection refused: `max_connections_per_ip` reached (503).
    ConnectionLimitPerIp,
}

impl EdgeReject {
    /// All reasons, for metrics.
    pub const ALL: [EdgeReject; 8] = [
        EdgeReject::IpDenied,
        EdgeReject::Unauthenticated,
        EdgeReject::Forbidden,
        EdgeReject::CorsDenied,
        EdgeReject::RateLimited,
        EdgeReject::RateLimitUnavailable,
        EdgeReject::ConnectionLimit,
        EdgeReject::ConnectionLimitPerIp,
    ];

    /// `(phase, reason)` labels.
    pub fn labels(self) -> (&'static str, &'static str) {
        match self {
            EdgeReject::IpDenied => ("ip_filter", "ip_denied"),
            EdgeReject::Unauthenticated => ("auth", "unauthenticated"),
            EdgeReject::Forbidden => ("acl", "forbidden"),
            EdgeReject::CorsDenied => ("cors", "cors_denied"),
            EdgeReject::RateLimited => ("rate_limit", "rate_limited"),
            EdgeReject::RateLimitUnavailable => ("rate_limit", "backend_unavailable"),
            EdgeReject::ConnectionLimit => ("connection", "max_connections"),
            EdgeReject::ConnectionLimitPerIp => ("connection", "max_connections_per_ip"),
        }
    }

    /// Index into counters.
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}
