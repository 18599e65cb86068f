//! Alerts: fire and resolve on injected faults, notify webhooks (retrying a
//! failing one), show in `/hypercare/alerts`, and export as Prometheus rules.

use hypergate_tests::process::run_cli;
use hypergate_tests::tls::Pki;
use hypergate_tests::{
    cluster, preamble, route_all, wait_until, MockUpstream, Reply, Request, TempDir, TestGateway,
};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn alerts_toml(hook: &MockUpstream, flaky: &MockUpstream) -> String {
    format!(
        r#"
[hypercare]
evaluation_interval = "100ms"

[[hypercare.alerts]]
name = "app-errors"
kind = "error_rate"
route = "app"
window = "1s"
threshold = 0.2
for = "200ms"
severity = "critical"
min_requests = 10

[[hypercare.alerts]]
name = "app-slow"
kind = "latency"
route = "app"
window = "1s"
quantile = 0.99
threshold = 10000.0

[[hypercare.webhooks]]
url = "http://{}/hooks/alerts"

[[hypercare.webhooks]]
url = "http://{}/flaky"
backoff = "20ms"
max_retries = 5
"#,
        hook.addr(),
        flaky.addr()
    )
}

fn states(gw: &TestGateway) -> Value {
    gw.admin_request("GET", "/hypercare/alerts").json()
}

fn state_of(gw: &TestGateway, name: &str) -> String {
    states(gw)["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["rule"]["name"] == name)
        .map(|a| a["state"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

#[test]
fn error_rate_alert_fires_and_resolves_and_webhooks_hear_it() {
    let failing = Arc::new(AtomicBool::new(false));
    let f = failing.clone();
    let n = Arc::new(AtomicUsize::new(0));
    let up = MockUpstream::start(move |_| {
        let i = n.fetch_add(1, Ordering::Relaxed);
        if f.load(Ordering::Relaxed) && i.is_multiple_of(2) {
            Reply::status(503).into()
        } else {
            Reply::ok("ok").into()
        }
    });
    let hook = MockUpstream::ok("thanks");
    // Refuses the first three deliveries: the notifier must retry.
    let refused = Arc::new(AtomicUsize::new(0));
    let r = refused.clone();
    let flaky = MockUpstream::start(move |_| {
        if r.fetch_add(1, Ordering::Relaxed) < 3 {
            Reply::status(500).into()
        } else {
            Reply::ok("ok").into()
        }
    });
    let gw = TestGateway::start(&format!(
        "{}{}{}{}",
        preamble(2),
        cluster("app", &[up.addr()], ""),
        route_all("app", "app", ""),
        alerts_toml(&hook, &flaky)
    ));
    let traffic = |gw: &TestGateway, n: usize| {
        let mut c = gw.conn();
        for _ in 0..n {
            c.request(&Request::get("/x"));
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    traffic(&gw, 100);
    assert_eq!(state_of(&gw, "app-errors"), "inactive");
    assert_eq!(state_of(&gw, "app-slow"), "inactive");

    failing.store(true, Ordering::Relaxed);
    let gw_ref = &gw;
    std::thread::scope(|s| {
        s.spawn(|| traffic(gw_ref, 300));
        wait_until("the error alert fires", Duration::from_secs(10), || {
            state_of(gw_ref, "app-errors") == "firing"
        });
        // /metrics says what /hypercare/alerts says (the dashboard's tile and
        // Grafana read these).
        let m = gw_ref.metrics();
        for line in [
            "hypergate_alert_state{alert=\"app-errors\",severity=\"critical\",state=\"firing\"} 1",
            "hypergate_alert_state{alert=\"app-slow\",severity=\"warning\",state=\"inactive\"} 1",
            "hypergate_alerts_firing 1",
        ] {
            assert!(m.contains(line), "/metrics lacks {line}");
        }
    });
    let firing = states(&gw);
    assert_eq!(firing["firing"], serde_json::json!(["app-errors"]));
    let value = firing["alerts"][0]["value"].as_f64().unwrap();
    assert!(value > 0.2 && value < 0.8, "error rate {value}");

    failing.store(false, Ordering::Relaxed);
    std::thread::scope(|s| {
        s.spawn(|| traffic(gw_ref, 300));
        wait_until("the error alert resolves", Duration::from_secs(10), || {
            let st = state_of(gw_ref, "app-errors");
            st == "resolved" || st == "inactive"
        });
    });
    wait_until(
        "webhook got firing and resolved",
        Duration::from_secs(10),
        || hook.count_path("/hooks/alerts") >= 2,
    );
    let bodies: Vec<Value> = hook
        .requests()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert_eq!(bodies[0]["event"]["alert"], "app-errors");
    assert_eq!(bodies[0]["event"]["state"], "firing");
    assert_eq!(bodies[0]["event"]["severity"], "critical");
    assert_eq!(bodies[1]["event"]["state"], "resolved");
    // The flaky hook refused three times and still got both events.
    wait_until("retries delivered", Duration::from_secs(10), || {
        flaky.request_count() >= 5
    });
    let events = states(&gw)["events"].as_array().unwrap().len();
    assert_eq!(events, 2);
}

#[test]
fn prometheus_rules_export_matches_the_config() {
    let hook = MockUpstream::ok("x");
    let dir = TempDir::new();
    let path = dir.write(
        "gw.toml",
        &format!(
            "{}{}{}{}",
            preamble(1),
            cluster("app", &["127.0.0.1:9".parse().unwrap()], ""),
            route_all("app", "app", ""),
            alerts_toml(&hook, &hook)
        ),
    );
    let (st, out, err) = run_cli(&[
        "export",
        "prometheus-rules",
        "--config",
        path.to_str().unwrap(),
    ]);
    assert!(st.success(), "{err}");
    assert!(out.contains("- alert: app-errors"));
    assert!(out.contains("hypergate_requests_total{route=\"app\",status=~\"5xx|none\"}"));
    assert!(out.contains("> 0.2"));
    assert!(out.contains("for: 200ms"));
    assert!(out.contains("- alert: app-slow"));
    assert!(out.contains("histogram_quantile(0.99, sum by (le) (rate(hypergate_request_duration_seconds_bucket{route=\"app\"}[1s])))"));
    // promtool agrees it is a valid rules file.
    let rules = dir.write("rules.yml", &out);
    let check = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("promtool runs (.ci/run installs prometheus)");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

#[test]
fn bad_alert_config_is_refused_with_paths() {
    let text = r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
[[routes]]
name = "app"
[routes.direct]
status = 200
[[hypercare.alerts]]
name = "a"
kind = "error_rate"
route = "nope"
threshold = 5.0
quantile = 1.5
[[hypercare.webhooks]]
url = "ftp://example.com"
[[hypercare.webhooks]]
url = "https://example.com/hook"
ca_file = "/nonexistent/ca.pem"
"#;
    let e = hypergate::config::load_str(text, "t.toml").unwrap_err();
    let paths: Vec<&str> = e.issues.iter().map(|i| i.path.as_str()).collect();
    for want in [
        "hypercare.alerts[0].route",
        "hypercare.alerts[0].threshold",
        "hypercare.alerts[0].quantile",
        "hypercare.webhooks[0].url",
        "hypercare.webhooks[1].ca_file",
    ] {
        assert!(paths.contains(&want), "missing {want}: {paths:?}");
    }
}

#[test]
fn https_webhooks_are_verified_against_their_ca() {
    // The receiver: a second gateway terminating TLS (a certificate for
    // 127.0.0.1 from a throwaway CA) in front of a recording upstream.
    let pki = Pki::new();
    let cert = pki.issue("hooks", &["127.0.0.1"]);
    let hook = MockUpstream::ok("thanks");
    let receiver = TestGateway::start(&format!(
        r#"
[server]
shards = 1
pin_cores = false
drain_timeout = "2s"

[admin]
listen = "127.0.0.2:0"

[[listeners]]
name = "tls"
address = "127.0.0.1:0"
[listeners.tls]
certificates = [{{ cert_file = "{}", key_file = "{}" }}]
{}{}"#,
        cert.cert.display(),
        cert.key.display(),
        cluster("hooks", &[hook.addr()], ""),
        route_all("hooks", "hooks", "")
    ));
    let up = MockUpstream::always(Reply::status(503).into());
    let other_ca = Pki::new();
    let gw = TestGateway::start(&format!(
        r#"{}{}{}
[hypercare]
evaluation_interval = "100ms"

[[hypercare.alerts]]
name = "app-errors"
kind = "error_rate"
route = "app"
window = "1s"
threshold = 0.2
min_requests = 10

# Webhooks are served in order: the unverifiable one (its retries included)
# is done with before the verified one is tried.
[[hypercare.webhooks]]
url = "https://127.0.0.1:{port}/unverified"
ca_file = "{}"
max_retries = 1
backoff = "10ms"

[[hypercare.webhooks]]
url = "https://127.0.0.1:{port}/verified"
ca_file = "{}"
"#,
        preamble(1),
        cluster("app", &[up.addr()], ""),
        route_all("app", "app", ""),
        other_ca.ca_cert().display(),
        pki.ca_cert().display(),
        port = receiver.addr.port()
    ));
    let mut c = gw.conn();
    wait_until(
        "the alert reaches the https webhook",
        Duration::from_secs(10),
        || {
            for _ in 0..20 {
                c.request(&Request::get("/x"));
            }
            hook.count_path("/verified") >= 1
        },
    );
    let delivered = hook
        .requests()
        .into_iter()
        .find(|r| r.path() == "/verified")
        .unwrap();
    let body: Value = serde_json::from_slice(&delivered.body).unwrap();
    assert_eq!(body["event"]["alert"], "app-errors");
    assert_eq!(body["event"]["state"], "firing");
    // The webhook whose certificate does not chain to its CA was tried first
    // (twice) and got nothing.
    assert_eq!(hook.count_path("/unverified"), 0);
}
