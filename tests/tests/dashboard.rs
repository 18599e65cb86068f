//! The dashboard (`/ui` on the admin listener) in a real headless Chromium.
//!
//! A gateway with a canary split (whose canary fails one request in eight), a
//! plain route, an AI route on the mock LLM, alert rules and a hypercare window
//! serves steady traffic while Chromium (driven over the DevTools protocol, see
//! `hypergate_tests::browser`) shows the page in real time. The test waits until
//! `document.body.dataset.ready` says every chart holds data, checks that the
//! panels show the canary, its decisions, the alerts, the window and the LLM
//! calls, and that the browser recorded no console error of any kind (uncaught
//! exceptions, `console.error`, failed loads or fetches, CSP violations). A
//! full-page screenshot is saved as a CI artifact in `$HYPERGATE_ARTIFACTS`
//! (default `target/ci-artifacts/dashboard.png`).
//!
//! With `admin.token` set, the page asks for the token when the API answers 401,
//! asks again after a wrong one, and then polls with it (kept for the tab).

use hypergate_mock_llm::{MockConfig, MockLlm};
use hypergate_tests::browser::Browser;
use hypergate_tests::process::workspace_root;
use hypergate_tests::{
    cluster, preamble, route_all, wait_until, MockUpstream, Reply, Request, TestGateway,
};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Charts the page must draw with data: live request rate and 5xx share,
/// requests and 5xx share per minute, latency, LLM tokens and LLM cost.
const CHARTS: u64 = 7;

fn artifacts_dir() -> PathBuf {
    let dir = std::env::var_os("HYPERGATE_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target").join("ci-artifacts"));
    std::fs::create_dir_all(&dir).expect("create the artifacts directory");
    dir
}

fn config(
    stable: &MockUpstream,
    canary: &MockUpstream,
    catalog: &MockUpstream,
    llm: &MockLlm,
) -> String {
    format!(
        r#"{}{}{}{}
[[routes]]
name = "checkout"
[routes.match]
path_prefix = "/checkout"
[routes.split]
targets = [{{ cluster = "checkout-v1", weight = 70 }}, {{ cluster = "checkout-v2", weight = 30 }}]

[[routes]]
name = "assistant"
[routes.match]
path_prefix = "/v1"
[routes.ai]

[[routes]]
name = "catalog"
cluster = "catalog"

[[ai.providers]]
name = "mock"
kind = "openai"
base_url = "http://{}/v1"
api_key = "sk-test"

[[ai.models]]
alias = "assistant"
targets = [{{ provider = "mock", model = "m1" }}]

[[ai.prices]]
model = "m1"
input = 3.0
output = 15.0

[hypercare]
evaluation_interval = "200ms"

[hypercare.store]
flush_interval = "50ms"
rollup_interval = "100ms"

[[hypercare.canaries]]
route = "checkout"
stable = "checkout-v1"
canary = "checkout-v2"
steps = [{{ weight = 30, bake = "10m", min_requests = 100000 }}, {{ weight = 60, bake = "10m", min_requests = 100000 }}]

[[hypercare.alerts]]
name = "checkout-errors"
kind = "error_rate"
route = "checkout"
window = "1m"
threshold = 0.02
for = "200ms"
severity = "critical"
min_requests = 10

[[hypercare.alerts]]
name = "catalog-p99"
kind = "latency"
route = "catalog"
window = "1m"
quantile = 0.99
threshold = 500.0

[[hypercare.windows]]
name = "catalog-release"
route = "catalog"
sustain = "1h"
lookback = "1m"
min_requests = 10
max_error_rate = 0.01
max_p99_ms = 500.0
"#,
        preamble(2),
        cluster("checkout-v1", &[stable.addr()], "version = \"v1\""),
        cluster("checkout-v2", &[canary.addr()], "version = \"v2\""),
        cluster("catalog", &[catalog.addr()], "version = \"2024.06\""),
        llm.addr()
    )
}

/// Requests on every route until `stop`: checkout, catalog and an LLM chat now and then.
fn traffic(gw: &TestGateway, stop: &AtomicBool) {
    let mut c = gw.conn();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let path = if i.is_multiple_of(3) {
            "/catalog/items"
        } else {
            "/checkout/cart"
        };
        c.request(&Request::get(path));
        if i.is_multiple_of(40) {
            let body = format!(
                r#"{{"model":"assistant","messages":[{{"role":"user","content":"summarise order {i}"}}]}}"#
            );
            let r = gw.send(
                &Request::post("/v1/chat/completions", body.into_bytes())
                    .header("content-type", "application/json"),
            );
            assert_eq!(r.status, 200, "LLM call: {}", r.text());
        }
        i += 1;
        std::thread::sleep(Duration::from_millis(3));
    }
}

/// Raises the flag when dropped, so the traffic stops even when the test fails.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[test]
fn the_dashboard_draws_live_charts_without_errors_in_headless_chromium() {
    let stable = MockUpstream::start(|_| Reply::ok("v1").latency(Duration::from_millis(2)).into());
    let calls = Arc::new(AtomicUsize::new(0));
    let n = calls.clone();
    let canary = MockUpstream::start(move |_| {
        if n.fetch_add(1, Ordering::Relaxed).is_multiple_of(8) {
            Reply::status(500).into()
        } else {
            Reply::ok("v2").latency(Duration::from_millis(4)).into()
        }
    });
    let catalog =
        MockUpstream::start(|_| Reply::ok("items").latency(Duration::from_millis(1)).into());
    let llm = MockLlm::start(
        "127.0.0.1:0",
        MockConfig {
            require_auth: false,
            ..MockConfig::default()
        },
    )
    .expect("mock LLM starts");
    let gw = TestGateway::start(&config(&stable, &canary, &catalog, &llm));
    let url = format!("http://{}/ui", gw.admin);

    let stop = AtomicBool::new(false);
    let (text, problems, png) = std::thread::scope(|s| {
        s.spawn(|| traffic(&gw, &stop));
        let _stop = StopOnDrop(&stop);
        // The history charts read the per-minute rollups: wait until they hold
        // every route, errors and LLM cost, and until the error alert fires.
        wait_until(
            "rollups with errors and LLM cost",
            Duration::from_secs(30),
            || {
                let v = gw
                    .admin_request("GET", "/hypercare/series?window=1h")
                    .json();
                let series = v["series"].as_array().cloned().unwrap_or_default();
                let sum = |field: &str| {
                    series
                        .iter()
                        .flat_map(|e| e[field].as_array().cloned().unwrap_or_default())
                        .filter_map(|x| x.as_f64())
                        .sum::<f64>()
                };
                series.len() >= 3 && sum("errors") > 0.0 && sum("cost_usd") > 0.0
            },
        );
        wait_until("the error alert fires", Duration::from_secs(30), || {
            gw.admin_request("GET", "/hypercare/alerts").json()["firing"]
                .as_array()
                .is_some_and(|f| !f.is_empty())
        });
        let mut browser = Browser::launch(1400, 1000);
        browser.navigate(&url);
        browser.wait_for(
            "every chart drawn with data",
            Duration::from_secs(30),
            "Number(document.body?.dataset.ready || 0)",
            |v| v.as_u64() == Some(CHARTS),
        );
        // A few more polls, so the live charts show a stretch of traffic.
        std::thread::sleep(Duration::from_secs(6));
        let text = browser.evaluate("document.body.innerText");
        let png = browser.screenshot_png();
        (text, browser.problems().to_vec(), png)
    });

    assert!(
        problems.is_empty(),
        "the page had console errors:\n{}",
        problems.join("\n")
    );
    let text = text.as_str().unwrap_or_default();
    for shown in [
        "checkout-v1 → checkout-v2",
        "errors: canary",
        "checkout-errors",
        "firing",
        "catalog-release",
        "criteria met for",
        "mock/m1",
    ] {
        assert!(text.contains(shown), "the page lacks {shown:?}:\n{text}");
    }

    let shot = artifacts_dir().join("dashboard.png");
    std::fs::write(&shot, &png).expect("write the screenshot");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "the screenshot is not a PNG"
    );
    assert!(
        png.len() > 10 * 1024,
        "the screenshot is only {} bytes",
        png.len()
    );
    eprintln!("dashboard screenshot: {}", shot.display());
}

#[test]
fn an_idle_gateway_gets_empty_panels_without_errors() {
    let up = MockUpstream::ok("ok");
    let gw = TestGateway::start(&format!(
        "{}{}{}",
        preamble(1),
        cluster("app", &[up.addr()], ""),
        route_all("app", "app", "")
    ));
    let mut browser = Browser::launch(1400, 1000);
    browser.navigate(&format!("http://{}/ui", gw.admin));
    // Two polls: the second one computes the (empty) live rates.
    browser.wait_for(
        "the first poll",
        Duration::from_secs(30),
        "document.getElementById('status-text')?.textContent || ''",
        |v| v.as_str().is_some_and(|s| s.starts_with("updated")),
    );
    std::thread::sleep(Duration::from_millis(2500));
    let text = browser.evaluate("document.body.innerText");
    let text = text.as_str().unwrap_or_default();
    for shown in [
        "No canary configured.",
        "No alert rules configured.",
        "No hypercare windows configured.",
        "No LLM calls yet.",
        "No data yet",
    ] {
        assert!(text.contains(shown), "the page lacks {shown:?}:\n{text}");
    }
    assert_eq!(
        browser.evaluate("document.body.dataset.ready ?? null"),
        serde_json::Value::Null,
        "no chart has data"
    );
    assert!(
        browser.problems().is_empty(),
        "the page had console errors:\n{}",
        browser.problems().join("\n")
    );
}

#[test]
fn with_an_admin_token_the_page_asks_for_it_once_and_works() {
    let up = MockUpstream::ok("ok");
    let listen = "listen = \"127.0.0.2:0\"\n";
    let gw = TestGateway::start(&format!(
        "{}{}{}",
        preamble(1).replace(listen, &format!("{listen}token = \"dashboard-token\"\n")),
        cluster("app", &[up.addr()], ""),
        route_all("app", "app", "")
    ));
    let mut browser = Browser::launch(1400, 1000);
    browser.navigate(&format!("http://{}/ui", gw.admin));
    let form_shown = "document.getElementById('login')?.hidden === false";
    browser.wait_for("the token form", Duration::from_secs(30), form_shown, |v| {
        *v == serde_json::Value::Bool(true)
    });
    let submit = |browser: &mut Browser, token: &str| {
        browser.evaluate(&format!(
            "document.getElementById('login-token').value = {token:?}; \
             document.getElementById('login').requestSubmit(); true"
        ));
    };
    // A wrong token is refused and asked for again.
    submit(&mut browser, "wrong-token");
    browser.wait_for(
        "the refusal",
        Duration::from_secs(10),
        "document.getElementById('login').hidden ? '' : document.getElementById('login-error').textContent",
        |v| v.as_str().is_some_and(|s| s.contains("refused")),
    );
    submit(&mut browser, "dashboard-token");
    browser.wait_for(
        "a poll with the token",
        Duration::from_secs(30),
        "document.getElementById('status-text')?.textContent || ''",
        |v| v.as_str().is_some_and(|s| s.starts_with("updated")),
    );
    assert_eq!(browser.evaluate(form_shown), serde_json::Value::Bool(false));
    // The token is kept for the tab: a reload does not ask again.
    browser.navigate(&format!("http://{}/ui", gw.admin));
    browser.wait_for(
        "a poll after the reload",
        Duration::from_secs(30),
        "document.getElementById('status-text')?.textContent || ''",
        |v| v.as_str().is_some_and(|s| s.starts_with("updated")),
    );
    assert_eq!(browser.evaluate(form_shown), serde_json::Value::Bool(false));
    // The only console errors are the fetches answered 401 before the token.
    let others: Vec<&String> = browser
        .problems()
        .iter()
        .filter(|p| !p.contains("401"))
        .collect();
    assert!(others.is_empty(), "console errors: {others:#?}");
}
