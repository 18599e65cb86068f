//! The admin listener: `/metrics` (valid Prometheus exposition, checked by
//! `promtool`), `/healthz`, `/readyz`, `/stats` and `/config`.

use hypergate_tests::gateway::metric_value;
use hypergate_tests::{preamble, MockUpstream, Reply, Request, TestGateway};
use std::io::Write;
use std::process::{Command, Stdio};

fn gateway() -> (MockUpstream, TestGateway) {
    let mock = MockUpstream::start(|req| {
        if req.path() == "/fail" {
            Reply::status(500).body("boom").into()
        } else {
            Reply::ok("ok").into()
        }
    });
    let gw = TestGateway::start(&format!(
        r#"{}
[[clusters]]
name = "backend"
version = "v1"
endpoints = [{{ address = "{}" }}]

[[routes]]
name = "hello"
[routes.match]
path_exact = "/hello"
[routes.direct]
body = "hi"

[[routes]]
name = "api"
cluster = "backend"
[routes.match]
path_prefix = "/api"

[[routes]]
name = "fail"
cluster = "backend"
[routes.match]
path_exact = "/fail"
"#,
        preamble(2),
        mock.addr()
    ));
    (mock, gw)
}

fn traffic(gw: &TestGateway) {
    let mut conn = gw.conn();
    for i in 0..10 {
        assert_eq!(
            conn.request(&Request::get(&format!("/api/{i}"))).status,
            200
        );
    }
    assert_eq!(conn.request(&Request::get("/hello")).status, 200);
    assert_eq!(conn.request(&Request::get("/fail")).status, 500);
    assert_eq!(conn.request(&Request::get("/nothing-here")).status, 404);
    let mut bad = gw.conn();
    bad.send(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
    assert_eq!(bad.read_response().status, 400);
}

#[test]
fn metrics_pass_promtool_check() {
    let (_mock, gw) = gateway();
    traffic(&gw);
    let r = gw.admin_request("GET", "/metrics");
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")));
    let text = r.text();
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!(
            "promtool is required for this test but could not be run ({e}). \
             Install it (Debian/Ubuntu: `apt-get install prometheus`, which provides promtool) \
             and make sure it is on PATH."
        ),
    };
    child
        .stdin
        .take()
        .expect("promtool stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_count_requests_by_route_cluster_and_status() {
    let (_mock, gw) = gateway();
    traffic(&gw);
    let m = gw.metrics();
    let v = |s: &str| metric_value(&m, s);
    assert_eq!(v("hypergate_requests_total{route=\"api\",cluster=\"backend\",version=\"v1\",status=\"2xx\"}"), 10.0, "{m}");
    assert_eq!(v("hypergate_requests_total{route=\"fail\",cluster=\"backend\",version=\"v1\",status=\"5xx\"}"), 1.0, "{m}");
    assert_eq!(
        v("hypergate_requests_total{route=\"hello\",cluster=\"\",version=\"\",status=\"2xx\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        v("hypergate_request_duration_seconds_count{route=\"api\"}"),
        10.0,
        "{m}"
    );
    assert_eq!(
        v("hypergate_request_duration_seconds_bucket{route=\"api\",le=\"+Inf\"}"),
        10.0,
        "{m}"
    );
    assert_eq!(
        v("hypergate_upstream_duration_seconds_count{cluster=\"backend\",version=\"v1\"}"),
        11.0,
        "{m}"
    );
    assert_eq!(v("hypergate_no_route_total"), 1.0);
    assert_eq!(v("hypergate_rejections_total{reason=\"bad_host\"}"), 1.0);
    assert_eq!(v("hypergate_downstream_connections_total"), 2.0);
    assert_eq!(v("hypergate_shards"), 2.0);
}

#[test]
fn health_readiness_stats_and_config_endpoints() {
    let (_mock, gw) = gateway();
    traffic(&gw);

    let h = gw.admin_request("GET", "/healthz");
    assert_eq!((h.status, h.json()["status"].clone()), (200, "ok".into()));
    let r = gw.admin_request("GET", "/readyz");
    assert_eq!(
        (r.status, r.json()["status"].clone()),
        (200, "ready".into())
    );

    let stats = gw.stats();
    assert_eq!(stats["shards"], 2);
    assert_eq!(stats["no_route"], 1);
    assert_eq!(stats["rejections"]["bad_host"], 1);
    for route in ["api", "hello", "fail"] {
        let lat = &stats["routes"][route]["latency"];
        for q in [
            "count", "p50_us", "p90_us", "p99_us", "p999_us", "max_us", "mean_us",
        ] {
            assert!(
                lat[q].is_number(),
                "routes.{route}.latency.{q} missing: {stats:#}"
            );
        }
    }
    assert_eq!(stats["routes"]["api"]["latency"]["count"], 10);
    assert_eq!(stats["routes"]["api"]["requests"], 10);
    let targets = stats["routes"]["api"]["by_target"]
        .as_array()
        .expect("by_target");
    assert!(
        targets
            .iter()
            .any(|t| t["cluster"] == "backend" && t["status"]["2xx"] == 10),
        "{stats:#}"
    );
    let up = &stats["clusters"]["backend"]["upstream_latency"];
    for q in ["count", "p50_us", "p99_us", "p999_us"] {
        assert!(
            up[q].is_number(),
            "clusters.backend.upstream_latency.{q} missing: {stats:#}"
        );
    }
    assert!(up["p50_us"].as_u64() <= up["p99_us"].as_u64());
    assert_eq!(stats["clusters"]["backend"]["version"], "v1");
    assert!(stats["clusters"]["backend"]["endpoints"]
        .as_array()
        .is_some_and(|e| e.len() == 1));

    let config = gw.admin_request("GET", "/config");
    assert_eq!(config.status, 200);
    assert_eq!(config.header("content-type"), Some("application/json"));
    let c = config.json();
    let names: Vec<&str> = c["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, ["hello", "api", "fail"]);
    assert_eq!(c["clusters"][0]["name"], "backend");
    assert_eq!(c["server"]["shards"], 2);

    assert_eq!(gw.admin_request("GET", "/nope").status, 404);
    assert_eq!(gw.admin_request("POST", "/metrics").status, 405);
    assert_eq!(gw.admin_request("GET", "/reload").status, 405);
}
