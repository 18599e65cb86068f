//! Validation: raw config in, immutable index-linked [`Config`] out, or every error at once.
//!
//! References become indices (a route holds the index of its cluster), strings
//! that are matched on the hot path are pre-lowercased, header names and values
//! are checked with the `http` crate, endpoint addresses are resolved, and each
//! hash-balanced cluster gets its ring built here, once, instead of per request.

use super::raw::{self, RawConfig};
use super::ConfigIssue;
use crate::edge::ratelimit::{validate_redis, RateLimitPolicy};
use crate::routing::{PathMatch, RouteMatch, Router};
use bytes::Bytes;
pub use hypergate_core::keys::KeySource;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The validated configuration every shard runs on.
#[derive(Debug)]
pub struct Config {
    /// The file as parsed (for `/config` and reload diffs).
    pub raw: RawConfig,
    /// Number of shards, resolved (never 0).
    pub shards: usize,
    /// CPU for each shard, when pinning.
    pub shard_cpus: Vec<Option<usize>>,
    /// Admin listener address.
    pub admin_addr: SocketAddr,
    /// Data-plane listeners.
    pub listeners: Vec<ListenerSpec>,
    /// Clusters, referenced by index.
    pub clusters: Vec<Arc<Cluster>>,
    /// Routes in match order.
    pub routes: Vec<Route>,
    /// Route lookup index over `routes`.
    pub router: Router,
    /// Consumers and credential verification.
    pub auth: crate::auth::Authenticator,
    /// Proxies whose `X-Forwarded-For` is trusted.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Rate-limit policies (routes refer to them by index).
    pub rate_limits: Vec<Arc<RateLimitPolicy>>,
    /// The validated spec of the layer above the proxy (the LLM gateway:
    /// providers, whose hidden clusters are in `clusters`, aliases, budgets...).
    /// Opaque to the proxy; only that layer looks inside (`ai::spec::of`).
    pub ext: Arc<dyn std::any::Any + Send + Sync>,
    /// How request paths are made canonical.
    pub path: crate::http::path::PathPolicy,
}

/// A data-plane listener.
#[derive(Debug, Clone)]
pub struct ListenerSpec {
    /// Name for metrics.
    pub name: Arc<str>,
    /// Bound address.
    pub addr: SocketAddr,
    /// Backlog per shard socket.
    pub backlog: i32,
    /// TLS termination settings.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

pub use hypergate_upstream::cluster::{Cluster, Endpoint};

/// A validated route.
#[derive(Debug)]
pub struct Route {
    /// Name.
    pub name: Arc<str>,
    /// Match conditions.
    pub matcher: RouteMatch,
    /// What to do.
    pub action: RouteAction,
    /// Prefix rewrite: `(strip, replace)`.
    pub rewrite: Option<(String, String)>,
    /// Request header changes.
    pub request_headers: HeaderOps,
    /// Response header changes.
    pub response_headers: HeaderOps,
    /// Upstream response-head timeout (on AI routes: the call's one deadline).
    pub timeout: Duration,
    /// `Upgrade` tokens forwarded (lowercase; never `h2c`).
    pub upgrade: Vec<String>,
    /// Edge policy.
    pub policy: RoutePolicy,
}

impl Route {
    /// The first token of an `Upgrade` header value that this route forwards.
    pub fn allowed_upgrade<'v>(&self, value: &'v [u8]) -> Option<&'v [u8]> {
        crate::http::codec::tokens(value).find(|t| {
            // A protocol may carry a version (`websocket/13`); the name decides.
            let name = t.split(|b| *b == b'/').next().unwrap_or(t);
            self.upgrade
                .iter()
                .any(|u| u.as_bytes().eq_ignore_ascii_case(name))
        })
    }
}

/// A route's edge policy.
#[derive(Debug, Default)]
pub struct RoutePolicy {
    /// Accepted authentication methods (empty: none required).
    pub auth: Vec<crate::auth::AuthMethod>,
    /// Consumer groups allowed (empty: any authenticated consumer).
    pub groups: Vec<String>,
    /// IP rules, body limit, CORS.
    pub protection: crate::policy::RouteProtection,
    /// Rate-limit policies (indices into `raw.rate_limits`).
    pub rate_limits: Vec<usize>,
}

/// What a route does.
#[derive(Debug)]
pub enum RouteAction {
    /// Proxy to one cluster.
    Cluster(usize),
    /// Serve the AI API: the layer above the proxy (the LLM gateway) answers,
    /// with this route's settings in its own spec.
    Ai,
    /// Proxy to one of several clusters by weight.
    Split(Split),
    /// Answer at the gateway.
    Direct(DirectResponse),
}

/// A weighted split.
#[derive(Debug)]
pub struct Split {
    /// `(cluster index, weight)`.
    pub targets: Vec<(usize, u32)>,
    /// Sum of weights.
    pub total_weight: u32,
    /// Forcing header (lowercase).
    pub override_header: Option<String>,
    /// Forcing cookie.
    pub override_cookie: Option<String>,
    /// Stickiness key.
    pub sticky_on: Option<KeySource>,
}

/// A fixed answer.
#[derive(Debug)]
pub struct DirectResponse {
    /// Status.
    pub status: u16,
    /// Extra headers (`Content-Type`, `Location`).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Bytes,
}

/// Header changes, names lowercased. The values (secrets in the file, see
/// [`raw::HeaderOpsConfig`]) are kept ready for the wire; `Debug` shows names only.
#[derive(Default)]
pub struct HeaderOps {
    /// Appended.
    pub add: Vec<(String, String)>,
    /// Replacing.
    pub set: Vec<(String, String)>,
    /// Removed (includes the names in `set`).
    pub remove: Vec<String>,
}

impl std::fmt::Debug for HeaderOps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |ops: &[(String, String)]| -> Vec<String> {
            ops.iter()
                .map(|(name, _)| format!("{name}: {}", crate::secret::REDACTED))
                .collect()
        };
        f.debug_struct("HeaderOps")
            .field("add", &names(&self.add))
            .field("set", &names(&self.set))
            .field("remove", &self.remove)
            .finish()
    }
}

impl HeaderOps {
    /// Whether a header with this (any-case) name must be dropped from the original message.
    pub fn drops(&self, name: &[u8]) -> bool {
        self.remove
            .iter()
            .any(|r| r.as_bytes().eq_ignore_ascii_case(name))
    }
}

struct Issues(Vec<ConfigIssue>);

impl Issues {
    fn push(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.0.push(ConfigIssue {
            path: path.into(),
            reason: reason.into(),
        });
    }
}

/// Validates a raw config, returning every issue found.
pub fn validate(mut raw: RawConfig) -> Result<Config, Vec<ConfigIssue>> {
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
    let path_policy = crate::http::path::PathPolicy {
        escaped_slashes: match raw.path.escaped_slashes {
            raw::EscapedSlashes::Reject => crate::http::path::EscapedSlashAction::Reject,
            raw::EscapedSlashes::Keep => crate::http::path::EscapedSlashAction::Keep,
            raw::EscapedSlashes::Decode => crate::http::path::EscapedSlashAction::Decode,
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
            let tls = l
                .tls
                .as_ref()
                .and_then(|t| crate::tls::server_config(t, &format!("{path}.tls"), &mut issues.0));
            listeners.push(ListenerSpec {
                name: l.name.as_str().into(),
                addr,
                backlog: l.backlog,
                tls,
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
        crate::ai::spec::build(&raw.ai, raw.redis.is_some(), clusters.len(), &mut issues.0);
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
    let auth = crate::auth::Authenticator::build(&raw.consumers, &raw.auth, &mut issues.0);
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
    let trusted_proxies = crate::policy::parse_nets(
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
        let mut ai_route = None;
        if let Some(route) = validate_route(
            r,
            &path,
            &cluster_index,
            &raw,
            auth.has_jwt(),
            &ai,
            &path_policy,
            &mut ai_route,
            &mut issues,
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

    let route_names: Vec<String> = raw.routes.iter().map(|r| r.name.clone()).collect();
    crate::hypercare::validate(&raw.hypercare, &route_names, &mut issues.0);
    crate::hypercare::canary::validate(&raw.hypercare.canaries, &raw, &mut issues.0);
    crate::hypercare::windows::validate(&raw.hypercare.windows, &route_names, &mut issues.0);

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
    })
}

/// Expands `${VAR}` in the secrets that the running config hands out as they
/// are (`admin.token`, `redis.password`), once, when the file is loaded; other
/// secrets are expanded where they are compiled (provider keys in
/// `ai::spec`, JWT secrets in `auth`).
fn expand_secrets(raw: &mut RawConfig, issues: &mut Issues) {
    let fields = [
        ("admin.token", raw.admin.token.as_mut()),
        (
            "redis.password",
            raw.redis.as_mut().and_then(|r| r.password.as_mut()),
        ),
    ];
    for (path, secret) in fields {
        if let Some(secret) = secret {
            *secret =
                crate::secret::Secret::new(super::expand_env(secret.expose(), path, &mut issues.0));
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

fn parse_key_source(text: &str, path: &str, issues: &mut Issues) -> Option<KeySource> {
    KeySource::parse(text, path, &mut issues.0)
}

fn validate_cluster(c: &raw::ClusterConfig, path: &str, issues: &mut Issues) -> Option<Cluster> {
    Cluster::build(c, path, &mut issues.0)
}

fn validate_header_ops(ops: &raw::HeaderOpsConfig, path: &str, issues: &mut Issues) -> HeaderOps {
    let mut out = HeaderOps::default();
    let mut check = |kind: &str, name: &str, value: Option<&str>| -> Option<String> {
        let ok_name = http::HeaderName::from_bytes(name.as_bytes()).is_ok();
        let ok_value = value.is_none_or(|v| http::HeaderValue::from_str(v).is_ok());
        if !ok_name {
            issues.push(
                format!("{path}.{kind}"),
                format!("invalid header name {name:?}"),
            );
        } else if !ok_value {
            issues.push(format!("{path}.{kind}.{name}"), "invalid header value");
        }
        (ok_name && ok_value).then(|| name.to_ascii_lowercase())
    };
    // The values leave here for the wire (see `HeaderOps`).
    for (k, v) in &ops.add {
        if let Some(name) = check("add", k, Some(v.expose())) {
            out.add.push((name, v.expose().to_string()));
        }
    }
    for (k, v) in &ops.set {
        if let Some(name) = check("set", k, Some(v.expose())) {
            out.remove.push(name.clone());
            out.set.push((name, v.expose().to_string()));
        }
    }
    for k in &ops.remove {
        if let Some(name) = check("remove", k, None) {
            out.remove.push(name);
        }
    }
    out
}

fn validate_match(m: &raw::MatchConfig, path: &str, issues: &mut Issues) -> RouteMatch {
    let given = [&m.path_exact, &m.path_prefix, &m.path_template]
        .iter()
        .filter(|p| p.is_some())
        .count();
    if given > 1 {
        issues.push(
            format!("{path}.match"),
            "give at most one of path_exact, path_prefix, path_template",
        );
    }
    let path_match = if let Some(p) = &m.path_exact {
        PathMatch::Exact(p.clone())
    } else if let Some(p) = &m.path_prefix {
        PathMatch::prefix(p)
    } else if let Some(t) = &m.path_template {
        match PathMatch::template(t) {
            Ok(pm) => pm,
            Err(e) => {
                issues.push(format!("{path}.match.path_template"), e);
                PathMatch::Any
            }
        }
    } else {
        PathMatch::Any
    };
    for (field, p) in [
        ("path_exact", &m.path_exact),
        ("path_prefix", &m.path_prefix),
        ("path_template", &m.path_template),
    ] {
        if p.as_ref().is_some_and(|p| !p.starts_with('/')) {
            issues.push(format!("{path}.match.{field}"), "must start with '/'");
        }
    }
    let mut hosts = Vec::new();
    for (j, h) in m.hosts.iter().enumerate() {
        let host = h.to_ascii_lowercase();
        let bare = host.strip_prefix("*.").unwrap_or(&host);
        if bare.is_empty() || bare.contains('*') || bare.contains('/') {
            issues.push(
                format!("{path}.match.hosts[{j}]"),
                format!("invalid host pattern {h:?}"),
            );
        } else {
            hosts.push(host);
        }
    }
    let mut methods = Vec::new();
    for (j, meth) in m.methods.iter().enumerate() {
        if http::Method::from_bytes(meth.as_bytes()).is_err() {
            issues.push(
                format!("{path}.match.methods[{j}]"),
                format!("invalid method {meth:?}"),
            );
        } else {
            methods.push(meth.to_ascii_uppercase());
        }
    }
    let mut headers = Vec::new();
    for (j, h) in m.headers.iter().enumerate() {
        if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
            issues.push(
                format!("{path}.match.headers[{j}].name"),
                format!("invalid header name {:?}", h.name),
            );
        } else {
            headers.push((h.name.to_ascii_lowercase(), h.value.clone()));
        }
    }
    let query = m
        .query
        .iter()
        .map(|q| (q.name.clone(), q.value.clone()))
        .collect();
    RouteMatch {
        hosts,
        path: path_match,
        methods,
        headers,
        query,
    }
}

fn validate_policy(
    p: &raw::RoutePolicyConfig,
    path: &str,
    raw: &RawConfig,
    has_jwt: bool,
    issues: &mut Issues,
) -> RoutePolicy {
    let mut auth = Vec::new();
    for (i, m) in p.auth.iter().enumerate() {
        match m.as_str() {
            "api_key" => auth.push(crate::auth::AuthMethod::ApiKey),
            "jwt" if has_jwt => auth.push(crate::auth::AuthMethod::Jwt),
            "jwt" => issues.push(
                format!("{path}.auth[{i}]"),
                "jwt needs at least one [[auth.jwt]] issuer",
            ),
            other => issues.push(
                format!("{path}.auth[{i}]"),
                format!("unknown method {other:?} (api_key, jwt)"),
            ),
        }
    }
    if !p.groups.is_empty() && p.auth.is_empty() {
        issues.push(format!("{path}.groups"), "groups need an auth method");
    }
    let mut rate_limits = Vec::new();
    for (i, name) in p.rate_limits.iter().enumerate() {
        match raw.rate_limits.iter().position(|r| &r.name == name) {
            Some(idx) => rate_limits.push(idx),
            None => issues.push(
                format!("{path}.rate_limits[{i}]"),
                format!("unknown rate limit {name:?}"),
            ),
        }
    }
    let protection = crate::policy::RouteProtection::from_raw(p, path, &mut issues.0);
    RoutePolicy {
        auth,
        groups: p.groups.clone(),
        protection,
        rate_limits,
    }
}

/// The message for a route naming a cluster that did not validate: unknown, or
/// configured with errors of its own (reported at the cluster).
fn unknown_cluster(name: &str, raw: &RawConfig) -> String {
    if raw.clusters.iter().any(|c| c.name == name) {
        format!("cluster {name:?} is invalid (see its errors)")
    } else {
        format!("unknown cluster {name:?}")
    }
}

#[allow(clippy::too_many_arguments)]
fn validate_route(
    r: &raw::RouteConfig,
    path: &str,
    cluster_index: &dyn Fn(&str) -> Option<usize>,
    raw: &RawConfig,
    has_jwt: bool,
    ai: &crate::ai::spec::AiSpec,
    path_policy: &crate::http::path::PathPolicy,
    ai_route: &mut Option<crate::ai::spec::RouteAi>,
    issues: &mut Issues,
) -> Option<Route> {
    let before = issues.0.len();
    let matcher = validate_match(&r.matcher, path, issues);
    check_canonical_patterns(&r.matcher, path, path_policy, issues);
    let mut upgrade = Vec::new();
    for (i, token) in r.upgrade.iter().enumerate() {
        let at = format!("{path}.upgrade[{i}]");
        if token.eq_ignore_ascii_case("h2c") {
            issues.push(
                at,
                "h2c is never forwarded (HTTP/2 to clients is a listener protocol, not an upgrade)",
            );
        } else if token.is_empty() || !token.bytes().all(is_tchar) {
            issues.push(at, format!("{token:?} is not a protocol token"));
        } else {
            upgrade.push(token.to_ascii_lowercase());
        }
    }
    if !r.upgrade.is_empty() && (r.ai.is_some() || r.direct.is_some() || r.redirect.is_some()) {
        issues.push(
            format!("{path}.upgrade"),
            "only proxied routes (cluster or split) can forward upgrades",
        );
    }
    let actions = [
        r.cluster.is_some(),
        r.split.is_some(),
        r.direct.is_some(),
        r.redirect.is_some(),
        r.ai.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if actions != 1 {
        issues.push(
            path.to_string(),
            "exactly one of cluster, split, direct, redirect, ai is required",
        );
    }
    let mut action = None;
    if let Some(a) = &r.ai {
        *ai_route = Some(crate::ai::spec::route(a, ai, path, &mut issues.0));
        action = Some(RouteAction::Ai);
    }
    if let Some(name) = &r.cluster {
        match cluster_index(name) {
            Some(i) => action = Some(RouteAction::Cluster(i)),
            None => issues.push(format!("{path}.cluster"), unknown_cluster(name, raw)),
        }
    }
    if let Some(s) = &r.split {
        let mut targets = Vec::new();
        for (j, t) in s.targets.iter().enumerate() {
            match cluster_index(&t.cluster) {
                Some(i) => targets.push((i, t.weight)),
                None => issues.push(
                    format!("{path}.split.targets[{j}].cluster"),
                    unknown_cluster(&t.cluster, raw),
                ),
            }
        }
        for (j, t) in s.targets.iter().enumerate() {
            if t.weight > 1_000_000 {
                issues.push(
                    format!("{path}.split.targets[{j}].weight"),
                    "must be at most 1000000",
                );
            }
        }
        let total_weight: u32 = s.targets.iter().map(|t| t.weight.min(1_000_000)).sum();
        if s.targets.is_empty() {
            issues.push(
                format!("{path}.split.targets"),
                "at least one target is required",
            );
        } else if total_weight == 0 {
            issues.push(format!("{path}.split.targets"), "weights must not all be 0");
        }
        let sticky_on = s
            .sticky_on
            .as_deref()
            .and_then(|k| parse_key_source(k, &format!("{path}.split.sticky_on"), issues));
        action = Some(RouteAction::Split(Split {
            targets,
            total_weight,
            override_header: s.override_header.as_ref().map(|h| h.to_ascii_lowercase()),
            override_cookie: s.override_cookie.clone(),
            sticky_on,
        }));
    }
    if let Some(d) = &r.direct {
        if !(200..=599).contains(&d.status) {
            issues.push(
                format!("{path}.direct.status"),
                "must be between 200 and 599",
            );
        }
        if http::HeaderValue::from_str(&d.content_type).is_err() {
            issues.push(
                format!("{path}.direct.content_type"),
                "invalid header value",
            );
        }
        action = Some(RouteAction::Direct(DirectResponse {
            status: d.status,
            headers: vec![("content-type".into(), d.content_type.clone())],
            body: Bytes::from(d.body.clone()),
        }));
    }
    if let Some(rd) = &r.redirect {
        if ![301, 302, 303, 307, 308].contains(&rd.status) {
            issues.push(
                format!("{path}.redirect.status"),
                "must be 301, 302, 303, 307 or 308",
            );
        }
        if http::HeaderValue::from_str(&rd.location).is_err() || rd.location.is_empty() {
            issues.push(
                format!("{path}.redirect.location"),
                "invalid Location value",
            );
        }
        action = Some(RouteAction::Direct(DirectResponse {
            status: rd.status,
            headers: vec![("location".into(), rd.location.clone())],
            body: Bytes::new(),
        }));
    }
    let rewrite = r.rewrite.as_ref().and_then(|rw| {
        let strip = rw
            .strip_prefix
            .clone()
            .or_else(|| r.matcher.path_prefix.clone());
        match strip {
            Some(s) if s.starts_with('/') => {
                Some((s, rw.replace_prefix.clone().unwrap_or_else(|| "/".into())))
            }
            _ => {
                issues.push(
                    format!("{path}.rewrite.strip_prefix"),
                    "needs a prefix starting with '/' (or a match.path_prefix)",
                );
                None
            }
        }
    });
    let timeout = r.timeout.unwrap_or(if r.ai.is_some() {
        raw::DEFAULT_AI_ROUTE_TIMEOUT
    } else {
        raw::DEFAULT_ROUTE_TIMEOUT
    });
    if timeout.is_zero() {
        issues.push(format!("{path}.timeout"), "must be greater than zero");
    }
    let policy = validate_policy(&r.policy, &format!("{path}.policy"), raw, has_jwt, issues);
    let request_headers = validate_header_ops(
        &r.request_headers,
        &format!("{path}.request_headers"),
        issues,
    );
    let response_headers = validate_header_ops(
        &r.response_headers,
        &format!("{path}.response_headers"),
        issues,
    );
    if issues.0.len() > before {
        return None;
    }
    Some(Route {
        name: r.name.as_str().into(),
        matcher,
        action: action?,
        rewrite,
        request_headers,
        response_headers,
        timeout,
        upgrade,
        policy,
    })
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Route paths are compared with canonical request paths, so a pattern that is
/// not canonical itself (`/a//b`, `/a/./b`, `/%70`) could never match: say so.
fn check_canonical_patterns(
    m: &raw::MatchConfig,
    path: &str,
    policy: &crate::http::path::PathPolicy,
    issues: &mut Issues,
) {
    let patterns = [
        ("path_exact", m.path_exact.as_deref()),
        ("path_prefix", m.path_prefix.as_deref()),
        ("path_template", m.path_template.as_deref()),
    ];
    let mut out = Vec::new();
    for (field, pattern) in patterns {
        let Some(p) = pattern.filter(|p| p.starts_with('/')) else {
            continue;
        };
        // Template parameters are not path bytes.
        let literal: String = p.replace(['{', '}', '*'], "");
        match crate::http::path::normalize(literal.as_bytes(), policy, &mut out) {
            Ok(crate::http::path::Normalized::Unchanged) => {}
            Ok(crate::http::path::Normalized::Rewritten) if out == literal.as_bytes() => {}
            Ok(crate::http::path::Normalized::Rewritten) => issues.push(
                format!("{path}.match.{field}"),
                format!(
                    "{p:?} is not a canonical path; requests are matched in canonical form ({:?})",
                    String::from_utf8_lossy(&out)
                ),
            ),
            Err(e) => issues.push(
                format!("{path}.match.{field}"),
                format!("{p:?} can never match: {e}"),
            ),
        }
    }
}
