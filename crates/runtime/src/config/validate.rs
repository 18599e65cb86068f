//! Validation: raw config in, immutable index-linked [`Config`] out, or every error at once.
//!
//! References become indices (a route holds the index of its cluster), strings
//! that are matched on the hot path are pre-lowercased, header names and values
//! are checked with the `http` crate, endpoint addresses are resolved, and each
//! hash-balanced cluster gets its ring built here, once, instead of per request.

use hypergate_core::config::raw::{self, RawConfig};
use hypergate_core::config::ConfigIssue;
use hypergate_edge::ratelimit::{validate_redis, RateLimitPolicy};
use hypergate_proxy::routing::Router;
use hypergate_proxy::spec::{Config, ListenerSpec};
use hypergate_upstream::cluster::Cluster;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

struct Issues(Vec<ConfigIssue>);

impl Issues {
    fn push(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.0.push(ConfigIssue {
            path: path.into(),
            reason: reason.into(),
        });
    }
}

/// Validates a raw config, returning every issue found. `above` adds the
/// checks of the layers above the runtime (hypercare's), so every issue is
/// still reported in one pass, in file order.
pub fn validate(
    mut raw: RawConfig,
    above: &dyn Fn(&RawConfig, &mut Vec<ConfigIssue>),
) -> Result<Config, Vec<ConfigIssue>> {
    let mut issues = Issues(Vec::new());
    expand_secrets(&mut raw, &mut issues);

    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    let shards = if raw.server.shards == 0 {
        available
    } else {
        raw.server.shards
    };
    if shards > 1024 {
        issues.push("server.shards", "at most 1024 shards");
    }
    let shard_cpus = (0..shards)
        .map(|i| {
            if !raw.server.pin_cores {
                None
            } else if raw.server.cpu_list.is_empty() {
                Some(i % available)
            } else {
                raw.server
                    .cpu_list
                    .get(i % raw.server.cpu_list.len())
                    .copied()
            }
        })
        .collect();
    if raw.server.drain_timeout.is_zero() {
        issues.push("server.drain_timeout", "must be greater than zero");
    }

    if raw.server.drain_delay > Duration::from_secs(300) {
        issues.push("server.drain_delay", "must be at most 5m");
    }

    let admin_addr = parse_addr(&raw.admin.listen, "admin.listen", &mut issues);
    check_admin(&raw.admin, admin_addr, &mut issues);
    check_limits(&raw.limits, &mut issues);
    let path_policy = hypergate_core::http::path::PathPolicy {
        escaped_slashes: match raw.path.escaped_slashes {
            raw::EscapedSlashes::Reject => hypergate_core::http::path::EscapedSlashAction::Reject,
            raw::EscapedSlashes::Keep => hypergate_core::http::path::EscapedSlashAction::Keep,
            raw::EscapedSlashes::Decode => hypergate_core::http::path::EscapedSlashAction::Decode,
        },
        reject_double_encoding: raw.path.double_encoding == raw::RejectOrKeep::Reject,
        reject_semicolons: raw.path.semicolons == raw::RejectOrKeep::Reject,
    };
    if raw.access_log.enabled && raw.access_log.path.is_empty() {
        issues.push("access_log.path", "must be stdout, stderr or a file path");
    }
    if raw.access_log.buffer == 0 {
        issues.push("access_log.buffer", "must be at least 1");
    }
    let otlp = otlp_settings(&raw, &mut issues);

    let mut listeners = Vec::new();
    let mut names = HashSet::new();
    for (i, l) in raw.listeners.iter().enumerate() {
        let path = format!("listeners[{i}]");
        if !names.insert(l.name.as_str()) {
            issues.push(
                format!("{path}.name"),
                format!("duplicate listener name {:?}", l.name),
            );
        }
        if let Some(addr) = parse_addr(&l.address, &format!("{path}.address"), &mut issues) {
            if addr.port() != 0 && Some(addr) == admin_addr {
                issues.push(
                    format!("{path}.address"),
                    "the admin listener must not share a data-plane address",
                );
            }
            use hypergate_core::config::raw::Protocol;
            let has = |p: Protocol| l.protocols.contains(&p);
            if l.protocols.is_empty() {
                issues.push(
                    format!("{path}.protocols"),
                    "at least one protocol is required",
                );
            }
            if has(Protocol::H2) && l.tls.is_none() {
                issues.push(
                    format!("{path}.protocols"),
                    "\"h2\" is negotiated by TLS ALPN: use \"h2c\" on a plaintext listener",
                );
            }
            if has(Protocol::H2c) && l.tls.is_some() {
                issues.push(
                    format!("{path}.protocols"),
                    "\"h2c\" is HTTP/2 without TLS: use \"h2\" on a TLS listener",
                );
            }
            if l.tls.is_some() && !has(Protocol::Http1) && !has(Protocol::H2) {
                issues.push(
                    format!("{path}.protocols"),
                    "a TLS listener needs \"http1\" or \"h2\"",
                );
            }
            if l.tls.is_none() && !has(Protocol::Http1) && !has(Protocol::H2c) {
                issues.push(
                    format!("{path}.protocols"),
                    "a plaintext listener needs \"http1\" or \"h2c\"",
                );
            }
            let alpn: Vec<&[u8]> = [(Protocol::H2, &b"h2"[..]), (Protocol::Http1, b"http/1.1")]
                .into_iter()
                .filter(|(p, _)| has(*p))
                .map(|(_, id)| id)
                .collect();
            let tls = l.tls.as_ref().and_then(|t| {
                crate::tls::server_config(t, &alpn, &format!("{path}.tls"), &mut issues.0)
            });
            listeners.push(ListenerSpec {
                name: l.name.as_str().into(),
                addr,
                backlog: l.backlog,
                tls,
                h2c: has(Protocol::H2c),
            });
        }
    }
    if raw.listeners.is_empty() {
        issues.push("listeners", "at least one listener is required");
    }

    let mut clusters = Vec::new();
    let mut cluster_names = HashSet::new();
    for (i, c) in raw.clusters.iter().enumerate() {
        let path = format!("clusters[{i}]");
        if !cluster_names.insert(c.name.as_str()) {
            issues.push(
                format!("{path}.name"),
                format!("duplicate cluster name {:?}", c.name),
            );
        }
        if let Some(cluster) = validate_cluster(c, &path, &mut issues) {
            clusters.push(Arc::new(cluster));
        }
    }
    let (ai, provider_clusters) =
        hypergate_llm::spec::build(&raw.ai, raw.redis.is_some(), clusters.len(), &mut issues.0);
    for (i, c) in provider_clusters.iter().enumerate() {
        if cluster_names.contains(c.name.as_str()) {
            issues.push(
                format!("ai.providers[{i}].name"),
                format!("clashes with cluster {:?}", c.name),
            );
        }
        if let Some(cluster) = validate_cluster(c, &format!("ai.providers[{i}]"), &mut issues) {
            clusters.push(Arc::new(cluster));
        }
    }
    let user_clusters = raw.clusters.len();
    let cluster_index = |name: &str| {
        clusters[..user_clusters.min(clusters.len())]
            .iter()
            .position(|c| &*c.name == name)
    };
    let auth = hypergate_edge::auth::Authenticator::build(&raw.consumers, &raw.auth, &mut issues.0);
    if let Some(r) = &raw.redis {
        validate_redis(r, "redis", &mut issues.0);
    }
    let mut rate_limits = Vec::new();
    let mut rl_names = HashSet::new();
    for (i, r) in raw.rate_limits.iter().enumerate() {
        let path = format!("rate_limits[{i}]");
        if !rl_names.insert(r.name.as_str()) {
            issues.push(
                format!("{path}.name"),
                format!("duplicate rate limit name {:?}", r.name),
            );
        }
        if let Some(p) = RateLimitPolicy::from_raw(r, &path, raw.redis.as_ref(), &mut issues.0) {
            rate_limits.push(Arc::new(p));
        }
    }
    let trusted_proxies = hypergate_edge::policy::parse_nets(
        &raw.protection.trusted_proxies,
        "protection.trusted_proxies",
        &mut issues.0,
    );

    let mut routes = Vec::new();
    // Each route's AI settings, parallel to `routes` (the LLM layer's spec keeps them).
    let mut ai_routes = Vec::new();
    let mut route_names = HashSet::new();
    for (i, r) in raw.routes.iter().enumerate() {
        let path = format!("routes[{i}]");
        if !route_names.insert(r.name.as_str()) {
            issues.push(
                format!("{path}.name"),
                format!("duplicate route name {:?}", r.name),
            );
        }
        let ai_route =
            r.ai.as_ref()
                .map(|a| hypergate_llm::spec::route(a, &ai, &path, &mut issues.0));
        if let Some(route) = hypergate_proxy::spec::validate_route(
            r,
            &path,
            &cluster_index,
            &raw,
            auth.has_jwt(),
            &path_policy,
            &mut issues.0,
        ) {
            routes.push(route);
            ai_routes.push(ai_route);
        }
    }
    if raw.routes.is_empty() {
        issues.push("routes", "at least one route is required");
    }
    for (i, d) in raw.demo_upstreams.iter().enumerate() {
        parse_addr(
            &d.address,
            &format!("demo_upstreams[{i}].address"),
            &mut issues,
        );
        if !(0.0..=1.0).contains(&d.fail_ratio) {
            issues.push(
                format!("demo_upstreams[{i}].fail_ratio"),
                "must be between 0.0 and 1.0",
            );
        }
    }

    // The checks of the layers above (hypercare's alerts, canaries, windows).
    above(&raw, &mut issues.0);

    if !issues.0.is_empty() {
        return Err(issues.0);
    }
    let router = Router::build(routes.iter().map(|r| &r.matcher));
    let mut ai = ai;
    ai.routes = ai_routes;
    Ok(Config {
        raw,
        shards,
        shard_cpus,
        admin_addr: admin_addr.expect("no issues implies a parsed admin address"),
        listeners,
        clusters,
        routes,
        router,
        auth,
        trusted_proxies,
        rate_limits,
        ext: Arc::new(ai),
        path: path_policy,
        otlp,
    })
}

/// The OTLP exporter's settings: `[observability.otlp]` with the standard
/// `OTEL_*` environment variables over it (on with either), every problem reported.
fn otlp_settings(raw: &RawConfig, issues: &mut Issues) -> Option<hypergate_otel::OtlpSettings> {
    let env = hypergate_otel::OtlpEnv::from_vars(std::env::vars());
    let table = match (&raw.observability.otlp, env.names_an_endpoint()) {
        (Some(t), _) => t.clone(),
        (None, true) => hypergate_otel::OtlpConfig::default(),
        (None, false) => return None,
    };
    match table.validate(&env) {
        Ok(settings) => Some(settings),
        Err(found) => {
            for i in found {
                issues.push(&i.path, i.reason);
            }
            None
        }
    }
}

/// Expands `${VAR}` in the secrets that the running config hands out as they
/// are (`admin.token`, `redis.password`, `fleet.redis.password`), once, when the file is loaded; other
/// secrets are expanded where they are compiled (provider keys in
/// `ai::spec`, JWT secrets in `auth`).
fn expand_secrets(raw: &mut RawConfig, issues: &mut Issues) {
    let fields = [
        ("admin.token", raw.admin.token.as_mut()),
        (
            "redis.password",
            raw.redis.as_mut().and_then(|r| r.password.as_mut()),
        ),
        (
            "fleet.redis.password",
            raw.fleet.redis.as_mut().and_then(|r| r.password.as_mut()),
        ),
    ];
    for (path, secret) in fields {
        if let Some(secret) = secret {
            *secret = hypergate_core::secret::Secret::new(hypergate_core::config::expand_env(
                secret.expose(),
                path,
                &mut issues.0,
            ));
        }
    }
}

/// `[admin]`: a listener off loopback needs a token; the token must be sendable
/// in a header; `allowed_hosts` are bare host names.
fn check_admin(admin: &raw::AdminConfig, addr: Option<SocketAddr>, issues: &mut Issues) {
    if let Some(token) = &admin.token {
        let t = token.expose();
        if t.is_empty() {
            issues.push("admin.token", "must not be empty");
        } else if !t.bytes().all(|b| b.is_ascii_graphic()) {
            issues.push(
                "admin.token",
                "must be printable ASCII without spaces (it is sent as `Authorization: Bearer <token>`)",
            );
        }
    }
    if let Some(addr) = addr {
        if !addr.ip().is_loopback() && admin.token.is_none() {
            issues.push(
                "admin.listen",
                format!(
                    "{} is not a loopback address: an admin listener reachable from the network \
                     needs admin.token (e.g. token = \"${{HYPERGATE_ADMIN_TOKEN}}\"), or listen \
                     on 127.0.0.1",
                    addr.ip()
                ),
            );
        }
    }
    for (i, h) in admin.allowed_hosts.iter().enumerate() {
        let bare = h.trim_start_matches('[').trim_end_matches(']');
        let is_ip = bare.parse::<std::net::IpAddr>().is_ok();
        let ok = !h.is_empty()
            && (is_ip
                || h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'));
        if !ok {
            issues.push(
                format!("admin.allowed_hosts[{i}]"),
                format!("{h:?}: expected a host name or IP address, without scheme or port"),
            );
        }
    }
}

fn check_limits(l: &raw::LimitsConfig, issues: &mut Issues) {
    if l.max_request_line < 64 {
        issues.push("limits.max_request_line", "must be at least 64 bytes");
    }
    if l.max_header_bytes < 256 {
        issues.push("limits.max_header_bytes", "must be at least 256 bytes");
    }
    if l.max_headers == 0 || l.max_headers > 1024 {
        issues.push("limits.max_headers", "must be between 1 and 1024");
    }
    if l.max_response_header_bytes < 256 {
        issues.push(
            "limits.max_response_header_bytes",
            "must be at least 256 bytes",
        );
    }
    if l.h2_max_concurrent_streams == 0 || l.h2_max_concurrent_streams > 10_000 {
        issues.push(
            "limits.h2_max_concurrent_streams",
            "must be between 1 and 10000",
        );
    }
    // RFC 9113's bounds for SETTINGS_INITIAL_WINDOW_SIZE and SETTINGS_MAX_FRAME_SIZE
    // (the connection window is four times the stream's, so a quarter of the maximum).
    if !(65_535..=(1 << 29)).contains(&l.h2_initial_window) {
        issues.push(
            "limits.h2_initial_window",
            "must be between 65535 and 536870912 bytes",
        );
    }
    if !(16_384..=16_777_215).contains(&l.h2_max_frame_size) {
        issues.push(
            "limits.h2_max_frame_size",
            "must be between 16384 and 16777215 bytes",
        );
    }
    for (name, d) in [
        ("limits.tls_handshake_timeout", l.tls_handshake_timeout),
        ("limits.header_timeout", l.header_timeout),
        ("limits.idle_timeout", l.idle_timeout),
        ("limits.body_idle_timeout", l.body_idle_timeout),
        ("limits.body_timeout", l.body_timeout),
        ("limits.send_timeout", l.send_timeout),
        ("limits.tunnel_idle_timeout", l.tunnel_idle_timeout),
    ] {
        if d.is_zero() {
            issues.push(name, "must be greater than zero");
        }
    }
}

fn parse_addr(text: &str, path: &str, issues: &mut Issues) -> Option<SocketAddr> {
    hypergate_core::config::parse_addr(text, path, &mut issues.0)
}

fn validate_cluster(c: &raw::ClusterConfig, path: &str, issues: &mut Issues) -> Option<Cluster> {
    Cluster::build(c, path, &mut issues.0)
}
