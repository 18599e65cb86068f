//! Hypercare windows: progress and verdicts (exit, roll back, in progress) from
//! live traffic, and windows opened through the admin API.

use hypergate_tests::util::TempDir;
use hypergate_tests::{
    cluster, preamble, route_all, wait_until, MockUpstream, Reply, Request, TestGateway,
};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn window(gw: &TestGateway, name: &str) -> Value {
    let all = gw.admin_request("GET", "/hypercare/windows").json();
    all["windows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

#[test]
fn verdicts_follow_the_exit_criteria() {
    let failing = Arc::new(AtomicBool::new(false));
    let f = failing.clone();
    let up = MockUpstream::start(move |_| {
        if f.load(Ordering::Relaxed) {
            Reply::status(502).into()
        } else {
            Reply::ok("ok").into()
        }
    });
    let gw = TestGateway::start(&format!(
        r#"{}{}{}
[hypercare]
evaluation_interval = "100ms"

[[hypercare.windows]]
name = "launch"
route = "app"
sustain = "1s"
lookback = "1s"
max_error_rate = 0.01
max_p99_ms = 5000.0
roll_back_error_rate = 0.5
min_requests = 10
"#,
        preamble(2),
        cluster("app", &[up.addr()], "version = \"v2\""),
        route_all("app", "app", "")
    ));
    let stop = AtomicBool::new(false);
    let gw_ref = &gw;
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut c = gw_ref.conn();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 100_000 {
                c.request(&Request::get("/"));
                n += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        // Healthy traffic: the criteria hold for the sustain time, then exit.
        wait_until(
            "in progress with criteria met",
            Duration::from_secs(10),
            || {
                let w = window(gw_ref, "launch");
                w["verdict"] == "in_progress"
                    && w["failing_now"].as_array().is_some_and(Vec::is_empty)
            },
        );
        wait_until("exit", Duration::from_secs(10), || {
            window(gw_ref, "launch")["verdict"] == "exit"
        });
        let w = window(gw_ref, "launch");
        assert_eq!(w["progress"], "criteria met for 1 s of 1 s");
        // Everything fails: the streak breaks and the verdict is to roll back.
        failing.store(true, Ordering::Relaxed);
        wait_until("roll back", Duration::from_secs(10), || {
            window(gw_ref, "launch")["verdict"] == "roll_back"
        });
        // The verdict is a metric too (it stays while everything fails).
        wait_until("the metric says roll back", Duration::from_secs(10), || {
            let m = gw_ref.metrics();
            m.contains("hypergate_window_verdict{window=\"launch\",verdict=\"roll_back\"} 1")
                && m.contains("hypergate_window_verdict{window=\"launch\",verdict=\"exit\"} 0")
                && m.contains("hypergate_window_required_seconds{window=\"launch\"} 1")
        });
        let w = window(gw_ref, "launch");
        assert_eq!(w["met_for_s"], 0);
        let failing_now: Vec<&str> = w["failing_now"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            failing_now
                .iter()
                .any(|f| f.starts_with("error rate below")),
            "{failing_now:?}"
        );
        stop.store(true, Ordering::Relaxed);
    });
}

#[test]
fn windows_can_be_opened_through_the_admin_api() {
    let up = MockUpstream::ok("ok");
    let gw = TestGateway::start(&format!(
        "{}{}{}\n[hypercare]\nevaluation_interval = \"100ms\"\n",
        preamble(1),
        cluster("app", &[up.addr()], ""),
        route_all("app", "app", "")
    ));
    let post = |body: Value| {
        gw.admin_send(
            &Request::post("/hypercare/windows", body.to_string())
                .header("content-type", "application/json"),
        )
    };
    let r = post(
        json!({"name": "release-42", "route": "app", "sustain": "24h", "max_error_rate": 0.005}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    wait_until("evaluated", Duration::from_secs(5), || {
        window(&gw, "release-42")["progress"]
            .as_str()
            .is_some_and(|p| p.ends_with("of 24 h 0 min"))
    });
    let w = window(&gw, "release-42");
    assert_eq!(w["dynamic"], true);
    assert_eq!(w["verdict"], "in_progress");
    // Too little traffic yet: that criterion is listed as failing.
    assert!(
        w["failing_now"][0]
            .as_str()
            .unwrap()
            .starts_with("at least 20 requests"),
        "{w}"
    );
    assert_eq!(
        post(json!({"name": "release-42", "sustain": "1h"})).status,
        409
    );
    let bad = post(json!({"name": "x", "route": "nope", "sustain": "0s", "max_error_rate": 3.0}));
    assert_eq!(bad.status, 400);
    let errors = bad.json()["errors"].to_string();
    for field in ["route", "sustain", "max_error_rate"] {
        assert!(errors.contains(field), "{errors}");
    }
}

#[test]
fn window_progress_survives_a_restart() {
    let up = MockUpstream::ok("ok");
    let store = TempDir::new();
    let toml = format!(
        r#"{}{}{}
[hypercare]
evaluation_interval = "100ms"

[[hypercare.windows]]
name = "launch"
route = "app"
sustain = "1h"
lookback = "5s"
max_error_rate = 0.01
min_requests = 10

[hypercare.store]
path = "{}"
"#,
        preamble(1),
        cluster("app", &[up.addr()], ""),
        route_all("app", "app", ""),
        store.path().join("hypercare.db").display()
    );
    let gw = TestGateway::start(&toml);
    let opened = gw.admin_send(
        &Request::post(
            "/hypercare/windows",
            json!({"name": "release-7", "sustain": "2h"}).to_string(),
        )
        .header("content-type", "application/json"),
    );
    assert_eq!(opened.status, 201, "{}", opened.text());
    let mut c = gw.conn();
    wait_until("criteria met for 2 s", Duration::from_secs(20), || {
        for _ in 0..20 {
            assert_eq!(c.request(&Request::get("/")).status, 200);
        }
        window(&gw, "launch")["met_for_s"]
            .as_u64()
            .is_some_and(|s| s >= 2)
    });
    let release_opened = window(&gw, "release-7")["opened_ms"].clone();
    assert!(release_opened.is_u64(), "{release_opened}");
    drop(c);
    drop(gw);

    // Restarted, with no traffic yet: the streak goes on (too few requests
    // right after a restart do not break it), and the admin-opened window is back.
    let gw = TestGateway::start(&toml);
    wait_until("launch restored", Duration::from_secs(5), || {
        window(&gw, "launch")["met_for_s"]
            .as_u64()
            .is_some_and(|s| s >= 2)
    });
    let launch = window(&gw, "launch");
    assert!(
        launch["progress"]
            .as_str()
            .unwrap()
            .contains("restored after a restart"),
        "{launch}"
    );
    let release = window(&gw, "release-7");
    assert_eq!(release["dynamic"], true, "{release}");
    assert_eq!(release["opened_ms"], release_opened);
}
