//! gRPC through the gateway over real sockets, with the official grpcio
//! client and server (tests/python/grpc_calls.py, grpc_server.py): the four
//! call types over h2c to an `h2c` cluster, 4 MB messages, trailers end to
//! end, errors with details, deadlines (the client's `grpc-timeout`, and the
//! route's cap), cancellation reaching the server, a server that resets its
//! stream; `grpc-status` as the call's outcome in metrics (configurable
//! codes) and in canary analysis (a failing gRPC canary rolled back under
//! h2load); gRPC health checks that take an endpoint out.

use hypergate_tests::python::{run_script, Server};
use hypergate_tests::tls::Pki;
use hypergate_tests::util::{closed_port, wait_until};
use hypergate_tests::{preamble, TestGateway};
use std::time::Duration;

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
    let server = Server::start("grpc_server.py", &[]);
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

/// gRPC health checks (`grpc.health.v1`) mark an endpoint without a
/// `SERVING` health service unhealthy, and calls avoid it.
#[test]
fn grpc_health_checks_take_an_endpoint_out() {
    let unhealthy = Server::start("grpc_server.py", &[]);
    let demo = std::cell::Cell::new(closed_port());
    let gw = TestGateway::start_with_fresh_ports(|| {
        demo.set(closed_port());
        let demo = demo.get();
        format!(
            r#"{preamble}protocols = ["h2c"]

[[demo_upstreams]]
address = "{demo}"
name = "checked-demo"
kind = "grpc"

[[clusters]]
name = "checked"
protocol = "h2c"
endpoints = [{{ address = "{demo}" }}, {{ address = "{bad}" }}]
[clusters.health_check]
grpc_service = ""
interval = "100ms"
healthy_threshold = 1
unhealthy_threshold = 1

[[routes]]
name = "health"
cluster = "checked"
[routes.match]
path_prefix = "/grpc.health.v1.Health/"

[[routes]]
name = "echo"
cluster = "checked"
[routes.match]
path_prefix = "/hypergate.demo.Echo/"
"#,
            preamble = preamble(1),
            bad = unhealthy.addr,
        )
    });
    let demo = demo.get();
    let healthy = |endpoint: std::net::SocketAddr| {
        let series =
            format!("hypergate_upstream_healthy{{cluster=\"checked\",endpoint=\"{endpoint}\"}}");
        gw.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()).map(|v| v.trim() == "1"))
    };
    wait_until(
        "the endpoint without a health service is unhealthy, the demo healthy",
        Duration::from_secs(10),
        || healthy(unhealthy.addr) == Some(false) && healthy(demo) == Some(true),
    );
    // Round robin over the two would send every other call to the server
    // without the services: none goes there now.
    for _ in 0..3 {
        let out = run_script("grpc_quickstart.py", gw.addr, &[]);
        assert_eq!(out["server"], "SERVING", "{out}");
        assert_eq!(out["echo"], "hello over grpc", "{out}");
    }
}

/// `protocol = "h2"`: HTTP/2 over TLS to the upstream (ALPN `h2`, the
/// server verified against the cluster's CA), gRPC calls of every kind.
#[test]
fn grpc_over_tls_to_an_h2_cluster() {
    let pki = Pki::new();
    let cert = pki.issue("grpc", &["grpc.test"]);
    let server = Server::start(
        "grpc_server.py",
        &[cert.cert.as_os_str(), cert.key.as_os_str()],
    );
    let endpoints = format!("endpoints = [{{ address = \"{}\" }}]", server.addr);
    let toml = config(server.addr)
        .replace("protocol = \"h2c\"", "protocol = \"h2\"")
        .replace(
            &endpoints,
            &format!(
                "{endpoints}\n[clusters.tls]\nca_file = \"{}\"\nserver_name = \"grpc.test\"",
                pki.ca_cert().display()
            ),
        );
    let gw = TestGateway::start(&toml);
    let out = run_script("grpc_calls.py", gw.addr, &[]);
    assert_eq!(out["unary"]["answer"], "hello", "{out}");
    assert_eq!(out["unary_4mb"], true, "{out}");
    assert_eq!(
        out["bidi"],
        serde_json::json!(["ping-0", "ping-1", "ping-2"]),
        "{out}"
    );
    assert_eq!(out["not_found"]["code"], "NOT_FOUND", "{out}");
}

/// An upstream that answers one message and then resets the stream (no
/// trailers): the client gets the message, then `UNAVAILABLE` saying the
/// upstream broke off, and the call counts as an upstream error.
#[test]
fn an_upstream_reset_mid_call_ends_it_with_a_status() {
    let upstream = resetting_upstream();
    let gw = TestGateway::start(&config(upstream));
    let out = run_script("grpc_stream.py", gw.addr, &["/test.Calls/Reset"]);
    assert_eq!(out["messages"], serde_json::json!(["hello"]), "{out}");
    assert_eq!(out["code"], "UNAVAILABLE", "{out}");
    assert_eq!(out["details"], "the upstream broke off the call", "{out}");
    let metrics = gw.metrics();
    assert_eq!(
        metric(
            &metrics,
            "hypergate_request_outcomes_total{route=\"calls\",cluster=\"calls\",version=\"\",outcome=\"upstream_error\"}"
        ),
        1,
        "{metrics}"
    );
}

/// A raw HTTP/2 server: to every request, response HEADERS, one gRPC
/// message (`hello`) and RST_STREAM (INTERNAL_ERROR).
fn resetting_upstream() -> std::net::SocketAddr {
    use hypergate_tests::h2raw::{kind, H2Raw, END_HEADERS, END_STREAM};
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut preface = [0u8; 24];
                if conn.read_exact(&mut preface).is_err() {
                    return;
                }
                let _ = conn.write_all(&H2Raw::encode(kind::SETTINGS, 0, 0, &[]));
                loop {
                    let mut head = [0u8; 9];
                    if conn.read_exact(&mut head).is_err() {
                        return;
                    }
                    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                    let mut payload = vec![0u8; len];
                    if conn.read_exact(&mut payload).is_err() {
                        return;
                    }
                    let (frame, flags) = (head[3], head[4]);
                    let stream =
                        u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & !(1 << 31);
                    if frame == kind::SETTINGS && flags & 1 == 0 {
                        let _ = conn.write_all(&H2Raw::encode(kind::SETTINGS, 1, 0, &[]));
                    }
                    let request_ended =
                        (frame == kind::DATA || frame == kind::HEADERS) && flags & END_STREAM != 0;
                    if request_ended {
                        // :status 200, content-type: application/grpc (name index 31).
                        let mut block = vec![0x88, 0x0f, 0x10];
                        hypergate_tests::h2raw::length(&mut block, 16);
                        block.extend_from_slice(b"application/grpc");
                        let mut out = H2Raw::encode(kind::HEADERS, END_HEADERS, stream, &block);
                        out.extend(H2Raw::encode(kind::DATA, 0, stream, b"\0\0\0\0\x05hello"));
                        out.extend(H2Raw::encode(
                            kind::RST_STREAM,
                            0,
                            stream,
                            &2u32.to_be_bytes(),
                        ));
                        let _ = conn.write_all(&out);
                    }
                }
            });
        }
    });
    addr
}

/// A gRPC release gets hypercare: a canary whose calls fail with
/// `UNAVAILABLE` (every answer an HTTP 200) is rolled back by canary
/// analysis, under load from h2load sending unary calls.
#[test]
fn a_failing_grpc_canary_is_rolled_back() {
    let gw = TestGateway::start_with_fresh_ports(|| {
        let (v1, v2) = (closed_port(), closed_port());
        format!(
            r#"{preamble}protocols = ["h2c"]

[[demo_upstreams]]
address = "{v1}"
name = "orders-v1"
kind = "grpc"

[[demo_upstreams]]
address = "{v2}"
name = "orders-v2"
kind = "grpc"
fail_ratio = 0.2

[[clusters]]
name = "v1"
version = "v1"
protocol = "h2c"
endpoints = [{{ address = "{v1}" }}]

[[clusters]]
name = "v2"
version = "v2"
protocol = "h2c"
endpoints = [{{ address = "{v2}" }}]

[[routes]]
name = "orders"
[routes.match]
path_prefix = "/hypergate.demo.Echo/"
[routes.split]
targets = [{{ cluster = "v1", weight = 80 }}, {{ cluster = "v2", weight = 20 }}]

[hypercare]
evaluation_interval = "200ms"

[[hypercare.canaries]]
route = "orders"
stable = "v1"
canary = "v2"
steps = [{{ weight = 20, bake = "60s", min_requests = 1000 }}, {{ weight = 50, bake = "60s", min_requests = 1000 }}]
latency_tolerance = 3.0
"#,
            preamble = preamble(1),
        )
    });
    // One unary call: a 5-byte gRPC frame header and a 16-byte message.
    let dir = hypergate_tests::TempDir::new();
    let mut message = vec![0, 0, 0, 0, 16];
    message.extend_from_slice(b"order 1234567890");
    let body = dir.write("call.bin", "");
    std::fs::write(&body, &message).unwrap();
    // Bounded load: 30 s at most, stopped once the canary is rolled back.
    let mut h2load = std::process::Command::new("h2load")
        .args(["-c", "4", "-m", "4", "-D", "30"])
        .arg("-d")
        .arg(&body)
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg(format!("http://{}/hypergate.demo.Echo/Echo", gw.addr))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("h2load (Debian package nghttp2-client; .ci/run installs it)");
    wait_until(
        "the gRPC canary is rolled back",
        Duration::from_secs(30),
        || {
            gw.admin_request("GET", "/hypercare/canary").json()["canaries"][0]["status"]["phase"]
                == "rolled_back"
        },
    );
    let _ = h2load.kill();
    let _ = h2load.wait();
    let metrics = gw.metrics();
    // Every answer was an HTTP 200; the grpc-status decided.
    let series = |labels: &str| metric(&metrics, &format!("hypergate_requests_total{{{labels}}}"));
    assert!(
        series("route=\"orders\",cluster=\"v2\",version=\"v2\",status=\"2xx\"") > 0,
        "{metrics}"
    );
    assert_eq!(
        series("route=\"orders\",cluster=\"v2\",version=\"v2\",status=\"5xx\""),
        0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "hypergate_request_outcomes_total{route=\"orders\",cluster=\"v2\",version=\"v2\",outcome=\"upstream_error\"}"
        ) > 0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "hypergate_request_outcomes_total{route=\"orders\",cluster=\"v1\",version=\"v1\",outcome=\"upstream_error\"}"
        ),
        0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "hypergate_grpc_calls_total{route=\"orders\",method=\"/hypergate.demo.Echo/Echo\",code=\"UNAVAILABLE\"}"
        ) > 0,
        "{metrics}"
    );
}

/// An answer that is not gRPC (HTTP 200 without `grpc-status`, here a plain
/// HTTP/2 server behind an h2c cluster) is a broken call, as gRPC clients
/// read it: `UNKNOWN`, an upstream error, not an OK.
#[test]
fn an_answer_without_a_grpc_status_counts_as_unknown() {
    let origin = hypergate_tests::MockUpstream::ok("not grpc");
    let plain_h2 = TestGateway::start(&format!(
        "{}protocols = [\"h2c\"]\n{}\n[[routes]]\nname = \"all\"\ncluster = \"origin\"\n",
        preamble(1),
        hypergate_tests::cluster("origin", &[origin.addr()], ""),
    ));
    let gw = TestGateway::start(&config(plain_h2.addr));
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .args([
            "--http2-prior-knowledge",
            "-H",
            "content-type: application/grpc",
        ])
        .args(["--data-binary", "@-"])
        .arg(format!("http://{}/test.Calls/Unary", gw.addr))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    let metrics = gw.metrics();
    assert_eq!(
        metric(
            &metrics,
            "hypergate_grpc_calls_total{route=\"calls\",method=\"/test.Calls/Unary\",code=\"UNKNOWN\"}"
        ),
        1,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "hypergate_request_outcomes_total{route=\"calls\",cluster=\"calls\",version=\"\",outcome=\"upstream_error\"}"
        ),
        1,
        "{metrics}"
    );
}
