//! Per-route protections: IP allow/deny lists, CORS, body limits, and the
//! process-wide connection caps; plus the trusted-proxy rule for the client IP.
//!
//! These are validated into plain data once per config. The connection caps
//! are the only shared state: a total and a per-IP count in atomics, touched
//! when a connection opens and closes, never per request.

use crate::config::raw::{CorsConfig, ProtectionConfig, RoutePolicyConfig};
use crate::config::ConfigIssue;
use ipnet::IpNet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Parses CIDR strings (a bare address is a /32 or /128).
pub fn parse_nets(list: &[String], path: &str, issues: &mut Vec<ConfigIssue>) -> Vec<IpNet> {
    list.iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let parsed = s
                .parse::<IpNet>()
                .ok()
                .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from));
            if parsed.is_none() {
                issues.push(ConfigIssue {
                    path: format!("{path}[{i}]"),
                    reason: format!("invalid CIDR {s:?}"),
                });
            }
            parsed
        })
        .collect()
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the
/// right-most untrusted address of `X-Forwarded-For`.
pub fn client_ip(peer: IpAddr, xff: &[&[u8]], trusted: &[IpNet]) -> IpAddr {
    if trusted.is_empty() || !trusted.iter().any(|n| n.contains(&peer)) {
        return peer;
    }
    let mut client = peer;
    for value in xff.iter().rev() {
        for part in value.rsplit(|b| *b == b',') {
            let Some(ip) = std::str::from_utf8(part.trim_ascii())
                .ok()
                .and_then(|s| s.parse::<IpAddr>().ok())
            else {
                return client;
            };
            client = ip;
            if !trusted.iter().any(|n| n.contains(&ip)) {
                return ip;
            }
        }
    }
    client
}

/// A validated CORS policy.
#[derive(Debug)]
pub struct Cors {
    /// Allowed origins, `*` for any.
    pub origins: Vec<String>,
    /// `Access-Control-Allow-Methods` value.
    pub methods: String,
    /// Allowed request headers (lowercase).
    pub headers: Vec<String>,
    /// `Access-Control-Expose-Headers` value.
    pub expose: String,
    /// Credentials allowed.
    pub credentials: bool,
    /// Preflight cache time.
    pub max_age: Duration,
}

impl Cors {
    fn from_raw(c: &CorsConfig, path: &str, issues: &mut Vec<ConfigIssue>) -> Cors {
        if c.allow_credentials && c.allow_origins.iter().any(|o| o == "*") {
            issues.push(ConfigIssue {
                path: format!("{path}.allow_credentials"),
                reason: "cannot be combined with the \"*\" origin".into(),
            });
        }
        if c.allow_origins.is_empty() {
            issues.push(ConfigIssue {
                path: format!("{path}.allow_origins"),
                reason: "at least one origin is required".into(),
            });
        }
        Cors {
            origins: c.allow_origins.clone(),
            methods: c.allow_methods.join(", "),
            headers: c
                .allow_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            expose: c.expose_headers.join(", "),
            credentials: c.allow_credentials,
            max_age: c.max_age,
        }
    }

    /// The origin value to echo when `origin` is allowed.
    pub fn allowed_origin<'a>(&'a self, origin: &'a [u8]) -> Option<&'a [u8]> {
        if self.origins.iter().any(|o| o.as_bytes() == origin) {
            Some(origin)
        } else if self.origins.iter().any(|o| o == "*") {
            Some(b"*")
        } else {
            None
        }
    }

    /// Whether a preflight's method and headers are allowed.
    pub fn preflight_allowed(&self, method: &[u8], headers: Option<&[u8]>) -> bool {
        let method_ok = self
            .methods
            .split(", ")
            .any(|m| m.as_bytes().eq_ignore_ascii_case(method));
        let headers_ok = headers.is_none_or(|hs| {
            crate::http::codec::tokens(hs).all(|h| {
                self.headers
                    .iter()
                    .any(|a| a == "*" || a.as_bytes().eq_ignore_ascii_case(h))
            })
        });
        method_ok && headers_ok
    }

    /// Appends the CORS headers of an actual (non-preflight) response.
    pub fn write_response_headers(&self, out: &mut Vec<u8>, origin: &[u8]) {
        use crate::http::write_header;
        write_header(out, b"access-control-allow-origin", origin);
        if origin != b"*" {
            write_header(out, b"vary", b"Origin");
        }
        if self.credentials {
            write_header(out, b"access-control-allow-credentials", b"true");
        }
        if !self.expose.is_empty() {
            write_header(
                out,
                b"access-control-expose-headers",
                self.expose.as_bytes(),
            );
        }
    }

    /// Appends the headers of a successful preflight answer.
    pub fn write_preflight_headers(
        &self,
        out: &mut Vec<u8>,
        origin: &[u8],
        req_headers: Option<&[u8]>,
    ) {
        use crate::http::write_header;
        self.write_response_headers(out, origin);
        write_header(
            out,
            b"access-control-allow-methods",
            self.methods.as_bytes(),
        );
        if let Some(h) = req_headers {
            write_header(out, b"access-control-allow-headers", h);
        }
        out.extend_from_slice(b"access-control-max-age: ");
        crate::http::write_u64(out, self.max_age.as_secs());
        out.extend_from_slice(b"\r\n");
    }
}

/// A route's validated edge policy (auth and rate limits resolved elsewhere).
#[derive(Debug, Default)]
pub struct RouteProtection {
    /// Denied client networks.
    pub deny: Vec<IpNet>,
    /// Allowed client networks (empty: all).
    pub allow: Vec<IpNet>,
    /// Body limit overriding `limits.max_body_bytes`.
    pub max_body_bytes: Option<u64>,
    /// CORS.
    pub cors: Option<Cors>,
}

impl RouteProtection {
    /// Validates the protection part of a route policy.
    pub fn from_raw(p: &RoutePolicyConfig, path: &str, issues: &mut Vec<ConfigIssue>) -> Self {
        RouteProtection {
            deny: parse_nets(&p.deny_ips, &format!("{path}.deny_ips"), issues),
            allow: parse_nets(&p.allow_ips, &format!("{path}.allow_ips"), issues),
            max_body_bytes: p.max_body_bytes,
            cors: p
                .cors
                .as_ref()
                .map(|c| Cors::from_raw(c, &format!("{path}.cors"), issues)),
        }
    }

    /// Whether a client address may use the route.
    pub fn ip_allowed(&self, ip: IpAddr) -> bool {
        !self.deny.iter().any(|n| n.contains(&ip))
            && (self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip)))
    }
}

/// Process-wide connection caps, shared by all shards.
pub struct ConnectionLimits {
    max_total: usize,
    max_per_ip: usize,
    total: AtomicUsize,
    per_ip: papaya::HashMap<IpAddr, Arc<AtomicU32>>,
}

/// An admitted connection; releases its slots when dropped.
pub struct ConnectionPermit {
    limits: Arc<ConnectionLimits>,
    ip: Option<(IpAddr, Arc<AtomicU32>)>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.limits.total.fetch_sub(1, Ordering::Relaxed);
        if let Some((ip, count)) = self.ip.take() {
            if count.fetch_sub(1, Ordering::AcqRel) == 1 {
                // Last connection of this IP: drop the entry if nobody re-took it,
                // so a flood of addresses leaves nothing behind.
                let map = self.limits.per_ip.pin();
                map.remove_if(&ip, |_, c| c.load(Ordering::Acquire) == 0)
                    .ok();
            }
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnRefusal {
    /// `max_connections` reached.
    Total,
    /// `max_connections_per_ip` reached.
    PerIp,
}

impl ConnectionLimits {
    /// Caps from config (0 means unlimited).
    pub fn new(p: &ProtectionConfig) -> Arc<Self> {
        Arc::new(ConnectionLimits {
            max_total: p.max_connections,
            max_per_ip: p.max_connections_per_ip,
            total: AtomicUsize::new(0),
            per_ip: papaya::HashMap::new(),
        })
    }

    /// Admits a new connection from `ip`, or says which cap it hit.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionPermit, ConnRefusal> {
        let total = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        let mut permit = ConnectionPermit {
            limits: self.clone(),
            ip: None,
        };
        if self.max_total > 0 && total > self.max_total {
            return Err(ConnRefusal::Total);
        }
        if self.max_per_ip > 0 {
            let map = self.per_ip.pin();
            let count = map
                .get_or_insert_with(ip, || Arc::new(AtomicU32::new(0)))
                .clone();
            let n = count.fetch_add(1, Ordering::AcqRel) + 1;
            permit.ip = Some((ip, count));
            if n as usize > self.max_per_ip {
                return Err(ConnRefusal::PerIp);
            }
        }
        Ok(permit)
    }

    /// Client IPs currently holding connections (for metrics).
    pub fn tracked_ips(&self) -> usize {
        self.per_ip.pin().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ip_honours_only_trusted_proxies() {
        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "10.1.1.1".parse().unwrap();
        let xff: &[&[u8]] = &[b"203.0.113.7, 10.2.2.2"];
        assert_eq!(
            client_ip(peer, xff, &trusted),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        let outsider: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(client_ip(outsider, xff, &trusted), outsider);
        assert_eq!(client_ip(peer, &[b"garbage"], &trusted), peer);
    }

    #[test]
    fn connection_caps() {
        let limits = ConnectionLimits::new(&ProtectionConfig {
            trusted_proxies: vec![],
            max_connections: 3,
            max_connections_per_ip: 2,
        });
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let p1 = limits.admit(a).unwrap();
        let _p2 = limits.admit(a).unwrap();
        assert_eq!(limits.admit(a).err(), Some(ConnRefusal::PerIp));
        let _p3 = limits.admit(b).unwrap();
        assert_eq!(limits.admit(b).err(), Some(ConnRefusal::Total));
        drop(p1);
        assert!(limits.admit(a).is_ok());
    }

    #[test]
    fn ip_rules_and_cors() {
        let mut issues = Vec::new();
        let p = RouteProtection::from_raw(
            &RoutePolicyConfig {
                deny_ips: vec!["127.0.0.2".into()],
                allow_ips: vec!["127.0.0.0/8".into()],
                ..Default::default()
            },
            "routes[0].policy",
            &mut issues,
        );
        assert!(issues.is_empty());
        assert!(p.ip_allowed("127.0.0.1".parse().unwrap()));
        assert!(!p.ip_allowed("127.0.0.2".parse().unwrap()));
        assert!(!p.ip_allowed("10.0.0.1".parse().unwrap()));
        parse_nets(&["nope".into()], "x", &mut issues);
        assert_eq!(issues[0].path, "x[0]");
    }
}
