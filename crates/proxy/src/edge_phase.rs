//! The edge-policy phase: CORS preflights, IP rules, authentication and ACLs.
//!
//! Runs after routing and before any upstream work. Its verdict either lets the
//! request continue (with the authenticated consumer) or names the answer the
//! gateway gives itself. Headers for the final response (CORS, auth challenges)
//! are appended to `extra`, which every response path writes.

use crate::pipeline::View;
use crate::routing::RequestInfo;
use crate::spec::Route;
use crate::state::{Installed, ShardCtx};
use hypergate_edge::auth::{AuthFailure, AuthMethod, Credentials};
use hypergate_edge::ratelimit::{RateDecision, RateKey};
use std::net::{IpAddr, SocketAddr};

pub use hypergate_edge::EdgeReject;

/// What the phase decided.
pub enum Verdict {
    /// Go on to the upstream (or the route's direct answer).
    Continue {
        /// Authenticated consumer, if the route authenticates.
        consumer: Option<usize>,
        /// Client address after the trusted-proxy rule.
        client_ip: IpAddr,
    },
    /// Answer with an error.
    Refuse {
        /// Status.
        status: u16,
        /// Error type.
        kind: &'static str,
        /// Message.
        message: &'static str,
    },
    /// Answer a CORS preflight with 204 (headers already in `extra`).
    Preflight,
}

impl Credentials for View<'_> {
    fn header(&self, lowercase_name: &str) -> Option<&[u8]> {
        RequestInfo::header(self, lowercase_name)
    }
    fn query(&self) -> &str {
        RequestInfo::query(self)
    }
}

/// Runs the phase for a routed request.
pub fn check(
    ctx: &ShardCtx,
    inst: &Installed,
    route: &Route,
    view: &View<'_>,
    peer: SocketAddr,
    extra: &mut Vec<u8>,
) -> Verdict {
    let policy = &route.policy;
    let cfg = &inst.config;
    let client_ip = if cfg.trusted_proxies.is_empty() {
        peer.ip()
    } else {
        let mut xff: [&[u8]; 8] = [&[]; 8];
        let mut n = 0;
        for v in view.header_values("x-forwarded-for") {
            if n < xff.len() {
                xff[n] = v;
                n += 1;
            }
        }
        hypergate_edge::policy::client_ip(peer.ip(), &xff[..n], &cfg.trusted_proxies)
    };
    let refuse = |r: EdgeReject, status, kind, message| {
        ctx.stats.edge_reject(r);
        Verdict::Refuse {
            status,
            kind,
            message,
        }
    };
    if let Some(cors) = &policy.protection.cors {
        if let Some(origin) = RequestInfo::header(view, "origin") {
            let preflight_method = RequestInfo::header(view, "access-control-request-method");
            match (cors.allowed_origin(origin), preflight_method) {
                (Some(allowed), Some(method)) if view.method() == "OPTIONS" => {
                    let req_headers = RequestInfo::header(view, "access-control-request-headers");
                    if cors.preflight_allowed(method, req_headers) {
                        cors.write_preflight_headers(extra, allowed, req_headers);
                        return Verdict::Preflight;
                    }
                    return refuse(
                        EdgeReject::CorsDenied,
                        403,
                        "cors_denied",
                        "CORS preflight not allowed for this method or headers",
                    );
                }
                (None, Some(_)) if view.method() == "OPTIONS" => {
                    return refuse(
                        EdgeReject::CorsDenied,
                        403,
                        "cors_denied",
                        "origin not allowed",
                    );
                }
                (Some(allowed), _) => cors.write_response_headers(extra, allowed),
                (None, _) => {}
            }
        }
    }
    if !policy.protection.ip_allowed(client_ip) {
        return refuse(
            EdgeReject::IpDenied,
            403,
            "ip_denied",
            "the client address may not use this route",
        );
    }
    let mut consumer = None;
    if !policy.auth.is_empty() {
        match cfg.auth.authenticate(view, &policy.auth, &ctx.token_cache) {
            Ok(c) => consumer = Some(c),
            Err(f) => {
                ctx.stats.auth_failure(f);
                let challenge: &[u8] = if policy.auth.contains(&AuthMethod::Jwt) {
                    b"Bearer realm=\"hypergate\""
                } else {
                    b"ApiKey realm=\"hypergate\""
                };
                hypergate_core::http::write_header(extra, b"www-authenticate", challenge);
                let message = match f {
                    AuthFailure::Missing => "credentials are required",
                    AuthFailure::UnknownKey => "the API key is not valid",
                    AuthFailure::Expired => "the token has expired",
                    AuthFailure::NotYetValid => "the token is not valid yet",
                    _ => "the credentials are not valid",
                };
                return refuse(EdgeReject::Unauthenticated, 401, f.label(), message);
            }
        }
        if let Some(c) = consumer {
            let groups = &cfg.auth.consumers[c].groups;
            if !policy.groups.is_empty() && !policy.groups.iter().any(|g| groups.contains(g)) {
                return refuse(
                    EdgeReject::Forbidden,
                    403,
                    "forbidden",
                    "the consumer may not use this route",
                );
            }
        }
    }
    Verdict::Continue {
        consumer,
        client_ip,
    }
}

/// Applies the route's rate limits in order; on success their headers are in
/// `extra`, otherwise the answer to give: `(status, type, message)`.
pub async fn rate_limit(
    ctx: &ShardCtx,
    inst: &Installed,
    route: &Route,
    view: &View<'_>,
    consumer: Option<usize>,
    client_ip: IpAddr,
    extra: &mut Vec<u8>,
) -> Result<(), (u16, &'static str, &'static str)> {
    for &i in &route.policy.rate_limits {
        let policy = &inst.config.rate_limits[i];
        let mut ip = [0u8; 16];
        let key: &[u8] = match &policy.key {
            RateKey::Consumer => {
                consumer.map_or(&b""[..], |c| inst.config.auth.consumers[c].name.as_bytes())
            }
            RateKey::ClientIp => match client_ip {
                IpAddr::V4(v4) => {
                    ip[..4].copy_from_slice(&v4.octets());
                    &ip[..4]
                }
                IpAddr::V6(v6) => {
                    ip.copy_from_slice(&v6.octets());
                    &ip[..]
                }
            },
            RateKey::Route => route.name.as_bytes(),
            RateKey::Header(h) => RequestInfo::header(view, h).unwrap_or_default(),
        };
        match ctx.limiter.check(policy, key).await {
            RateDecision::Allowed(headers) => headers.write(extra),
            RateDecision::Limited {
                headers,
                retry_after_secs,
            } => {
                headers.write(extra);
                extra.extend_from_slice(b"retry-after: ");
                hypergate_core::http::write_u64(extra, retry_after_secs);
                extra.extend_from_slice(b"\r\n");
                ctx.stats.edge_reject(EdgeReject::RateLimited);
                return Err((429, "rate_limited", "rate limit exceeded; see Retry-After"));
            }
            RateDecision::Unavailable => {
                ctx.stats.edge_reject(EdgeReject::RateLimitUnavailable);
                return Err((
                    503,
                    "rate_limit_unavailable",
                    "the rate-limit backend is unreachable",
                ));
            }
        }
    }
    Ok(())
}
