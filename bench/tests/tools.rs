//! End-to-end checks of the `mock-upstream` and `loadgen` binaries.
//!
//! Each test starts its own `mock-upstream` on an ephemeral loopback port, talks to
//! it with plain blocking sockets or with `loadgen`, and kills it when done.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// A running `mock-upstream`, killed on drop.
struct Upstream {
    child: Child,
    address: SocketAddr,
}

impl Upstream {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mock-upstream"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("mock-upstream starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("reads the ready line");
        let address = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("an address");
        Self { child, address }
    }

    fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.address).expect("connects");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("sets a timeout");
        stream
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `loadgen` against `upstream` and returns its JSON report.
fn loadgen(upstream: &Upstream, args: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .arg("--target")
        .arg(upstream.address.to_string())
        .args(args)
        .output()
        .expect("loadgen runs");
    assert!(
        output.status.success(),
        "loadgen failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("one JSON report")
}

fn number(report: &Value, field: &str) -> f64 {
    report[field]
        .as_f64()
        .unwrap_or_else(|| panic!("no number {field} in {report}"))
}

#[test]
fn answers_pipelined_requests_with_bodies_in_order_then_closes() {
    let upstream = Upstream::start(&["--body-size", "5"]);
    let mut stream = upstream.connect();
    stream
        .write_all(
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
              POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
              POST /c HTTP/1.1\r\nContent-Length: 4\r\n\r\nab",
        )
        .expect("writes");
    std::thread::sleep(Duration::from_millis(50));
    stream
        .write_all(b"cdGET /d HTTP/1.1\r\nConnection: close\r\n\r\n")
        .expect("writes");
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .expect("reads until close");
    assert_eq!(answer.matches("HTTP/1.1 200 OK\r\n").count(), 4, "{answer}");
    assert_eq!(answer.matches("Content-Length: 5\r\n").count(), 4);
    assert!(
        answer.ends_with("Connection: close\r\n\r\nhello"),
        "{answer}"
    );
}

#[test]
fn rejects_ambiguous_framing() {
    let upstream = Upstream::start(&[]);
    let mut stream = upstream.connect();
    stream
        .write_all(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n")
        .expect("writes");
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .expect("reads until close");
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
}

#[test]
fn loadgen_holds_the_rate_without_errors() {
    let upstream = Upstream::start(&["--threads", "2"]);
    let report = loadgen(
        &upstream,
        &["--rate", "1000", "--connections", "4", "--duration", "1"],
    );
    assert_eq!(number(&report, "errors"), 0.0, "{report}");
    // Every one of the 1,000 scheduled requests is either answered or, if a busy
    // machine left the generator behind when time ran out, reported unsent.
    let requests = number(&report, "requests");
    let scheduled = requests + number(&report, "unsent");
    assert!((999.0..=1001.0).contains(&scheduled), "{report}");
    assert!(requests >= 500.0, "{report}");
    assert!(number(&report, "p50_us") > 0.0);
    assert!(number(&report, "p99_us") >= number(&report, "p50_us"));
    assert_eq!(number(&report, "target_rps"), 1000.0);
}

#[test]
fn loadgen_posts_bodies_and_opens_connections_per_request() {
    let upstream = Upstream::start(&[]);
    let report = loadgen(
        &upstream,
        &[
            "--rate",
            "400",
            "--connections",
            "4",
            "--duration",
            "1",
            "--method",
            "POST",
            "--body-size",
            "10240",
            "--header",
            "Connection: close",
        ],
    );
    assert_eq!(number(&report, "errors"), 0.0, "{report}");
    let requests = number(&report, "requests");
    let scheduled = requests + number(&report, "unsent");
    assert!((399.0..=401.0).contains(&scheduled), "{report}");
    assert!(requests >= 200.0, "{report}");
}

#[test]
fn loadgen_charges_server_stalls_from_the_intended_send_time() {
    // One connection asked for 50 requests/s against a server that takes 50 ms per
    // response can only complete about 20/s; each request waits for the previous
    // one, so latency measured from the intended send time keeps growing, far
    // past the 50 ms a closed-loop tool would report.
    let upstream = Upstream::start(&["--delay-ms", "50"]);
    let report = loadgen(
        &upstream,
        &["--rate", "50", "--connections", "1", "--duration", "1"],
    );
    assert_eq!(number(&report, "errors"), 0.0, "{report}");
    let requests = number(&report, "requests");
    assert!((15.0..=50.0).contains(&requests), "{report}");
    assert!(number(&report, "p99_us") > 400_000.0, "{report}");
    assert!(number(&report, "p50_us") >= 50_000.0, "{report}");
    // The backlog left when time ran out is reported, not sent late.
    assert!(number(&report, "unsent") >= 10.0, "{report}");
}

#[test]
fn loadgen_counts_connect_failures() {
    // Grab a free port and release it: nothing listens there now.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
        listener.local_addr().expect("has an address")
    };
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--target", &closed.to_string()])
        .args(["--rate", "100", "--connections", "2", "--duration", "0.5"])
        .output()
        .expect("loadgen runs");
    let report: Value = serde_json::from_slice(&output.stdout).expect("a report");
    assert!(number(&report, "errors_connect") > 0.0, "{report}");
    assert_eq!(number(&report, "requests"), 0.0, "{report}");
}

/// A one-connection server that answers every request with a chunked body whose
/// first chunk comes at once and the rest `delay` later, and hands back the
/// first request it read.
fn slow_stream_server(delay: Duration) -> (SocketAddr, std::thread::JoinHandle<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let address = listener.local_addr().expect("has an address");
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accepts");
        stream.set_nodelay(true).expect("sets nodelay");
        let mut first_request = None;
        let mut buffer = [0u8; 4096];
        // Each request fits one read here: the body is small and sent with its head.
        while let Ok(read) = stream.read(&mut buffer) {
            if read == 0 {
                break;
            }
            first_request.get_or_insert_with(|| String::from_utf8_lossy(&buffer[..read]).into());
            let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\ndata:1\r\n";
            if stream.write_all(head.as_bytes()).is_err() {
                break;
            }
            std::thread::sleep(delay);
            if stream.write_all(b"6\r\ndata:2\r\n0\r\n\r\n").is_err() {
                break;
            }
        }
        first_request.unwrap_or_default()
    });
    (address, server)
}

#[test]
fn loadgen_posts_json_and_measures_time_to_first_byte() {
    let body = r#"{"model":"m","stream":true}"#;
    let run = |ttfb: bool| {
        let (address, server) = slow_stream_server(Duration::from_millis(50));
        let mut command = Command::new(env!("CARGO_BIN_EXE_loadgen"));
        command
            .args(["--target", &address.to_string(), "--path", "/v1/chat"])
            .args(["--rate", "10", "--connections", "1", "--duration", "1"])
            .args(["--method", "POST", "--body", body]);
        if ttfb {
            command.arg("--ttfb");
        }
        let output = command.output().expect("loadgen runs");
        assert!(output.status.success(), "{output:?}");
        let report: Value = serde_json::from_slice(&output.stdout).expect("a report");
        (report, server.join().expect("the server ran"))
    };
    let (ttfb, request) = run(true);
    assert!(
        request.starts_with("POST /v1/chat HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(
        request.contains("Content-Type: application/json\r\n"),
        "{request}"
    );
    assert!(
        request.ends_with(&format!("Content-Length: {}\r\n\r\n{body}", body.len())),
        "{request}"
    );
    assert_eq!(ttfb["latency"], "ttfb", "{ttfb}");
    assert_eq!(number(&ttfb, "errors"), 0.0, "{ttfb}");
    assert!(number(&ttfb, "requests") >= 5.0, "{ttfb}");
    assert!(number(&ttfb, "p50_us") < 25_000.0, "{ttfb}");
    // Without --ttfb the latency runs to the end of the stream.
    let (whole, _) = run(false);
    assert_eq!(whole["latency"], "response", "{whole}");
    assert!(number(&whole, "p50_us") >= 50_000.0, "{whole}");
}
