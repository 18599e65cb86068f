//! Raw configuration of edge policy: consumers, authentication, rate limits,
//! Redis, TLS and per-route protections. Every field documented, defaults explicit.

use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// A named API consumer.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Unique name, passed upstream and recorded in logs and metrics.
    pub name: String,
    /// Groups used by route ACLs.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Free-form labels (shown in `/config`).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// API keys as `sha256:<hex>` hashes (`hypergate key hash <key>` prints one).
    /// Secrets (a hash of a short key can be brute-forced): shown as `<redacted>`.
    #[serde(default)]
    pub api_keys: Vec<Secret>,
}

/// Authentication methods and where credentials are read from.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Header carrying the authenticated consumer's name upstream (client-sent copies are removed).
    pub consumer_header: String,
    /// Where API keys are looked for.
    pub api_key: ApiKeySources,
    /// JWT issuers.
    pub jwt: Vec<JwtConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            consumer_header: "x-consumer".into(),
            api_key: ApiKeySources::default(),
            jwt: Vec::new(),
        }
    }
}

/// API key locations, tried in this order: header, `Authorization: Bearer`, query parameter.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiKeySources {
    /// Header name (empty: not read from a header).
    pub header: String,
    /// Accept `Authorization: Bearer <key>` (a JWT-shaped bearer goes to JWT instead).
    pub bearer: bool,
    /// Query parameter name (empty: not read from the query).
    pub query: String,
}

impl Default for ApiKeySources {
    fn default() -> Self {
        Self {
            header: "x-api-key".into(),
            bearer: true,
            query: String::new(),
        }
    }
}

/// One JWT issuer.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Name for logs and metrics.
    pub name: String,
    /// Accepted algorithms: HS256, HS384, HS512, RS256, RS384, RS512, ES256, ES384, EdDSA.
    pub algorithms: Vec<String>,
    /// Keys given inline or as files.
    #[serde(default)]
    pub keys: Vec<JwtKeyConfig>,
    /// A JWKS file, re-read with the config.
    #[serde(default)]
    pub jwks_file: Option<String>,
    /// Required `iss`.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Accepted `aud` values (any of).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Clock skew allowed for `exp` and `nbf`.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// Claim whose value names the consumer.
    #[serde(default = "default_consumer_claim")]
    pub consumer_claim: String,
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_consumer_claim() -> String {
    "sub".into()
}

/// A JWT verification key.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtKeyConfig {
    /// Key id matched against the token's `kid` (a key without one matches any).
    #[serde(default)]
    pub kid: Option<String>,
    /// HMAC secret (HS*); may be `${ENV_VAR}`. A secret: shown as `<redacted>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secret>,
    /// PEM file with a public key (RS*, ES*, EdDSA).
    #[serde(default)]
    pub pem_file: Option<String>,
}

/// What a rate limit counts by.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Unique name, referenced by routes.
    pub name: String,
    /// `"consumer"`, `"client_ip"`, `"route"` or `"header:NAME"`.
    pub key: String,
    /// Windows; a request must fit all of them.
    pub limits: Vec<RateWindowConfig>,
    /// Most distinct keys tracked; keys beyond it share one overflow bucket.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
    /// `"local"` (this process) or `"redis"` (shared by every gateway using the same Redis).
    #[serde(default = "default_backend")]
    pub backend: String,
    /// With Redis unreachable: `"open"` admits, `"closed"` rejects (503).
    #[serde(default = "default_failure_mode")]
    pub failure_mode: String,
}

fn default_max_keys() -> usize {
    100_000
}
fn default_backend() -> String {
    "local".into()
}
fn default_failure_mode() -> String {
    "open".into()
}

/// One rate window.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateWindowConfig {
    /// Requests allowed per `per`.
    pub requests: u64,
    /// Window length, e.g. `"1s"`, `"1m"`, `"1h"`.
    #[serde(with = "humantime_serde")]
    pub per: Duration,
    /// Requests allowed at once from a full bucket (default: `requests`).
    #[serde(default)]
    pub burst: Option<u64>,
}

/// The Redis server for cluster-wide rate limits and Redis budgets.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `host:port` of the Redis server (or a `redis://host:port/db` URL), without
    /// credentials: an address with `user:pass@` is refused; use `username` and `password`.
    pub address: String,
    /// ACL user name (Redis 6+); `AUTH` with `password` only when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password sent with `AUTH`; may be `${ENV_VAR}`. A secret: shown as `<redacted>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// Timeout of one Redis call.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:6379".into(),
            username: None,
            password: None,
            timeout: Duration::from_millis(50),
        }
    }
}

/// TLS on a listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsConfig {
    /// Certificates; chosen by SNI, the first is the default.
    pub certificates: Vec<CertificateConfig>,
    /// Lowest protocol version: `"1.2"` or `"1.3"`.
    #[serde(default = "default_min_tls")]
    pub min_version: String,
}

fn default_min_tls() -> String {
    "1.2".into()
}

/// A certificate and its key.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// PEM certificate chain file.
    pub cert_file: String,
    /// PEM private key file.
    pub key_file: String,
    /// SNI names served with it. A certificate without names is only served as
    /// the default (the first certificate) to clients whose SNI matches no name.
    #[serde(default)]
    pub server_names: Vec<String>,
}

/// TLS from the gateway to a cluster.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// PEM CA bundle the upstream certificate must chain to.
    pub ca_file: String,
    /// Name checked against the certificate and sent as SNI.
    pub server_name: String,
}

/// Per-route edge policy.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RoutePolicyConfig {
    /// Accepted authentication methods (any of): `"api_key"`, `"jwt"`. Empty: no auth.
    #[serde(default)]
    pub auth: Vec<String>,
    /// Consumer groups allowed (any of). Empty: every authenticated consumer.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Rate limits applied, by name.
    #[serde(default)]
    pub rate_limits: Vec<String>,
    /// Client networks allowed (CIDR); empty allows all.
    #[serde(default)]
    pub allow_ips: Vec<String>,
    /// Client networks denied (CIDR), checked before `allow_ips`.
    #[serde(default)]
    pub deny_ips: Vec<String>,
    /// Largest request body for this route (overrides `limits.max_body_bytes`).
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// CORS policy; preflights are answered at the gateway.
    #[serde(default)]
    pub cors: Option<CorsConfig>,
}

/// CORS.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Allowed origins (`"*"` for any).
    pub allow_origins: Vec<String>,
    /// Allowed methods.
    #[serde(default = "default_cors_methods")]
    pub allow_methods: Vec<String>,
    /// Allowed request headers.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response headers exposed to scripts.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Allow credentials (cookies); not combinable with `"*"` origins.
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long browsers may cache a preflight.
    #[serde(default = "default_cors_max_age", with = "humantime_serde")]
    pub max_age: Duration,
}

fn default_cors_methods() -> Vec<String> {
    ["GET", "HEAD", "POST"].map(String::from).to_vec()
}
fn default_cors_max_age() -> Duration {
    Duration::from_secs(600)
}

/// Connection-level protections.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProtectionConfig {
    /// Proxies whose `X-Forwarded-For` is trusted for the client IP (CIDR).
    pub trusted_proxies: Vec<String>,
    /// Most concurrent client connections in total (0: unlimited). Each also
    /// needs a file descriptor, and usually an upstream one: the gateway warns at
    /// start when the open-file limit cannot hold twice this many.
    pub max_connections: usize,
    /// Most concurrent connections per client IP, the TCP peer (0: unlimited).
    /// Behind a load balancer that is not transparent, raise it: every client
    /// then shares the balancer's few addresses.
    pub max_connections_per_ip: usize,
}

impl Default for ProtectionConfig {
    fn default() -> Self {
        Self {
            trusted_proxies: Vec::new(),
            max_connections: 65_536,
            max_connections_per_ip: 4_096,
        }
    }
}
