//! The edge phases, between routing and any answer: CORS preflights, IP
//! rules, authentication and ACLs ([`admit`], which also applies the route's
//! rate limits), then the body limit ([`body_limit`]).
//!
//! A refusal is a [`GatewayError`] (answered by the responder); headers for
//! whatever answer is sent (CORS, auth challenges, rate-limit headers) are
//! appended to `extra`, which every answer writes.
//!
//! Depends on `exchange`, `spec`, `state` and `hypergate-edge`.

use crate::exchange::View;
use crate::routing::RequestInfo;
use crate::spec::Route;
use crate::state::{Installed, ShardCtx};
use hypergate_core::error::{ErrorKind, GatewayError};
use hypergate_core::http::codec::{BodyFraming, Reject};
use hypergate_edge::auth::{AuthFailure, AuthMethod, Credentials};
use hypergate_edge::ratelimit::{RateDecision, RateKey};
use std::net::{IpAddr, SocketAddr};

pub use hypergate_edge::EdgeReject;

/// What the edge let through.
pub enum Admitted {
    /// Go on, as this consumer (if the route authenticates).
    Consumer(Option<usize>),
    /// A CORS preflight to answer with 204 (its headers are in `extra`).
    Preflight,
}

/// Admits a routed request or refuses it: CORS, IP rules, authentication,
/// groups, then rate limits (consumers are counted once admitted).
pub async fn admit(
    ctx: &ShardCtx,
    inst: &Installed,
    route_index: usize,
    view: &View<'_>,
    peer: SocketAddr,
    extra: &mut Vec<u8>,
) -> Result<Admitted, GatewayError> {
    let route = &inst.config.routes[route_index];
    let (consumer, client_ip) = match check(ctx, inst, route, view, peer, extra)? {
        Verdict::Continue {
            consumer,
            client_ip,
        } => (consumer, client_ip),
        Verdict::Preflight => return Ok(Admitted::Preflight),
    };
    rate_limit(ctx, inst, route, view, consumer, client_ip, extra).await?;
    if let Some(c) = consumer {
        ctx.count_consumer(inst, route_index, c);
    }
    Ok(Admitted::Consumer(consumer))
}

/// Refuses a body that says up front it is over the route's limit (a chunked
/// one is counted as it streams). Returns the limit (0: none).
pub fn body_limit(inst: &Installed, route: &Route, view: &View<'_>) -> Result<u64, GatewayError> {
    let max = route
        .policy
        .protection
        .max_body_bytes
        .unwrap_or(inst.config.raw.limits.max_body_bytes);
    match view.head.body {
        BodyFraming::Length(n) if max > 0 && n > max => Err(GatewayError::new(
            ErrorKind::Rejected(Reject::BodyTooLarge),
            "request body exceeds the limit",
        )),
        _ => Ok(max),
    }
}

/// What the policy checks decided.
enum Verdict {
    /// Go on.
    Continue {
        /// Authenticated consumer, if the route authenticates.
        consumer: Option<usize>,
        /// Client address after the trusted-proxy rule.
        client_ip: IpAddr,
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

/// CORS, IP rules, authentication and groups.
fn check(
    ctx: &ShardCtx,
    inst: &Installed,
    route: &Route,
    view: &View<'_>,
    peer: SocketAddr,
    extra: &mut Vec<u8>,
) -> Result<Verdict, GatewayError> {
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
    let refuse = |r: EdgeReject, kind: ErrorKind, message: &'static str| {
        ctx.stats.edge_reject(r);
        Err(GatewayError::new(kind, message))
    };
    if let Some(cors) = &policy.protection.cors {
        if let Some(origin) = RequestInfo::header(view, "origin") {
            let preflight_method = RequestInfo::header(view, "access-control-request-method");
            match (cors.allowed_origin(origin), preflight_method) {
                (Some(allowed), Some(method)) if view.method() == "OPTIONS" => {
                    let req_headers = RequestInfo::header(view, "access-control-request-headers");
                    if cors.preflight_allowed(method, req_headers) {
                        cors.write_preflight_headers(extra, allowed, req_headers);
                        return Ok(Verdict::Preflight);
                    }
                    return refuse(
                        EdgeReject::CorsDenied,
                        ErrorKind::CorsDenied,
                        "CORS preflight not allowed for this method or headers",
                    );
                }
                (None, Some(_)) if view.method() == "OPTIONS" => {
                    return refuse(
                        EdgeReject::CorsDenied,
                        ErrorKind::CorsDenied,
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
            ErrorKind::IpDenied,
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
                return refuse(
                    EdgeReject::Unauthenticated,
                    ErrorKind::Unauthenticated(f.label()),
                    message,
                );
            }
        }
        if let Some(c) = consumer {
            let groups = &cfg.auth.consumers[c].groups;
            if !policy.groups.is_empty() && !policy.groups.iter().any(|g| groups.contains(g)) {
                return refuse(
                    EdgeReject::Forbidden,
                    ErrorKind::Forbidden,
                    "the consumer may not use this route",
                );
            }
        }
    }
    Ok(Verdict::Continue {
        consumer,
        client_ip,
    })
}

/// Applies the route's rate limits in order; their headers go to `extra`.
async fn rate_limit(
    ctx: &ShardCtx,
    inst: &Installed,
    route: &Route,
    view: &View<'_>,
    consumer: Option<usize>,
    client_ip: IpAddr,
    extra: &mut Vec<u8>,
) -> Result<(), GatewayError> {
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
                return Err(GatewayError::new(
                    ErrorKind::RateLimited,
                    "rate limit exceeded; see Retry-After",
                ));
            }
            RateDecision::Unavailable => {
                ctx.stats.edge_reject(EdgeReject::RateLimitUnavailable);
                return Err(GatewayError::new(
                    ErrorKind::RateLimitUnavailable,
                    "the rate-limit backend is unreachable",
                ));
            }
        }
    }
    Ok(())
}
