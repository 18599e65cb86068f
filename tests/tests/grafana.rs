//! The Grafana dashboard in `docs/` only queries metrics the gateway exports.

use hypergate_mock_llm::{MockConfig, MockLlm};
use hypergate_tests::process::workspace_root;
use hypergate_tests::{cluster, preamble, route_all, MockUpstream, Request, TestGateway};
use std::collections::BTreeSet;

#[test]
fn every_metric_the_dashboard_queries_is_exported() {
    let text =
        std::fs::read_to_string(workspace_root().join("docs/grafana-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let mut wanted = BTreeSet::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(i) = rest.find("hypergate_") {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[i + name.len()..];
                wanted.insert(name.trim_end_matches("_bucket").to_string());
            }
        }
    }
    assert!(wanted.len() >= 8, "{wanted:?}");
    let up = MockUpstream::ok("ok");
    let llm = MockLlm::start(
        "127.0.0.1:0",
        MockConfig {
            require_auth: false,
            ..Default::default()
        },
    )
    .unwrap();
    let gw = TestGateway::start(&format!(
        "{}{}\n[[routes]]\nname = \"llm\"\n[routes.match]\npath_prefix = \"/v1\"\n[routes.ai]\n{}\n[[ai.providers]]\nname = \"p\"\nbase_url = \"http://{}/v1\"\n[[ai.models]]\nalias = \"a\"\ntargets = [{{ provider = \"p\", model = \"m\" }}]\n",
        preamble(1),
        cluster("app", &[up.addr()], ""),
        route_all("app", "app", ""),
        llm.addr()
    ));
    gw.get("/");
    let body = r#"{"model": "a", "stream": true, "messages": [{"role": "user", "content": "hi"}]}"#;
    assert_eq!(
        gw.send(&Request::post("/v1/chat/completions", body)).status,
        200
    );
    let metrics = gw.metrics();
    for name in wanted {
        // The kernel TCP families exist only with the eBPF probe (tests/tests/ebpf.rs covers them).
        if name.starts_with("hypergate_tcp_") {
            continue;
        }
        assert!(
            metrics.contains(&format!("# TYPE {name} ")),
            "the dashboard queries {name}, which /metrics lacks"
        );
    }
}
