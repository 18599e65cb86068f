//! No secret from the config leaves the gateway except where it is meant to (on
//! the wire to the upstream, provider, Redis server or webhook that needs it).
//!
//! One `hypergate` child process (its stderr log captured) runs a config that
//! sets every kind of secret to a distinctive marker: a provider API key and a
//! provider header, a JWT HMAC secret, a consumer's key hash, a Redis password
//! (a fake Redis server records what the gateway sends it), a webhook URL with
//! a token in its path and its query, `authorization` values in a route's
//! `request_headers` and `response_headers`, and the admin token. The test
//! drives requests that succeed and fail (a provider that answers 401 echoing
//! the key, and one that reports it in a stream; bad API keys and JWTs; an
//! alert whose webhook is unreachable; reloads refused for bad secrets) and
//! checks that no marker appears in `/config`, `/metrics`, `/stats`,
//! `/hypercare/*`, any response body, or the process log.
//!
//! A second test runs a real `redis-server` that requires an ACL user and
//! password: `[redis] username` and `password` (from `${ENV}`) authenticate the
//! gateway, and a wrong password, installed by a reload, is refused by Redis.

use hypergate_tests::gateway::admin_send;
use hypergate_tests::process::GatewayProcess;
use hypergate_tests::redis::RedisServer;
use hypergate_tests::util::closed_port;
use hypergate_tests::{preamble, wait_until, MockUpstream, Reply, Request, Response, TestGateway};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Every marker starts with this, so one search finds them all.
const MARK: &str = "MARKER";
const PROVIDER_KEY: &str = "sk-MARKERprovider-key-7f3a";
const PROVIDER_HEADER: &str = "MARKERprovider-header-19";
const JWT_SECRET: &str = "MARKERjwt-secret-0123456789abcdef";
const REDIS_PASSWORD: &str = "MARKERredis-password-42";
const HOOK_PATH_TOKEN: &str = "MARKERhook-path-55";
const HOOK_QUERY_TOKEN: &str = "MARKERhook-query-66";
const UPSTREAM_AUTH: &str = "Bearer MARKERupstream-auth-77";
const RESPONSE_AUTH: &str = "Bearer MARKERresponse-auth-88";
const ADMIN_TOKEN: &str = "MARKERadmin-token-99";
/// The consumer's key (a client secret, not a config one); its hash is in the config.
const CONSUMER_KEY: &str = "consumer-key-for-secrets-test";

/// A Redis stand-in: records every byte the gateway sends and answers `+OK` to
/// each read, which is enough for the client to authenticate (and then fail on
/// the script, so it reconnects: the connection path runs again and again).
fn fake_redis() -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
                if s.write_all(b"+OK\r\n").is_err() {
                    break;
                }
            }
        }
    });
    (addr, seen)
}

/// A provider that rejects the key and says which, the way real ones do; a
/// streamed call gets a 200 stream whose one event is an error naming the key.
fn provider() -> MockUpstream {
    MockUpstream::start(|req| {
        let key = req
            .header("authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
            .unwrap_or("none")
            .to_string();
        if String::from_utf8_lossy(&req.body).contains("\"stream\":true") {
            let event = serde_json::json!({"error": {"message": format!("key {key} was revoked")}});
            Reply::ok(format!("data: {event}\n\n"))
                .header("content-type", "text/event-stream")
                .into()
        } else {
            let body = serde_json::json!({"error": {
                "message": format!("Incorrect API key provided: {key}. You can find your API key at https://example.com."),
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            }});
            Reply::status(401)
                .body(body.to_string())
                .header("content-type", "application/json")
                .into()
        }
    })
}

struct Setup {
    provider: SocketAddr,
    backend: SocketAddr,
    redis: SocketAddr,
    hook: SocketAddr,
}

fn config(s: &Setup, consumer_hash: &str) -> String {
    let admin = "listen = \"127.0.0.2:0\"\n";
    let preamble = preamble(1).replace(admin, &format!("{admin}token = \"{ADMIN_TOKEN}\"\n"));
    format!(
        r#"{preamble}
[[clusters]]
name = "backend"
endpoints = [{{ address = "{backend}" }}]

[[consumers]]
name = "alice"
api_keys = ["{consumer_hash}"]

[[auth.jwt]]
name = "hs"
algorithms = ["HS256"]
keys = [{{ kid = "k1", secret = "{JWT_SECRET}" }}]

[redis]
address = "{redis}"
username = "gateway"
password = "{REDIS_PASSWORD}"
timeout = "200ms"

[[rate_limits]]
name = "shared"
key = "consumer"
backend = "redis"
failure_mode = "open"
limits = [{{ requests = 1000, per = "1s" }}]

[[routes]]
name = "llm"
[routes.match]
path_prefix = "/v1"
[routes.ai]

[[routes]]
name = "app"
cluster = "backend"
[routes.match]
path_prefix = "/app"
[routes.request_headers]
set = {{ "authorization" = "{UPSTREAM_AUTH}" }}
[routes.response_headers]
add = {{ "authorization" = "{RESPONSE_AUTH}" }}
[routes.policy]
auth = ["api_key", "jwt"]
rate_limits = ["shared"]

[[ai.providers]]
name = "p"
kind = "openai"
base_url = "http://{provider}/v1"
api_key = "{PROVIDER_KEY}"
headers = {{ "x-extra-auth" = "{PROVIDER_HEADER}" }}

[[ai.models]]
alias = "a"
targets = [{{ provider = "p", model = "m1" }}]

[hypercare]
evaluation_interval = "100ms"

[[hypercare.alerts]]
name = "app-errors"
kind = "error_rate"
route = "app"
window = "2s"
threshold = 0.1
min_requests = 5

[[hypercare.webhooks]]
url = "http://{hook}/hooks/{HOOK_PATH_TOKEN}?token={HOOK_QUERY_TOKEN}"
timeout = "500ms"
max_retries = 1
backoff = "20ms"
"#,
        backend = s.backend,
        redis = s.redis,
        provider = s.provider,
        hook = s.hook,
    )
}

fn admin(gw: &GatewayProcess, req: Request) -> Response {
    admin_send(
        gw.admin,
        &req.header("Authorization", &format!("Bearer {ADMIN_TOKEN}")),
    )
}

fn data(gw: &GatewayProcess, req: &Request) -> Response {
    hypergate_tests::client::send(gw.addr, req)
}

fn chat(stream: bool) -> Request {
    let body = serde_json::json!({
        "model": "a",
        "stream": stream,
        "messages": [{"role": "user", "content": "hello"}],
    });
    Request::post("/v1/chat/completions", body.to_string())
        .header("content-type", "application/json")
}

#[test]
fn no_secret_leaves_through_the_admin_api_logs_or_errors() {
    let provider = provider();
    let backend = MockUpstream::always(Reply::status(503).into());
    let (redis, redis_seen) = fake_redis();
    let setup = Setup {
        provider: provider.addr(),
        backend: backend.addr(),
        redis,
        hook: closed_port(),
    };
    let consumer_hash = hypergate::auth::hash_key(CONSUMER_KEY);
    let hash_hex = consumer_hash.trim_start_matches("sha256:").to_string();
    let gw = GatewayProcess::spawn(&config(&setup, &consumer_hash));

    // Everything any client or operator can read is collected here.
    let mut shown: Vec<(String, String)> = Vec::new();
    let mut show = |what: &str, r: &Response| {
        shown.push((what.to_string(), r.text()));
    };

    // An AI call the provider refuses, echoing the key.
    let r = data(&gw, &chat(false));
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(
        r.text().contains("Incorrect API key provided: <redacted>"),
        "{}",
        r.text()
    );
    show("provider 401", &r);
    // A streamed call whose stream reports the key.
    let r = data(&gw, &chat(true));
    assert!(
        r.text().contains("key <redacted> was revoked"),
        "{}",
        r.text()
    );
    show("provider stream error", &r);
    // The provider did get the key and the header (the wire is where they go).
    let sent = provider.last();
    assert_eq!(
        sent.header("authorization"),
        Some(format!("Bearer {PROVIDER_KEY}").as_str())
    );
    assert_eq!(sent.header("x-extra-auth"), Some(PROVIDER_HEADER));

    // Bad credentials, and good ones through the route with header secrets.
    for req in [
        Request::get("/app/x").header("x-api-key", "not-the-key"),
        Request::get("/app/x").header(
            "Authorization",
            "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl",
        ),
        Request::get("/app/x"),
    ] {
        let r = data(&gw, &req);
        assert_eq!(r.status, 401, "{}", r.text());
        show("auth failure", &r);
    }
    // Enough failing calls (the backend answers 503) to fire the alert, whose
    // webhook is unreachable: its deliveries fail and are logged.
    for i in 0..20 {
        let r = data(
            &gw,
            &Request::get("/app/x").header("x-api-key", CONSUMER_KEY),
        );
        assert_eq!(r.status, 503, "{}", r.text());
        if i == 0 {
            // The upstream's own answer carries the response header secret (that
            // is its purpose); later ones may come from the gateway itself.
            assert_eq!(r.header("authorization"), Some(RESPONSE_AUTH));
        }
        show("backend 503", &r);
    }
    assert_eq!(backend.last().header("authorization"), Some(UPSTREAM_AUTH));
    wait_until(
        "the webhook delivery fails and is logged",
        Duration::from_secs(15),
        || {
            gw.log()
                .iter()
                .any(|l| l.contains("alert notification given up"))
        },
    );
    let log = gw.log();
    let hook_lines: Vec<&String> = log.iter().filter(|l| l.contains("webhook")).collect();
    assert!(
        hook_lines
            .iter()
            .all(|l| l.contains("webhook=hypercare.webhooks[0]")),
        "{hook_lines:#?}"
    );
    // The Redis client authenticated with the configured user and password.
    wait_until("the gateway talks to Redis", Duration::from_secs(5), || {
        String::from_utf8_lossy(&redis_seen.lock().unwrap()).contains(REDIS_PASSWORD)
    });
    let to_redis = String::from_utf8_lossy(&redis_seen.lock().unwrap()).into_owned();
    assert!(to_redis.contains("AUTH"), "{to_redis:?}");
    assert!(to_redis.contains("gateway"), "{to_redis:?}");

    // Reloads refused because of bad secrets say where, never what.
    let good = config(&setup, &consumer_hash);
    let bad = good
        .replace(
            &format!("address = \"{}\"", setup.redis),
            &format!("address = \"redis://:MARKERbad-redis@{}\"", setup.redis),
        )
        .replace(
            &format!("url = \"http://{}/hooks/", setup.hook),
            "url = \"ftp://MARKERbad-hook.example/hooks/",
        )
        .replace(
            &format!("\"authorization\" = \"{UPSTREAM_AUTH}\""),
            "\"authorization\" = \"Bearer MARKERbad-header\\u0001\"",
        )
        .replace(JWT_SECRET, "MARKERshort");
    std::fs::write(&gw.config_path, &bad).expect("write the bad config");
    let r = admin(&gw, Request::post("/reload", ""));
    assert_eq!(r.status, 400, "{}", r.text());
    let error = r.json()["error"].as_str().unwrap_or_default().to_string();
    for path in [
        "redis.address",
        "hypercare.webhooks[0].url",
        "routes[1].request_headers.set.authorization",
        "auth.jwt[0].keys[0].secret",
    ] {
        assert!(error.contains(path), "{path} missing from {error}");
    }
    assert!(error.contains("redis.password"), "{error}");
    show("refused reload", &r);
    // A good reload (every secret unchanged) goes through.
    std::fs::write(&gw.config_path, &good).expect("write the config back");
    let r = admin(&gw, Request::post("/reload", ""));
    assert_eq!(r.status, 200, "{}", r.text());
    show("reload", &r);

    // The admin API: a 401 without the token, and every read endpoint with it.
    let r = admin_send(gw.admin, &Request::get("/config"));
    assert_eq!(r.status, 401);
    show("admin 401", &r);
    let config = admin(&gw, Request::get("/config"));
    assert_eq!(config.status, 200, "{}", config.text());
    let c = config.json();
    for (what, value) in [
        ("admin.token", &c["admin"]["token"]),
        ("provider api_key", &c["ai"]["providers"][0]["api_key"]),
        (
            "provider header",
            &c["ai"]["providers"][0]["headers"]["x-extra-auth"],
        ),
        ("jwt secret", &c["auth"]["jwt"][0]["keys"][0]["secret"]),
        ("consumer key hash", &c["consumers"][0]["api_keys"][0]),
        ("redis password", &c["redis"]["password"]),
        ("webhook url", &c["hypercare"]["webhooks"][0]["url"]),
        (
            "request header",
            &c["routes"][1]["request_headers"]["set"]["authorization"],
        ),
        (
            "response header",
            &c["routes"][1]["response_headers"]["add"]["authorization"],
        ),
    ] {
        assert_eq!(value, "<redacted>", "{what} in /config: {value}");
    }
    assert_eq!(
        c["redis"]["username"], "gateway",
        "non-secret fields stay visible"
    );
    show("/config", &config);
    for path in [
        "/metrics",
        "/stats",
        "/hypercare/alerts",
        "/hypercare/calls?limit=100",
        "/hypercare/summary",
    ] {
        let r = admin(&gw, Request::get(path));
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        show(path, &r);
    }

    for (what, text) in &shown {
        assert!(!text.contains(MARK), "a marker leaked into {what}: {text}");
        assert!(
            !text.contains(&hash_hex),
            "the key hash leaked into {what}: {text}"
        );
    }
    let log = gw.log();
    assert!(
        log.iter().any(|l| l.contains("reload refused")),
        "the refused reload was not logged: {log:#?}"
    );
    for line in &log {
        assert!(!line.contains(MARK), "a marker leaked into the log: {line}");
        assert!(
            !line.contains(&hash_hex),
            "the key hash leaked into the log: {line}"
        );
    }
}

/// A gateway whose route has a Redis-backed limit of 3 a minute per `x-user`
/// that fails closed, so it admits only while the gateway is authenticated to Redis.
fn redis_limited(redis: &RedisServer, password: &str) -> String {
    format!(
        r#"{}
[redis]
address = "{}"
username = "gateway"
password = "{password}"
timeout = "200ms"

[[rate_limits]]
name = "shared"
key = "header:x-user"
backend = "redis"
failure_mode = "closed"
limits = [{{ requests = 3, per = "1m" }}]

[[routes]]
name = "limited"
[routes.direct]
body = "ok"
[routes.policy]
rate_limits = ["shared"]
"#,
        preamble(1),
        redis.addr
    )
}

#[test]
fn redis_credentials_authenticate_to_a_real_server() {
    let password = "redis-password-from-the-environment";
    let redis = RedisServer::start_with_user("gateway", password);
    std::env::set_var("HYPERGATE_TEST_REDIS_PASSWORD", password);
    let gw = TestGateway::start(&redis_limited(&redis, "${HYPERGATE_TEST_REDIS_PASSWORD}"));
    let user = |name: &str| gw.send(&Request::get("/").header("x-user", name)).status;
    let statuses: Vec<u16> = (0..5).map(|_| user("alice")).collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429], "limited through Redis");
    assert_eq!(gw.metric("hypergate_ratelimit_redis_up"), 1.0);
    let config = gw.admin_request("GET", "/config").json();
    assert_eq!(config["redis"]["password"], "<redacted>");
    assert_eq!(config["redis"]["username"], "gateway");

    // A reload with a wrong password: Redis refuses the gateway, which fails closed.
    let r = gw.reload(&redis_limited(&redis, "not-the-password"));
    assert_eq!(r.status, 200, "{}", r.text());
    wait_until(
        "Redis refuses the wrong password",
        Duration::from_secs(5),
        || gw.metric("hypergate_ratelimit_redis_up") == 0.0,
    );
    // A key the gateway has not seen must be decided by Redis.
    assert_eq!(user("bob"), 503);
}
