//! Validated rate-limit policies: [`RateLimitPolicy::from_raw`] checks one
//! `[[rate_limits]]` entry and precomputes its GCRA parameters and lease sizes.

use super::gcra::{Gcra, MAX_WINDOWS};
use crate::config::edge::{RateLimitConfig, RedisConfig};
use crate::config::ConfigIssue;
use std::sync::Arc;
use std::time::Duration;

/// How long a shard may keep tokens it leased from the process-wide budget.
pub const LOCAL_LEASE_TTL: Duration = Duration::from_millis(50);
/// How long a shard may keep tokens it leased from Redis.
pub const REDIS_LEASE_TTL: Duration = Duration::from_millis(200);
/// A lease holds at most `rate × ttl / LEASE_DIVISOR` tokens.
pub const LEASE_DIVISOR: u64 = 8;
/// Largest lease, whatever the rate.
pub const MAX_LEASE: u64 = 4096;
/// Fastest window allowed: one token per microsecond (1 000 000 requests per second per key).
const MIN_INTERVAL_NS: u64 = 1_000;
/// Longest window allowed.
const MAX_PER: Duration = Duration::from_secs(31 * 24 * 3600);
/// Most distinct keys one policy may track.
const MAX_MAX_KEYS: usize = 100_000_000;

/// What a policy counts requests by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateKey {
    /// The authenticated consumer's name (unauthenticated requests share one key).
    Consumer,
    /// The client IP (after the trusted-proxy `X-Forwarded-For` rule).
    ClientIp,
    /// The route: one budget for everyone on the route.
    Route,
    /// A request header's value (lowercase name).
    Header(String),
}

/// Where the budget lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateBackend {
    /// This process: all shards lease from one lock-free table.
    Local,
    /// A Redis server shared by every gateway process configured with it.
    Redis,
}

/// What Redis being unreachable means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureMode {
    /// Admit the request (counted, logged).
    Open,
    /// Refuse it with 503 (counted, logged).
    Closed,
}

/// One window of a policy, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RateWindow {
    /// Requests allowed per `per`.
    pub requests: u64,
    /// Window length.
    pub per: Duration,
    /// Requests allowed at once from a full bucket.
    pub burst: u64,
}

/// A validated rate-limit policy. Built during config validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitPolicy {
    /// Unique name (letters, digits, `_`, `-`, `.`, `:`), referenced by routes.
    pub name: Arc<str>,
    /// What requests are counted by.
    pub key: RateKey,
    /// Windows (1 to 4); a request must fit all of them.
    pub windows: Vec<RateWindow>,
    /// Most distinct keys tracked; keys beyond share one overflow bucket.
    pub max_keys: usize,
    /// Where the budget lives.
    pub backend: RateBackend,
    /// With Redis unreachable: admit or refuse.
    pub failure_mode: FailureMode,
    pub(crate) gcra: [Gcra; MAX_WINDOWS],
}

/// The parts of a policy that define its buckets: state survives a reload when these are equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct BucketSpec {
    pub key: RateKey,
    pub backend: RateBackend,
    pub windows: Vec<RateWindow>,
}

impl RateLimitPolicy {
    /// Validates one raw policy; pushes "path: reason" issues (path like
    /// `rate_limits[2].limits[0].per`) and returns `None` on error.
    ///
    /// `redis` is the `[redis]` section, required by `backend = "redis"`; check
    /// the section itself once with [`validate_redis`]. Duplicate policy names
    /// and route references are the caller's to check.
    pub fn from_raw(
        raw: &RateLimitConfig,
        path: &str,
        redis: Option<&RedisConfig>,
        issues: &mut Vec<ConfigIssue>,
    ) -> Option<RateLimitPolicy> {
        let before = issues.len();
        let mut issue = |field: &str, reason: String| {
            issues.push(ConfigIssue {
                path: format!("{path}.{field}"),
                reason,
            })
        };
        if raw.name.is_empty()
            || !raw
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b))
        {
            issue(
                "name",
                format!(
                    "{:?}: use letters, digits, '_', '-', '.' or ':' (the name appears in headers, metrics and Redis keys)",
                    raw.name
                ),
            );
        }
        let key = match raw.key.as_str() {
            "consumer" => Some(RateKey::Consumer),
            "client_ip" => Some(RateKey::ClientIp),
            "route" => Some(RateKey::Route),
            k => match k.strip_prefix("header:") {
                Some(name) if !name.is_empty() && name.bytes().all(is_tchar) => {
                    Some(RateKey::Header(name.to_ascii_lowercase()))
                }
                Some(_) => {
                    issue("key", format!("{k:?}: not a valid header name"));
                    None
                }
                None => {
                    issue(
                        "key",
                        format!("{k:?}: expected \"consumer\", \"client_ip\", \"route\" or \"header:NAME\""),
                    );
                    None
                }
            },
        };
        let backend = match raw.backend.as_str() {
            "local" => Some(RateBackend::Local),
            "redis" if redis.is_none() => {
                issue("backend", "\"redis\" needs a [redis] section".into());
                None
            }
            "redis" => Some(RateBackend::Redis),
            b => {
                issue("backend", format!("{b:?}: expected \"local\" or \"redis\""));
                None
            }
        };
        let failure_mode = match raw.failure_mode.as_str() {
            "open" => Some(FailureMode::Open),
            "closed" => Some(FailureMode::Closed),
            m => {
                issue(
                    "failure_mode",
                    format!("{m:?}: expected \"open\" or \"closed\""),
                );
                None
            }
        };
        if raw.max_keys == 0 || raw.max_keys > MAX_MAX_KEYS {
            issue("max_keys", format!("must be between 1 and {MAX_MAX_KEYS}"));
        }
        if raw.limits.is_empty() || raw.limits.len() > MAX_WINDOWS {
            issue("limits", format!("give 1 to {MAX_WINDOWS} windows"));
        }
        let mut windows = Vec::new();
        let mut gcra = [Gcra { t: 1, cap: 1 }; MAX_WINDOWS];
        for (i, l) in raw.limits.iter().enumerate().take(MAX_WINDOWS) {
            let at = |f: &str| format!("limits[{i}].{f}");
            let burst = l.burst.unwrap_or(l.requests);
            let per_ns = l.per.as_nanos();
            if l.requests == 0 {
                issue(&at("requests"), "must be at least 1".into());
                continue;
            }
            if l.per.is_zero() || l.per > MAX_PER {
                issue(&at("per"), "must be between 1ns and 31 days".into());
                continue;
            }
            let t = per_ns.div_ceil(l.requests as u128) as u64;
            if t < MIN_INTERVAL_NS {
                issue(
                    &at("requests"),
                    format!(
                        "{} per {:?} is faster than 1 000 000 per second per key",
                        l.requests, l.per
                    ),
                );
                continue;
            }
            if burst == 0 {
                issue(&at("burst"), "must be at least 1".into());
                continue;
            }
            let Some(cap) = burst.checked_mul(t).filter(|c| *c < 1 << 62) else {
                issue(&at("burst"), "too large for the window".into());
                continue;
            };
            gcra[windows.len()] = Gcra { t, cap };
            windows.push(RateWindow {
                requests: l.requests,
                per: l.per,
                burst,
            });
        }
        if issues.len() > before {
            return None;
        }
        Some(RateLimitPolicy {
            name: raw.name.as_str().into(),
            key: key?,
            windows,
            max_keys: raw.max_keys,
            backend: backend?,
            failure_mode: failure_mode?,
            gcra,
        })
    }

    /// The GCRA parameters of the configured windows.
    pub(crate) fn gcra(&self) -> &[Gcra] {
        &self.gcra[..self.windows.len()]
    }

    /// What identifies this policy's buckets across reloads.
    pub(crate) fn bucket_spec(&self) -> BucketSpec {
        BucketSpec {
            key: self.key.clone(),
            backend: self.backend,
            windows: self.windows.clone(),
        }
    }

    /// Lease TTL in nanoseconds for this policy's backend.
    pub(crate) fn lease_ttl_ns(&self) -> u64 {
        match self.backend {
            RateBackend::Local => LOCAL_LEASE_TTL.as_nanos() as u64,
            RateBackend::Redis => REDIS_LEASE_TTL.as_nanos() as u64,
        }
    }

    /// Largest lease for one shard out of `shards`: `rate × ttl / 8` for the slowest
    /// window, at most half the smallest burst split between shards, at least 1.
    pub(crate) fn max_lease(&self, shards: usize) -> u64 {
        let ttl = self.lease_ttl_ns();
        let by_rate = self
            .gcra()
            .iter()
            .map(|g| ttl / g.t / LEASE_DIVISOR)
            .min()
            .unwrap_or(1);
        let by_burst = self
            .windows
            .iter()
            .map(|w| w.burst / (2 * shards.max(1) as u64))
            .min()
            .unwrap_or(1);
        by_rate.min(by_burst).clamp(1, MAX_LEASE)
    }
}

/// Checks the `[redis]` section (once, not per policy).
pub fn validate_redis(raw: &RedisConfig, path: &str, issues: &mut Vec<ConfigIssue>) {
    if raw.address.contains('@') {
        // The address itself is not repeated: it holds a credential.
        issues.push(ConfigIssue {
            path: format!("{path}.address"),
            reason: format!(
                "must not carry credentials (`user:pass@`): set {path}.username and \
                 {path}.password (which may be `${{ENV_VAR}}`) instead"
            ),
        });
    } else if redis_connection_info(raw).is_none() {
        issues.push(ConfigIssue {
            path: format!("{path}.address"),
            reason: format!("{:?}: expected host:port", raw.address),
        });
    }
    if let Some(user) = &raw.username {
        if user.is_empty() || user.contains(char::is_whitespace) {
            issues.push(ConfigIssue {
                path: format!("{path}.username"),
                reason: "must be a non-empty name without spaces".into(),
            });
        } else if raw.password.is_none() {
            issues.push(ConfigIssue {
                path: format!("{path}.username"),
                reason: format!("needs {path}.password"),
            });
        }
    }
    if raw.timeout.is_zero() || raw.timeout > Duration::from_secs(10) {
        issues.push(ConfigIssue {
            path: format!("{path}.timeout"),
            reason: "must be between 1ms and 10s".into(),
        });
    }
}

/// How to reach and authenticate to the server of `config`: its `address`
/// (`host:port` or a `redis://` URL, without credentials) plus `username` and
/// `password`. The result holds the password in clear: build it only where the
/// connection is opened, and never print it.
pub fn redis_connection_info(config: &RedisConfig) -> Option<redis::ConnectionInfo> {
    use redis::IntoConnectionInfo;
    let address = config.address.as_str();
    let url = if address.starts_with("redis://") {
        address.to_string()
    } else {
        let (host, port) = address.rsplit_once(':')?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return None;
        }
        format!("redis://{address}/")
    };
    let mut info = url.into_connection_info().ok()?;
    info.redis.username = config.username.clone();
    // The password leaves here, into the client that sends `AUTH`.
    info.redis.password = config.password.as_ref().map(|p| p.expose().to_string());
    Some(info)
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::edge::RateWindowConfig;

    fn raw(key: &str, limits: Vec<RateWindowConfig>) -> RateLimitConfig {
        RateLimitConfig {
            name: "api".into(),
            key: key.into(),
            limits,
            max_keys: 1000,
            backend: "local".into(),
            failure_mode: "open".into(),
        }
    }

    fn window(requests: u64, per_ms: u64, burst: Option<u64>) -> RateWindowConfig {
        RateWindowConfig {
            requests,
            per: Duration::from_millis(per_ms),
            burst,
        }
    }

    #[test]
    fn valid_policy_gets_defaults_and_gcra_parameters() {
        let mut issues = Vec::new();
        let p = RateLimitPolicy::from_raw(
            &raw(
                "header:X-Tenant",
                vec![window(10, 1000, None), window(100, 60_000, Some(20))],
            ),
            "rate_limits[0]",
            None,
            &mut issues,
        )
        .unwrap();
        assert!(issues.is_empty());
        assert_eq!(p.key, RateKey::Header("x-tenant".into()));
        assert_eq!(p.windows[0].burst, 10, "burst defaults to requests");
        assert_eq!(
            p.gcra()[0],
            Gcra {
                t: 100_000_000,
                cap: 1_000_000_000
            }
        );
        assert_eq!(
            p.gcra()[1],
            Gcra {
                t: 600_000_000,
                cap: 12_000_000_000
            }
        );
        // 10/s: 50 ms × 10/s / 8 < 1 -> leases of 1 token (exact).
        assert_eq!(p.max_lease(2), 1);
    }

    #[test]
    fn lease_size_grows_with_the_rate() {
        let mut issues = Vec::new();
        let p = RateLimitPolicy::from_raw(
            &raw("route", vec![window(100_000, 1000, None)]),
            "p",
            None,
            &mut issues,
        )
        .unwrap();
        // 100 000/s × 50 ms / 8 = 625.
        assert_eq!(p.max_lease(2), 625);
        // A small burst caps it.
        let p = RateLimitPolicy::from_raw(
            &raw("route", vec![window(100_000, 1000, Some(40))]),
            "p",
            None,
            &mut issues,
        )
        .unwrap();
        assert_eq!(p.max_lease(2), 10);
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let mut issues = Vec::new();
        let mut r = raw(
            "cookie",
            vec![
                window(0, 1000, None),
                window(10, 0, None),
                window(10, 1000, Some(0)),
            ],
        );
        r.name = "bad name".into();
        r.backend = "redis".into();
        r.failure_mode = "maybe".into();
        r.max_keys = 0;
        assert!(RateLimitPolicy::from_raw(&r, "rate_limits[2]", None, &mut issues).is_none());
        let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "rate_limits[2].name",
                "rate_limits[2].key",
                "rate_limits[2].backend",
                "rate_limits[2].failure_mode",
                "rate_limits[2].max_keys",
                "rate_limits[2].limits[0].requests",
                "rate_limits[2].limits[1].per",
                "rate_limits[2].limits[2].burst",
            ]
        );
        let mut issues = Vec::new();
        let r = raw("route", vec![window(2_000_000, 1000, None)]);
        assert!(RateLimitPolicy::from_raw(&r, "p", None, &mut issues).is_none());
        assert_eq!(issues[0].path, "p.limits[0].requests");
    }

    #[test]
    fn redis_section_is_checked() {
        let mut issues = Vec::new();
        validate_redis(
            &RedisConfig {
                address: "localhost".into(),
                timeout: Duration::ZERO,
                ..RedisConfig::default()
            },
            "redis",
            &mut issues,
        );
        assert_eq!(issues.len(), 2);
        let mut issues = Vec::new();
        validate_redis(&RedisConfig::default(), "redis", &mut issues);
        assert!(issues.is_empty());
    }

    #[test]
    fn redis_credentials_go_in_their_own_fields() {
        for address in [
            "redis://:hunter2-marker@10.0.0.1:6379/",
            "redis://user:hunter2-marker@10.0.0.1:6379/0",
            "user:hunter2-marker@10.0.0.1:6379",
        ] {
            let mut issues = Vec::new();
            let cfg = RedisConfig {
                address: address.into(),
                ..RedisConfig::default()
            };
            validate_redis(&cfg, "redis", &mut issues);
            assert_eq!(issues.len(), 1, "{address}: {issues:?}");
            assert_eq!(issues[0].path, "redis.address");
            assert!(issues[0].reason.contains("redis.password"), "{issues:?}");
            assert!(!format!("{issues:?}").contains("hunter2"), "{issues:?}");
        }
        let cfg = RedisConfig {
            address: "10.0.0.1:6379".into(),
            username: Some("gateway".into()),
            password: Some(hypergate_core::secret::Secret::new("hunter2-marker")),
            ..RedisConfig::default()
        };
        let mut issues = Vec::new();
        validate_redis(&cfg, "redis", &mut issues);
        assert!(issues.is_empty(), "{issues:?}");
        let info = redis_connection_info(&cfg).unwrap();
        assert_eq!(info.redis.username.as_deref(), Some("gateway"));
        assert_eq!(info.redis.password.as_deref(), Some("hunter2-marker"));
        assert!(!format!("{cfg:?}").contains("hunter2"));
        let mut issues = Vec::new();
        let no_password = RedisConfig {
            password: None,
            ..cfg
        };
        validate_redis(&no_password, "redis", &mut issues);
        assert_eq!(issues[0].path, "redis.username");
    }
}
