//! Load balancing and endpoint health: weighted round robin, consistent hashing,
//! passive outlier ejection and recovery, active health checks.

use hypergate_tests::mock::Request as Seen;
use hypergate_tests::{preamble, wait_until, Action, MockUpstream, Reply, Request, TestGateway};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A mock answering `name` (or 500 / unhealthy `/healthz` while `sick` is set).
fn switchable(name: &'static str, sick: Arc<AtomicBool>, fail_requests: bool) -> MockUpstream {
    MockUpstream::start(move |req: &Seen| -> Action {
        let sick = sick.load(Ordering::Relaxed);
        if req.path() == "/healthz" {
            return Reply::status(if sick { 503 } else { 200 }).into();
        }
        if sick && fail_requests {
            Reply::status(500).body(format!("{name} failing")).into()
        } else {
            Reply::ok(name).into()
        }
    })
}

fn gateway(endpoints: &[(SocketAddr, u32)], extra: &str) -> TestGateway {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|(a, w)| format!("{{ address = \"{a}\", weight = {w} }}"))
        .collect();
    TestGateway::start(&format!(
        "{}\n[[clusters]]\nname = \"backend\"\nendpoints = [{}]\n{extra}\n\n[[routes]]\nname = \"all\"\ncluster = \"backend\"\n",
        preamble(1),
        eps.join(", ")
    ))
}

#[test]
fn weighted_round_robin_follows_the_weights_exactly() {
    let a = MockUpstream::ok("a");
    let b = MockUpstream::ok("b");
    let gw = gateway(&[(a.addr(), 3), (b.addr(), 1)], "");
    let mut conn = gw.conn();
    for _ in 0..400 {
        assert_eq!(conn.request(&Request::get("/w")).status, 200);
    }
    assert_eq!((a.request_count(), b.request_count()), (300, 100));
}

#[test]
fn hash_balancing_keeps_a_key_on_one_endpoint() {
    let a = MockUpstream::ok("a");
    let b = MockUpstream::ok("b");
    let c = MockUpstream::ok("c");
    let gw = gateway(
        &[(a.addr(), 1), (b.addr(), 1), (c.addr(), 1)],
        "lb = \"hash\"\nhash_on = \"header:x-user\"",
    );
    let mut conn = gw.conn();
    let mut used = std::collections::HashSet::new();
    for user in 0..30 {
        let first = conn
            .request(&Request::get("/h").header("X-User", &format!("user-{user}")))
            .text();
        for _ in 0..5 {
            let again = conn
                .request(&Request::get("/h").header("X-User", &format!("user-{user}")))
                .text();
            assert_eq!(again, first, "user-{user} moved between endpoints");
        }
        used.insert(first);
    }
    assert!(
        used.len() >= 2,
        "30 keys all hashed to one endpoint: {used:?}"
    );
}

#[test]
fn failing_endpoint_is_ejected_then_readmitted() {
    let sick = Arc::new(AtomicBool::new(true));
    let a = switchable("a", sick.clone(), true);
    let b = MockUpstream::ok("b");
    let base = Duration::from_millis(500);
    let gw = gateway(
        &[(a.addr(), 1), (b.addr(), 1)],
        "retry = { attempts = 0 }\noutlier = { consecutive_failures = 3, base_ejection = \"500ms\", max_ejection = \"10s\", max_ejection_percent = 50 }",
    );
    let ejections = "hypergate_upstream_ejections_total{cluster=\"backend\",version=\"\"}";
    let mut conn = gw.conn();
    // Round robin alternates: requests 1, 3 and 5 hit `a` and fail.
    for i in 0..6 {
        let r = conn.request(&Request::get("/o"));
        assert!(
            r.status == 200 || r.status == 500,
            "request {i}: {}",
            r.status
        );
    }
    let ejected_at = Instant::now();
    assert_eq!(a.request_count(), 3);
    assert_eq!(gw.metric(ejections), 1.0);
    assert_eq!(
        gw.metric(&format!(
            "hypergate_upstream_ejected{{cluster=\"backend\",endpoint=\"{}\"}}",
            a.addr()
        )),
        1.0
    );
    // While ejected, everything goes to `b`.
    let mut sent = 0;
    while sent < 20 && ejected_at.elapsed() < base * 3 / 5 {
        let r = conn.request(&Request::get("/o"));
        if ejected_at.elapsed() < base * 3 / 5 {
            assert_eq!(r.text(), "b", "an ejected endpoint got traffic");
        }
        sent += 1;
    }
    assert!(sent > 0);
    assert_eq!(
        a.request_count(),
        3,
        "the ejected endpoint was used during its ejection"
    );
    // `a` recovers; after the ejection time it is tried again and kept.
    sick.store(false, Ordering::Relaxed);
    wait_until(
        "the ejected endpoint gets traffic again",
        Duration::from_secs(10),
        || conn.request(&Request::get("/o")).text() == "a",
    );
    assert!(
        ejected_at.elapsed() >= base * 4 / 5,
        "re-admitted after only {:?}",
        ejected_at.elapsed()
    );
    let mut a_hits = 0;
    for _ in 0..10 {
        if conn.request(&Request::get("/o")).text() == "a" {
            a_hits += 1;
        }
    }
    assert_eq!(a_hits, 5, "a re-admitted endpoint takes its share again");
    assert_eq!(gw.metric(ejections), 1.0);
}

#[test]
fn active_health_checks_remove_and_restore_an_endpoint() {
    let sick = Arc::new(AtomicBool::new(false));
    let a = switchable("a", sick.clone(), false);
    let b = MockUpstream::ok("b");
    let gw = gateway(
        &[(a.addr(), 1), (b.addr(), 1)],
        "health_check = { path = \"/healthz\", interval = \"50ms\", timeout = \"500ms\", unhealthy_threshold = 2, healthy_threshold = 2 }",
    );
    let healthy = format!(
        "hypergate_upstream_healthy{{cluster=\"backend\",endpoint=\"{}\"}}",
        a.addr()
    );
    let mut conn = gw.conn();
    let share = |conn: &mut hypergate_tests::Conn| {
        (0..10)
            .filter(|_| conn.request(&Request::get("/hc")).text() == "a")
            .count()
    };
    assert_eq!(share(&mut conn), 5);
    wait_until(
        "health checks reach the endpoint",
        Duration::from_secs(10),
        || a.count_path("/healthz") >= 2,
    );
    let check = a
        .requests()
        .into_iter()
        .find(|r| r.path() == "/healthz")
        .expect("a health check");
    assert_eq!(check.method, "GET");

    sick.store(true, Ordering::Relaxed);
    wait_until(
        "the endpoint is marked unhealthy",
        Duration::from_secs(10),
        || gw.metric(&healthy) == 0.0,
    );
    let before = a.count_except("/healthz");
    assert_eq!(share(&mut conn), 0, "an unhealthy endpoint got traffic");
    assert_eq!(a.count_except("/healthz"), before);

    sick.store(false, Ordering::Relaxed);
    wait_until(
        "the endpoint is healthy again",
        Duration::from_secs(10),
        || gw.metric(&healthy) == 1.0,
    );
    assert_eq!(
        share(&mut conn),
        5,
        "a recovered endpoint takes its share again"
    );
}
