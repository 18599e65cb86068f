//! Edge authentication: API keys (header, bearer, query; hashed in config),
//! JWTs (HS256, RS256, ES256, EdDSA; keys inline, from PEM files and from a
//! JWKS file reloaded with the config), every rejection reason with its 401,
//! challenge, JSON body and counter, group ACLs (403), the consumer header sent
//! upstream, and the `hypergate key hash` helper.

use hypergate_tests::process::run_cli;
use hypergate_tests::tls::{keypair, KeyKind};
use hypergate_tests::{cluster, preamble, MockUpstream, Request, Response, TempDir, TestGateway};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use std::path::Path;

const ALICE_KEY: &str = "alice-key-0123456789";
const BOB_KEY: &str = "bob-key-9876543210";
const HS_SECRET: &str = "hs256-secret-with-more-than-32-bytes";
const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "hypergate-api";

fn hash(key: &str) -> String {
    hypergate::auth::hash_key(key)
}

/// Where API keys are read from: `(header, bearer, query)`.
struct KeyPlaces<'a>(&'a str, bool, &'a str);

/// Alice (groups admins, users) and Bob (users), both with an API key; routes
/// `/admin` (group admins), `/api` (any consumer), both needing `methods`; `/`
/// open. `jwt` is appended to `[auth]` (`[[auth.jwt]]` sections).
fn config(mock: &MockUpstream, places: &KeyPlaces<'_>, methods: &str, jwt: &str) -> String {
    let KeyPlaces(header, bearer, query) = places;
    format!(
        r#"{preamble}
{cluster}
[[consumers]]
name = "alice"
groups = ["admins", "users"]
metadata = {{ team = "platform" }}
api_keys = ["{alice}"]

[[consumers]]
name = "bob"
groups = ["users"]
api_keys = ["{bob}"]

[auth]
consumer_header = "x-consumer"
[auth.api_key]
header = "{header}"
bearer = {bearer}
query = "{query}"
{jwt}

[[routes]]
name = "admin"
cluster = "backend"
[routes.match]
path_prefix = "/admin"
[routes.policy]
auth = [{methods}]
groups = ["admins"]

[[routes]]
name = "api"
cluster = "backend"
[routes.match]
path_prefix = "/api"
[routes.policy]
auth = [{methods}]

[[routes]]
name = "open"
cluster = "backend"
[routes.match]
path_prefix = "/"
"#,
        preamble = preamble(2),
        cluster = cluster("backend", &[mock.addr()], ""),
        alice = hash(ALICE_KEY),
        bob = hash(BOB_KEY),
    )
}

fn api_key_gateway(mock: &MockUpstream) -> TestGateway {
    TestGateway::start(&config(
        mock,
        &KeyPlaces("x-api-key", true, "api_key"),
        r#""api_key""#,
        "",
    ))
}

fn auth_failures(gw: &TestGateway, reason: &str) -> f64 {
    gw.metric(&format!(
        "hypergate_auth_failures_total{{reason=\"{reason}\"}}"
    ))
}

/// Asserts a 401 with a challenge and a JSON error body of type `kind`.
#[track_caller]
fn assert_unauthorized(r: &Response, kind: &str, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.text());
    let challenge = r
        .header("www-authenticate")
        .unwrap_or_else(|| panic!("{what}: 401 without WWW-Authenticate: {:?}", r.headers));
    assert!(
        challenge.contains("realm="),
        "{what}: challenge {challenge:?}"
    );
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{what}: content-type {:?}",
        r.header("content-type")
    );
    let body = r.json();
    assert_eq!(body["error"]["type"], kind, "{what}: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: {body}"
    );
}

#[test]
fn api_key_is_accepted_in_header_bearer_and_query() {
    let mock = MockUpstream::ok("upstream");
    let gw = api_key_gateway(&mock);
    let cases = [
        (
            "header",
            Request::get("/api/h").header("x-api-key", ALICE_KEY),
        ),
        (
            "bearer",
            Request::get("/api/b").header("Authorization", &format!("Bearer {ALICE_KEY}")),
        ),
        (
            "query",
            Request::get(&format!("/api/q?x=1&api_key={ALICE_KEY}")),
        ),
    ];
    for (what, req) in &cases {
        let r = gw.send(req);
        assert_eq!(r.status, 200, "{what}: {}", r.text());
        assert_eq!(r.text(), "upstream", "{what}");
        let seen = mock.last();
        assert_eq!(seen.headers_named("x-consumer"), vec!["alice"], "{what}");
    }
    assert_eq!(mock.request_count(), 3);
    assert_eq!(
        gw.metric(r#"hypergate_consumer_requests_total{consumer="alice",route="api"}"#),
        3.0
    );
    // Bob's key names Bob.
    let r = gw.send(&Request::get("/api/bob").header("x-api-key", BOB_KEY));
    assert_eq!(r.status, 200);
    assert_eq!(mock.last().header("x-consumer"), Some("bob"));
    assert_eq!(
        gw.metric(r#"hypergate_consumer_requests_total{consumer="bob",route="api"}"#),
        1.0
    );
}

#[test]
fn wrong_or_missing_api_key_is_401_with_challenge_and_json_body() {
    let mock = MockUpstream::ok("upstream");
    let gw = api_key_gateway(&mock);

    let r = gw.send(&Request::get("/api/x").header("x-api-key", "not-a-key"));
    assert_unauthorized(&r, "invalid_api_key", "wrong key in header");
    assert!(r.header("www-authenticate").unwrap().starts_with("ApiKey"));
    let r = gw.send(&Request::get("/api/x").header("Authorization", "Bearer not-a-key"));
    assert_unauthorized(&r, "invalid_api_key", "wrong key as bearer");
    let r = gw.send(&Request::get("/api/x?api_key=not-a-key"));
    assert_unauthorized(&r, "invalid_api_key", "wrong key in query");
    // The right key with a different case or a trailing character is another key.
    let r = gw.send(&Request::get("/api/x").header("x-api-key", &ALICE_KEY.to_uppercase()));
    assert_unauthorized(&r, "invalid_api_key", "key in upper case");
    let r = gw.send(&Request::get("/api/x").header("x-api-key", &format!("{ALICE_KEY}x")));
    assert_unauthorized(&r, "invalid_api_key", "key with a suffix");
    let r = gw.get("/api/x");
    assert_unauthorized(&r, "missing_credentials", "no key");

    assert_eq!(
        mock.request_count(),
        0,
        "no refused request reaches the upstream"
    );
    assert_eq!(auth_failures(&gw, "invalid_api_key"), 5.0);
    assert_eq!(auth_failures(&gw, "missing_credentials"), 1.0);
    assert_eq!(
        gw.metric(r#"hypergate_edge_rejections_total{phase="auth",reason="unauthenticated"}"#),
        6.0
    );
    // A refused request on a keep-alive connection leaves it usable.
    let mut conn = gw.conn();
    assert_eq!(conn.request(&Request::get("/api/x")).status, 401);
    assert_eq!(
        conn.request(&Request::get("/api/x").header("x-api-key", ALICE_KEY))
            .status,
        200
    );
}

#[test]
fn api_key_in_a_place_that_is_not_configured_is_401() {
    let mock = MockUpstream::ok("upstream");
    // Query parameter only.
    let gw = TestGateway::start(&config(
        &mock,
        &KeyPlaces("", false, "key"),
        r#""api_key""#,
        "",
    ));
    assert_eq!(
        gw.send(&Request::get(&format!("/api/x?key={ALICE_KEY}")))
            .status,
        200
    );
    let r = gw.send(&Request::get("/api/x").header("x-api-key", ALICE_KEY));
    assert_unauthorized(
        &r,
        "missing_credentials",
        "key in a header with only query configured",
    );
    let r =
        gw.send(&Request::get("/api/x").header("Authorization", &format!("Bearer {ALICE_KEY}")));
    assert_unauthorized(
        &r,
        "missing_credentials",
        "key as bearer with bearer = false",
    );
    let r = gw.send(&Request::get(&format!("/api/x?api_key={ALICE_KEY}")));
    assert_unauthorized(&r, "missing_credentials", "key in another query parameter");
    assert_eq!(mock.request_count(), 1);
    drop(gw);

    // Header only (a custom name).
    let gw = TestGateway::start(&config(
        &mock,
        &KeyPlaces("x-token", false, ""),
        r#""api_key""#,
        "",
    ));
    assert_eq!(
        gw.send(&Request::get("/api/x").header("X-Token", ALICE_KEY))
            .status,
        200
    );
    let r = gw.send(&Request::get("/api/x").header("x-api-key", ALICE_KEY));
    assert_unauthorized(
        &r,
        "missing_credentials",
        "default header name not configured",
    );
    let r = gw.send(&Request::get(&format!("/api/x?api_key={ALICE_KEY}")));
    assert_unauthorized(&r, "missing_credentials", "query not configured");
    let r =
        gw.send(&Request::get("/api/x").header("Authorization", &format!("Bearer {ALICE_KEY}")));
    assert_unauthorized(&r, "missing_credentials", "bearer not configured");
    assert_eq!(auth_failures(&gw, "missing_credentials"), 3.0);
}

#[test]
fn client_sent_consumer_header_is_stripped() {
    let mock = MockUpstream::ok("upstream");
    let gw = api_key_gateway(&mock);
    // Open route: the client's claim to be someone never reaches the upstream.
    let r = gw.send(
        &Request::get("/open")
            .header("x-consumer", "alice")
            .header("X-Consumer", "admin"),
    );
    assert_eq!(r.status, 200);
    let seen = mock.last();
    assert!(
        seen.headers_named("x-consumer").is_empty(),
        "client-sent x-consumer forwarded: {:?}",
        seen.headers
    );
    // Authenticated route: exactly one x-consumer, the gateway's.
    let r = gw.send(
        &Request::get("/api/x")
            .header("X-Consumer", "alice")
            .header("x-api-key", BOB_KEY),
    );
    assert_eq!(r.status, 200);
    assert_eq!(mock.last().headers_named("x-consumer"), vec!["bob"]);
}

#[test]
fn consumer_outside_the_route_groups_gets_403_not_401() {
    let mock = MockUpstream::ok("upstream");
    let gw = api_key_gateway(&mock);
    let r = gw.send(&Request::get("/admin/panel").header("x-api-key", BOB_KEY));
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "forbidden");
    assert_eq!(mock.request_count(), 0);
    let r = gw.send(&Request::get("/admin/panel").header("x-api-key", ALICE_KEY));
    assert_eq!(r.status, 200);
    assert_eq!(mock.last().header("x-consumer"), Some("alice"));
    // An unknown key on the same route is still 401: authentication comes first.
    let r = gw.send(&Request::get("/admin/panel").header("x-api-key", "nope"));
    assert_eq!(r.status, 401);
    assert_eq!(
        gw.metric(r#"hypergate_edge_rejections_total{phase="acl",reason="forbidden"}"#),
        1.0
    );
    assert_eq!(
        gw.metric(r#"hypergate_consumer_requests_total{consumer="bob",route="admin"}"#),
        0.0,
        "a refused request is not counted for the consumer"
    );
}

/// The issue asks for the consumer in logs as well as metrics: the access-log
/// line of an authenticated request names its consumer.
#[test]
fn consumer_is_recorded_in_the_access_log() {
    let mock = MockUpstream::ok("upstream");
    let dir = TempDir::new();
    let log = dir.path().join("access.log");
    let toml = config(&mock, &KeyPlaces("x-api-key", true, ""), r#""api_key""#, "").replacen(
        "[[listeners]]",
        &format!(
            "[access_log]\nenabled = true\npath = \"{}\"\n\n[[listeners]]",
            log.display()
        ),
        1,
    );
    let gw = TestGateway::start(&toml);
    let r = gw.send(&Request::get("/api/logged").header("x-api-key", BOB_KEY));
    assert_eq!(r.status, 200);
    let mut line = None;
    hypergate_tests::wait_until(
        "the access log has the request",
        std::time::Duration::from_secs(10),
        || {
            line = std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .find(|l| l.contains("/api/logged"))
                .map(str::to_string);
            line.is_some()
        },
    );
    let entry: serde_json::Value =
        serde_json::from_str(&line.expect("line")).expect("access log line is JSON");
    assert_eq!(entry["route"], "api", "{entry}");
    assert_eq!(
        entry["consumer"], "bob",
        "the access log must name the consumer: {entry}"
    );
}

#[test]
fn key_hash_cli_prints_the_form_a_config_accepts() {
    let (status, stdout, stderr) = run_cli(&["key", "hash", "demo-key"]);
    assert!(status.success(), "hypergate key hash failed: {stderr}");
    let printed = stdout.trim();
    // `printf demo-key | sha256sum`
    assert_eq!(
        printed,
        "sha256:c48a01f49fd0f2cc404bc3cbbc80e91457a3d41bb429a695243de4c61794155c"
    );
    // The printed form works as a consumer's key.
    let mock = MockUpstream::ok("upstream");
    let gw = TestGateway::start(&format!(
        r#"{}
{}
[[consumers]]
name = "demo"
api_keys = ["{printed}"]

[[routes]]
name = "private"
cluster = "backend"
[routes.policy]
auth = ["api_key"]
"#,
        preamble(1),
        cluster("backend", &[mock.addr()], "")
    ));
    assert_eq!(gw.get("/").status, 401);
    let r = gw.send(&Request::get("/").header("x-api-key", "demo-key"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(mock.last().header("x-consumer"), Some("demo"));

    // An empty key is refused rather than hashed.
    let (status, _, _) = run_cli(&["key", "hash", ""]);
    assert!(!status.success(), "an empty key must be refused");
}

// ---------------------------------------------------------------------------
// JWT

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Valid claims for `sub`, with `changes` applied (a `null` removes a claim).
fn claims(sub: &str, changes: serde_json::Value) -> serde_json::Value {
    let mut c = json!({
        "sub": sub,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now(),
        "exp": now() + 600,
    });
    for (k, v) in changes.as_object().expect("changes is an object") {
        if v.is_null() {
            c.as_object_mut().expect("object").remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn sign(
    alg: Algorithm,
    kid: Option<&str>,
    key: &EncodingKey,
    claims: &serde_json::Value,
) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, key).expect("sign token")
}

fn pem_key(path: &Path, kind: KeyKind) -> EncodingKey {
    let pem = std::fs::read(path).expect("read private key");
    match kind {
        KeyKind::Rsa => EncodingKey::from_rsa_pem(&pem),
        KeyKind::EcP256 => EncodingKey::from_ec_pem(&pem),
        KeyKind::Ed25519 => EncodingKey::from_ed_pem(&pem),
    }
    .expect("parse private key")
}

fn base64url(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// A bearer request for `path`.
fn bearer(path: &str, token: &str) -> Request {
    Request::get(path).header("Authorization", &format!("Bearer {token}"))
}

/// Keys for the four algorithms, plus a second RSA key nobody configured.
struct JwtKeys {
    _dir: TempDir,
    rsa: EncodingKey,
    rsa_public: std::path::PathBuf,
    rsa_stranger: EncodingKey,
    ec: EncodingKey,
    ec_public: std::path::PathBuf,
    ed: EncodingKey,
    ed_public: std::path::PathBuf,
}

impl JwtKeys {
    fn new() -> JwtKeys {
        let dir = TempDir::new();
        let (rsa, rsa_public) = keypair(dir.path(), "rsa", KeyKind::Rsa);
        let (stranger, _) = keypair(dir.path(), "rsa-stranger", KeyKind::Rsa);
        let (ec, ec_public) = keypair(dir.path(), "ec", KeyKind::EcP256);
        let (ed, ed_public) = keypair(dir.path(), "ed", KeyKind::Ed25519);
        JwtKeys {
            rsa: pem_key(&rsa, KeyKind::Rsa),
            rsa_public,
            rsa_stranger: pem_key(&stranger, KeyKind::Rsa),
            ec: pem_key(&ec, KeyKind::EcP256),
            ec_public,
            ed: pem_key(&ed, KeyKind::Ed25519),
            ed_public,
            _dir: dir,
        }
    }

    fn hs(&self) -> EncodingKey {
        EncodingKey::from_secret(HS_SECRET.as_bytes())
    }

    /// One issuer per algorithm family, all with the same `iss` and `aud`.
    fn issuers(&self) -> String {
        format!(
            r#"
[[auth.jwt]]
name = "hs"
algorithms = ["HS256"]
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}", "other-api"]
leeway = "5s"
keys = [{{ kid = "hs1", secret = "{HS_SECRET}" }}]

[[auth.jwt]]
name = "rs"
algorithms = ["RS256"]
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
leeway = "5s"
keys = [{{ kid = "rs1", pem_file = "{rsa}" }}]

[[auth.jwt]]
name = "es"
algorithms = ["ES256"]
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
leeway = "5s"
keys = [{{ kid = "es1", pem_file = "{ec}" }}]

[[auth.jwt]]
name = "ed"
algorithms = ["EdDSA"]
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
leeway = "5s"
keys = [{{ kid = "ed1", pem_file = "{ed}" }}]
"#,
            rsa = self.rsa_public.display(),
            ec = self.ec_public.display(),
            ed = self.ed_public.display(),
        )
    }
}

fn jwt_gateway(mock: &MockUpstream, keys: &JwtKeys) -> TestGateway {
    TestGateway::start(&config(
        mock,
        &KeyPlaces("x-api-key", true, ""),
        r#""jwt", "api_key""#,
        &keys.issuers(),
    ))
}

#[test]
fn jwt_hs256_rs256_es256_and_eddsa_are_accepted() {
    let keys = JwtKeys::new();
    let mock = MockUpstream::ok("upstream");
    let gw = jwt_gateway(&mock, &keys);
    let tokens = [
        (
            "HS256",
            sign(
                Algorithm::HS256,
                Some("hs1"),
                &keys.hs(),
                &claims("alice", json!({})),
            ),
        ),
        (
            "RS256",
            sign(
                Algorithm::RS256,
                Some("rs1"),
                &keys.rsa,
                &claims("alice", json!({})),
            ),
        ),
        (
            "ES256",
            sign(
                Algorithm::ES256,
                Some("es1"),
                &keys.ec,
                &claims("bob", json!({})),
            ),
        ),
        (
            "EdDSA",
            sign(
                Algorithm::EdDSA,
                Some("ed1"),
                &keys.ed,
                &claims("bob", json!({})),
            ),
        ),
        // No kid: any key of the right family may verify it.
        (
            "RS256 without kid",
            sign(
                Algorithm::RS256,
                None,
                &keys.rsa,
                &claims("alice", json!({})),
            ),
        ),
        // One of several audiences, given as an array.
        (
            "HS256 aud array",
            sign(
                Algorithm::HS256,
                Some("hs1"),
                &keys.hs(),
                &claims("alice", json!({"aud": ["x", "other-api"]})),
            ),
        ),
        // Expired 3 s ago: inside the 5 s leeway.
        (
            "HS256 within leeway",
            sign(
                Algorithm::HS256,
                Some("hs1"),
                &keys.hs(),
                &claims("alice", json!({"exp": now() - 3})),
            ),
        ),
    ];
    for (what, token) in &tokens {
        let r = gw.send(&bearer("/api/jwt", token));
        assert_eq!(r.status, 200, "{what}: {}", r.text());
        let want = if what.starts_with("ES") || what.starts_with("Ed") {
            "bob"
        } else {
            "alice"
        };
        assert_eq!(
            mock.last().headers_named("x-consumer"),
            vec![want],
            "{what}"
        );
        // The same token again (served from the shard's verified-token cache).
        assert_eq!(
            gw.send(&bearer("/api/jwt", token)).status,
            200,
            "{what} again"
        );
    }
    assert_eq!(
        gw.metric(r#"hypergate_consumer_requests_total{consumer="alice",route="api"}"#),
        10.0
    );
    assert_eq!(
        gw.metric(r#"hypergate_consumer_requests_total{consumer="bob",route="api"}"#),
        4.0
    );
    // API keys still work on a route that accepts both.
    assert_eq!(
        gw.send(&Request::get("/api/k").header("x-api-key", BOB_KEY))
            .status,
        200
    );
}

#[test]
fn jwt_failures_are_401_and_counted_by_reason() {
    let keys = JwtKeys::new();
    let mock = MockUpstream::ok("upstream");
    let gw = jwt_gateway(&mock, &keys);
    let hs = keys.hs();
    let rs = |c: serde_json::Value| sign(Algorithm::RS256, Some("rs1"), &keys.rsa, &c);
    let alg_none = format!(
        "{}.{}.",
        base64url(br#"{"alg":"none","typ":"JWT"}"#),
        base64url(claims("alice", json!({})).to_string().as_bytes())
    );
    // A valid RS256 token whose signature is replaced by another token's.
    let forged = {
        let good = rs(claims("alice", json!({})));
        let other = rs(claims("bob", json!({})));
        let (head_payload, _) = good.rsplit_once('.').expect("three parts");
        let (_, sig) = other.rsplit_once('.').expect("three parts");
        format!("{head_payload}.{sig}")
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            rs(claims("alice", json!({"exp": now() - 120}))),
            "token_expired",
        ),
        (
            "not yet valid",
            rs(claims("alice", json!({"nbf": now() + 300}))),
            "token_not_yet_valid",
        ),
        (
            "signed by another RSA key",
            sign(
                Algorithm::RS256,
                Some("rs1"),
                &keys.rsa_stranger,
                &claims("alice", json!({})),
            ),
            "bad_signature",
        ),
        (
            "wrong HMAC secret",
            sign(
                Algorithm::HS256,
                Some("hs1"),
                &EncodingKey::from_secret(b"another-secret-that-is-long-enough"),
                &claims("alice", json!({})),
            ),
            "bad_signature",
        ),
        ("signature swapped", forged, "bad_signature"),
        (
            "wrong audience",
            rs(claims("alice", json!({"aud": "someone-else"}))),
            "bad_audience",
        ),
        (
            "wrong issuer",
            rs(claims("alice", json!({"iss": "https://evil.test"}))),
            "bad_issuer",
        ),
        (
            "unknown kid",
            sign(
                Algorithm::RS256,
                Some("rs-rotated-away"),
                &keys.rsa,
                &claims("alice", json!({})),
            ),
            "unknown_signing_key",
        ),
        (
            "algorithm not configured (RS384)",
            sign(
                Algorithm::RS384,
                Some("rs1"),
                &keys.rsa,
                &claims("alice", json!({})),
            ),
            "algorithm_not_allowed",
        ),
        (
            "unknown consumer",
            rs(claims("mallory", json!({}))),
            "unknown_consumer",
        ),
        (
            "no consumer claim",
            rs(claims("alice", json!({"sub": null}))),
            "unknown_consumer",
        ),
        (
            "HS256 token from the HS issuer with kid of the RS key",
            sign(
                Algorithm::HS256,
                Some("rs1"),
                &hs,
                &claims("alice", json!({})),
            ),
            "unknown_signing_key",
        ),
    ];
    for (what, token, reason) in &cases {
        let before = auth_failures(&gw, reason);
        let r = gw.send(&bearer("/api/x", token));
        assert_unauthorized(&r, reason, what);
        assert!(
            r.header("www-authenticate").unwrap().starts_with("Bearer"),
            "{what}: a JWT route challenges with Bearer"
        );
        assert_eq!(
            auth_failures(&gw, reason),
            before + 1.0,
            "{what}: {reason} counter"
        );
    }
    // alg: none never verifies; the token is either unparsable or refused by algorithm.
    let before =
        auth_failures(&gw, "malformed_token") + auth_failures(&gw, "algorithm_not_allowed");
    let r = gw.send(&bearer("/api/x", &alg_none));
    assert_eq!(r.status, 401, "alg none: {}", r.text());
    assert!(r.header("www-authenticate").is_some());
    let kind = r.json()["error"]["type"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        kind == "malformed_token" || kind == "algorithm_not_allowed",
        "alg none refused as {kind}"
    );
    assert_eq!(
        auth_failures(&gw, "malformed_token") + auth_failures(&gw, "algorithm_not_allowed"),
        before + 1.0
    );
    // Garbage in JWT shape.
    let r = gw.send(&bearer("/api/x", "abc.def.ghi"));
    assert_unauthorized(&r, "malformed_token", "garbage token");

    assert_eq!(
        mock.request_count(),
        0,
        "no refused token reaches the upstream"
    );
    assert_eq!(
        gw.metric(r#"hypergate_edge_rejections_total{phase="auth",reason="unauthenticated"}"#),
        (cases.len() + 2) as f64
    );
}

#[test]
fn jwt_group_acl_is_403_for_a_known_consumer() {
    let keys = JwtKeys::new();
    let mock = MockUpstream::ok("upstream");
    let gw = jwt_gateway(&mock, &keys);
    let bob = sign(
        Algorithm::ES256,
        Some("es1"),
        &keys.ec,
        &claims("bob", json!({})),
    );
    let alice = sign(
        Algorithm::ES256,
        Some("es1"),
        &keys.ec,
        &claims("alice", json!({})),
    );
    let r = gw.send(&bearer("/admin/x", &bob));
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "forbidden");
    assert_eq!(gw.send(&bearer("/admin/x", &alice)).status, 200);
    assert_eq!(gw.send(&bearer("/api/x", &bob)).status, 200);
    assert_eq!(mock.request_count(), 2);
}

/// The HS/RS confusion attack: sign HS256 with the RSA public key's PEM bytes
/// as the HMAC secret, hoping the verifier uses the configured RSA key as one.
#[test]
fn hs256_signed_with_the_rsa_public_key_is_rejected() {
    let keys = JwtKeys::new();
    let public_pem = std::fs::read(&keys.rsa_public).expect("read public key");
    let confused = |kid: Option<&str>| {
        sign(
            Algorithm::HS256,
            kid,
            &EncodingKey::from_secret(&public_pem),
            &claims("alice", json!({})),
        )
    };
    let mock = MockUpstream::ok("upstream");
    let rs_only = format!(
        r#"
[[auth.jwt]]
name = "rs"
algorithms = ["RS256"]
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
keys = [{{ kid = "rs1", pem_file = "{}" }}]
"#,
        keys.rsa_public.display()
    );
    let gw = TestGateway::start(&config(
        &mock,
        &KeyPlaces("", false, ""),
        r#""jwt""#,
        &rs_only,
    ));
    let good = sign(
        Algorithm::RS256,
        Some("rs1"),
        &keys.rsa,
        &claims("alice", json!({})),
    );
    assert_eq!(gw.send(&bearer("/api/x", &good)).status, 200);
    for kid in [Some("rs1"), None] {
        let r = gw.send(&bearer("/api/x", &confused(kid)));
        assert_unauthorized(
            &r,
            "algorithm_not_allowed",
            "HS256 with only RS256 configured",
        );
    }
    drop(gw);

    // Both HS256 (with its own secret) and RS256 in one issuer: the HMAC
    // check must use only the HMAC secret, never the RSA key's bytes.
    let both = format!(
        r#"
[[auth.jwt]]
name = "mixed"
algorithms = ["HS256", "RS256"]
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
keys = [{{ kid = "hs1", secret = "{HS_SECRET}" }}, {{ kid = "rs1", pem_file = "{}" }}]
"#,
        keys.rsa_public.display()
    );
    let gw = TestGateway::start(&config(&mock, &KeyPlaces("", false, ""), r#""jwt""#, &both));
    assert_eq!(gw.send(&bearer("/api/x", &good)).status, 200);
    let hs_good = sign(
        Algorithm::HS256,
        Some("hs1"),
        &keys.hs(),
        &claims("alice", json!({})),
    );
    assert_eq!(gw.send(&bearer("/api/x", &hs_good)).status, 200);
    for (kid, reason) in [
        (Some("rs1"), "unknown_signing_key"),
        (Some("hs1"), "bad_signature"),
        (None, "bad_signature"),
    ] {
        let r = gw.send(&bearer("/api/x", &confused(kid)));
        assert_unauthorized(
            &r,
            reason,
            &format!("HS256 with the RSA PEM as secret, kid {kid:?}"),
        );
    }
    drop(gw);

    // The same with two issuers (HS and RS separately), as in `jwt_gateway`.
    let gw = jwt_gateway(&mock, &keys);
    for kid in [Some("rs1"), Some("hs1"), None] {
        let r = gw.send(&bearer("/api/x", &confused(kid)));
        assert_eq!(r.status, 401, "kid {kid:?}: {}", r.text());
    }
    assert_eq!(
        mock.request_count(),
        3,
        "only the three genuine tokens got through"
    );
}

#[test]
fn jwks_file_keys_reload_with_the_config() {
    let dir = TempDir::new();
    let (old_private, _) = keypair(dir.path(), "old", KeyKind::Rsa);
    let (new_private, _) = keypair(dir.path(), "new", KeyKind::Rsa);
    let old_key = pem_key(&old_private, KeyKind::Rsa);
    let new_key = pem_key(&new_private, KeyKind::Rsa);
    let jwks = |key: &EncodingKey, kid: &str| {
        let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(key, Algorithm::RS256)
            .expect("public JWK from the private key");
        jwk.common.key_id = Some(kid.to_string());
        serde_json::to_string(&jsonwebtoken::jwk::JwkSet { keys: vec![jwk] }).expect("jwks json")
    };
    let jwks_path = dir.write("jwks.json", &jwks(&old_key, "2024-old"));
    let mock = MockUpstream::ok("upstream");
    let issuer = format!(
        r#"
[[auth.jwt]]
name = "idp"
algorithms = ["RS256"]
jwks_file = "{}"
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
consumer_claim = "client_id"
"#,
        jwks_path.display()
    );
    let toml = config(&mock, &KeyPlaces("", false, ""), r#""jwt""#, &issuer);
    let gw = TestGateway::start(&toml);
    let c = claims("ignored", json!({"client_id": "alice"}));
    let old_token = sign(Algorithm::RS256, Some("2024-old"), &old_key, &c);
    let new_token = sign(Algorithm::RS256, Some("2025-new"), &new_key, &c);
    let old_no_kid = sign(Algorithm::RS256, None, &old_key, &c);
    assert_eq!(gw.send(&bearer("/api/x", &old_token)).status, 200);
    assert_eq!(mock.last().header("x-consumer"), Some("alice"));
    assert_eq!(gw.send(&bearer("/api/x", &old_no_kid)).status, 200);
    assert_unauthorized(
        &gw.send(&bearer("/api/x", &new_token)),
        "unknown_signing_key",
        "new key before the rotation",
    );

    // Rotate: the file now holds only the new key; the config text is unchanged.
    std::fs::write(&jwks_path, jwks(&new_key, "2025-new")).expect("rewrite jwks");
    let r = gw.reload(&toml);
    assert_eq!(r.status, 200, "reload: {}", r.text());
    assert_eq!(
        gw.send(&bearer("/api/x", &new_token)).status,
        200,
        "new key after reload"
    );
    // The old token was verified (and cached) before; it must fail now on every shard.
    for _ in 0..4 {
        assert_unauthorized(
            &gw.send(&bearer("/api/x", &old_token)),
            "unknown_signing_key",
            "old key after the rotation",
        );
        assert_unauthorized(
            &gw.send(&bearer("/api/x", &old_no_kid)),
            "bad_signature",
            "old key without kid after the rotation",
        );
    }

    // A broken JWKS file is refused and the running keys stay.
    std::fs::write(&jwks_path, "{ not json").expect("break jwks");
    let r = gw.reload(&toml);
    assert_eq!(r.status, 400, "a broken JWKS must be refused: {}", r.text());
    assert!(r.text().contains("jwks_file"), "{}", r.text());
    assert_eq!(gw.send(&bearer("/api/x", &new_token)).status, 200);
}
