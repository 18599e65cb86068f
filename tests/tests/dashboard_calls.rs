//! The dashboard's call log, and the call-store API behind it.
//!
//! In headless Chromium (see `hypergate_tests::browser`): a gateway whose
//! upstream fails every request under `/fail/` serves a known set of calls; the
//! call log lists them (a page, then the older ones), the 5xx status filter leaves only the 500s, a click on a
//! row shows that call (path, status, its captured response body as text, not
//! markup), a click on the error-per-minute chart's point filters the log to that
//! minute and to errors of the service and scrolls to it, the "Alerts firing" tile agrees with
//! `GET /hypercare/alerts` once the error-rate rule fires, and the page records
//! no console error. A full-page screenshot is saved as a CI artifact
//! (`dashboard-calls.png` in `$HYPERGATE_ARTIFACTS`).
//!
//! Without a browser: `GET /hypercare/calls/<id>` returns one call with every
//! column (LLM fields, timings, feedback, redacted bodies) or a 404 JSON error,
//! and `GET /hypercare/calls?model=` filters by model or alias, `outcome=` by
//! how calls ended.

use hypergate_mock_llm::{MockConfig, MockLlm};
use hypergate_tests::browser::Browser;
use hypergate_tests::process::workspace_root;
use hypergate_tests::{
    cluster, preamble, route_all, wait_until, MockUpstream, Reply, Request, TestGateway,
};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The store flushes and rolls up quickly, keeps every body, and an error-rate
/// rule on route `app` fires at once above 5% 5xx (over 10 minutes, so it
/// keeps firing however slowly the test runs).
const HYPERCARE: &str = r#"
[hypercare]
evaluation_interval = "100ms"

[hypercare.store]
flush_interval = "50ms"
rollup_interval = "100ms"
capture_api_bodies = 1.0
capture_llm_bodies = 1.0

[[hypercare.alerts]]
name = "app-errors"
kind = "error_rate"
route = "app"
window = "10m"
threshold = 0.05
min_requests = 5
severity = "critical"
"#;

/// Body of the 500 answered for `/fail/beta-2`: markup the page must show as text.
const MARKUP: &str = "<img src=x id=injected> upstream failed";

/// An upstream that answers 500 under `/fail/` (with [`MARKUP`] for `beta-2`) and 200 elsewhere.
fn flaky_upstream() -> MockUpstream {
    MockUpstream::start(|r| {
        if r.target == "/fail/beta-2" {
            Reply::status(500).body(MARKUP).into()
        } else if r.target.starts_with("/fail/") {
            Reply::status(500).body("upstream failed").into()
        } else {
            Reply::ok(format!("fine {}", r.target)).into()
        }
    })
}

/// Where the screenshot goes: `$HYPERGATE_ARTIFACTS`, as for the dashboard test.
fn artifacts_dir() -> PathBuf {
    let dir = std::env::var_os("HYPERGATE_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target").join("ci-artifacts"));
    std::fs::create_dir_all(&dir).expect("create the artifacts directory");
    dir
}

/// Every call in the store (newest first), through the admin API.
fn stored_calls(gw: &TestGateway, query: &str) -> Vec<Value> {
    let r = gw.admin_request("GET", &format!("/hypercare/calls?limit=1000{query}"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["calls"].as_array().cloned().unwrap_or_default()
}

fn paths(calls: &[Value]) -> BTreeSet<String> {
    calls
        .iter()
        .map(|c| c["path"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The paths the call log shows, in its order.
const SHOWN_PATHS: &str = "[...document.querySelectorAll('#calls tbody tr')]\
    .map((r) => r.cells[2].textContent)";

fn shown(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_call_log_lists_filters_and_opens_calls_in_headless_chromium() {
    let up = flaky_upstream();
    let gw = TestGateway::start(&format!(
        "{}{}{}{HYPERCARE}",
        preamble(1),
        cluster("app", &[up.addr()], "version = \"v7\""),
        route_all("app", "app", "")
    ));
    // 60 calls: more than a page of the log (50), 4 of them 500s.
    let ok: Vec<String> = (0..56).map(|i| format!("/ok/alpha-{i}")).collect();
    let failed: Vec<String> = (0..4).map(|i| format!("/fail/beta-{i}")).collect();
    for (path, status) in ok
        .iter()
        .map(|p| (p, 200))
        .chain(failed.iter().map(|p| (p, 500)))
    {
        let r = gw.send(&Request::get(path));
        assert_eq!(r.status, status, "{path}: {}", r.text());
    }
    let all: BTreeSet<String> = ok.iter().chain(&failed).cloned().collect();
    let failed_set: BTreeSet<String> = failed.iter().cloned().collect();
    wait_until(
        "the store holds every call",
        Duration::from_secs(20),
        || paths(&stored_calls(&gw, "")) == all,
    );
    // The 5xx chart needs its rollup; the tile needs the rule to fire.
    let minutes_with_errors = || -> Vec<i64> {
        let v = gw
            .admin_request("GET", "/hypercare/series?window=1h")
            .json();
        let mut out = Vec::new();
        for s in v["series"].as_array().cloned().unwrap_or_default() {
            let t = s["t"].as_array().cloned().unwrap_or_default();
            let e = s["errors"].as_array().cloned().unwrap_or_default();
            for (t, e) in t.iter().zip(&e) {
                if e.as_u64().unwrap_or(0) > 0 {
                    out.extend(t.as_i64());
                }
            }
        }
        out
    };
    wait_until("the 5xx rollup", Duration::from_secs(20), || {
        let rolled: u64 = minutes_with_errors().len() as u64;
        rolled > 0 && {
            let v = gw
                .admin_request("GET", "/hypercare/summary?window=1h")
                .json();
            v["total"]["status"]["5xx"] == 4
        }
    });
    let firing = || -> Vec<Value> {
        gw.admin_request("GET", "/hypercare/alerts").json()["firing"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    wait_until("the error-rate rule fires", Duration::from_secs(20), || {
        !firing().is_empty()
    });

    let mut browser = Browser::launch(1400, 1000);
    browser.navigate(&format!("http://{}/ui", gw.admin));

    // The log lists the newest page of calls, newest first, without polling
    // for it; "Older calls" adds the rest.
    let newest: BTreeSet<String> = paths(&stored_calls(&gw, "")[..50]);
    let listed = browser.wait_for("the call log", Duration::from_secs(30), SHOWN_PATHS, |v| {
        shown(v) == newest
    });
    assert_eq!(listed[0], failed[3].as_str(), "newest first: {listed}");
    browser.evaluate(
        "const older = document.getElementById('calls-older'); \
         if (older.hidden) throw new Error('no older calls offered'); older.click(); true",
    );
    browser.wait_for("every call", Duration::from_secs(30), SHOWN_PATHS, |v| {
        shown(v) == all && v.as_array().is_some_and(|a| a.len() == all.len())
    });
    assert_eq!(
        browser.evaluate("document.getElementById('calls-older').hidden"),
        true,
        "the last page offers no older calls"
    );

    // The tile says what /hypercare/alerts says.
    let tile = browser.wait_for(
        "the alerts tile",
        Duration::from_secs(30),
        "[...document.querySelectorAll('#tiles .tile')]\
            .filter((t) => t.querySelector('.label').textContent === 'Alerts firing')\
            .map((t) => [t.querySelector('.value').textContent, t.querySelector('.sub').textContent])[0] || null",
        |v| v[0] != "0" && !v.is_null(),
    );
    assert_eq!(tile[0], firing().len().to_string(), "tile {tile}");
    assert!(
        tile[1].as_str().is_some_and(|s| s.contains("app-errors")),
        "tile {tile}"
    );

    // Status class 5xx: only the 500s.
    browser.evaluate(
        "const s = document.getElementById('calls-status'); s.value = '5xx'; \
         s.dispatchEvent(new Event('change')); true",
    );
    browser.wait_for(
        "only the 5xx calls",
        Duration::from_secs(30),
        SHOWN_PATHS,
        |v| shown(v) == failed_set,
    );
    let statuses = browser.evaluate(
        "[...document.querySelectorAll('#calls tbody tr')].map((r) => r.cells[5].textContent)",
    );
    assert!(
        statuses
            .as_array()
            .is_some_and(|a| a.iter().all(|s| s == "500")),
        "{statuses}"
    );

    // A row opens that call, its captured body shown as text.
    let id = browser.evaluate(
        "const row = [...document.querySelectorAll('#calls tbody tr')]\
            .find((r) => r.cells[2].textContent === '/fail/beta-2'); row.click(); row.dataset.id",
    );
    let detail = browser.wait_for(
        "the call's detail",
        Duration::from_secs(30),
        "(() => { const d = document.getElementById('call-detail'); \
            return d.dataset.id ? [d.dataset.id, d.textContent, \
            d.querySelector('[data-field=response_body]')?.textContent ?? null, \
            d.querySelector('[data-field=total_us]')?.textContent ?? null, \
            document.querySelectorAll('#injected').length] : null; })()",
        |v| !v.is_null(),
    );
    assert_eq!(detail[0], id, "{detail}");
    let text = detail[1].as_str().unwrap_or_default();
    for expected in [
        "/fail/beta-2",
        "500",
        "app",
        "v7",
        "Timings",
        "Not an LLM call.",
    ] {
        assert!(
            text.contains(expected),
            "the detail lacks {expected:?}:\n{text}"
        );
    }
    assert_eq!(detail[2], MARKUP, "the body as text: {detail}");
    assert!(
        detail[3]
            .as_str()
            .is_some_and(|s| s.ends_with("ms") || s.ends_with(" s")),
        "total latency: {detail}"
    );
    assert_eq!(detail[4], 0, "the body was rendered as markup");

    // Filters cleared, then a click on the error chart's point: that minute's
    // errors of the service (the 500s here).
    browser.evaluate("document.getElementById('calls-clear').click(); true");
    browser.wait_for(
        "the newest calls again",
        Duration::from_secs(30),
        SHOWN_PATHS,
        |v| shown(v) == newest,
    );
    let minute = *minutes_with_errors()
        .iter()
        .max()
        .expect("a minute with 5xx");
    let in_minute: BTreeSet<String> = paths(
        &stored_calls(&gw, "&outcome=error")
            .into_iter()
            .filter(|c| {
                c["ts_ms"]
                    .as_i64()
                    .is_some_and(|t| t / 60_000 == minute / 60)
            })
            .collect::<Vec<_>>(),
    );
    assert!(!in_minute.is_empty());
    // Where the point is: the x axis spans the history window (1 h) up to now.
    // The mouse clicks there; a click that lands while a poll redraws the chart
    // may be lost, as a person's would, so it is tried a few times.
    let point = format!(
        "(() => {{ const over = document.querySelector('#chart-hist-errors .u-over'); \
            over.scrollIntoView({{block: 'center'}}); const r = over.getBoundingClientRect(); \
            const now = Date.now() / 1000; \
            const x = r.left + ({minute} - (now - 3600)) / 3600 * r.width, y = r.top + r.height / 2; \
            return [x, y, document.elementFromPoint(x, y) === over]; }})()"
    );
    let picked = "document.getElementById('calls-range').value === 'pick'";
    let mut tries = Vec::new();
    for _ in 0..3 {
        let at = browser.evaluate(&point);
        let (x, y) = (at[0].as_f64().unwrap(), at[1].as_f64().unwrap());
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            browser.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            );
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while browser.evaluate(picked) != true && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        tries.push(at);
        if browser.evaluate(picked) == true {
            break;
        }
    }
    if tries.len() > 1 {
        eprintln!("the chart click took {} tries: {tries:?}", tries.len());
    }
    assert!(
        browser.evaluate(picked) == true,
        "no click on the error chart picked a minute (clicked at {tries:?}, minute {minute}); series: {}",
        gw.admin_request("GET", "/hypercare/series?window=1h").text()
    );
    browser.wait_for(
        "the minute's failed calls",
        Duration::from_secs(30),
        &format!(
            "document.getElementById('calls-range').value === 'pick' && \
             document.getElementById('calls-outcome').value === 'error' ? {SHOWN_PATHS} : null"
        ),
        |v| shown(v) == in_minute,
    );
    let section_top =
        browser.evaluate("document.getElementById('calls-section').getBoundingClientRect().top");
    assert!(
        section_top
            .as_f64()
            .is_some_and(|t| (0.0..200.0).contains(&t)),
        "the call log was not scrolled to: top {section_top}"
    );

    let shot = artifacts_dir().join("dashboard-calls.png");
    std::fs::write(&shot, browser.screenshot_png()).expect("write the screenshot");
    eprintln!("call log screenshot: {}", shot.display());
    assert!(
        browser.problems().is_empty(),
        "the page had console errors:\n{}",
        browser.problems().join("\n")
    );
}

#[test]
fn one_call_by_id_with_every_column_and_the_model_filter() {
    let up = flaky_upstream();
    let llm = MockLlm::start(
        "127.0.0.1:0",
        MockConfig {
            require_auth: false,
            ..MockConfig::default()
        },
    )
    .expect("mock LLM starts");
    let gw = TestGateway::start(&format!(
        r#"{}{}
[[routes]]
name = "assistant"
[routes.match]
path_prefix = "/v1"
[routes.ai]
{}
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
{HYPERCARE}"#,
        preamble(1),
        cluster("app", &[up.addr()], ""),
        route_all("app", "app", ""),
        llm.addr()
    ));
    for path in ["/ok/one", "/fail/two"] {
        gw.send(&Request::get(path));
    }
    for (i, id) in ["chat-1", "chat-2"].into_iter().enumerate() {
        let body = json!({"model": "assistant", "stream": true, "messages": [
            {"role": "user", "content": format!("order {i} for bob@example.com")}]});
        let r = gw.send(
            &Request::post("/v1/chat/completions", body.to_string())
                .header("content-type", "application/json")
                .header("x-request-id", id),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let f = gw.send(&Request::post(
        "/v1/feedback",
        json!({"request_id": "chat-1", "score": 0.5, "comment": "close enough"}).to_string(),
    ));
    assert_eq!(f.status, 200, "{}", f.text());
    let find = |request_id: &str| {
        stored_calls(&gw, "")
            .into_iter()
            .find(|c| c["request_id"] == request_id)
    };
    wait_until("the store holds the calls", Duration::from_secs(20), || {
        let all = paths(&stored_calls(&gw, ""));
        all.contains("/ok/one")
            && all.contains("/fail/two")
            && find("chat-1").is_some_and(|c| c["feedback_score"] == 0.5)
            && find("chat-2").is_some()
    });

    // The model filter: the provider's model or the alias.
    for model in ["m1", "assistant"] {
        let llm_calls = stored_calls(&gw, &format!("&model={model}"));
        let ids: BTreeSet<&str> = llm_calls
            .iter()
            .filter_map(|c| c["request_id"].as_str())
            .collect();
        assert_eq!(
            ids,
            BTreeSet::from(["chat-1", "chat-2"]),
            "model={model}: {llm_calls:#?}"
        );
    }
    assert!(stored_calls(&gw, "&model=gpt-nope").is_empty());
    // The outcome filter: a label, or `error` for every error of the service.
    for outcome in ["upstream_error", "error"] {
        let failed = stored_calls(&gw, &format!("&outcome={outcome}"));
        assert_eq!(paths(&failed), BTreeSet::from(["/fail/two".to_string()]));
        assert_eq!(failed[0]["outcome"], "upstream_error");
    }
    let fine = paths(&stored_calls(&gw, "&outcome=ok"));
    assert!(
        fine.contains("/ok/one") && !fine.contains("/fail/two"),
        "{fine:?}"
    );
    assert_eq!(stored_calls(&gw, "&model=m1&status=5xx").len(), 0);

    // One call: every column, nulls included, with its feedback and redacted bodies.
    let id = find("chat-1").unwrap()["id"].as_i64().unwrap();
    let r = gw.admin_request("GET", &format!("/hypercare/calls/{id}"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("content-type").is_some_and(|t| t.contains("json")));
    let call = r.json();
    // Every column of the store's `calls` table, and the feedback joined to it.
    let columns = hypergate::hypercare::blocks::COLUMNS
        .iter()
        .chain(&["feedback_score", "feedback_comment"]);
    for column in columns {
        assert!(
            call.get(column).is_some(),
            "column {column} missing: {call:#}"
        );
    }
    assert_eq!(call["id"], id);
    assert_eq!(call["request_id"], "chat-1");
    assert_eq!(call["path"], "/v1/chat/completions");
    assert_eq!(call["status"], 200);
    assert_eq!(call["model"], "m1");
    assert_eq!(call["alias"], "assistant");
    assert!(call["prompt_tokens"].as_i64().is_some_and(|n| n > 0));
    assert!(call["cost_usd"].as_f64().is_some_and(|c| c > 0.0));
    assert!(call["total_us"].as_i64().is_some_and(|t| t > 0));
    assert!(call["ttft_us"].as_i64().is_some(), "streamed: {call:#}");
    assert_eq!(call["feedback_score"], 0.5);
    assert_eq!(call["feedback_comment"], "close enough");
    let request_body = call["request_body"].as_str().unwrap_or_default();
    assert!(
        request_body.contains("[REDACTED:email]") && !request_body.contains("bob@example.com"),
        "{request_body}"
    );
    // A plain API call has nulls for the LLM columns.
    let plain = stored_calls(&gw, "&status=500")[0]["id"].as_i64().unwrap();
    let call = gw
        .admin_request("GET", &format!("/hypercare/calls/{plain}"))
        .json();
    assert_eq!(call["path"], "/fail/two");
    assert_eq!(call["status"], 500);
    assert!(
        call["model"].is_null() && call["feedback_score"].is_null(),
        "{call:#}"
    );
    assert_eq!(call["response_body"], "upstream failed");

    // Unknown ids: 404 with the admin API's JSON error; not a number: 400.
    let missing = gw.admin_request("GET", "/hypercare/calls/987654321");
    assert_eq!(missing.status, 404, "{}", missing.text());
    assert!(
        missing.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("987654321")),
        "{}",
        missing.text()
    );
    let bad = gw.admin_request("GET", "/hypercare/calls/seven");
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(bad.json()["error"].is_string());
    for query in ["model=m1&colour=red", "outcome=broken"] {
        let bad = gw.admin_request("GET", &format!("/hypercare/calls?{query}"));
        assert_eq!(bad.status, 400, "{query}: {}", bad.text());
    }
}
