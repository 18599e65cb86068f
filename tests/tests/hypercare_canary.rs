//! Automated canary analysis end to end: two real upstream versions behind a
//! weighted split; when the canary starts failing, the gateway shifts the
//! traffic back to the stable version by itself, says why, and tells webhooks.
//! A healthy canary is promoted step by step instead.

use hypergate_mock_llm::{MockConfig, MockLlm};
use hypergate_tests::util::TempDir;
use hypergate_tests::{cluster, preamble, wait_until, MockUpstream, Reply, Request, TestGateway};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn config(
    stable: &MockUpstream,
    canary: &MockUpstream,
    hook: &MockUpstream,
    steps: &str,
) -> String {
    format!(
        r#"{}{}{}
[[routes]]
name = "checkout"
[routes.split]
targets = [{{ cluster = "v1", weight = 90 }}, {{ cluster = "v2", weight = 10 }}]

[hypercare]
evaluation_interval = "200ms"

[[hypercare.canaries]]
route = "checkout"
stable = "v1"
canary = "v2"
steps = [{steps}]
# These tests drive the plan with error rates; the latency judge (tested by the
# analysis crate's simulations) is made lenient so scheduler noise on a loaded
# test machine cannot decide them.
latency_tolerance = 3.0

[[hypercare.webhooks]]
url = "http://{}/hook"
"#,
        preamble(2),
        cluster("v1", &[stable.addr()], "version = \"v1\""),
        cluster("v2", &[canary.addr()], "version = \"v2\""),
        hook.addr()
    )
}

fn canary_view(gw: &TestGateway) -> Value {
    gw.admin_request("GET", "/hypercare/canary").json()
}

/// Sends requests until `stop`, from two connections.
fn load(gw: &TestGateway, stop: &AtomicBool) {
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let mut c = gw.conn();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && n < 200_000 {
                    c.request(&Request::get("/buy"));
                    n += 1;
                }
            });
        }
    });
}

#[test]
fn a_failing_canary_is_rolled_back_by_the_gateway() {
    let stable = MockUpstream::ok("v1");
    let calls = Arc::new(AtomicUsize::new(0));
    let failing = Arc::new(AtomicBool::new(false));
    let (c2, f2) = (calls.clone(), failing.clone());
    let canary = MockUpstream::start(move |_| {
        let i = c2.fetch_add(1, Ordering::Relaxed);
        if f2.load(Ordering::Relaxed) && i % 10 == 0 {
            Reply::status(500).into()
        } else {
            Reply::ok("v2").into()
        }
    });
    let hook = MockUpstream::ok("ok");
    // The store in a directory of its own, so that a second gateway finds it.
    let store = TempDir::new();
    let toml = format!(
        "{}\n[hypercare.store]\npath = \"{}\"\n",
        config(
            &stable,
            &canary,
            &hook,
            r#"{ weight = 10, bake = "60s", min_requests = 1000 }, { weight = 50, bake = "60s", min_requests = 1000 }"#,
        ),
        store.path().join("hypercare.db").display()
    );
    let gw = TestGateway::start(&toml);
    // The plan's first step is in force from the start.
    wait_until("step 1 weights installed", Duration::from_secs(5), || {
        canary_view(&gw)["canaries"][0]["weight"] == 10
    });
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| load(&gw, &stop));
        std::thread::sleep(Duration::from_millis(500));
        // v2 starts failing one request in ten.
        failing.store(true, Ordering::Relaxed);
        wait_until("canary rolled back", Duration::from_secs(60), || {
            canary_view(&gw)["canaries"][0]["status"]["phase"] == "rolled_back"
        });
        stop.store(true, Ordering::Relaxed);
    });
    let view = canary_view(&gw);
    assert_eq!(view["canaries"][0]["weight"], 0);
    // Hypercare's state as metrics.
    let m = gw.metrics();
    for line in [
        "hypergate_canary_weight{route=\"checkout\",stable=\"v1\",canary=\"v2\"} 0",
        "hypergate_canary_phase{route=\"checkout\",canary=\"v2\",phase=\"rolled_back\"} 1",
        "hypergate_canary_phase{route=\"checkout\",canary=\"v2\",phase=\"running\"} 0",
        "hypergate_canary_decisions_total{route=\"checkout\",canary=\"v2\",action=\"rollback\"} 1",
        "hypergate_alert_state{alert=\"canary-rollback:checkout\",severity=\"critical\",state=\"firing\"} 1",
        "hypergate_alerts_firing 1",
    ] {
        assert!(m.contains(line), "/metrics lacks {line}");
    }
    // The rollback is an alert firing, where the dashboard's tile and
    // /hypercare/alerts look.
    let alerts = gw.admin_request("GET", "/hypercare/alerts").json();
    assert_eq!(
        alerts["firing"],
        serde_json::json!(["canary-rollback:checkout"]),
        "{alerts}"
    );
    let decision = view["decisions"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(decision["decision"]["action"], "rollback", "{decision}");
    let evidence = &decision["decision"]["evidence"]["error_rate"];
    assert!(
        evidence["canary_rate"].as_f64().unwrap() > evidence["stable_rate"].as_f64().unwrap(),
        "{evidence}"
    );
    assert!(
        evidence["statistic"].as_f64().unwrap() > evidence["threshold"].as_f64().unwrap(),
        "{evidence}"
    );
    // The running config says so, and no request reaches v2 any more.
    let config = gw.admin_request("GET", "/config").json();
    let targets = &config["routes"][0]["split"]["targets"];
    assert_eq!(targets[1]["weight"], 0, "{targets}");
    assert_eq!(targets[0]["weight"], 100, "{targets}");
    let before = canary.request_count();
    let mut c = gw.conn();
    for _ in 0..200 {
        assert_eq!(c.request(&Request::get("/buy")).text(), "v1");
    }
    assert_eq!(canary.request_count(), before);
    // Webhooks were told, and the decision is in the call store.
    wait_until(
        "webhook told about the rollback",
        Duration::from_secs(10),
        || hook.request_count() >= 1,
    );
    let body: Value = serde_json::from_slice(&hook.requests()[0].body).unwrap();
    assert_eq!(body["event"]["alert"], "canary-rollback:checkout");
    let db = rusqlite::Connection::open(gw.inner().controller.store_path().unwrap()).unwrap();
    let n: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM events WHERE kind = 'canary' AND body LIKE '%rollback%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);

    // A restart resumes the rollout where it stood: the canary stays at 0% from
    // the first request on (the file still says 10%), and the decision history
    // is back on /hypercare/canary.
    drop(gw);
    let gw = TestGateway::start(&toml);
    let before = canary.request_count();
    let mut c = gw.conn();
    for _ in 0..100 {
        assert_eq!(c.request(&Request::get("/buy")).text(), "v1");
    }
    assert_eq!(canary.request_count(), before);
    wait_until("resumed run shown", Duration::from_secs(5), || {
        canary_view(&gw)["canaries"][0]["status"]["phase"] == "rolled_back"
    });
    let view = canary_view(&gw);
    assert_eq!(view["canaries"][0]["weight"], 0);
    assert!(
        view["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["decision"]["action"] == "rollback"),
        "{view}"
    );
}

#[test]
fn a_healthy_canary_is_promoted_step_by_step() {
    let stable = MockUpstream::ok("v1");
    let canary = MockUpstream::ok("v2");
    let hook = MockUpstream::ok("ok");
    let gw = TestGateway::start(&config(
        &stable,
        &canary,
        &hook,
        r#"{ weight = 10, bake = "1s", min_requests = 1000 }, { weight = 40, bake = "1s", min_requests = 1000 }"#,
    ));
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| load(&gw, &stop));
        wait_until("canary completed", Duration::from_secs(90), || {
            let v = canary_view(&gw);
            assert_ne!(v["canaries"][0]["status"]["phase"], "rolled_back", "{v}");
            v["canaries"][0]["status"]["phase"] == "completed"
        });
        stop.store(true, Ordering::Relaxed);
    });
    let view = canary_view(&gw);
    assert_eq!(view["canaries"][0]["weight"], 100);
    let actions: Vec<&str> = view["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["decision"]["action"].as_str())
        .filter(|a| *a != "hold")
        .collect();
    assert_eq!(actions, ["promote", "complete"]);
    let config = gw.admin_request("GET", "/config").json();
    assert_eq!(config["routes"][0]["split"]["targets"][1]["weight"], 100);
    assert_eq!(hook.request_count(), 0, "no alert for a healthy rollout");
}

#[test]
fn canary_config_errors_name_the_field() {
    let text = r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
[[clusters]]
name = "a"
endpoints = [{ address = "127.0.0.1:9" }]
[[routes]]
name = "r"
cluster = "a"
[[hypercare.canaries]]
route = "r"
stable = "a"
canary = "b"
steps = [{ weight = 100, bake = "1s" }]
ttft_tolerance = 0.2
[[ai.providers]]
name = "p"
base_url = "http://127.0.0.1:9/v1"
[[ai.models]]
alias = "smart"
targets = [{ provider = "p", model = "m1" }]
[[hypercare.canaries]]
alias = "smart"
stable = "p/m1"
canary = "p/m2"
steps = [{ weight = 10, bake = "1s" }]
[[hypercare.canaries]]
alias = "nope"
route = "r"
stable = "x"
canary = "y"
steps = [{ weight = 10, bake = "1s" }]
"#;
    let e = hypergate::config::load_str(text, "t.toml").unwrap_err();
    let paths: Vec<&str> = e.issues.iter().map(|i| i.path.as_str()).collect();
    for path in [
        "hypercare.canaries[0].route",
        "hypercare.canaries[0].ttft_tolerance",
        "hypercare.canaries[1].canary",
        "hypercare.canaries[2].alias",
        "hypercare.canaries[2].route",
    ] {
        assert!(paths.contains(&path), "{path} missing from {paths:?}");
    }
    assert!(
        paths
            .iter()
            .any(|p| p.starts_with("hypercare.canaries[0].steps")),
        "{paths:?}"
    );
    assert!(
        !paths.contains(&"hypercare.canaries[1].stable"),
        "{paths:?}"
    );
}

#[test]
fn a_slower_llm_target_is_rolled_back_on_time_to_first_token() {
    let mock = |latency_ms: u64| {
        MockLlm::start(
            "127.0.0.1:0",
            MockConfig {
                require_auth: false,
                latency: Duration::from_millis(latency_ms),
                ..MockConfig::default()
            },
        )
        .expect("mock LLM starts")
    };
    let (fast, slow) = (mock(0), mock(60));
    let toml = format!(
        r#"{}
[[routes]]
name = "llm"
[routes.match]
path_prefix = "/v1"
[routes.ai]

[[ai.providers]]
name = "fast"
base_url = "http://{}/v1"
api_key = "sk-test"

[[ai.providers]]
name = "slow"
base_url = "http://{}/v1"
api_key = "sk-test"

[[ai.models]]
alias = "smart"
targets = [{{ provider = "fast", model = "m1", weight = 80 }}, {{ provider = "slow", model = "m1", weight = 20 }}]

[[ai.prices]]
model = "m1"
input = 1.0
output = 2.0

[hypercare]
evaluation_interval = "200ms"

[[hypercare.canaries]]
alias = "smart"
stable = "fast/m1"
canary = "slow/m1"
steps = [{{ weight = 20, bake = "60s", min_requests = 1000 }}]
# Judged on the mean time to first token (and cost); the whole-call latency
# judge is made lenient so that the TTFT judge is the one that decides.
latency_tolerance = 3.0
ttft_tolerance = 0.5
cost_tolerance = 0.5
"#,
        preamble(2),
        fast.addr(),
        slow.addr()
    );
    let gw = TestGateway::start(&toml);
    let stream = || {
        Request::post(
            "/v1/chat/completions",
            json!({"model": "smart", "stream": true, "messages": [{"role": "user", "content": "hi"}]})
                .to_string(),
        )
        .header("content-type", "application/json")
    };
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let mut c = gw.conn();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && n < 20_000 {
                    assert_eq!(c.request(&stream()).status, 200);
                    n += 1;
                }
            });
        }
        wait_until("alias canary rolled back", Duration::from_secs(60), || {
            canary_view(&gw)["canaries"][0]["status"]["phase"] == "rolled_back"
        });
        stop.store(true, Ordering::Relaxed);
    });
    let view = canary_view(&gw);
    assert_eq!(view["canaries"][0]["route"], "alias:smart");
    let decision = &view["decisions"].as_array().unwrap().last().unwrap()["decision"];
    assert_eq!(decision["action"], "rollback", "{decision}");
    assert_eq!(decision["reason"]["kind"], "extra", "{decision}");
    assert_eq!(decision["reason"]["name"], "ttft_ms", "{decision}");
    let ttft = decision["evidence"]["extra"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "ttft_ms")
        .unwrap();
    assert!(
        ttft["canary"]["mean"].as_f64().unwrap() > 50.0
            && ttft["stable"]["mean"].as_f64().unwrap() < 30.0,
        "{ttft}"
    );
    // The alias's weights changed in the running config, and the slow target
    // gets no call any more.
    let config = gw.admin_request("GET", "/config").json();
    let targets = &config["ai"]["models"][0]["targets"];
    assert_eq!(targets[0]["weight"], 100, "{targets}");
    assert_eq!(targets[1]["weight"], 0, "{targets}");
    let before = slow.requests();
    let mut c = gw.conn();
    for _ in 0..50 {
        assert_eq!(c.request(&stream()).status, 200);
    }
    assert_eq!(slow.requests(), before);
}
