//! The built-in demo gRPC upstream (`[[demo_upstreams]]` with `kind = "grpc"`),
//! started by the `hypergate` binary and called directly with the official
//! grpcio client (`tests/python/demo_grpc_client.py`) and with curl over h2c:
//! the health service, unary and bidirectional echo, unknown methods,
//! compressed and oversized messages, `fail_ratio`, `name`, and a request that
//! is not gRPC.

use hypergate_tests::process::GatewayProcess;
use hypergate_tests::util::closed_port;
use hypergate_tests::{cluster, preamble, route_all};
use std::net::SocketAddr;
use std::process::Command;

/// The gateway with two demo gRPC upstreams on free ports: `grpc-v1`, and
/// `grpc-v2` failing every second Echo call.
fn gateway() -> (GatewayProcess, SocketAddr, SocketAddr) {
    let (demo, failing) = (closed_port(), closed_port());
    let gw = GatewayProcess::spawn(&format!(
        r#"{preamble}{cluster}{route}
[[demo_upstreams]]
address = "{demo}"
name = "grpc-v1"
kind = "grpc"

[[demo_upstreams]]
address = "{failing}"
name = "grpc-v2"
kind = "grpc"
fail_ratio = 0.5
"#,
        preamble = preamble(1),
        cluster = cluster("demo", &[demo], ""),
        route = route_all("all", "demo", ""),
    ));
    (gw, demo, failing)
}

#[test]
fn the_demo_grpc_upstream_serves_health_and_echo_to_grpcio() {
    let (gw, demo, failing) = gateway();
    let out =
        hypergate_tests::python::run_script("demo_grpc_client.py", demo, &[&failing.to_string()]);
    let logs = gw.log().join("\n");
    assert!(logs.contains("demo gRPC upstream listening"), "{logs}");

    for check in ["check_default", "check_echo"] {
        assert_eq!(out[check]["status"], "SERVING", "{out}");
        assert_eq!(out[check]["upstream"], "grpc-v1", "{out}");
    }
    assert_eq!(out["check_unknown"]["code"], "NOT_FOUND", "{out}");
    assert!(
        out["check_unknown"]["details"]
            .as_str()
            .unwrap()
            .contains("nope.Service"),
        "{out}"
    );
    assert_eq!(out["echo_1mib"]["length"], 1 << 20, "{out}");
    assert_eq!(out["echo_1mib"]["same"], true, "{out}");
    assert_eq!(out["echo_empty"], true, "{out}");
    assert_eq!(
        out["stream"]["echoed"],
        serde_json::json!(["one", "two", "three"])
    );
    assert_eq!(out["stream"]["after_half_close"], 0, "{out}");
    assert_eq!(out["stream"]["code"], "OK", "{out}");
    assert_eq!(out["unknown_method"]["code"], "UNIMPLEMENTED", "{out}");
    assert_eq!(out["watch"]["first"], "SERVING", "{out}");
    assert_eq!(out["watch"]["open_after_first"], true, "{out}");
    assert_eq!(out["watch"]["code"], "CANCELLED", "{out}");
    assert_eq!(out["compressed"]["code"], "UNIMPLEMENTED", "{out}");
    assert_eq!(out["oversized"]["code"], "RESOURCE_EXHAUSTED", "{out}");
    let failing: Vec<&str> = out["failing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["code"].as_str().unwrap())
        .collect();
    assert_eq!(failing, ["OK", "UNAVAILABLE", "OK", "UNAVAILABLE"], "{out}");
    assert_eq!(
        out["failing"][1]["details"], "grpc-v2: injected failure",
        "{out}"
    );
}

#[test]
fn the_demo_grpc_upstream_answers_415_to_a_request_that_is_not_grpc() {
    let (_gw, demo, _) = gateway();
    let curl = |content_type: &str, path: &str| {
        // No request body: the server answers these without reading one and
        // then resets the stream with NO_ERROR (RFC 9113, section 8.1), which
        // curl 7.88 reports as an error when it is still uploading.
        let out = Command::new("curl")
            .args(["-s", "--http2-prior-knowledge", "--max-time", "10"])
            .args(["-X", "POST", "-o", "/dev/null", "-D", "-"])
            .args(["-H", &format!("content-type: {content_type}")])
            .arg(format!("http://{demo}{path}"))
            .output()
            .expect("run curl");
        // HTTP/2 header names are lower case.
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let head = curl("text/plain", "/hypergate.demo.Echo/Echo");
    assert!(head.starts_with("HTTP/2 415"), "{head}");
    assert!(head.contains("x-demo-upstream: grpc-v1"), "{head}");
    // A trailers-only answer: the status is in the one HEADERS frame.
    let head = curl("application/grpc", "/no.Such/Method");
    assert!(head.starts_with("HTTP/2 200"), "{head}");
    assert!(head.contains("content-type: application/grpc"), "{head}");
    assert!(head.contains("grpc-status: 12"), "{head}");
    assert!(
        head.contains("grpc-message: unknown method /no.Such/Method"),
        "{head}"
    );
}
