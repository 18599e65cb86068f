//! gRPC through the gateway over real sockets, with the official grpcio
//! client and server (tests/python/grpc_calls.py, grpc_server.py): the four
//! call types over h2c to an `h2c` cluster, 4 MB messages, trailers end to
//! end, errors with details, deadlines (the client's `grpc-timeout`, and the
//! route's cap), cancellation reaching the server, a server that resets its
//! stream; `grpc-status` as the call's outcome in metrics (configurable
//! codes); gRPC health checks that eject an endpoint.

use hypergate_tests::python::{run_script, Server};
use hypergate_tests::{preamble, TestGateway};

fn config(server: std::net::SocketAddr) -> String {
    format!(
        r#"{preamble}protocols = ["http1", "h2c"]

[[clusters]]
name = "calls"
protocol = "h2c"
endpoints = [{{ address = "{server}" }}]

[[routes]]
name = "capped"
cluster = "calls"
[routes.match]
path_prefix = "/capped.Calls/"
[routes.grpc]
max_timeout = "300ms"

[[routes]]
name = "calls"
cluster = "calls"
[routes.match]
path_prefix = "/test.Calls/"
"#,
        preamble = preamble(1),
    )
}

#[test]
fn every_call_type_through_an_h2c_cluster() {
    let server = Server::start("grpc_server.py");
    let gw = TestGateway::start(&config(server.addr));
    let out = run_script("grpc_calls.py", gw.addr, &[]);
    assert_eq!(out["unary"]["answer"], "hello", "{out}");
    // Trailing metadata comes through with the status (trailers end to end).
    assert_eq!(out["unary"]["trailing"]["x-served"], "unary", "{out}");
    assert_eq!(out["unary_4mb"], true, "{out}");
    assert_eq!(out["client_stream"]["messages"], 10, "{out}");
    assert_eq!(out["client_stream"]["bytes"], 1_000_000, "{out}");
    assert_eq!(
        out["server_stream"],
        serde_json::json!([1000, 1000, 1000, 1000, 1000])
    );
    assert_eq!(
        out["bidi"],
        serde_json::json!(["ping-0", "ping-1", "ping-2"]),
        "{out}"
    );
    assert_eq!(out["not_found"]["code"], "NOT_FOUND", "{out}");
    assert_eq!(out["not_found"]["details"], "no such order 42", "{out}");
    assert_eq!(out["unavailable"]["code"], "UNAVAILABLE", "{out}");
    assert_eq!(out["unavailable"]["details"], "backend draining", "{out}");
    assert_eq!(out["client_deadline"]["code"], "DEADLINE_EXCEEDED", "{out}");
    assert!(
        out["client_deadline"]["seconds"].as_f64().unwrap() < 2.0,
        "{out}"
    );
    assert_eq!(out["route_cap"]["code"], "DEADLINE_EXCEEDED", "{out}");
    assert!(out["route_cap"]["seconds"].as_f64().unwrap() < 2.0, "{out}");
    assert_eq!(out["cancelled_after"], 2, "{out}");
    assert_eq!(out["server_saw_cancel"], true, "{out}");
    // grpcio's server cancels with a CANCELLED status, then RST_STREAM: the
    // client sees what it would see without the gateway.
    assert_eq!(out["reset"]["code"], "CANCELLED", "{out}");

    // Each call by method and status; the service's errors (UNAVAILABLE
    // here) are the route's upstream errors, the client's (NOT_FOUND) are not.
    let metrics = gw.metrics();
    let calls = |method: &str, code: &str| {
        metric(
            &metrics,
            &format!(
                "hypergate_grpc_calls_total{{route=\"calls\",method=\"/test.Calls/{method}\",code=\"{code}\"}}"
            ),
        )
    };
    assert_eq!(calls("Unary", "OK"), 2, "{metrics}");
    assert_eq!(calls("Unary", "NOT_FOUND"), 1, "{metrics}");
    assert_eq!(calls("Unary", "UNAVAILABLE"), 1, "{metrics}");
    assert_eq!(calls("ClientStream", "OK"), 1, "{metrics}");
    assert_eq!(calls("Bidi", "OK"), 1, "{metrics}");
    assert_eq!(calls("Reset", "CANCELLED"), 1, "{metrics}");
    let outcome = |route: &str, outcome: &str| {
        metric(
            &metrics,
            &format!(
                "hypergate_request_outcomes_total{{route=\"{route}\",cluster=\"calls\",version=\"\",outcome=\"{outcome}\"}}"
            ),
        )
    };
    assert_eq!(outcome("calls", "upstream_error"), 1, "{metrics}");
    assert_eq!(outcome("capped", "timeout"), 1, "{metrics}");
    assert_eq!(
        metric(
            &metrics,
            "hypergate_grpc_calls_total{route=\"capped\",method=\"/capped.Calls/Unary\",code=\"DEADLINE_EXCEEDED\"}"
        ),
        1,
        "{metrics}"
    );
}

/// The value of the metric line that starts with `series` (0 when absent).
fn metric(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}
