//! Edge protections: per-route CIDR allow/deny lists (clients on 127.0.0.1 and
//! 127.0.0.2), the client IP from `X-Forwarded-For` honoured only from trusted
//! proxies, per-route body limits (413), CORS preflights answered at the
//! gateway, and the total and per-IP connection caps.

use hypergate_tests::client::Conn;
use hypergate_tests::{cluster, preamble, wait_until, MockUpstream, Request, TestGateway};
use std::net::IpAddr;
use std::time::Duration;

const HOME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

fn send_from(gw: &TestGateway, source: IpAddr, req: &Request) -> hypergate_tests::Response {
    Conn::connect_from(gw.addr, source).request(req)
}

#[test]
fn cidr_deny_and_allow_lists_per_route() {
    let mock = MockUpstream::ok("upstream");
    let gw = TestGateway::start(&format!(
        r#"{}
{}
[[routes]]
name = "deny-two"
cluster = "backend"
[routes.match]
path_prefix = "/deny"
[routes.policy]
deny_ips = ["127.0.0.2/32"]

[[routes]]
name = "allow-one"
cluster = "backend"
[routes.match]
path_prefix = "/allow"
[routes.policy]
allow_ips = ["127.0.0.1"]

[[routes]]
name = "deny-wins"
cluster = "backend"
[routes.match]
path_prefix = "/both"
[routes.policy]
allow_ips = ["127.0.0.0/8"]
deny_ips = ["127.0.0.2/31"]

[[routes]]
name = "open"
cluster = "backend"
"#,
        preamble(2),
        cluster("backend", &[mock.addr()], "")
    ));
    let cases = [
        ("/deny/x", HOME, 200),
        ("/deny/x", OTHER, 403),
        ("/allow/x", HOME, 200),
        ("/allow/x", OTHER, 403),
        ("/both/x", HOME, 200),
        ("/both/x", OTHER, 403),
        ("/open", HOME, 200),
        ("/open", OTHER, 200),
    ];
    for (path, source, want) in cases {
        let before = mock.request_count();
        let r = send_from(&gw, source, &Request::get(path));
        assert_eq!(r.status, want, "{path} from {source}: {}", r.text());
        if want == 403 {
            assert_eq!(
                r.json()["error"]["type"],
                "ip_denied",
                "{path} from {source}"
            );
            assert_eq!(
                mock.request_count(),
                before,
                "{path} from {source} reached the upstream"
            );
        } else {
            assert_eq!(
                mock.last().header("x-forwarded-for"),
                Some(&*source.to_string())
            );
        }
    }
    assert_eq!(
        gw.metric(r#"hypergate_edge_rejections_total{phase="ip_filter",reason="ip_denied"}"#),
        3.0
    );
}

#[test]
fn forwarded_for_is_honoured_only_from_trusted_proxies() {
    let mock = MockUpstream::ok("upstream");
    let gw = TestGateway::start(&format!(
        r#"{}
[protection]
trusted_proxies = ["127.0.0.2/32", "10.0.0.0/8"]
{}
[[routes]]
name = "no-bad-net"
cluster = "backend"
[routes.match]
path_prefix = "/deny"
[routes.policy]
deny_ips = ["203.0.113.0/24"]

[[routes]]
name = "partners-only"
cluster = "backend"
[routes.match]
path_prefix = "/partners"
[routes.policy]
allow_ips = ["198.51.100.0/24"]
"#,
        preamble(2),
        cluster("backend", &[mock.addr()], "")
    ));
    let xff = |path: &str, v: &str| Request::get(path).header("X-Forwarded-For", v);
    let cases = [
        // From the trusted proxy: the forwarded address is the client.
        (
            "trusted, bad client",
            OTHER,
            xff("/deny", "203.0.113.9"),
            403,
        ),
        (
            "trusted, good client",
            OTHER,
            xff("/deny", "198.51.100.1"),
            200,
        ),
        (
            "trusted, partner",
            OTHER,
            xff("/partners", "198.51.100.1"),
            200,
        ),
        (
            "trusted, not a partner",
            OTHER,
            xff("/partners", "192.0.2.1"),
            403,
        ),
        // Right-most untrusted hop wins: the client cannot prepend a partner address.
        (
            "trusted, spoofed prefix",
            OTHER,
            xff("/partners", "198.51.100.1, 192.0.2.1"),
            403,
        ),
        // Trusted hops in the chain are skipped.
        (
            "trusted chain",
            OTHER,
            xff("/partners", "198.51.100.7, 10.1.2.3"),
            200,
        ),
        (
            "trusted, two headers",
            OTHER,
            Request::get("/partners")
                .header("X-Forwarded-For", "198.51.100.7")
                .header("X-Forwarded-For", "10.1.2.3"),
            200,
        ),
        // From an untrusted peer the header is ignored: the peer is the client.
        (
            "untrusted, claims bad",
            HOME,
            xff("/deny", "203.0.113.9"),
            200,
        ),
        (
            "untrusted, claims partner",
            HOME,
            xff("/partners", "198.51.100.1"),
            403,
        ),
        ("trusted, no header", OTHER, Request::get("/partners"), 403),
    ];
    for (what, source, req, want) in &cases {
        let r = send_from(&gw, *source, req);
        assert_eq!(r.status, *want, "{what}: {}", r.text());
    }
    // The upstream sees the chain with the real peer appended.
    let r = send_from(&gw, HOME, &xff("/deny", "203.0.113.9"));
    assert_eq!(r.status, 200);
    assert_eq!(
        mock.last().header("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
}

#[test]
fn route_body_limit_is_413() {
    let mock = MockUpstream::start(|_| hypergate_tests::Reply::ok("").echo().into());
    let gw = TestGateway::start(&format!(
        r#"{}
[limits]
max_body_bytes = 100000
{}
[[routes]]
name = "small"
cluster = "backend"
[routes.match]
path_prefix = "/small"
[routes.policy]
max_body_bytes = 10

[[routes]]
name = "big"
cluster = "backend"
"#,
        preamble(2),
        cluster("backend", &[mock.addr()], "")
    ));
    let r = gw.send(&Request::post("/small", "0123456789"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "0123456789");
    let before = mock.request_count();
    let r = gw.send(&Request::post("/small", "0123456789A"));
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "body_too_large");
    assert!(r.says_close());
    assert_eq!(
        mock.request_count(),
        before,
        "a Content-Length over the limit is refused before the upstream"
    );
    let r = gw.send(&Request::post("/small", vec![b'x'; 64]).chunked(8));
    assert_eq!(r.status, 413, "chunked over the route limit: {}", r.text());
    // The global limit applies elsewhere.
    let r = gw.send(&Request::post("/other", vec![b'y'; 5000]));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body.len(), 5000);
    // Over the global limit: refused on the head alone (no body is sent).
    let mut conn = gw.conn();
    conn.send(b"POST /other HTTP/1.1\r\nHost: t\r\nContent-Length: 100001\r\n\r\n");
    assert_eq!(conn.read_response().status, 413);
}

fn cors_gateway(mock: &MockUpstream) -> TestGateway {
    TestGateway::start(&format!(
        r#"{}
{}
[[consumers]]
name = "app"
api_keys = ["{}"]

[[routes]]
name = "api"
cluster = "backend"
[routes.match]
path_prefix = "/api"
[routes.policy]
auth = ["api_key"]
[routes.policy.cors]
allow_origins = ["https://app.test", "https://admin.test"]
allow_methods = ["GET", "POST", "PUT"]
allow_headers = ["content-type", "x-api-key"]
expose_headers = ["x-request-id"]
max_age = "2m"

[[routes]]
name = "public"
cluster = "backend"
[routes.match]
path_prefix = "/public"
[routes.policy.cors]
allow_origins = ["*"]

[[routes]]
name = "no-cors"
cluster = "backend"
"#,
        preamble(2),
        cluster("backend", &[mock.addr()], ""),
        hypergate::auth::hash_key("app-key")
    ))
}

fn preflight(path: &str, origin: &str, method: &str, headers: Option<&str>) -> Request {
    let mut r = Request::new("OPTIONS", path)
        .header("Origin", origin)
        .header("Access-Control-Request-Method", method);
    if let Some(h) = headers {
        r = r.header("Access-Control-Request-Headers", h);
    }
    r
}

#[test]
fn cors_preflight_is_answered_at_the_gateway() {
    let mock = MockUpstream::ok("upstream");
    let gw = cors_gateway(&mock);

    // Allowed: answered at the gateway, without credentials, never forwarded.
    let r = gw.send(&preflight(
        "/api/items",
        "https://app.test",
        "PUT",
        Some("Content-Type, X-API-Key"),
    ));
    assert_eq!(r.status, 204, "{:?} {}", r.headers, r.text());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.test")
    );
    let methods = r
        .header("access-control-allow-methods")
        .expect("allow-methods");
    for m in ["GET", "POST", "PUT"] {
        assert!(methods.contains(m), "allow-methods {methods:?} lacks {m}");
    }
    let headers = r
        .header("access-control-allow-headers")
        .expect("allow-headers")
        .to_ascii_lowercase();
    assert!(
        headers.contains("content-type") && headers.contains("x-api-key"),
        "{headers}"
    );
    assert_eq!(r.header("access-control-max-age"), Some("120"));
    assert!(
        r.headers_named("vary").iter().any(|v| v.contains("Origin")),
        "{:?}",
        r.headers
    );
    assert!(r.body.is_empty());
    assert_eq!(mock.request_count(), 0, "a preflight is not forwarded");

    // Refused: unknown origin, method or header.
    for (what, req) in [
        (
            "origin",
            preflight("/api/items", "https://evil.test", "GET", None),
        ),
        (
            "method",
            preflight("/api/items", "https://app.test", "DELETE", None),
        ),
        (
            "header",
            preflight("/api/items", "https://app.test", "POST", Some("x-secret")),
        ),
    ] {
        let r = gw.send(&req);
        assert_eq!(r.status, 403, "disallowed {what}: {}", r.text());
        assert_eq!(
            r.json()["error"]["type"],
            "cors_denied",
            "disallowed {what}"
        );
        assert!(r.header("access-control-allow-origin").is_none() || what != "origin");
    }
    assert_eq!(mock.request_count(), 0);
    assert_eq!(
        gw.metric(r#"hypergate_edge_rejections_total{phase="cors",reason="cors_denied"}"#),
        3.0
    );

    // Actual requests: allowed origin echoed with Vary; the request is authenticated as usual.
    let r = gw.send(
        &Request::get("/api/items")
            .header("Origin", "https://admin.test")
            .header("x-api-key", "app-key"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://admin.test")
    );
    assert!(r.headers_named("vary").iter().any(|v| v.contains("Origin")));
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("x-request-id")
    );
    assert_eq!(mock.request_count(), 1);
    // A 401 still carries the CORS headers, so the browser can read the error.
    let r = gw.send(&Request::get("/api/items").header("Origin", "https://app.test"));
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.test")
    );
    // A disallowed origin's actual request passes (CORS is enforced by browsers) without CORS headers.
    let r = gw.send(
        &Request::get("/api/items")
            .header("Origin", "https://evil.test")
            .header("x-api-key", "app-key"),
    );
    assert_eq!(r.status, 200);
    assert!(
        r.header("access-control-allow-origin").is_none(),
        "{:?}",
        r.headers
    );

    // Wildcard route: `*`, no Vary needed; default methods.
    let r = gw.send(&preflight("/public/x", "https://anyone.test", "POST", None));
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    let r = gw.send(&preflight(
        "/public/x",
        "https://anyone.test",
        "PATCH",
        None,
    ));
    assert_eq!(r.status, 403);

    // A route without CORS forwards OPTIONS like any request.
    let before = mock.request_count();
    let r = gw.send(&preflight("/elsewhere", "https://app.test", "GET", None));
    assert_eq!(r.status, 200);
    assert_eq!(mock.request_count(), before + 1);
    assert!(r.header("access-control-allow-origin").is_none());
}

fn caps_gateway(mock: &MockUpstream, total: usize, per_ip: usize) -> TestGateway {
    TestGateway::start(&format!(
        r#"{}
[protection]
max_connections = {total}
max_connections_per_ip = {per_ip}
{}
[[routes]]
name = "all"
cluster = "backend"
"#,
        preamble(2),
        cluster("backend", &[mock.addr()], "")
    ))
}

/// Asserts a connection is refused with a 503 and then closed.
#[track_caller]
fn assert_refused(mut conn: Conn, what: &str) {
    // The gateway answers as soon as it accepts, without reading a request; the
    // client reads without sending (see `refusal_reaches_a_client_that_already_sent_a_request`
    // for the other order).
    match conn.try_read_response(false) {
        Ok(r) => {
            assert_eq!(r.status, 503, "{what}: {}", r.text());
            assert_eq!(r.json()["error"]["type"], "connection_limit", "{what}");
            assert!(r.says_close(), "{what}: the refusal says close");
        }
        Err(e) => panic!("{what}: expected a 503 before the close, got {e}"),
    }
    assert!(
        conn.closed_within(Duration::from_secs(5)),
        "{what}: still open after the 503"
    );
}

/// Waits until a fresh connection from `source` is admitted (the gateway
/// releases a slot when it sees the previous connection close).
fn admitted_after_close(gw: &TestGateway, source: IpAddr) -> Conn {
    let mut admitted = None;
    wait_until(
        "a freed slot admits a new connection",
        Duration::from_secs(10),
        || {
            let mut c = Conn::connect_from(gw.addr, source);
            c.send(&Request::get("/again").to_bytes());
            match c.try_read_response(false) {
                Ok(r) if r.status == 200 => {
                    admitted = Some(c);
                    true
                }
                _ => false,
            }
        },
    );
    admitted.expect("admitted")
}

#[test]
fn total_connection_cap_refuses_the_extra_connection() {
    let mock = MockUpstream::ok("upstream");
    let gw = caps_gateway(&mock, 2, 0);
    let mut a = Conn::connect_from(gw.addr, HOME);
    let mut b = Conn::connect_from(gw.addr, OTHER);
    assert_eq!(a.request(&Request::get("/a")).status, 200);
    assert_eq!(b.request(&Request::get("/b")).status, 200);
    assert_refused(Conn::connect_from(gw.addr, HOME), "third connection");
    assert_refused(Conn::connect_from(gw.addr, OTHER), "fourth connection");
    assert_eq!(
        gw.metric(
            r#"hypergate_edge_rejections_total{phase="connection",reason="max_connections"}"#
        ),
        2.0
    );
    // The held connections keep working.
    assert_eq!(a.request(&Request::get("/a2")).status, 200);
    drop(b);
    let mut c = admitted_after_close(&gw, OTHER);
    assert_eq!(c.request(&Request::get("/c")).status, 200);
    // Full again.
    assert_refused(Conn::connect_from(gw.addr, HOME), "connection after refill");
}

#[test]
fn per_ip_connection_cap_counts_each_address_separately() {
    let mock = MockUpstream::ok("upstream");
    let gw = caps_gateway(&mock, 0, 2);
    let mut home: Vec<Conn> = (0..2).map(|_| Conn::connect_from(gw.addr, HOME)).collect();
    for (i, c) in home.iter_mut().enumerate() {
        assert_eq!(c.request(&Request::get(&format!("/home/{i}"))).status, 200);
    }
    assert_refused(
        Conn::connect_from(gw.addr, HOME),
        "third connection from 127.0.0.1",
    );
    // Another address has its own allowance.
    let mut other: Vec<Conn> = (0..2).map(|_| Conn::connect_from(gw.addr, OTHER)).collect();
    for c in &mut other {
        assert_eq!(c.request(&Request::get("/other")).status, 200);
    }
    assert_refused(
        Conn::connect_from(gw.addr, OTHER),
        "third connection from 127.0.0.2",
    );
    assert_eq!(
        gw.metric(
            r#"hypergate_edge_rejections_total{phase="connection",reason="max_connections_per_ip"}"#
        ),
        2.0
    );
    // Closing one frees exactly one slot for that address.
    drop(home.pop());
    let _again = admitted_after_close(&gw, HOME);
    assert_refused(Conn::connect_from(gw.addr, HOME), "127.0.0.1 full again");
    // When every connection of an address is gone, it is no longer tracked.
    drop(home);
    drop(_again);
    drop(other);
    wait_until("no client IP is tracked", Duration::from_secs(10), || {
        gw.metric("hypergate_connection_tracked_ips") == 0.0
    });
}

/// A refused client that has already sent its request (the usual case: clients
/// write first, then read) still gets the whole `503`, even though the gateway
/// closes without reading the request (so the close may arrive as a reset).
#[test]
fn refusal_reaches_a_client_that_already_sent_a_request() {
    let mock = MockUpstream::ok("upstream");
    let gw = caps_gateway(&mock, 1, 0);
    let mut held = Conn::connect_from(gw.addr, HOME);
    assert_eq!(held.request(&Request::get("/held")).status, 200);
    let mut refused_ok = 0;
    let mut failures = Vec::new();
    for i in 0..20 {
        let mut conn = Conn::connect_from(gw.addr, HOME);
        conn.send(&Request::get(&format!("/refused/{i}")).to_bytes());
        // A client busy elsewhere for a moment before it reads.
        std::thread::sleep(Duration::from_millis(20));
        match conn.try_read_response(false) {
            Ok(r) if r.status == 503 => refused_ok += 1,
            Ok(r) => failures.push(format!("status {}", r.status)),
            Err(e) => failures.push(e.to_string()),
        }
    }
    assert_eq!(
        refused_ok, 20,
        "refused clients that had sent a request did not get the 503: {failures:?}"
    );
}
