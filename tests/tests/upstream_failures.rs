//! Upstream faults and how they surface: 502/503/504 with JSON error bodies,
//! and retries only where they are safe.

use hypergate_tests::util::closed_port;
use hypergate_tests::{
    cluster, preamble, route_all, wait_until, Action, MockUpstream, Reply, Request, Response,
    TestGateway,
};
use std::time::{Duration, Instant};

fn gateway(
    endpoints: &[std::net::SocketAddr],
    cluster_extra: &str,
    route_extra: &str,
) -> TestGateway {
    TestGateway::start(&format!(
        "{}{}{}",
        preamble(1),
        cluster("backend", endpoints, cluster_extra),
        route_all("all", "backend", route_extra)
    ))
}

fn assert_error(r: &Response, status: u16, kind: &str) {
    assert_eq!(r.status, status, "body: {}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["type"], kind, "body: {}", r.text());
    let rid = r.header("x-request-id").expect("x-request-id on errors");
    assert_eq!(v["error"]["request_id"], rid);
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
}

#[test]
fn garbage_response_is_502_bad_upstream_response() {
    let mock = MockUpstream::always(Action::Garbage(b"THIS IS NOT HTTP\r\n\r\n".to_vec()));
    let gw = gateway(&[mock.addr()], "", "");
    let r = gw.get("/garbage");
    assert_error(&r, 502, "bad_upstream_response");
    assert!(
        gw.metric("hypergate_upstream_bad_responses_total{cluster=\"backend\",version=\"\"}")
            >= 1.0
    );
}

#[test]
fn oversized_response_head_is_502() {
    let big = "v".repeat(2000);
    let mock = MockUpstream::start(move |_| Reply::ok("x").header("X-Huge", &big).into());
    let gw = TestGateway::start(&format!(
        "{}{}{}\n[limits]\nmax_response_header_bytes = 1024\n",
        preamble(1),
        cluster("backend", &[mock.addr()], ""),
        route_all("all", "backend", "")
    ));
    assert_error(&gw.get("/big-head"), 502, "bad_upstream_response");
}

#[test]
fn ambiguous_response_framing_is_502() {
    let mock = MockUpstream::always(Action::Garbage(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
    ));
    let gw = gateway(&[mock.addr()], "", "");
    assert_error(&gw.get("/ambiguous"), 502, "bad_upstream_response");
}

#[test]
fn hanging_upstream_is_504_after_the_route_timeout_and_not_retried() {
    let mock = MockUpstream::always(Action::Hang);
    let gw = gateway(
        &[mock.addr()],
        "retry = { attempts = 2 }",
        "timeout = \"300ms\"",
    );
    let start = Instant::now();
    let r = gw.get("/hang");
    let took = start.elapsed();
    assert_error(&r, 504, "upstream_timeout");
    assert!(
        took >= Duration::from_millis(250),
        "504 after only {took:?}"
    );
    assert!(took < Duration::from_secs(5), "504 only after {took:?}");
    assert_eq!(
        mock.request_count(),
        1,
        "a timed-out request must not be retried"
    );
    assert!(
        gw.metric("hypergate_upstream_timeouts_total{cluster=\"backend\",version=\"\"}") >= 1.0
    );
}

#[test]
fn refused_connection_is_502_connect_failed() {
    let gw = gateway(&[closed_port()], "", "");
    assert_error(&gw.get("/refused"), 502, "connect_failed");
    assert!(
        gw.metric("hypergate_upstream_connect_errors_total{cluster=\"backend\",version=\"\"}")
            >= 1.0
    );
}

#[test]
fn all_endpoints_unhealthy_is_503_no_healthy_endpoint() {
    let sick = |req: &hypergate_tests::mock::Request| -> Action {
        if req.path() == "/healthz" {
            Reply::status(500).into()
        } else {
            Reply::ok("served").into()
        }
    };
    let a = MockUpstream::start(sick);
    let b = MockUpstream::start(sick);
    let gw = gateway(
        &[a.addr(), b.addr()],
        "health_check = { path = \"/healthz\", interval = \"50ms\", timeout = \"1s\", unhealthy_threshold = 1, healthy_threshold = 1 }",
        "",
    );
    wait_until(
        "both endpoints are marked unhealthy",
        Duration::from_secs(10),
        || {
            gw.metrics()
                .lines()
                .filter(|l| l.starts_with("hypergate_upstream_healthy{"))
                .filter(|l| l.ends_with(" 0"))
                .count()
                == 2
        },
    );
    let r = gw.get("/anything");
    assert_error(&r, 503, "no_healthy_endpoint");
    assert_eq!(a.count_except("/healthz") + b.count_except("/healthz"), 0);
}

#[test]
fn upstream_closing_mid_body_aborts_the_client_response() {
    let mock = MockUpstream::always(Action::Garbage(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly this".to_vec(),
    ));
    let gw = gateway(&[mock.addr()], "", "");
    let mut conn = gw.conn();
    conn.send(&Request::get("/short").to_bytes());
    let head = conn.read_head(false).expect("the head is forwarded");
    assert_eq!(head.status, 200);
    let mut got = Vec::new();
    let res = conn.read_body_to(&head, |b| got.extend_from_slice(b));
    assert!(
        res.is_err(),
        "a truncated body must not look complete (got {} bytes)",
        got.len()
    );
    assert!(got.len() < 1000);
    assert!(conn.closed_within(Duration::from_secs(5)));
}

#[test]
fn get_reset_without_answer_is_retried_on_another_endpoint() {
    let bad = MockUpstream::always(Action::Reset);
    let good = MockUpstream::ok("good");
    let gw = gateway(&[bad.addr(), good.addr()], "retry = { attempts = 1 }", "");
    let mut conn = gw.conn();
    for i in 0..6 {
        let r = conn.request(&Request::get(&format!("/retry/{i}")));
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.body, b"good");
    }
    assert!(
        bad.request_count() >= 1,
        "the resetting endpoint was never tried"
    );
    assert_eq!(good.request_count(), 6);
    assert!(gw.metric("hypergate_upstream_retries_total{cluster=\"backend\",version=\"\"}") >= 1.0);
}

#[test]
fn post_with_a_body_is_not_retried_after_it_was_sent() {
    let bad = MockUpstream::always(Action::Reset);
    let good = MockUpstream::ok("good");
    // Smooth round robin with equal weights picks the first endpoint first.
    let gw = gateway(&[bad.addr(), good.addr()], "retry = { attempts = 2 }", "");
    let r = gw.send(&Request::post("/pay", "amount=10"));
    assert_error(&r, 502, "upstream_reset");
    assert_eq!(bad.request_count(), 1);
    assert_eq!(bad.last().body, b"amount=10");
    assert_eq!(
        good.request_count(),
        0,
        "a POST whose body was sent must not be replayed"
    );
}

#[test]
fn connect_failure_is_retried_even_for_post() {
    let good = MockUpstream::ok("good");
    let gw = gateway(
        &[closed_port(), good.addr()],
        "retry = { attempts = 1 }",
        "",
    );
    let r = gw.send(&Request::post("/pay", "amount=10"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(good.request_count(), 1);
    assert_eq!(good.last().body, b"amount=10");
    assert!(good.last().body_complete);
}

#[test]
fn idempotent_request_is_retried_on_5xx_when_configured() {
    let bad = MockUpstream::start(|_| Reply::status(503).body("busy").into());
    let good = MockUpstream::ok("good");
    let gw = gateway(
        &[bad.addr(), good.addr()],
        "retry = { attempts = 1, on_5xx = true }",
        "",
    );
    let r = gw.get("/flaky");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(bad.request_count(), 1);
    let r = gw.send(&Request::post("/flaky-post", "x"));
    // The POST may land on either endpoint; when it hits the 503 it must not be retried.
    if r.status == 503 {
        assert_eq!(good.count_path("/flaky-post"), 0);
    } else {
        assert_eq!(r.status, 200);
    }
}

#[test]
fn stale_pooled_connection_is_replaced_transparently() {
    let mock = MockUpstream::ok("fresh");
    // The upstream closes every connection after one answer without saying so.
    mock.set_close_after(1);
    let gw = gateway(&[mock.addr()], "retry = { attempts = 0 }", "");
    let mut conn = gw.conn();
    for i in 0..5 {
        let r = conn.request(&Request::get(&format!("/stale/{i}")));
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        // Not synchronisation (there is nothing to poll for): a pause so the upstream's
        // FIN usually reaches the pooled connection before its reuse, which is the
        // stale case under test. Without it the test still holds, less pointedly.
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        mock.accepted(),
        5,
        "each request needed a fresh upstream connection"
    );
}

#[test]
fn post_on_a_pooled_connection_the_upstream_already_closed_succeeds() {
    let mock = MockUpstream::start(|_| Reply::ok("").echo().into());
    // The upstream closes each connection after one answer, without saying so
    // (as an origin with a short keep-alive timeout does between requests).
    mock.set_close_after(1);
    let gw = gateway(&[mock.addr()], "", "");
    let mut conn = gw.conn();
    for i in 0..4 {
        let body = format!("order {i}");
        let r = conn.request(&Request::post("/orders", body.clone()));
        assert_eq!(
            r.status,
            200,
            "POST {i} failed on a pooled connection the upstream had closed: {}",
            r.text()
        );
        assert_eq!(r.text(), body);
        // Let the upstream's FIN reach the idle pooled connection (traffic shaping, not sync).
        std::thread::sleep(Duration::from_millis(50));
    }
    let complete = mock.requests().iter().filter(|r| r.body_complete).count();
    assert_eq!(
        complete, 4,
        "each POST must reach the upstream exactly once"
    );
}

#[test]
fn full_pool_is_503_pool_exhausted() {
    let mock =
        MockUpstream::start(|_| Reply::ok("slow").latency(Duration::from_millis(800)).into());
    let gw = gateway(&[mock.addr()], "pool = { max_connections = 1 }", "");
    let addr = gw.addr;
    let first = std::thread::spawn(move || hypergate_tests::client::get(addr, "/first"));
    wait_until(
        "the first request holds the only connection",
        Duration::from_secs(5),
        || mock.request_count() == 1,
    );
    let r = gw.get("/second");
    assert_error(&r, 503, "pool_exhausted");
    assert_eq!(first.join().expect("first request").status, 200);
    assert_eq!(mock.accepted(), 1);
}

#[test]
fn interim_responses_from_the_upstream_are_not_relayed() {
    let mock = MockUpstream::always(Action::Garbage(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\ndone"
            .to_vec(),
    ));
    let gw = gateway(&[mock.addr()], "", "");
    let mut conn = gw.conn();
    conn.send(&Request::get("/interim").to_bytes());
    let head = conn.read_head(false).expect("response head");
    assert_eq!(
        head.status,
        200,
        "an interim response was relayed: {:?}",
        String::from_utf8_lossy(&head.raw_head)
    );
}
