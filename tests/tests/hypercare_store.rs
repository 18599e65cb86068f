//! The call store: every request recorded in SQLite off the hot path, queryable
//! through the admin API and the CLI; rollups equal the sum of the raw records;
//! a stalled disk drops records (counted) but never holds a request up;
//! feedback lands on its call.

use hypergate_mock_llm::{MockConfig, MockLlm};
use hypergate_tests::process::run_cli;
use hypergate_tests::{
    cluster, preamble, route_all, wait_until, Conn, MockUpstream, Reply, Request, TestGateway,
};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn store_section(extra: &str) -> String {
    format!("\n[hypercare.store]\nflush_interval = \"20ms\"\nrollup_interval = \"50ms\"\n{extra}\n")
}

/// A gateway over one upstream that answers 500 for paths under `/fail`.
fn gateway(extra: &str) -> (TestGateway, MockUpstream) {
    let up = MockUpstream::start(|r| {
        if r.path().starts_with("/fail") {
            Reply::status(500).into()
        } else {
            Reply::ok("ok").into()
        }
    });
    let gw = TestGateway::start(&format!(
        "{}{}{}{}",
        preamble(2),
        cluster("app", &[up.addr()], "version = \"v7\""),
        route_all("app", "app", ""),
        store_section(extra)
    ));
    (gw, up)
}

fn store(gw: &TestGateway) -> rusqlite::Connection {
    let path = gw.inner().controller.store_path().expect("store enabled");
    // The store's own reader: it installs the `calls` table over the call blocks.
    hypergate::hypercare::store::open_for_reading(path).expect("open store")
}

fn count(conn: &rusqlite::Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn calls_are_recorded_and_queryable_under_load() {
    let (gw, _up) = gateway("");
    let addr = gw.addr;
    std::thread::scope(|s| {
        for t in 0..4 {
            s.spawn(move || {
                let mut c = Conn::connect(addr);
                for i in 0..250 {
                    let path = if i % 10 == 0 {
                        format!("/fail/{t}/{i}")
                    } else {
                        format!("/ok/{t}/{i}")
                    };
                    let r = c.request(&Request::get(&path));
                    assert!(r.status == 200 || r.status == 500);
                }
            });
        }
    });
    let conn = store(&gw);
    wait_until("1000 calls stored", Duration::from_secs(10), || {
        count(&conn, "SELECT COUNT(*) FROM calls") == 1000
    });
    assert_eq!(
        count(&conn, "SELECT COUNT(*) FROM calls WHERE status = 500"),
        100
    );
    assert_eq!(
        count(
            &conn,
            "SELECT COUNT(*) FROM calls WHERE version = 'v7' AND route = 'app'"
        ),
        1000
    );

    let page = gw
        .admin_request("GET", "/hypercare/calls?status=5xx&limit=30")
        .json();
    let calls = page["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 30);
    assert!(calls
        .iter()
        .all(|c| c["status"] == 500 && c["path"].as_str().unwrap().starts_with("/fail")));
    let ids: Vec<i64> = calls.iter().map(|c| c["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first");
    // Pages follow the cursor without overlap and end.
    let mut seen = calls.len();
    let mut cursor = page["next_cursor"].as_i64();
    while let Some(c) = cursor {
        let p = gw
            .admin_request(
                "GET",
                &format!("/hypercare/calls?status=5xx&limit=30&cursor={c}"),
            )
            .json();
        seen += p["calls"].as_array().unwrap().len();
        cursor = p["next_cursor"].as_i64();
    }
    assert_eq!(seen, 100);
    let bad = gw.admin_request("GET", "/hypercare/calls?colour=red");
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("unknown filter"));

    wait_until("rollups cover every call", Duration::from_secs(10), || {
        count(&conn, "SELECT COALESCE(SUM(requests), 0) FROM rollups") == 1000
    });
    let summary = gw
        .admin_request("GET", "/hypercare/summary?window=1h")
        .json();
    assert_eq!(summary["total"]["requests"], 1000);
    assert_eq!(summary["total"]["status"]["5xx"], 100);
    assert!((summary["total"]["error_rate"].as_f64().unwrap() - 0.1).abs() < 1e-9);
    let group = &summary["groups"][0];
    assert_eq!(group["version"], "v7");
    assert!(group["latency_ms"]["p99"].as_f64().unwrap() > 0.0);

    // The CLI reads the same store.
    let db = gw
        .inner()
        .controller
        .store_path()
        .unwrap()
        .display()
        .to_string();
    let (st, out, err) = run_cli(&["calls", "--db", &db, "status=500", "limit=3"]);
    assert!(st.success(), "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|l| l["status"] == 500));
    let (st, out, err) = run_cli(&["summary", "--db", &db, "--window", "2h"]);
    assert!(st.success(), "{err}");
    let s: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["total"]["requests"], 1000);
    // Ad-hoc SQL over the calls, read-only.
    let (st, out, err) = run_cli(&[
        "sql",
        "--db",
        &db,
        "SELECT status, COUNT(*) AS n, MAX(upstream_us) IS NULL AS no_upstream \
         FROM calls GROUP BY status ORDER BY status",
    ]);
    assert!(st.success(), "{err}");
    let rows: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        rows,
        [
            serde_json::json!({"status": 200, "n": 900, "no_upstream": 0}),
            serde_json::json!({"status": 500, "n": 100, "no_upstream": 0}),
        ]
    );
    let (st, _, err) = run_cli(&["sql", "--db", &db, "DELETE FROM rollups"]);
    assert!(!st.success());
    assert!(err.contains("readonly"), "{err}");
}

/// (minute, route, cluster, version, requests, 2xx, 5xx, latency sum in µs).
type RollupRow = (i64, String, String, String, i64, i64, i64, i64);

#[test]
fn rollups_equal_the_sum_of_raw_records() {
    let (gw, _up) = gateway("");
    let mut c = gw.conn();
    for i in 0..300 {
        let path = if i % 7 == 0 { "/fail" } else { "/ok" };
        c.request(&Request::get(path));
    }
    let conn = store(&gw);
    wait_until("rolled up", Duration::from_secs(10), || {
        count(&conn, "SELECT COALESCE(SUM(requests), 0) FROM rollups") == 300
    });
    let mut raw = conn
        .prepare(
            "SELECT ts_ms / 60000, route, cluster, version, COUNT(*), SUM(status / 100 = 2),
                SUM(status / 100 = 5), SUM(total_us) FROM calls GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
        )
        .unwrap();
    let raw: Vec<RollupRow> = raw
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut rolled = conn
        .prepare(
            "SELECT minute, route, cluster, version, requests, status_2xx, status_5xx, latency_sum_us,
                latency_hist FROM rollups ORDER BY 1, 2, 3, 4",
        )
        .unwrap();
    let rolled: Vec<(RollupRow, String)> = rolled
        .query_map([], |r| {
            Ok((
                (
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ),
                r.get(8)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        raw,
        rolled.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>()
    );
    // The histograms hold exactly the rows' count.
    for ((_, _, _, _, n, ..), hist) in &rolled {
        let pairs: Vec<[u64; 2]> = serde_json::from_str(hist).unwrap();
        assert_eq!(pairs.iter().map(|p| p[1]).sum::<u64>() as i64, *n);
    }
}

#[test]
fn a_stalled_disk_drops_records_but_never_holds_requests() {
    // Few record buffers per shard, so a stalled writer shows at once.
    let (gw, _up) = gateway("[access_log]\nbuffer = 64");
    let conn = store(&gw);
    // Hold the database's write lock: the writer's next commit waits on it.
    let lock = rusqlite::Connection::open(gw.inner().controller.store_path().unwrap()).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let mut c = gw.conn();
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut sent = 0u64;
    for _ in 0..20_000 {
        sent += 1;
        let t = Instant::now();
        assert_eq!(c.request(&Request::get("/ok")).status, 200);
        slowest = slowest.max(t.elapsed());
        if start.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    // The lock lasts longer than any request took: nobody waited for the store.
    assert!(
        slowest < Duration::from_secs(1),
        "a request took {slowest:?}"
    );
    wait_until(
        "records dropped and counted",
        Duration::from_secs(5),
        || gw.metric("hypergate_access_log_dropped_total") > 0.0,
    );
    lock.execute_batch("COMMIT").unwrap();
    // Once the disk is back, the writer works off its backlog: every request is
    // then stored, or counted as dropped (queue full) or lost (a commit that
    // waited past the busy timeout).
    wait_until("backlog written", Duration::from_secs(15), || {
        gw.metric("hypergate_callstore_written_total")
            + gw.metric("hypergate_access_log_dropped_total")
            + gw.metric("hypergate_callstore_lost_total")
            == sent as f64
    });
    let before = count(&conn, "SELECT COUNT(*) FROM calls");
    for _ in 0..10 {
        c.request(&Request::get("/after"));
    }
    wait_until("recording resumed", Duration::from_secs(15), || {
        count(&conn, "SELECT COUNT(*) FROM calls WHERE path = '/after'") == 10
    });
    assert!(count(&conn, "SELECT COUNT(*) FROM calls") > before);
    assert!(gw.metric("hypergate_callstore_written_total") > 0.0);

    // Totals stay exact: the summary counts every request (the shards counted
    // them, whatever became of their rows), as the request counter does, and
    // says how many calls have rows.
    let total = sent + 10;
    let counter = gw.metric(
        "hypergate_requests_total{route=\"app\",cluster=\"app\",version=\"v7\",status=\"2xx\"}",
    );
    assert_eq!(counter, total as f64);
    let summary = || {
        gw.admin_request("GET", "/hypercare/summary?window=1h")
            .json()
    };
    wait_until(
        "exact totals in the summary",
        Duration::from_secs(15),
        || summary()["total"]["requests"] == total,
    );
    let s = summary();
    let rows = &s["total"]["rows"];
    let recorded = rows["recorded"].as_u64().unwrap();
    assert_eq!(
        recorded as i64,
        count(&conn, "SELECT COUNT(*) FROM calls"),
        "{s}"
    );
    assert!(recorded < total, "{s}");
    assert_eq!(rows["dropped"].as_u64().unwrap() + recorded, total, "{s}");
    assert_eq!(rows["complete"], false);
    let note = format!("recorded {recorded} of {total} calls");
    assert!(s["rows_note"].as_str().unwrap().contains(&note), "{s}");
    let db = gw
        .inner()
        .controller
        .store_path()
        .unwrap()
        .display()
        .to_string();
    let (st, report, err) = run_cli(&["report", "--db", &db, "--since", "1h"]);
    assert!(st.success(), "{err}");
    assert!(report.contains(&format!("{total} requests")), "{report}");
    assert!(report.contains(&note), "{report}");
}

#[test]
fn llm_calls_are_recorded_with_tokens_cost_and_feedback() {
    let m = MockLlm::start(
        "127.0.0.1:0",
        MockConfig {
            require_auth: false,
            ..Default::default()
        },
    )
    .unwrap();
    let gw = TestGateway::start(&format!(
        "{}\n[[routes]]\nname = \"llm\"\n[routes.match]\npath_prefix = \"/v1\"\n[routes.ai]\n\n[[ai.providers]]\nname = \"p\"\nbase_url = \"http://{}/v1\"\n[[ai.models]]\nalias = \"a\"\ntargets = [{{ provider = \"p\", model = \"m1\" }}]\n[[ai.prices]]\nmodel = \"m1\"\ninput = 10.0\noutput = 20.0\n{}",
        preamble(2),
        m.addr(),
        store_section("capture_llm_bodies = 1.0")
    ));
    let body = json!({"model": "a", "stream": true, "messages": [{"role": "user", "content": "hello there, I am bob@example.com"}]});
    let r = gw.send(
        &Request::post("/v1/chat/completions", body.to_string()).header("x-request-id", "llm-1"),
    );
    assert_eq!(r.status, 200);
    let f = gw.send(&Request::post(
        "/v1/feedback",
        json!({"request_id": "llm-1", "score": 1, "comment": "spot on"}).to_string(),
    ));
    assert_eq!(f.status, 200, "{}", f.text());
    let conn = store(&gw);
    wait_until(
        "feedback stored on the call",
        Duration::from_secs(10),
        || {
            conn.query_row(
                "SELECT score FROM feedback WHERE request_id = 'llm-1'",
                [],
                |r| r.get::<_, Option<f64>>(0),
            )
            .ok()
            .flatten()
                == Some(1.0)
        },
    );
    let (alias, target, prompt, completion, cost, ttft, comment): (String, String, i64, i64, f64, Option<i64>, String) = conn
        .query_row(
            "SELECT alias, target, prompt_tokens, completion_tokens, cost_usd, ttft_us, f.comment
             FROM calls c JOIN feedback f ON f.request_id = c.request_id WHERE c.request_id = 'llm-1'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)),
        )
        .unwrap();
    assert_eq!((alias.as_str(), target.as_str()), ("a", "p/m1"));
    assert_eq!(completion, 8);
    assert!(prompt > 0);
    assert!((cost - (prompt as f64 * 10.0 + completion as f64 * 20.0) / 1e6).abs() < 1e-12);
    assert!(ttft.is_some());
    assert_eq!(comment, "spot on");
    // Captured bodies, with PII redacted.
    let (request, response): (String, String) = conn
        .query_row(
            "SELECT request_body, response_body FROM calls WHERE request_id = 'llm-1'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(
        request.contains("[REDACTED:email]") && !request.contains("bob@example.com"),
        "{request}"
    );
    assert!(
        response.starts_with("Mock reply to: hello there, I am [REDACTED:email]"),
        "{response}"
    );
}

#[test]
fn sampled_api_bodies_are_captured_redacted_and_cut() {
    let up = MockUpstream::start(|r| {
        if r.path() == "/echo" {
            Reply::ok("").echo().chunked(7).into()
        } else {
            Reply::ok("plain").into()
        }
    });
    let gw = TestGateway::start(&format!(
        "{}{}{}{}",
        preamble(1),
        cluster("app", &[up.addr()], ""),
        route_all("app", "app", ""),
        store_section("capture_api_bodies = 1.0\ncapture_max_bytes = 48")
    ));
    let conn = store(&gw);
    // A JSON body longer than the capture keeps, with an address across the
    // 48-byte cut (bytes 40 to 57); the upstream echoes it back chunked (the
    // capture is of the payload).
    let body = r#"{"note": "01234567890123456789", "to": "carol@example.com", "n": 1}"#;
    let r = gw.send(
        &Request::post("/echo", body.as_bytes().to_vec())
            .header("x-request-id", "captured-1")
            .header("content-type", "application/json"),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body, body.as_bytes());
    wait_until("captured call stored", Duration::from_secs(10), || {
        count(
            &conn,
            "SELECT COUNT(*) FROM calls WHERE request_id = 'captured-1'",
        ) == 1
    });
    let (request, response): (String, String) = conn
        .query_row(
            "SELECT request_body, response_body FROM calls WHERE request_id = 'captured-1'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    for captured in [&request, &response] {
        // Redacted before the cut: not even the part of the address before
        // the cut is kept.
        assert_eq!(captured.len(), 48, "{captured}");
        assert!(
            captured.starts_with(r#"{"note": "01234567890123456789", "to": "[REDACTE"#),
            "{captured}"
        );
        assert!(!captured.contains("carol"), "{captured}");
    }
    // A GET has no request body; its (short) response is kept whole.
    let r = gw.send(&Request::get("/plain").header("x-request-id", "captured-2"));
    assert_eq!(r.text(), "plain");
    wait_until("second call stored", Duration::from_secs(10), || {
        count(
            &conn,
            "SELECT COUNT(*) FROM calls WHERE request_id = 'captured-2' \
             AND request_body = '' AND response_body = 'plain'",
        ) == 1
    });
}
