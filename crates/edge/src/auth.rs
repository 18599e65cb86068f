//! Consumers and authentication: API keys (SHA-256 hashed, constant-time) and JWT.
//!
//! An [`Authenticator`] is built once per config (keys loaded, JWKS parsed) and
//! shared read-only by every shard. A request's credentials are looked for in
//! the configured places only: API keys in the header, `Authorization: Bearer`
//! and/or a query parameter; JWTs as bearer tokens. JWTs are verified with the
//! `jsonwebtoken` crate against keys of the token's algorithm family only (so an
//! RSA public key can never be used as an HMAC secret), with `exp`, `nbf`, `iss`
//! and `aud` checked under a leeway; `alg: none` never verifies. A claim names
//! the consumer. Verified tokens are cached per shard (keyed by the token's
//! SHA-256, until `exp`) so repeat requests skip the signature check.

use crate::config::raw::{AuthConfig, ConsumerConfig, JwtConfig};
use crate::config::ConfigIssue;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest, Sha256};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// A validated consumer.
#[derive(Debug)]
pub struct Consumer {
    /// Name.
    pub name: Arc<str>,
    /// Groups for route ACLs.
    pub groups: Vec<String>,
}

/// An authentication method a route accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// API key.
    ApiKey,
    /// JSON Web Token.
    Jwt,
}

/// Why authentication failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No credential in an accepted place.
    Missing,
    /// An API key that matches no consumer.
    UnknownKey,
    /// A token that is not a well-formed JWT, or uses an algorithm not configured.
    Malformed,
    /// `alg` not accepted (including `none`).
    Algorithm,
    /// No configured key for the token (`kid` or family).
    UnknownSigningKey,
    /// Signature does not verify.
    Signature,
    /// `exp` passed.
    Expired,
    /// `nbf` in the future.
    NotYetValid,
    /// `iss` mismatch.
    Issuer,
    /// `aud` mismatch.
    Audience,
    /// The consumer claim is missing or names no consumer.
    UnknownConsumer,
}

impl AuthFailure {
    /// All reasons, for metrics.
    pub const ALL: [AuthFailure; 11] = [
        AuthFailure::Missing,
        AuthFailure::UnknownKey,
        AuthFailure::Malformed,
        AuthFailure::Algorithm,
        AuthFailure::UnknownSigningKey,
        AuthFailure::Signature,
        AuthFailure::Expired,
        AuthFailure::NotYetValid,
        AuthFailure::Issuer,
        AuthFailure::Audience,
        AuthFailure::UnknownConsumer,
    ];

    /// Metric label and error type suffix.
    pub fn label(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing_credentials",
            AuthFailure::UnknownKey => "invalid_api_key",
            AuthFailure::Malformed => "malformed_token",
            AuthFailure::Algorithm => "algorithm_not_allowed",
            AuthFailure::UnknownSigningKey => "unknown_signing_key",
            AuthFailure::Signature => "bad_signature",
            AuthFailure::Expired => "token_expired",
            AuthFailure::NotYetValid => "token_not_yet_valid",
            AuthFailure::Issuer => "bad_issuer",
            AuthFailure::Audience => "bad_audience",
            AuthFailure::UnknownConsumer => "unknown_consumer",
        }
    }

    /// Index into per-reason counters.
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|f| *f == self).unwrap_or(0)
    }
}

/// Where a request keeps what authentication needs.
pub trait Credentials {
    /// First value of a header (lowercase name).
    fn header(&self, lowercase_name: &str) -> Option<&[u8]>;
    /// Raw query string.
    fn query(&self) -> &str;
}

/// A key family: which algorithms a key may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

fn family(alg: Algorithm) -> Family {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Family::Hmac,
        Algorithm::ES256 | Algorithm::ES384 => Family::Ec,
        Algorithm::EdDSA => Family::Ed,
        _ => Family::Rsa,
    }
}

struct JwtKey {
    kid: Option<String>,
    family: Family,
    key: DecodingKey,
}

struct JwtIssuer {
    name: Arc<str>,
    algorithms: Vec<Algorithm>,
    keys: Vec<JwtKey>,
    issuer: Option<String>,
    audiences: Vec<String>,
    leeway: Duration,
    consumer_claim: String,
}

/// Verifies credentials and maps them to consumers.
pub struct Authenticator {
    /// Consumers, by index.
    pub consumers: Vec<Consumer>,
    api_keys: HashMap<[u8; 32], usize>,
    header: String,
    bearer: bool,
    query: String,
    jwt: Vec<JwtIssuer>,
    /// Lowercase name of the header that carries the consumer upstream.
    pub consumer_header: String,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("consumers", &self.consumers.len())
            .field("api_keys", &self.api_keys.len())
            .field("jwt_issuers", &self.jwt.len())
            .finish()
    }
}

/// `sha256:<hex>` of an API key, as stored in config.
pub fn hash_key(key: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

fn parse_algorithm(name: &str) -> Option<Algorithm> {
    Some(match name {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

fn pem_key(pem: &[u8]) -> Option<(Family, DecodingKey)> {
    if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        return Some((Family::Rsa, k));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        return Some((Family::Ec, k));
    }
    DecodingKey::from_ed_pem(pem).ok().map(|k| (Family::Ed, k))
}

#[allow(
    clippy::disallowed_methods,
    reason = "key files are read while a config is built, off the shards"
)]
fn load_issuer(j: &JwtConfig, path: &str, issues: &mut Vec<ConfigIssue>) -> Option<JwtIssuer> {
    let before = issues.len();
    let push = |issues: &mut Vec<ConfigIssue>, p: String, r: String| {
        issues.push(ConfigIssue { path: p, reason: r })
    };
    let mut algorithms = Vec::new();
    for (i, a) in j.algorithms.iter().enumerate() {
        match parse_algorithm(a) {
            Some(alg) => algorithms.push(alg),
            None => push(
                issues,
                format!("{path}.algorithms[{i}]"),
                format!("unsupported algorithm {a:?}"),
            ),
        }
    }
    if j.algorithms.is_empty() {
        push(
            issues,
            format!("{path}.algorithms"),
            "at least one algorithm is required".into(),
        );
    }
    let mut keys = Vec::new();
    for (i, k) in j.keys.iter().enumerate() {
        let kpath = format!("{path}.keys[{i}]");
        match (&k.secret, &k.pem_file) {
            (Some(secret), None) => {
                let before = issues.len();
                // The secret leaves here, into the HMAC verification key.
                let s =
                    crate::config::expand_env(secret.expose(), &format!("{kpath}.secret"), issues);
                // A missing environment variable was reported by `expand_env`.
                if issues.len() == before {
                    if s.len() >= 16 {
                        keys.push(JwtKey {
                            kid: k.kid.clone(),
                            family: Family::Hmac,
                            key: DecodingKey::from_secret(s.as_bytes()),
                        });
                    } else {
                        push(
                            issues,
                            format!("{kpath}.secret"),
                            "HMAC secrets must be at least 16 bytes".into(),
                        );
                    }
                }
            }
            (None, Some(file)) => match std::fs::read(file) {
                Ok(pem) => match pem_key(&pem) {
                    Some((family, key)) => keys.push(JwtKey {
                        kid: k.kid.clone(),
                        family,
                        key,
                    }),
                    None => push(
                        issues,
                        format!("{kpath}.pem_file"),
                        format!("{file}: no RSA, EC or Ed25519 public key"),
                    ),
                },
                Err(e) => push(
                    issues,
                    format!("{kpath}.pem_file"),
                    format!("cannot read {file}: {e}"),
                ),
            },
            _ => push(issues, kpath, "give exactly one of secret, pem_file".into()),
        }
    }
    if let Some(file) = &j.jwks_file {
        match std::fs::read_to_string(file)
            .map_err(|e| e.to_string())
            .and_then(|t| {
                serde_json::from_str::<jsonwebtoken::jwk::JwkSet>(&t).map_err(|e| e.to_string())
            }) {
            Ok(set) => {
                for jwk in &set.keys {
                    let fam = match &jwk.algorithm {
                        jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Family::Rsa,
                        jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Family::Ec,
                        jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_) => Family::Ed,
                        jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_) => Family::Hmac,
                    };
                    match DecodingKey::from_jwk(jwk) {
                        Ok(key) => keys.push(JwtKey {
                            kid: jwk.common.key_id.clone(),
                            family: fam,
                            key,
                        }),
                        Err(e) => push(
                            issues,
                            format!("{path}.jwks_file"),
                            format!("{file}: unusable key: {e}"),
                        ),
                    }
                }
            }
            Err(e) => push(
                issues,
                format!("{path}.jwks_file"),
                format!("cannot load {file}: {e}"),
            ),
        }
    }
    if keys.is_empty() && issues.len() == before {
        push(
            issues,
            format!("{path}.keys"),
            "at least one key (keys or jwks_file) is required".into(),
        );
    }
    for (i, alg) in algorithms.iter().enumerate() {
        if !keys.iter().any(|k| k.family == family(*alg)) && issues.len() == before {
            push(
                issues,
                format!("{path}.algorithms[{i}]"),
                format!("no configured key can verify {alg:?}"),
            );
        }
    }
    (issues.len() == before).then(|| JwtIssuer {
        name: j.name.as_str().into(),
        algorithms,
        keys,
        issuer: j.issuer.clone(),
        audiences: j.audiences.clone(),
        leeway: j.leeway,
        consumer_claim: j.consumer_claim.clone(),
    })
}

impl Authenticator {
    /// Builds the authenticator, reporting every problem.
    pub fn build(
        consumers: &[ConsumerConfig],
        auth: &AuthConfig,
        issues: &mut Vec<ConfigIssue>,
    ) -> Authenticator {
        let mut out = Authenticator {
            consumers: Vec::new(),
            api_keys: HashMap::new(),
            header: auth.api_key.header.to_ascii_lowercase(),
            bearer: auth.api_key.bearer,
            query: auth.api_key.query.clone(),
            jwt: Vec::new(),
            consumer_header: auth.consumer_header.to_ascii_lowercase(),
        };
        if http::HeaderName::from_bytes(auth.consumer_header.as_bytes()).is_err() {
            issues.push(ConfigIssue {
                path: "auth.consumer_header".into(),
                reason: format!("invalid header name {:?}", auth.consumer_header),
            });
        }
        let mut names = std::collections::HashSet::new();
        for (i, c) in consumers.iter().enumerate() {
            if !names.insert(c.name.as_str()) || c.name.is_empty() {
                issues.push(ConfigIssue {
                    path: format!("consumers[{i}].name"),
                    reason: format!("empty or duplicate consumer name {:?}", c.name),
                });
            }
            for (j, k) in c.api_keys.iter().enumerate() {
                let parsed = k
                    .expose()
                    .strip_prefix("sha256:")
                    .and_then(|h| hex::decode(h).ok())
                    .and_then(|b| <[u8; 32]>::try_from(b).ok());
                match parsed {
                    Some(hash) => {
                        if out.api_keys.insert(hash, i).is_some() {
                            issues.push(ConfigIssue {
                                path: format!("consumers[{i}].api_keys[{j}]"),
                                reason: "the same key is given to two consumers".into(),
                            });
                        }
                    }
                    None => issues.push(ConfigIssue {
                        path: format!("consumers[{i}].api_keys[{j}]"),
                        reason: "expected \"sha256:<64 hex digits>\" (see `hypergate key hash`)"
                            .into(),
                    }),
                }
            }
            out.consumers.push(Consumer {
                name: c.name.as_str().into(),
                groups: c.groups.clone(),
            });
        }
        for (i, j) in auth.jwt.iter().enumerate() {
            if let Some(issuer) = load_issuer(j, &format!("auth.jwt[{i}]"), issues) {
                out.jwt.push(issuer);
            }
        }
        out
    }

    /// Whether JWT issuers are configured.
    pub fn has_jwt(&self) -> bool {
        !self.jwt.is_empty()
    }

    /// Authenticates a request with any of `methods`; returns the consumer index.
    pub fn authenticate<C: Credentials>(
        &self,
        req: &C,
        methods: &[AuthMethod],
        cache: &TokenCache,
    ) -> Result<usize, AuthFailure> {
        let bearer = req
            .header("authorization")
            .and_then(|v| {
                let v = v.trim_ascii();
                (v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "))
                    .then(|| v[7..].trim_ascii())
            })
            .and_then(|t| std::str::from_utf8(t).ok());
        let looks_like_jwt = |t: &str| t.bytes().filter(|b| *b == b'.').count() == 2;
        let mut failure = AuthFailure::Missing;
        if methods.contains(&AuthMethod::Jwt) {
            if let Some(token) = bearer.filter(|t| looks_like_jwt(t)) {
                match self.verify_jwt(token, cache) {
                    Ok(c) => return Ok(c),
                    Err(f) => failure = f,
                }
            }
        }
        if methods.contains(&AuthMethod::ApiKey) {
            let mut key: Option<&[u8]> = None;
            if !self.header.is_empty() {
                key = req.header(&self.header);
            }
            if key.is_none() && self.bearer {
                key = bearer.filter(|t| !looks_like_jwt(t)).map(str::as_bytes);
            }
            if key.is_none() && !self.query.is_empty() {
                key = req.query().split('&').find_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    (k == self.query).then_some(v.as_bytes())
                });
            }
            if let Some(k) = key {
                return self.check_api_key(k).ok_or(AuthFailure::UnknownKey);
            }
        }
        Err(failure)
    }

    fn check_api_key(&self, key: &[u8]) -> Option<usize> {
        let digest: [u8; 32] = Sha256::digest(key).into();
        let (stored, consumer) = self.api_keys.get_key_value(&digest)?;
        // The map lookup compares hashes, not keys; compare once more in constant
        // time so no timing path depends on how much of the digest matched.
        bool::from(stored.ct_eq(&digest)).then_some(*consumer)
    }

    fn verify_jwt(&self, token: &str, cache: &TokenCache) -> Result<usize, AuthFailure> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(c) = cache.get(&digest) {
            return Ok(c);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthFailure::Malformed)?;
        let alg = header.alg;
        let mut last = AuthFailure::Algorithm;
        for issuer in self.jwt.iter().filter(|i| i.algorithms.contains(&alg)) {
            last = AuthFailure::UnknownSigningKey;
            let mut validation = Validation::new(alg);
            validation.algorithms = vec![alg];
            validation.leeway = issuer.leeway.as_secs();
            validation.validate_nbf = true;
            validation.set_required_spec_claims(&["exp"]);
            match &issuer.issuer {
                Some(iss) => validation.set_issuer(&[iss]),
                None => validation.iss = None,
            }
            if issuer.audiences.is_empty() {
                validation.validate_aud = false;
            } else {
                validation.set_audience(&issuer.audiences);
            }
            let candidates = issuer.keys.iter().filter(|k| {
                k.family == family(alg)
                    && match (&header.kid, &k.kid) {
                        (Some(want), Some(have)) => want == have,
                        (Some(_), None) | (None, _) => true,
                    }
            });
            for key in candidates {
                match jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &validation) {
                    Ok(data) => {
                        let consumer = data
                            .claims
                            .get(&issuer.consumer_claim)
                            .and_then(|v| v.as_str())
                            .and_then(|name| self.consumers.iter().position(|c| &*c.name == name))
                            .ok_or(AuthFailure::UnknownConsumer)?;
                        let exp = data.claims.get("exp").and_then(|v| v.as_u64()).unwrap_or(0);
                        cache.put(digest, consumer, exp);
                        tracing::trace!(issuer = %issuer.name, "jwt verified");
                        return Ok(consumer);
                    }
                    Err(e) => {
                        use jsonwebtoken::errors::ErrorKind as K;
                        last = match e.kind() {
                            K::InvalidSignature => AuthFailure::Signature,
                            K::ExpiredSignature => AuthFailure::Expired,
                            K::ImmatureSignature => AuthFailure::NotYetValid,
                            K::InvalidIssuer => AuthFailure::Issuer,
                            K::InvalidAudience => AuthFailure::Audience,
                            K::InvalidAlgorithm | K::InvalidAlgorithmName => AuthFailure::Algorithm,
                            K::MissingRequiredClaim(_) => AuthFailure::Malformed,
                            _ => AuthFailure::Signature,
                        };
                        // Claim errors do not depend on the key: stop trying others.
                        if last != AuthFailure::Signature {
                            return Err(last);
                        }
                    }
                }
            }
        }
        Err(last)
    }
}

/// Per-shard cache of verified tokens: SHA-256 of the token -> (consumer, expiry).
/// Bounded; cleared when full and on every config install.
#[derive(Default)]
pub struct TokenCache {
    entries: RefCell<HashMap<[u8; 32], (usize, Instant)>>,
}

/// Most cached tokens per shard.
const TOKEN_CACHE_CAPACITY: usize = 4096;
/// Longest a verified token is trusted without re-verification.
const TOKEN_CACHE_TTL: Duration = Duration::from_secs(60);

impl TokenCache {
    fn get(&self, digest: &[u8; 32]) -> Option<usize> {
        let entries = self.entries.borrow();
        let (consumer, until) = entries.get(digest)?;
        (Instant::now() < *until).then_some(*consumer)
    }

    fn put(&self, digest: [u8; 32], consumer: usize, exp_unix: u64) {
        let now_unix = hypergate_core::clock::unix_secs_at(Instant::now());
        let left = Duration::from_secs(exp_unix.saturating_sub(now_unix)).min(TOKEN_CACHE_TTL);
        let mut entries = self.entries.borrow_mut();
        if entries.len() >= TOKEN_CACHE_CAPACITY {
            entries.clear();
        }
        entries.insert(digest, (consumer, Instant::now() + left));
    }

    /// Forgets every token (the consumers or keys may have changed).
    pub fn clear(&self) {
        self.entries.borrow_mut().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::raw::{ApiKeySources, JwtKeyConfig};
    use jsonwebtoken::{encode, EncodingKey, Header};

    struct Req {
        headers: Vec<(&'static str, String)>,
        query: &'static str,
    }

    impl Credentials for Req {
        fn header(&self, name: &str) -> Option<&[u8]> {
            self.headers
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.as_bytes())
        }
        fn query(&self) -> &str {
            self.query
        }
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn auth() -> Authenticator {
        let consumers = vec![ConsumerConfig {
            name: "alice".into(),
            groups: vec!["admins".into()],
            metadata: Default::default(),
            api_keys: vec![hypergate_core::secret::Secret::new(hash_key("demo-key"))],
        }];
        let cfg = AuthConfig {
            consumer_header: "x-consumer".into(),
            api_key: ApiKeySources {
                header: "x-api-key".into(),
                bearer: true,
                query: "api_key".into(),
            },
            jwt: vec![JwtConfig {
                name: "main".into(),
                algorithms: vec!["HS256".into()],
                keys: vec![JwtKeyConfig {
                    kid: None,
                    secret: Some(hypergate_core::secret::Secret::new(SECRET)),
                    pem_file: None,
                }],
                jwks_file: None,
                issuer: Some("https://issuer.test".into()),
                audiences: vec!["api".into()],
                leeway: Duration::from_secs(0),
                consumer_claim: "sub".into(),
            }],
        };
        let mut issues = Vec::new();
        let a = Authenticator::build(&consumers, &cfg, &mut issues);
        assert!(issues.is_empty(), "{issues:?}");
        a
    }

    #[allow(clippy::disallowed_methods, reason = "a unit test's own clock")]
    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn token(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn bearer(t: &str) -> Req {
        Req {
            headers: vec![("authorization", format!("Bearer {t}"))],
            query: "",
        }
    }

    const BOTH: &[AuthMethod] = &[AuthMethod::ApiKey, AuthMethod::Jwt];

    #[test]
    fn api_keys_in_each_place() {
        let a = auth();
        let cache = TokenCache::default();
        let h = Req {
            headers: vec![("x-api-key", "demo-key".into())],
            query: "",
        };
        assert_eq!(a.authenticate(&h, BOTH, &cache), Ok(0));
        assert_eq!(a.authenticate(&bearer("demo-key"), BOTH, &cache), Ok(0));
        let q = Req {
            headers: vec![],
            query: "x=1&api_key=demo-key",
        };
        assert_eq!(a.authenticate(&q, BOTH, &cache), Ok(0));
        let wrong = Req {
            headers: vec![("x-api-key", "nope".into())],
            query: "",
        };
        assert_eq!(
            a.authenticate(&wrong, BOTH, &cache),
            Err(AuthFailure::UnknownKey)
        );
        let elsewhere = Req {
            headers: vec![("x-token", "demo-key".into())],
            query: "",
        };
        assert_eq!(
            a.authenticate(&elsewhere, BOTH, &cache),
            Err(AuthFailure::Missing)
        );
        assert_eq!(
            a.authenticate(&h, &[AuthMethod::Jwt], &cache),
            Err(AuthFailure::Missing)
        );
    }

    #[test]
    fn jwt_claims_are_checked() {
        let a = auth();
        let cache = TokenCache::default();
        let base = |extra: serde_json::Value| {
            let mut c = serde_json::json!({"sub": "alice", "iss": "https://issuer.test", "aud": "api", "exp": now() + 60});
            for (k, v) in extra.as_object().unwrap() {
                c[k] = v.clone();
            }
            token(c)
        };
        assert_eq!(
            a.authenticate(&bearer(&base(serde_json::json!({}))), BOTH, &cache),
            Ok(0)
        );
        let cases = [
            (serde_json::json!({"exp": now() - 10}), AuthFailure::Expired),
            (
                serde_json::json!({"nbf": now() + 100}),
                AuthFailure::NotYetValid,
            ),
            (serde_json::json!({"aud": "other"}), AuthFailure::Audience),
            (serde_json::json!({"iss": "evil"}), AuthFailure::Issuer),
            (
                serde_json::json!({"sub": "mallory"}),
                AuthFailure::UnknownConsumer,
            ),
        ];
        for (extra, want) in cases {
            let t = base(extra.clone());
            assert_eq!(
                a.authenticate(&bearer(&t), BOTH, &TokenCache::default()),
                Err(want),
                "{extra}"
            );
        }
        let other_secret = encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "alice", "iss": "https://issuer.test", "aud": "api", "exp": now() + 60}),
            &EncodingKey::from_secret(b"another-secret-of-32-bytes-long!!"),
        )
        .unwrap();
        assert_eq!(
            a.authenticate(&bearer(&other_secret), BOTH, &cache),
            Err(AuthFailure::Signature)
        );
        // alg: none, hand-made: header {"alg":"none","typ":"JWT"}.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSJ9.";
        let got = a.authenticate(&bearer(none), BOTH, &cache);
        assert!(
            matches!(got, Err(AuthFailure::Malformed | AuthFailure::Algorithm)),
            "{got:?}"
        );
    }
}
