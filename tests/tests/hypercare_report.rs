//! Release baselines compared with significance (`/hypercare/diff`, `hypergate
//! diff`) and the hypercare report (`hypergate report`) over a real run: a split
//! whose new release is slower and fails more, rolled back by canary analysis,
//! with an alert, LLM calls and feedback.

use hypergate_mock_llm::{MockConfig, MockLlm};
use hypergate_tests::process::run_cli;
use hypergate_tests::{cluster, preamble, wait_until, MockUpstream, Reply, Request, TestGateway};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[test]
fn diff_and_report_tell_what_happened() {
    let v1 = MockUpstream::ok("v1");
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let v2 = MockUpstream::start(move |_| {
        if n2.fetch_add(1, Ordering::Relaxed).is_multiple_of(8) {
            Reply::status(500).into()
        } else {
            Reply::ok("v2").latency(Duration::from_millis(3)).into()
        }
    });
    let llm = MockLlm::start(
        "127.0.0.1:0",
        MockConfig {
            require_auth: false,
            ..Default::default()
        },
    )
    .unwrap();
    let gw = TestGateway::start(&format!(
        r#"{}{}{}
[[routes]]
name = "llm"
[routes.match]
path_prefix = "/v1"
[routes.ai]

[[routes]]
name = "shop"
[routes.split]
targets = [{{ cluster = "v1", weight = 50 }}, {{ cluster = "v2", weight = 50 }}]

[[ai.providers]]
name = "p"
base_url = "http://{}/v1"
[[ai.models]]
alias = "chat"
targets = [{{ provider = "p", model = "m1" }}]
[[ai.prices]]
model = "m1"
input = 1.0
output = 3.0

[hypercare]
evaluation_interval = "100ms"
[hypercare.store]
flush_interval = "20ms"
rollup_interval = "50ms"

[[hypercare.canaries]]
route = "shop"
stable = "v1"
canary = "v2"
steps = [{{ weight = 50, bake = "1h", min_requests = 1000 }}]
latency_tolerance = 3.0

[[hypercare.alerts]]
name = "shop-errors"
kind = "error_rate"
route = "shop"
window = "1s"
threshold = 0.02
severity = "critical"
min_requests = 10

[[hypercare.windows]]
name = "shop-launch"
route = "shop"
sustain = "1h"
max_error_rate = 0.01
"#,
        preamble(2),
        cluster("v1", &[v1.addr()], "version = \"v1\""),
        cluster("v2", &[v2.addr()], "version = \"v2\""),
        llm.addr()
    ));
    // Traffic until the canary is rolled back, plus a few LLM calls with feedback.
    let mut c = gw.conn();
    for i in 0..4 {
        let id = format!("chat-{i}");
        let body = json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]});
        let r = c.request(
            &Request::post("/v1/chat/completions", body.to_string()).header("x-request-id", &id),
        );
        assert_eq!(r.status, 200);
        let f = c.request(&Request::post(
            "/v1/feedback",
            json!({"request_id": id, "score": i as f64 / 4.0}).to_string(),
        ));
        assert_eq!(f.status, 200);
    }
    let mut sent = 0usize;
    while sent < 20_000 {
        c.request(&Request::get("/buy"));
        sent += 1;
        if sent.is_multiple_of(500)
            && gw.admin_request("GET", "/hypercare/canary").json()["canaries"][0]["status"]["phase"]
                == "rolled_back"
        {
            break;
        }
    }
    // A bit more traffic on v1 only, then wait for the rollups.
    for _ in 0..200 {
        c.request(&Request::get("/buy"));
    }
    // Every request makes a record: 4 chats, 4 feedbacks, and the shop traffic.
    let total = 8 + sent as i64 + 200;
    let db = gw
        .inner()
        .controller
        .store_path()
        .unwrap()
        .display()
        .to_string();
    let conn = hypergate::hypercare::store::open_for_reading(std::path::Path::new(&db)).unwrap();
    wait_until("rolled up", Duration::from_secs(10), || {
        let rolled: i64 = conn
            .query_row("SELECT COALESCE(SUM(requests), 0) FROM rollups", [], |r| {
                r.get(0)
            })
            .unwrap();
        let raw: i64 = conn
            .query_row("SELECT COUNT(*) FROM calls", [], |r| r.get(0))
            .unwrap();
        let recorded: i64 = conn
            .query_row("SELECT COALESCE(SUM(recorded), 0) FROM rollups", [], |r| {
                r.get(0)
            })
            .unwrap();
        // Rollups count every request, exactly. A busy test machine may drop
        // records (counted, never waited for): every request is either stored
        // or counted, and the rollups know how many rows they have.
        let dropped = gw.metric("hypergate_access_log_dropped_total") as i64;
        let lost = gw.metric("hypergate_callstore_lost_total") as i64;
        rolled == total && raw + dropped + lost == total && recorded == raw + lost
    });

    let d = gw
        .admin_request("GET", "/hypercare/diff?from=v1&to=v2&window=1h")
        .json();
    assert_eq!(d["error_rate"]["significant"], true, "{d}");
    assert!(
        d["error_rate"]["change_points"].as_f64().unwrap() > 5.0,
        "{d}"
    );
    assert_eq!(d["latency"]["significant"], true, "{d}");
    assert_eq!(d["latency"]["direction"], "slower", "{d}");
    assert!(d["latency"]["p99_ratio"].as_f64().unwrap() > 1.0);
    let (st, out, err) = run_cli(&[
        "diff", "--db", &db, "--from", "v1", "--to", "v2", "--window", "1h",
    ]);
    assert!(st.success(), "{err}");
    let cli: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(cli["error_rate"]["significant"], true);
    // Identical releases: no significant change.
    let same = gw
        .admin_request("GET", "/hypercare/diff?from=v1&to=v1&window=1h")
        .json();
    assert_eq!(same["error_rate"]["significant"], false, "{same}");
    assert_eq!(same["latency"]["significant"], false, "{same}");

    wait_until("window verdict recorded", Duration::from_secs(5), || {
        conn.query_row(
            "SELECT COUNT(*) FROM events WHERE kind = 'window'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
            > 0
    });
    let (st, md, err) = run_cli(&["report", "--db", &db, "--since", "1h"]);
    assert!(st.success(), "{err}");
    for want in [
        "# Hypercare report",
        "## Traffic and errors",
        "| shop |",
        "## Latency against baselines",
        "## Canary decisions",
        "| rollback | error_rate |",
        "## Alerts",
        "| shop-errors | firing | critical |",
        "## LLM usage, cost and feedback",
        "| llm | m1 | 4 |",
        "0.38 (4)",
        "## Hypercare windows",
        "| shop-launch |",
    ] {
        assert!(md.contains(want), "report lacks {want:?}:\n{md}");
    }
    let (st, html, err) = run_cli(&["report", "--db", &db, "--since", "1h", "--format", "html"]);
    assert!(st.success(), "{err}");
    assert!(html.starts_with("<!doctype html>"));
    assert!(html.contains("<td>rollback</td>"));
    assert_eq!(
        html.matches("<table>").count(),
        html.matches("</table>").count()
    );
}
