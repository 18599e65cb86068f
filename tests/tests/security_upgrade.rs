//! Upgrades are a route feature: an `Upgrade` token reaches an upstream only on a
//! route that allows it, and only after every request phase passed. The upstream
//! here answers `101` to anything, so each test would turn into a raw tunnel that
//! skips routing and auth (h2c smuggling) if the gateway forwarded the wrong
//! upgrade or trusted an unasked `101`. Tunnels end when idle, are counted, and
//! get an access-log line.

use hypergate_tests::mock::{ws_client_frame, ws_parse_frame};
use hypergate_tests::{
    cluster, preamble, wait_until, Action, Conn, MockUpstream, TempDir, TestGateway,
};
use std::time::{Duration, Instant};

const KEY: &str = "upgrade-test-key";

/// A protected route (API key, websocket allowed) and a public route (no upgrade allowed).
fn config(upstream: &MockUpstream, extra_limits: &str, log: Option<&str>) -> String {
    let hash = hypergate::auth::hash_key(KEY);
    let log = log.map_or(String::new(), |p| {
        format!("\n[access_log]\nenabled = true\npath = \"{p}\"\n")
    });
    format!(
        r#"{}
[limits]
{extra_limits}
{log}
{}
[[consumers]]
name = "alice"
api_keys = ["{hash}"]

[[routes]]
name = "private"
cluster = "ws"
upgrade = ["websocket"]
[routes.match]
path_prefix = "/private"
[routes.policy]
auth = ["api_key"]

[[routes]]
name = "public"
cluster = "ws"
"#,
        preamble(1),
        cluster("ws", &[upstream.addr()], ""),
    )
}

fn upgrade_request(path: &str, upgrade: &str, key: Option<&str>) -> Vec<u8> {
    let key = key.map_or(String::new(), |k| format!("x-api-key: {k}\r\n"));
    format!(
        "GET {path} HTTP/1.1\r\nHost: test.local\r\nConnection: Upgrade, HTTP2-Settings\r\n\
Upgrade: {upgrade}\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{key}\r\n"
    )
    .into_bytes()
}

/// Reads (and drops) whatever arrives until the peer closes; false if it is
/// still open after `limit`.
fn eof_within(conn: &mut Conn, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut b = [0u8; 4096];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        conn.set_read_timeout(left.max(Duration::from_millis(1)));
        match std::io::Read::read(conn.stream(), &mut b) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
    false
}

fn lower(v: Option<&str>) -> String {
    v.unwrap_or_default().to_ascii_lowercase()
}

#[test]
fn h2c_upgrade_is_never_forwarded_and_an_unasked_101_is_a_502() {
    let mock = MockUpstream::always(Action::WebSocketEcho);
    let gw = TestGateway::start(&config(&mock, "", None));
    let mut conn = gw.conn();
    // The h2c upgrade, and behind it (same write) a request for the protected
    // route: through a tunnel it would reach the upstream with no key checked.
    let mut bytes = upgrade_request("/public", "h2c", None);
    bytes.extend_from_slice(b"GET /private/secret HTTP/1.1\r\nHost: test.local\r\n\r\n");
    conn.send(&bytes);
    let r = conn.try_read_response(false).expect("an answer");
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.raw_head));
    assert!(r.text().contains("switched protocols"), "{}", r.text());
    let seen = mock.requests();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    let first = &seen[0];
    assert_eq!(first.path(), "/public");
    assert_eq!(first.header("upgrade"), None, "{first:#?}");
    assert_eq!(first.header("http2-settings"), None, "{first:#?}");
    assert!(
        !lower(first.header("connection")).contains("upgrade"),
        "{first:#?}"
    );
    // Whatever follows on the connection goes through routing again (here: a
    // 401 for the missing key) or nowhere; never raw to the upstream.
    if let Ok(next) = conn.try_read_response(false) {
        assert_eq!(next.status, 401, "{}", next.text());
    }
    assert!(conn.closed_within(Duration::from_secs(5)));
    assert!(mock
        .requests()
        .iter()
        .all(|r| !r.path().starts_with("/private")));
}

#[test]
fn only_the_allowed_token_is_forwarded_after_auth() {
    let mock = MockUpstream::always(Action::WebSocketEcho);
    let gw = TestGateway::start(&config(&mock, "", None));

    // No key: the upgrade never reaches the upstream.
    let mut conn = gw.conn();
    conn.send(&upgrade_request("/private/chat", "websocket", None));
    let r = conn.try_read_response(false).expect("an answer");
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(mock.request_count(), 0);

    // h2c offered next to websocket on the websocket route: only websocket goes on.
    let mut conn = gw.conn();
    conn.send(&upgrade_request(
        "/private/chat",
        "h2c, websocket",
        Some(KEY),
    ));
    let head = conn.read_head(false).expect("101 head");
    assert_eq!(head.status, 101);
    let seen = mock.last();
    assert_eq!(lower(seen.header("upgrade")), "websocket", "{seen:#?}");
    assert_eq!(seen.header("http2-settings"), None);
    let mut pending = conn.leftover().to_vec();
    let frame = loop {
        if let Some((op, payload, used)) = ws_parse_frame(&pending) {
            pending.drain(..used);
            break (op, payload);
        }
        let mut b = [0u8; 4096];
        let n = std::io::Read::read(conn.stream(), &mut b).expect("read tunnel");
        assert!(n > 0, "tunnel closed");
        pending.extend_from_slice(&b[..n]);
    };
    assert_eq!(frame, (0x1, b"hello".to_vec()));

    // h2c alone on the websocket route: forwarded as a plain request; the
    // upstream's 101 anyway is refused.
    let mut conn = gw.conn();
    conn.send(&upgrade_request("/private/chat", "h2c", Some(KEY)));
    let r = conn.try_read_response(false).expect("an answer");
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(mock.last().header("upgrade"), None);

    // A route without `upgrade`: websocket is not forwarded either.
    let mut conn = gw.conn();
    conn.send(&upgrade_request("/public/chat", "websocket", None));
    let r = conn.try_read_response(false).expect("an answer");
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(mock.last().header("upgrade"), None);
}

#[test]
fn an_idle_tunnel_is_closed_counted_and_logged() {
    let mock = MockUpstream::always(Action::WebSocketEcho);
    let dir = TempDir::new();
    let log = dir.path().join("access.log");
    let gw = TestGateway::start(&config(
        &mock,
        "tunnel_idle_timeout = \"400ms\"",
        Some(&log.display().to_string()),
    ));
    let mut conn = gw.conn();
    conn.send(&upgrade_request("/private/chat", "websocket", Some(KEY)));
    assert_eq!(conn.read_head(false).expect("101").status, 101);
    // Traffic keeps it open past the idle timeout...
    let opened = Instant::now();
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(200));
        conn.send(&ws_client_frame(0x1, b"ping"));
    }
    assert_eq!(gw.metric("hypergate_tunnels_active"), 1.0);
    // ...silence closes it (the echoed frames are read and dropped until then).
    assert!(
        eof_within(&mut conn, Duration::from_secs(5)),
        "idle tunnel still open"
    );
    assert!(opened.elapsed() >= Duration::from_millis(800));
    wait_until("the tunnel is counted", Duration::from_secs(5), || {
        gw.metric("hypergate_tunnels_total{end=\"tunnel_idle_timeout\"}") == 1.0
    });
    assert_eq!(gw.metric("hypergate_tunnels_active"), 0.0);
    assert!(gw.metric("hypergate_tunnel_bytes_total{direction=\"upstream\"}") >= 4.0 * 10.0);
    wait_until(
        "the tunnel's access-log line",
        Duration::from_secs(5),
        || std::fs::read_to_string(&log).is_ok_and(|t| t.contains("tunnel_idle_timeout")),
    );
    let text = std::fs::read_to_string(&log).expect("access log");
    let line: serde_json::Value = serde_json::from_str(
        text.lines()
            .find(|l| l.contains("tunnel_idle_timeout"))
            .expect("line"),
    )
    .expect("json line");
    assert_eq!(line["status"], 101, "{line}");
    assert_eq!(line["route"], "private", "{line}");
    assert!(line["bytes_in"].as_u64().unwrap_or(0) >= 40, "{line}");
    assert!(line["total_us"].as_u64().unwrap_or(0) >= 800_000, "{line}");
}

#[test]
fn a_tunnel_ends_when_the_gateway_drains() {
    let mock = MockUpstream::always(Action::WebSocketEcho);
    let gw = TestGateway::start(&config(&mock, "", None));
    let mut conn = gw.conn();
    conn.send(&upgrade_request("/private/chat", "websocket", Some(KEY)));
    assert_eq!(conn.read_head(false).expect("101").status, 101);
    let started = Instant::now();
    drop(gw);
    assert!(eof_within(&mut conn, Duration::from_secs(5)));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the drain waited for the tunnel ({:?})",
        started.elapsed()
    );
}

#[test]
fn h2c_cannot_be_allowed_on_a_route() {
    let err = hypergate::config::load_str(
        &format!(
            "{}{}\n[[routes]]\nname = \"r\"\ncluster = \"c\"\nupgrade = [\"h2c\", \"web socket\"]\n",
            preamble(1),
            cluster("c", &["127.0.0.1:9".parse().expect("addr")], "")
        ),
        "t.toml",
    )
    .expect_err("h2c refused");
    let text = err.to_string();
    assert!(
        text.contains("routes[0].upgrade[0]: h2c is never forwarded"),
        "{text}"
    );
    assert!(text.contains("routes[0].upgrade[1]"), "{text}");
}

#[test]
fn the_pipelined_request_after_a_refused_upgrade_is_routed_not_tunnelled() {
    // Same as the first test, but the smuggled request is for the public route:
    // if anything follows the 502 it must be an ordinary, routed answer.
    let mock = MockUpstream::always(Action::WebSocketEcho);
    let gw = TestGateway::start(&config(&mock, "", None));
    let mut conn = Conn::connect(gw.addr);
    let mut bytes = upgrade_request("/public/a", "h2c", None);
    bytes.extend_from_slice(b"GET /public/b HTTP/1.1\r\nHost: test.local\r\n\r\n");
    conn.send(&bytes);
    assert_eq!(conn.try_read_response(false).expect("502").status, 502);
    assert!(conn.closed_within(Duration::from_secs(5)));
    assert!(mock
        .requests()
        .iter()
        .all(|r| r.path() != "/public/b" || r.header("upgrade").is_none()));
}
