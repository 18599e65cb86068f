//! HTTP/2 downstream over real sockets: prior knowledge (`h2c`) and ALPN
//! (`h2`), each stream through the same pipeline as an HTTP/1.1 request
//! (curl and h2load as clients), and the attacks: rapid reset
//! (CVE-2023-44487), a CONTINUATION flood, an HPACK bomb, 10,000 streams on
//! one connection and a slow reader of a large response, each with memory
//! bounded and another client still served; GOAWAY on drain.

use hypergate_tests::h2raw::{self, kind, H2Raw, END_HEADERS, END_STREAM};
use hypergate_tests::process::GatewayProcess;
use hypergate_tests::tls::Pki;
use hypergate_tests::{cluster, preamble, MockUpstream, Reply, TestGateway};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const KEY: &str = "h2-secret-key";

/// A gateway whose listener serves HTTP/1.1 and h2c: `/hello` answered
/// directly, `/private` (API key) and everything else to `upstream`.
fn gateway(upstream: &MockUpstream, limits: &str) -> TestGateway {
    TestGateway::start(&config(upstream, limits))
}

/// The same as a separate process, for the attacks: its memory is its own
/// (the tests of this file run in parallel in one process).
fn attacked(upstream: &MockUpstream, limits: &str) -> GatewayProcess {
    GatewayProcess::spawn(&config(upstream, limits))
}

/// The attacks run one at a time: each loads the machine on purpose.
static ATTACKS: Mutex<()> = Mutex::new(());

fn one_attack_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ATTACKS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn config(upstream: &MockUpstream, limits: &str) -> String {
    format!(
        r#"{preamble}protocols = ["http1", "h2c"]

[limits]
{limits}
{cluster}
{key_holder}
[[routes]]
name = "hello"
[routes.match]
path_exact = "/hello"
[routes.direct]
status = 200
body = "hello over any protocol\n"

[[routes]]
name = "private"
cluster = "backend"
[routes.match]
path_prefix = "/private"
[routes.policy]
auth = ["api_key"]

[[routes]]
name = "public"
cluster = "backend"
"#,
        preamble = preamble(1),
        cluster = cluster("backend", &[upstream.addr()], ""),
        key_holder = key_holder(),
    )
}

/// `curl` (HTTP/2 with prior knowledge unless `extra` says otherwise):
/// (status, HTTP version, body).
fn curl(addr: SocketAddr, path: &str, extra: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "10",
            "--path-as-is",
            "-w",
            "\n%{http_code} %{http_version}",
        ])
        .args(if extra.contains(&"--http1.1") {
            &[][..]
        } else {
            &["--http2-prior-knowledge"][..]
        })
        .args(extra)
        .arg(format!("http://{addr}{path}"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let mut it = tail.split(' ');
    let status = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (
        status,
        it.next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

#[test]
fn h2c_and_http1_share_a_listener_and_the_pipeline() {
    let up = MockUpstream::start(|req| {
        Reply::ok(format!("upstream saw {} {}", req.method, req.body.len())).into()
    });
    let gw = gateway(&up, "");
    assert_eq!(
        curl(gw.addr, "/hello", &[]),
        (200, "2".into(), "hello over any protocol\n".into())
    );
    assert_eq!(curl(gw.addr, "/hello", &["--http1.1"]).0, 200);
    assert_eq!(curl(gw.addr, "/hello", &["--http1.1"]).1, "1.1");
    // The edge phase runs on streams: no key, no entry; path variants are
    // made canonical first, as for HTTP/1.1.
    let (status, version, body) = curl(gw.addr, "/private/x", &[]);
    assert_eq!((status, version.as_str()), (401, "2"), "{body}");
    assert!(body.contains("missing_credentials"), "{body}");
    for variant in [
        "/public/../private/x",
        "//private/x",
        "/%70rivate/x",
        "/./private/x",
    ] {
        let (status, _, body) = curl(gw.addr, variant, &[]);
        assert_eq!(status, 401, "{variant}: {body}");
    }
    assert_eq!(
        up.request_count(),
        0,
        "nothing unauthenticated reached the upstream"
    );
    let key = format!("x-api-key: {KEY}");
    let (status, _, body) = curl(gw.addr, "/private/x", &["-H", &key]);
    assert_eq!((status, body.as_str()), (200, "upstream saw GET 0"));
    let seen = up.last();
    assert_eq!(seen.version, 1, "the upstream gets HTTP/1.1");
    assert!(
        seen.headers
            .iter()
            .any(|(n, v)| n == "host" && v.starts_with("127.0.0.1")),
        "{:?}",
        seen.headers
    );
    // A 1 MiB body, sent as DATA frames, arrives whole.
    let body_file = hypergate_tests::TempDir::new();
    let path = body_file.write("body.bin", &"x".repeat(1 << 20));
    let data = format!("@{}", path.display());
    let (status, _, body) = curl(gw.addr, "/upload", &["--data-binary", &data]);
    assert_eq!((status, body.as_str()), (200, "upstream saw POST 1048576"));
    assert!(up.last().body_complete);
    assert_eq!(
        gw.metric("hypergate_h2_events_total{event=\"streams\"}"),
        8.0
    );
    assert_eq!(
        gw.metric("hypergate_h2_events_total{event=\"protocol_errors\"}"),
        0.0
    );
}

#[test]
fn tls_listener_offers_h2_by_alpn_and_still_speaks_http1() {
    let pki = Pki::new();
    let cert = pki.issue("h2", &["h2.test"]);
    let gw = TestGateway::start(&format!(
        r#"{}protocols = ["http1", "h2"]
[listeners.tls]
certificates = [{{ cert_file = "{}", key_file = "{}" }}]

[[routes]]
name = "hello"
[routes.direct]
status = 200
body = "tls\n"
"#,
        preamble(1),
        cert.cert.display(),
        cert.key.display()
    ));
    let h2 = hypergate_tests::tls::curl(gw.addr, "h2.test", "/", pki.ca_cert(), &["--http2"]);
    assert_eq!(h2.status, Some(200), "{}", h2.stderr);
    assert!(h2.stderr.contains("< HTTP/2 200"), "{}", h2.stderr);
    let h1 = hypergate_tests::tls::curl(gw.addr, "h2.test", "/", pki.ca_cert(), &["--http1.1"]);
    assert!(h1.stderr.contains("< HTTP/1.1 200"), "{}", h1.stderr);
}

#[test]
fn h2_and_h2c_are_refused_where_they_cannot_work() {
    let dir = hypergate_tests::TempDir::new();
    let path = dir.write(
        "bad.toml",
        r#"
[[listeners]]
name = "plain"
address = "127.0.0.1:0"
protocols = ["http1", "h2"]
[[routes]]
name = "hello"
[routes.direct]
status = 200
"#,
    );
    let (status, stdout, stderr) =
        hypergate_tests::process::run_cli(&["check", "--config", path.to_str().unwrap()]);
    assert!(!status.success());
    let text = format!("{stdout}{stderr}");
    assert!(
        text.contains("listeners[0].protocols: \"h2\" is negotiated by TLS ALPN"),
        "{text}"
    );
}

/// A consumer holding [`KEY`], and API-key authentication by `x-api-key`.
fn key_holder() -> String {
    format!(
        "[[consumers]]\nname = \"holder\"\napi_keys = [\"{}\"]\n\n[auth.api_key]\nheader = \"x-api-key\"\n",
        hypergate::auth::hash_key(KEY)
    )
}

/// The attacked gateway survived: a second client is served within 3 s,
/// and the process grew by less than `limit_kib` since it measured `rss_kib`.
fn survived(gw: &GatewayProcess, rss_kib: u64, limit_kib: u64) {
    let started = Instant::now();
    let (status, ..) = curl(gw.addr, "/hello", &[]);
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let grown = h2raw::rss_kib_of(gw.pid()).saturating_sub(rss_kib);
    assert!(grown < limit_kib, "RSS grew by {grown} KiB");
}

#[test]
fn rapid_reset_is_bounded() {
    let up = MockUpstream::start(|_| Reply::ok("slow").latency(Duration::from_millis(50)).into());
    let _serial = one_attack_at_a_time();
    let gw = attacked(&up, "");
    let rss = h2raw::rss_kib_of(gw.pid());
    let mut c = H2Raw::connect(gw.addr, None);
    let mut sent = 0u32;
    let mut closed = false;
    // 20,000 streams, each reset as soon as it is opened, in batches.
    'attack: for batch in 0..200u32 {
        let mut bytes = Vec::new();
        for i in 0..100u32 {
            let id = (batch * 100 + i) * 2 + 1;
            bytes.extend(H2Raw::encode(
                kind::HEADERS,
                END_HEADERS | END_STREAM,
                id,
                &h2raw::get_block("/upstream"),
            ));
            bytes.extend(H2Raw::encode(kind::RST_STREAM, 0, id, &8u32.to_be_bytes()));
        }
        if !c.send_raw(&bytes) {
            closed = true;
            break 'attack;
        }
        sent += 100;
    }
    let frames = c.read_until(Duration::from_secs(5), |f| f.kind == kind::GOAWAY);
    let goaway = frames.iter().any(|f| f.kind == kind::GOAWAY);
    assert!(
        closed || goaway,
        "the attacker was cut off ({sent} streams sent)"
    );
    // Work reached the upstream only for streams inside the limits.
    assert!(
        up.request_count() < 2_000,
        "{} upstream requests for {sent} reset streams",
        up.request_count()
    );
    survived(&gw, rss, 64 * 1024);
}

#[test]
fn continuation_flood_is_cut_off() {
    let up = MockUpstream::ok("x");
    let _serial = one_attack_at_a_time();
    let gw = attacked(&up, "");
    let rss = h2raw::rss_kib_of(gw.pid());
    let mut c = H2Raw::connect(gw.addr, None);
    assert!(c.frame(kind::HEADERS, END_STREAM, 1, &h2raw::get_block("/hello")));
    // Up to 64 MiB of CONTINUATION frames that never end the header block.
    let junk = {
        let mut b = Vec::new();
        for i in 0..1000 {
            h2raw::literal(&mut b, 1, format!("{i:015}").as_bytes());
        }
        b.truncate(16 * 1024);
        b
    };
    let mut sent = 0usize;
    for _ in 0..4096 {
        if !c.frame(kind::CONTINUATION, 0, 1, &junk) {
            break;
        }
        sent += junk.len();
    }
    let frames = c.read_until(Duration::from_secs(5), |f| f.kind == kind::GOAWAY);
    assert!(
        sent < 64 << 20 || frames.iter().any(|f| f.kind == kind::GOAWAY),
        "the flood was taken whole ({sent} bytes) without a GOAWAY"
    );
    assert!(
        !frames.iter().any(|f| f.kind == kind::HEADERS),
        "no response to an endless header block"
    );
    survived(&gw, rss, 64 * 1024);
}

#[test]
fn hpack_bomb_is_refused() {
    let up = MockUpstream::ok("x");
    let _serial = one_attack_at_a_time();
    let gw = attacked(&up, "");
    let rss = h2raw::rss_kib_of(gw.pid());
    let mut c = H2Raw::connect(gw.addr, None);
    // One 4,000-byte header put in the dynamic table, then referenced 4,000
    // times: a 4 KB block that decodes to 16 MB of headers.
    let mut block = h2raw::get_block("/hello");
    block.push(0x40);
    h2raw::length(&mut block, 1);
    block.push(b'x');
    h2raw::length(&mut block, 4000);
    block.extend(std::iter::repeat_n(b'a', 4000));
    block.extend(std::iter::repeat_n(0xbe, 4000));
    let mut first = true;
    for piece in block.chunks(16 * 1024) {
        let (kind, flags) = if first {
            (kind::HEADERS, END_STREAM)
        } else {
            (kind::CONTINUATION, 0)
        };
        first = false;
        c.frame(kind, flags, 1, piece);
    }
    c.frame(kind::CONTINUATION, END_HEADERS, 1, &[]);
    let frames = c.read_until(Duration::from_secs(5), |f| {
        f.kind == kind::GOAWAY || f.kind == kind::RST_STREAM || f.kind == kind::HEADERS
    });
    let answered_ok = frames
        .iter()
        .any(|f| f.kind == kind::HEADERS && f.payload.first() == Some(&0x88));
    assert!(!answered_ok, "a 16 MB header list was accepted: {frames:?}");
    assert_eq!(up.request_count(), 0);
    survived(&gw, rss, 64 * 1024);
}

#[test]
fn ten_thousand_streams_on_one_connection() {
    let up = MockUpstream::ok("x");
    let _serial = one_attack_at_a_time();
    let gw = attacked(&up, "");
    let rss = h2raw::rss_kib_of(gw.pid());
    // A client that ignores SETTINGS_MAX_CONCURRENT_STREAMS: 10,000 streams at once.
    let mut c = H2Raw::connect(gw.addr, None);
    let mut bytes = Vec::new();
    for i in 0..10_000u32 {
        bytes.extend(H2Raw::encode(
            kind::HEADERS,
            END_HEADERS | END_STREAM,
            i * 2 + 1,
            &h2raw::get_block("/hello"),
        ));
    }
    let _ = c.send_raw(&bytes);
    let (mut answered, mut refused) = (0, 0);
    c.read_until(Duration::from_secs(10), |f| {
        match f.kind {
            kind::HEADERS => answered += 1,
            kind::RST_STREAM => refused += 1,
            _ => {}
        }
        f.kind == kind::GOAWAY || answered + refused == 10_000
    });
    assert!(answered >= 128, "answered {answered}, refused {refused}");
    survived(&gw, rss, 64 * 1024);
    // A well-behaved client (h2load) gets every one of 10,000 streams answered.
    let out = Command::new("h2load")
        .args([
            "-n",
            "10000",
            "-c",
            "1",
            "-m",
            "10000",
            &format!("http://{}/hello", gw.addr),
        ])
        .output()
        .expect("run h2load (apt install nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("10000 succeeded, 0 failed"), "{text}");
}

#[test]
fn a_slow_reader_of_a_large_response_holds_little() {
    let up = MockUpstream::start(|_| Reply::ok("").pattern(7, 32 << 20).into());
    let _serial = one_attack_at_a_time();
    let gw = attacked(&up, "send_timeout = \"2s\"");
    let rss = h2raw::rss_kib_of(gw.pid());
    // A 32 MiB answer to a client whose window never reopens after 64 KiB.
    let mut c = H2Raw::connect(gw.addr, None);
    assert!(c.frame(
        kind::HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &h2raw::get_block("/big")
    ));
    let frames = c.read_until(Duration::from_secs(1), |_| false);
    let got: usize = frames
        .iter()
        .filter(|f| f.kind == kind::DATA)
        .map(|f| f.payload.len())
        .sum();
    assert!(got <= 65_535, "{got} bytes sent past the client's window");
    // A 32 MiB answer held back by the window.
    survived(&gw, rss, 24 * 1024);
    // After send_timeout, the stream is given up (reset), not held forever.
    let frames = c.read_until(Duration::from_secs(6), |f| f.kind == kind::RST_STREAM);
    assert!(
        frames
            .iter()
            .any(|f| f.kind == kind::RST_STREAM && f.stream == 1),
        "{frames:?}"
    );
}

#[test]
fn drain_sends_goaway() {
    let up = MockUpstream::ok("x");
    let toml = format!(
        "{}protocols = [\"http1\", \"h2c\"]\n{}\n[[routes]]\nname = \"all\"\ncluster = \"backend\"\n",
        // No lame-duck period: the drain starts at once.
        preamble(1).replace("drain_timeout", "drain_delay = \"0s\"\ndrain_timeout"),
        cluster("backend", &[up.addr()], "")
    );
    let mut gw = GatewayProcess::spawn(&toml);
    let mut c = H2Raw::connect(gw.addr, None);
    assert!(c.frame(
        kind::HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &h2raw::get_block("/")
    ));
    let frames = c.read_until(Duration::from_secs(5), |f| {
        f.kind == kind::DATA && f.flags & END_STREAM != 0
    });
    assert!(frames.iter().any(|f| f.kind == kind::HEADERS), "{frames:?}");
    gw.signal(libc::SIGTERM);
    let frames = c.read_until(Duration::from_secs(5), |f| f.kind == kind::GOAWAY);
    assert!(frames.iter().any(|f| f.kind == kind::GOAWAY), "{frames:?}");
    let status = gw.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(status.success());
}

#[test]
fn llm_streams_and_large_bodies_cross_the_bridge_intact() {
    // A streamed LLM answer (SSE, chunked on HTTP/1.1) arrives event by event
    // as DATA frames, and a 32 MiB answer arrives byte for byte.
    let llm = hypergate_mock_llm::MockLlm::start(
        "127.0.0.1:0",
        hypergate_mock_llm::MockConfig {
            require_auth: false,
            ..Default::default()
        },
    )
    .expect("mock LLM");
    let up = MockUpstream::start(|_| Reply::ok("").pattern(11, 32 << 20).into());
    let gw = TestGateway::start(&format!(
        r#"{}protocols = ["http1", "h2c"]
{}
[[ai.providers]]
name = "p"
kind = "openai"
base_url = "http://{}/v1"
[[ai.models]]
alias = "demo"
targets = [{{ provider = "p", model = "m" }}]

[[routes]]
name = "llm"
[routes.match]
path_prefix = "/v1"
[routes.ai]

[[routes]]
name = "big"
cluster = "backend"
"#,
        preamble(1),
        cluster("backend", &[up.addr()], ""),
        llm.addr()
    ));
    let body =
        r#"{"model":"demo","stream":true,"messages":[{"role":"user","content":"one two three"}]}"#;
    let (status, version, text) = curl(
        gw.addr,
        "/v1/chat/completions",
        &["-H", "content-type: application/json", "--data", body],
    );
    assert_eq!((status, version.as_str()), (200, "2"), "{text}");
    let deltas: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(deltas, "Mock reply to: one two three");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let out = Command::new("curl")
        .args(["-s", "--http2-prior-knowledge", "--max-time", "30"])
        .arg(format!("http://{}/big", gw.addr))
        .output()
        .expect("curl");
    assert_eq!(out.stdout.len(), 32 << 20);
    assert_eq!(
        hypergate_tests::body::Fingerprint::of(&out.stdout),
        hypergate_tests::body::Pattern::new(11, 32 << 20).fingerprint()
    );
}

#[test]
fn gateway_errors_reach_grpc_clients_as_grpc_statuses() {
    let closed = hypergate_tests::util::closed_port();
    let up = MockUpstream::ok("x");
    let gw = TestGateway::start(&format!(
        r#"{preamble}protocols = ["http1", "h2c"]
{backend}{down}
{key_holder}
[[routes]]
name = "health"
cluster = "backend"
[routes.match]
path_prefix = "/grpc.health.v1.Health/"
[routes.policy]
auth = ["api_key"]

[[routes]]
name = "down"
cluster = "down"
[routes.match]
path_prefix = "/down.Service/"
"#,
        preamble = preamble(1),
        backend = cluster("backend", &[up.addr()], ""),
        down = cluster("down", &[closed], ""),
        key_holder = key_holder(),
    ));
    let out = hypergate_tests::python::run_script("grpc_errors.py", gw.addr, &[]);
    assert_eq!(out["unauthenticated"]["code"], "UNAUTHENTICATED", "{out}");
    assert_eq!(out["unrouted"]["code"], "UNIMPLEMENTED", "{out}");
    assert_eq!(out["down"]["code"], "UNAVAILABLE", "{out}");
    assert!(
        out["down"]["details"].as_str().unwrap().contains("connect"),
        "{out}"
    );
    assert_eq!(up.request_count(), 0);
}

/// HTTP/1.1 clients to an HTTP/2 upstream and back: a gateway with an
/// `h2c` cluster in front of a second gateway that serves h2c (a real
/// HTTP/2 server) in front of an HTTP/1.1 mock. Statuses, headers, sized and
/// chunked request bodies, a large response, HEAD, many requests on few
/// upstream connections.
#[test]
fn http1_clients_through_an_h2c_cluster() {
    use hypergate_tests::body::{Fingerprint, Pattern};
    use hypergate_tests::client::{Conn, Request};
    let origin = MockUpstream::start(|req| match req.path() {
        "/big" => Reply::ok("").pattern(7, 8 << 20).into(),
        "/missing" => Reply::status(404).body("no such thing").into(),
        _ => Reply::ok("").echo().header("x-origin", "yes").into(),
    });
    let inner = TestGateway::start(&format!(
        "{}protocols = [\"h2c\"]\n{}",
        preamble(1),
        cluster("origin", &[origin.addr()], "")
            + "\n[[routes]]\nname = \"all\"\ncluster = \"origin\"\n"
    ));
    let outer = TestGateway::start(&format!(
        "{}{}",
        preamble(1),
        cluster(
            "inner",
            &[inner.addr],
            "protocol = \"h2c\"\n[clusters.pool]\nmax_streams = 8\n"
        ) + "\n[[routes]]\nname = \"all\"\ncluster = \"inner\"\n"
    ));
    let mut c = Conn::connect(outer.addr);
    let r = c.request(&Request::get("/missing"));
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), "no such thing");
    let mut body = vec![0u8; 1 << 20];
    Pattern::new(3, 1 << 20).fill(&mut body);
    let r = c.request(&Request::post("/echo", body.clone()));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-origin"), Some("yes"));
    assert_eq!(r.body, body, "a sized body through HTTP/2 and back");
    let r = c.request(&Request::post("/echo", body.clone()).chunked(10_000));
    assert_eq!(r.body, body, "a chunked body through HTTP/2 and back");
    let r = c.request(&Request::get("/big"));
    assert_eq!(r.body.len(), 8 << 20);
    assert_eq!(
        Fingerprint::of(&r.body),
        Pattern::new(7, 8 << 20).fingerprint()
    );
    let r = c.request(&Request::new("HEAD", "/big"));
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    // 40 requests from 8 clients at once: multiplexed on the inner
    // gateway's few HTTP/2 connections (at most 8 streams each).
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let addr = outer.addr;
            std::thread::spawn(move || {
                let mut c = Conn::connect(addr);
                for _ in 0..5 {
                    assert_eq!(c.request(&Request::get("/missing")).status, 404);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let served = inner
        .metrics()
        .lines()
        .find_map(|l| l.strip_prefix("hypergate_h2_events_total{event=\"connections\"} "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap();
    assert!(
        (1..=8).contains(&served),
        "{served} HTTP/2 connections for 45 requests"
    );
}
