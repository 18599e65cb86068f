//! The data plane's validated config: what every shard runs on ([`Config`]),
//! with the routes, their edge policies and actions, and the route validation
//! (every error with its path, `routes[3].cluster: unknown cluster "billing"`).
//!
//! The config is assembled by the runtime from each feature's build step:
//! clusters (`hypergate-upstream`), consumers and rate limits
//! (`hypergate-edge`), routes (here), and the LLM layer's spec, which travels
//! opaque in [`Config::ext`].

use crate::routing::{PathMatch, RouteMatch, Router};
use bytes::Bytes;
use hypergate_core::config::raw::{self, RawConfig};
use hypergate_core::config::ConfigIssue;
use hypergate_core::http::path::PathPolicy;
use hypergate_core::keys::KeySource;
use hypergate_edge::auth::{AuthMethod, Authenticator};
use hypergate_edge::policy::RouteProtection;
use hypergate_edge::ratelimit::RateLimitPolicy;
pub use hypergate_upstream::cluster::{Cluster, Endpoint};
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
    pub auth: Authenticator,
    /// Proxies whose `X-Forwarded-For` is trusted.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Rate-limit policies (routes refer to them by index).
    pub rate_limits: Vec<Arc<RateLimitPolicy>>,
    /// The validated spec of the layer above the proxy (the LLM gateway:
    /// providers, whose hidden clusters are in `clusters`, aliases, budgets...).
    /// Opaque to the proxy; only that layer looks inside (`ai::spec::of`).
    pub ext: Arc<dyn std::any::Any + Send + Sync>,
    /// How request paths are made canonical.
    pub path: hypergate_core::http::path::PathPolicy,
    /// The OTLP exporter's settings (`[observability.otlp]` and the `OTEL_*`
    /// environment), when tracing is on.
    pub otlp: Option<hypergate_otel::OtlpSettings>,
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
    /// Serves HTTP/2 with prior knowledge (`h2c`, plaintext listeners).
    pub h2c: bool,
}

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
    /// How gRPC calls are judged and timed.
    pub grpc: GrpcRoute,
}

/// A route's gRPC settings, validated.
#[derive(Debug, Clone, Copy)]
pub struct GrpcRoute {
    /// Bit `c` set: `grpc-status` `c` is an error of the service.
    pub error_codes: u32,
    /// Longest deadline of a call.
    pub max_timeout: Duration,
}

impl GrpcRoute {
    /// Whether `grpc-status` `code` counts as an error of the service.
    pub fn is_error(&self, code: u8) -> bool {
        code < 32 && self.error_codes & (1 << code) != 0
    }
}

impl Route {
    /// The first token of an `Upgrade` header value that this route forwards.
    pub fn allowed_upgrade<'v>(&self, value: &'v [u8]) -> Option<&'v [u8]> {
        hypergate_core::http::codec::tokens(value).find(|t| {
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
    pub auth: Vec<AuthMethod>,
    /// Consumer groups allowed (empty: any authenticated consumer).
    pub groups: Vec<String>,
    /// IP rules, body limit, CORS.
    pub protection: RouteProtection,
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
                .map(|(name, _)| format!("{name}: {}", hypergate_core::secret::REDACTED))
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

impl Config {
    /// The sides of route `name`'s weighted split (cluster names) with their
    /// file weights, and the route's index; or why it has none.
    pub fn split_sides(&self, name: &str) -> Result<(usize, Vec<(String, u32)>), String> {
        let (i, route) = self
            .routes
            .iter()
            .enumerate()
            .find(|(_, r)| &*r.name == name)
            .ok_or_else(|| format!("no route named {name:?}"))?;
        let RouteAction::Split(split) = &route.action else {
            return Err(format!("route {name:?} has no weighted split"));
        };
        let sides = split
            .targets
            .iter()
            .map(|(c, w)| (self.clusters[*c].name.to_string(), *w))
            .collect();
        Ok((i, sides))
    }
}

/// The split weights `config` runs with under the runtime `overrides`, by route
/// index, for the routes an override changes (the others keep the file's).
pub fn route_weights(
    overrides: &hypergate_core::config::overrides::Overrides,
    config: &Config,
) -> std::collections::BTreeMap<usize, Vec<u32>> {
    use hypergate_core::config::overrides::OverrideSubject;
    overrides
        .weights
        .iter()
        .filter_map(|(subject, o)| {
            let OverrideSubject::Route(name) = subject else {
                return None;
            };
            let (i, sides) = config.split_sides(name).ok()?;
            Some((i, o.effective(&sides)?))
        })
        .collect()
}

struct Issues<'a>(&'a mut Vec<ConfigIssue>);

impl Issues<'_> {
    fn push(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.0.push(ConfigIssue {
            path: path.into(),
            reason: reason.into(),
        });
    }
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
            "api_key" => auth.push(AuthMethod::ApiKey),
            "jwt" if has_jwt => auth.push(AuthMethod::Jwt),
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
    let protection = RouteProtection::from_raw(p, path, issues.0);
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

/// Validates one `[[routes]]` entry against the validated clusters
/// (`cluster_index` finds one by name), the edge policies of `raw`, and the path
/// policy; every problem is pushed with its path, and `None` is returned when
/// there was any. An `ai` route becomes [`RouteAction::Ai`]: its AI settings are
/// the LLM layer's to validate.
pub fn validate_route(
    r: &raw::RouteConfig,
    path: &str,
    cluster_index: &dyn Fn(&str) -> Option<usize>,
    raw: &RawConfig,
    has_jwt: bool,
    path_policy: &PathPolicy,
    issues: &mut Vec<ConfigIssue>,
) -> Option<Route> {
    let issues = &mut Issues(issues);
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
    if r.ai.is_some() {
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
            .and_then(|k| KeySource::parse(k, &format!("{path}.split.sticky_on"), issues.0));
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
    let grpc = validate_grpc(&r.grpc, &format!("{path}.grpc"), timeout, issues);
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
        grpc,
    })
}

/// Validates a route's `[routes.grpc]` table.
fn validate_grpc(
    g: &raw::GrpcRouteConfig,
    path: &str,
    route_timeout: Duration,
    issues: &mut Issues<'_>,
) -> GrpcRoute {
    let mut error_codes = 0u32;
    for (i, name) in g.error_codes.iter().enumerate() {
        let code = raw::GRPC_CODES
            .iter()
            .position(|c| c.eq_ignore_ascii_case(name))
            .or_else(|| {
                name.parse::<usize>()
                    .ok()
                    .filter(|c| *c < raw::GRPC_CODES.len())
            });
        match code {
            Some(0) => issues.push(format!("{path}.error_codes[{i}]"), "OK is never an error"),
            Some(c) => error_codes |= 1 << c,
            None => issues.push(
                format!("{path}.error_codes[{i}]"),
                format!(
                    "{name:?} is not a gRPC status code (expected one of {} or 1..16)",
                    raw::GRPC_CODES[1..].join(", ")
                ),
            ),
        }
    }
    if g.max_timeout.is_some_and(|t| t.is_zero()) {
        issues.push(format!("{path}.max_timeout"), "must be greater than zero");
    }
    GrpcRoute {
        error_codes,
        max_timeout: g.max_timeout.unwrap_or(route_timeout),
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Route paths are compared with canonical request paths, so a pattern that is
/// not canonical itself (`/a//b`, `/a/./b`, `/%70`) could never match: say so.
fn check_canonical_patterns(
    m: &raw::MatchConfig,
    path: &str,
    policy: &hypergate_core::http::path::PathPolicy,
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
        match hypergate_core::http::path::normalize(literal.as_bytes(), policy, &mut out) {
            Ok(hypergate_core::http::path::Normalized::Unchanged) => {}
            Ok(hypergate_core::http::path::Normalized::Rewritten) if out == literal.as_bytes() => {}
            Ok(hypergate_core::http::path::Normalized::Rewritten) => issues.push(
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
