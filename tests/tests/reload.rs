//! Hot reload through the admin API: no failed request under load, pools of
//! unchanged clusters kept, and invalid configs refused with every error while
//! the running config stays in place.

use hypergate_tests::{preamble, wait_until, MockUpstream, Request, TestGateway};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn split_config(blue: &[&MockUpstream], green: &[&MockUpstream], weights: (u32, u32)) -> String {
    let eps = |ms: &[&MockUpstream]| {
        ms.iter()
            .map(|m| format!("{{ address = \"{}\" }}", m.addr()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        r#"{}
[[clusters]]
name = "blue"
endpoints = [{}]

[[clusters]]
name = "green"
endpoints = [{}]

[[routes]]
name = "split"
[routes.split]
targets = [{{ cluster = "blue", weight = {} }}, {{ cluster = "green", weight = {} }}]
"#,
        preamble(2),
        eps(blue),
        eps(green),
        weights.0,
        weights.1
    )
}

#[test]
fn reloads_under_continuous_load_fail_no_request() {
    let b1 = MockUpstream::ok("blue");
    let b2 = MockUpstream::ok("blue");
    let g1 = MockUpstream::ok("green");
    let g2 = MockUpstream::ok("green");
    let gw = TestGateway::start(&split_config(&[&b1], &[&g1], (90, 10)));

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let loaders: Vec<_> = (0..3)
        .map(|t| {
            let (stop, done, failures, addr) =
                (stop.clone(), done.clone(), failures.clone(), gw.addr);
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(30);
                let mut conn = hypergate_tests::Conn::connect(addr);
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && n < 50_000 {
                    n += 1;
                    let req = Request::get(&format!("/load/{t}/{n}"));
                    let outcome = conn
                        .try_send(&req.to_bytes())
                        .and_then(|()| conn.try_read_response(false));
                    match outcome {
                        Ok(r) if (200..300).contains(&r.status) => {
                            if r.says_close() {
                                conn = hypergate_tests::Conn::connect(addr);
                            }
                        }
                        Ok(r) => {
                            failures.lock().unwrap().push(format!(
                                "status {} {}",
                                r.status,
                                r.text()
                            ));
                            conn = hypergate_tests::Conn::connect(addr);
                        }
                        Err(e) => {
                            failures.lock().unwrap().push(format!("socket error: {e}"));
                            conn = hypergate_tests::Conn::connect(addr);
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    let configs = [
        split_config(&[&b1, &b2], &[&g1], (50, 50)),
        split_config(&[&b2], &[&g1, &g2], (10, 90)),
        split_config(&[&b1], &[&g2], (70, 30)),
        split_config(&[&b1, &b2], &[&g2], (100, 1)),
        split_config(&[&b2], &[&g1], (1, 100)),
        split_config(&[&b1, &b2], &[&g1, &g2], (0, 1)),
    ];
    // Every config twice: twelve reloads, each while requests are in flight.
    for (i, cfg) in configs.iter().chain(configs.iter()).enumerate() {
        let before = done.load(Ordering::Relaxed);
        wait_until(
            "requests flow before the next reload",
            Duration::from_secs(20),
            || done.load(Ordering::Relaxed) >= before + 200,
        );
        let r = gw.reload(cfg);
        assert_eq!(r.status, 200, "reload {i}: {}", r.text());
        assert_eq!(r.json()["status"], "reloaded");
    }
    let before = done.load(Ordering::Relaxed);
    wait_until(
        "requests flow after the last reload",
        Duration::from_secs(20),
        || done.load(Ordering::Relaxed) >= before + 200,
    );
    stop.store(true, Ordering::Relaxed);
    for l in loaders {
        l.join().expect("load thread");
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed requests, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(done.load(Ordering::Relaxed) >= 2600);
    // The last config sends everything to green.
    let mut conn = gw.conn();
    for _ in 0..20 {
        assert_eq!(conn.request(&Request::get("/after")).text(), "green");
    }
    assert_eq!(gw.metric("hypergate_config_reloads_total"), 12.0);
}

fn two_routes(a: &MockUpstream, b: &MockUpstream, b_extra: &str, route_b_extra: &str) -> String {
    format!(
        r#"{}
[[clusters]]
name = "a"
endpoints = [{{ address = "{}" }}]

[[clusters]]
name = "b"
endpoints = [{{ address = "{}" }}]
{b_extra}

[[routes]]
name = "a"
cluster = "a"
[routes.match]
path_prefix = "/a"

[[routes]]
name = "b"
cluster = "b"
[routes.match]
path_prefix = "/b"
{route_b_extra}
"#,
        preamble(1),
        a.addr(),
        b.addr()
    )
}

#[test]
fn pools_of_unchanged_clusters_survive_a_reload() {
    let a = MockUpstream::ok("a");
    let b = MockUpstream::ok("b");
    let gw = TestGateway::start(&two_routes(&a, &b, "", ""));
    let mut conn = gw.conn();
    for _ in 0..3 {
        assert_eq!(conn.request(&Request::get("/a")).text(), "a");
        assert_eq!(conn.request(&Request::get("/b")).text(), "b");
    }
    assert_eq!((a.accepted(), b.accepted()), (1, 1));

    let r = gw.reload(&two_routes(
        &a,
        &b,
        "connect_timeout = \"3s\"",
        "[routes.response_headers]\nset = { \"x-reloaded\" = \"yes\" }",
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    let diff = &r.json()["diff"];
    assert_eq!(
        diff["clusters"]["changed"],
        serde_json::json!(["b"]),
        "{diff}"
    );
    assert_eq!(
        diff["routes"]["changed"],
        serde_json::json!(["b"]),
        "{diff}"
    );

    for _ in 0..3 {
        assert_eq!(conn.request(&Request::get("/a")).text(), "a");
        let rb = conn.request(&Request::get("/b"));
        assert_eq!(rb.header("x-reloaded"), Some("yes"));
    }
    assert_eq!(
        a.accepted(),
        1,
        "the unchanged cluster's pooled connection was not reused"
    );
    assert_eq!(a.request_count(), 6);
}

#[test]
fn invalid_reload_is_refused_with_every_error_and_changes_nothing() {
    let a = MockUpstream::ok("a");
    let b = MockUpstream::ok("b");
    let good = two_routes(&a, &b, "", "");
    let gw = TestGateway::start(&good);
    let config_before = gw.admin_request("GET", "/config").json();

    let bad = format!(
        r#"{}
[limits]
max_headers = 0

[[clusters]]
name = "a"
endpoints = [{{ address = "{}", weight = 0 }}]

[[routes]]
name = "a"
cluster = "a"

[[routes]]
name = "b"
cluster = "nope"
timeout = "0s"
"#,
        preamble(1),
        b.addr()
    );
    let r = gw.reload(&bad);
    assert_eq!(r.status, 400, "{}", r.text());
    let v = r.json();
    assert_eq!(v["status"], "refused");
    let err = v["error"].as_str().expect("error text");
    for want in [
        "routes[1].cluster: unknown cluster",
        "routes[1].timeout",
        "clusters[0].endpoints[0].weight",
        "limits.max_headers",
    ] {
        assert!(err.contains(want), "{want:?} missing from:\n{err}");
    }
    // Traffic is routed the old way and /config is unchanged.
    assert_eq!(gw.get("/a").text(), "a");
    assert_eq!(gw.get("/b").text(), "b");
    assert_eq!(gw.admin_request("GET", "/config").json(), config_before);
    assert_eq!(gw.metric("hypergate_config_reloads_failed_total"), 1.0);
    assert_eq!(gw.metric("hypergate_config_reloads_total"), 0.0);

    // A syntax error and a restart-only change are refused the same way.
    let r = gw.reload("[[routes]\nname = ");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap_or("")
            .contains("(syntax)"),
        "{}",
        r.text()
    );
    let r = gw.reload(&good.replace("name = \"main\"", "name = \"renamed\""));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap_or("")
            .contains("listeners"),
        "{}",
        r.text()
    );
    assert_eq!(gw.admin_request("GET", "/config").json(), config_before);
    assert_eq!(gw.metric("hypergate_config_reloads_failed_total"), 3.0);

    // And a good file is accepted again afterwards.
    let r = gw.reload(&good);
    assert_eq!(r.status, 200, "{}", r.text());
}
