//! Every wait has a deadline: a client (or provider) that sends or reads one byte
//! at a time cannot hold a connection, or the upstream connection behind it,
//! longer than the configured limit. Each test measures the cut against the limit
//! and checks that the upstream connection involved was closed, not pooled.

use hypergate_tests::tls::Pki;
use hypergate_tests::{
    cluster, preamble, route_all, wait_until, Action, Conn, MockUpstream, Reply, Request,
    TestGateway,
};
use std::io::Read;
use std::time::{Duration, Instant};

fn gateway(mock: &MockUpstream, limits: &str) -> TestGateway {
    TestGateway::start(&format!(
        "{}\n[limits]\n{limits}\n{}{}",
        preamble(1),
        cluster("c", &[mock.addr()], ""),
        route_all("all", "c", "")
    ))
}

/// The gateway's next request to the upstream opens a new connection: the one
/// used before was closed, not returned to the pool.
fn assert_next_request_reconnects(gw: &TestGateway, mock: &MockUpstream) {
    let before = mock.accepted();
    let r = gw.get("/after");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(mock.accepted(), before + 1, "a used connection was pooled");
}

#[test]
fn a_stalled_request_body_is_cut_at_the_body_idle_timeout() {
    let mock = MockUpstream::ok("ok");
    let gw = gateway(&mock, "body_idle_timeout = \"300ms\"");
    assert_eq!(gw.get("/warm").status, 200);
    let mut conn = gw.conn();
    let sent = Instant::now();
    // A body larger than what is read whole before forwarding (16 KiB):
    // its head goes upstream at once, and the body streams.
    conn.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n0123456789");
    let r = conn.try_read_response(false).expect("408");
    let took = sent.elapsed();
    assert_eq!(r.status, 408, "{}", r.text());
    assert!(r.text().contains("body_timeout"), "{}", r.text());
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "cut after {took:?}"
    );
    assert!(conn.closed_within(Duration::from_secs(2)));
    wait_until(
        "the upstream saw its request end",
        Duration::from_secs(5),
        || mock.requests().iter().any(|r| r.path() == "/upload"),
    );
    assert!(mock
        .requests()
        .iter()
        .filter(|r| r.path() == "/upload")
        .all(|r| !r.body_complete));
    assert_next_request_reconnects(&gw, &mock);
}

#[test]
fn a_stalled_small_request_body_never_reaches_the_upstream() {
    let mock = MockUpstream::ok("ok");
    let gw = gateway(&mock, "body_idle_timeout = \"300ms\"");
    assert_eq!(gw.get("/warm").status, 200);
    let mut conn = gw.conn();
    // A small body is read whole before the request is forwarded: a client
    // that stops halfway ties up no upstream connection.
    conn.send(b"POST /small HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789");
    let r = conn.try_read_response(false).expect("408");
    assert_eq!(r.status, 408, "{}", r.text());
    assert!(conn.closed_within(Duration::from_secs(2)));
    // The same body sent whole is forwarded, once, intact.
    let mut conn = gw.conn();
    conn.send(b"POST /small HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n01234");
    conn.send(b"56789");
    let r = conn.try_read_response(false).expect("200");
    assert_eq!(r.status, 200, "{}", r.text());
    let seen: Vec<_> = mock
        .requests()
        .into_iter()
        .filter(|r| r.path() == "/small")
        .collect();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].body_complete && seen[0].body == b"0123456789");
}

#[test]
fn a_trickled_request_body_is_cut_at_the_total_body_timeout() {
    let mock = MockUpstream::ok("ok");
    let gw = gateway(
        &mock,
        "body_idle_timeout = \"2s\"\nbody_timeout = \"800ms\"",
    );
    let mut conn = gw.conn();
    let sent = Instant::now();
    conn.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n");
    // One byte every 50 ms: never idle for long, 5 s for the whole body.
    let mut cut = false;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(50));
        if conn.try_send(b"x").is_err() {
            cut = true;
            break;
        }
        if sent.elapsed() > Duration::from_millis(1500) {
            break;
        }
    }
    let r = conn.try_read_response(false).expect("408");
    let took = sent.elapsed();
    assert_eq!(r.status, 408, "{}", r.text());
    assert!(
        took < Duration::from_secs(3),
        "the trickle held the connection for {took:?} (cut while sending: {cut})"
    );
    assert!(mock.requests().iter().all(|r| !r.body_complete));
}

#[test]
fn a_trickled_request_head_is_cut_at_the_header_timeout() {
    let mock = MockUpstream::ok("ok");
    let gw = gateway(&mock, "header_timeout = \"500ms\"");
    let mut conn = gw.conn();
    let sent = Instant::now();
    let head =
        b"GET /slow HTTP/1.1\r\nHost: a\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    for b in head.iter() {
        if conn.try_send(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(40));
        if sent.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    let r = conn.try_read_response(false).expect("408");
    assert_eq!(r.status, 408, "{}", r.text());
    assert!(sent.elapsed() < Duration::from_secs(3));
    assert_eq!(mock.request_count(), 0);
}

#[test]
fn a_client_that_does_not_read_is_cut_at_the_send_timeout() {
    let mock = MockUpstream::start(|r| {
        if r.path() == "/big" {
            Reply::ok("").pattern(7, 256 << 20).into()
        } else {
            Reply::ok("small").into()
        }
    });
    let gw = gateway(&mock, "send_timeout = \"500ms\"");
    assert_eq!(gw.get("/warm").status, 200);
    let mut conn = gw.conn();
    conn.send(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n");
    // Read nothing: the socket buffers fill and the gateway's writes stall.
    let sent = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    // The gateway gave up: draining what it had buffered ends in EOF or a reset
    // well before the 256 MiB body.
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    conn.set_read_timeout(Duration::from_secs(5));
    loop {
        match conn.stream().read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n as u64,
        }
    }
    assert!(
        total < 128 << 20,
        "{total} bytes arrived: the gateway kept writing to a client that did not read"
    );
    assert!(sent.elapsed() < Duration::from_secs(10));
    assert_next_request_reconnects(&gw, &mock);
}

#[test]
fn a_tls_handshake_that_never_starts_is_cut() {
    let pki = Pki::new();
    let cert = pki.issue("localhost", &["localhost"]);
    let mock = MockUpstream::ok("ok");
    let gw = TestGateway::start(&format!(
        r#"
[server]
shards = 1
pin_cores = false
drain_timeout = "2s"

[admin]
listen = "127.0.0.2:0"

[limits]
tls_handshake_timeout = "400ms"

[[listeners]]
name = "tls"
address = "127.0.0.1:0"
[listeners.tls]
certificates = [{{ cert_file = "{}", key_file = "{}" }}]
{}{}"#,
        cert.cert.display(),
        cert.key.display(),
        cluster("c", &[mock.addr()], ""),
        route_all("all", "c", "")
    ));
    let mut conn = Conn::connect(gw.addr);
    let opened = Instant::now();
    assert!(conn.closed_within(Duration::from_secs(3)));
    let took = opened.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "closed after {took:?}"
    );
    wait_until("the timeout is counted", Duration::from_secs(5), || {
        gw.metric("hypergate_tls_handshake_failures_total{reason=\"timeout\"}") == 1.0
    });
}

/// An AI route whose two targets are providers that never answer.
fn hanging_providers(mocks: &[&MockUpstream], provider_timeout: &str, extra: &str) -> String {
    let providers: String = mocks
        .iter()
        .enumerate()
        .map(|(i, m)| {
            format!(
                "\n[[ai.providers]]\nname = \"p{i}\"\nbase_url = \"http://{}/v1\"\napi_key = \"sk-{i}\"\ntimeout = \"{provider_timeout}\"\n",
                m.addr()
            )
        })
        .collect();
    let targets: Vec<String> = (0..mocks.len())
        .map(|i| format!("{{ provider = \"p{i}\", model = \"m\" }}"))
        .collect();
    format!(
        "{}\n[[routes]]\nname = \"llm\"\n{extra}\n[routes.match]\npath_prefix = \"/v1\"\n[routes.ai]\n{providers}\n[[ai.models]]\nalias = \"a\"\ntargets = [{}]\n",
        preamble(1),
        targets.join(", ")
    )
}

fn chat(gw: &TestGateway) -> (hypergate_tests::Response, Duration) {
    let started = Instant::now();
    let r = gw.send(
        &Request::post(
            "/v1/chat/completions",
            r#"{"model":"a","messages":[{"role":"user","content":"hi"}]}"#,
        )
        .header("content-type", "application/json"),
    );
    (r, started.elapsed())
}

#[test]
fn a_provider_timeout_is_not_retried_by_default() {
    let (a, b) = (
        MockUpstream::always(Action::Hang),
        MockUpstream::always(Action::Hang),
    );
    let gw = TestGateway::start(&hanging_providers(&[&a, &b], "300ms", ""));
    let (r, took) = chat(&gw);
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(
        r.json()["error"]["code"],
        "provider_timeout",
        "{}",
        r.text()
    );
    assert_eq!(
        a.request_count() + b.request_count(),
        1,
        "a timed-out call was sent again (it may be billed twice)"
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[test]
fn timeouts_are_retried_when_configured_but_never_past_the_route_deadline() {
    let (a, b) = (
        MockUpstream::always(Action::Hang),
        MockUpstream::always(Action::Hang),
    );
    let gw = TestGateway::start(&format!(
        "{}\n[ai.retry]\non_timeout = true\nmax_attempts = 10\nbackoff = \"10ms\"\n",
        hanging_providers(&[&a, &b], "300ms", "timeout = \"1s\"")
    ));
    let (r, took) = chat(&gw);
    assert_eq!(r.status, 504, "{}", r.text());
    let attempts = a.request_count() + b.request_count();
    assert!(
        (2..=4).contains(&attempts),
        "{attempts} attempts in a 1 s deadline of 300 ms timeouts"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(1800),
        "the call took {took:?} against a 1 s deadline"
    );
    assert!(r.text().contains("deadline"), "{}", r.text());
}

#[test]
fn one_deadline_bounds_a_call_whose_provider_timeout_is_longer() {
    let a = MockUpstream::always(Action::Hang);
    let gw = TestGateway::start(&hanging_providers(&[&a], "30s", "timeout = \"500ms\""));
    let (r, took) = chat(&gw);
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(1500),
        "took {took:?} against a 500 ms route deadline"
    );
}

#[test]
fn a_stalled_ai_request_body_is_408() {
    let a = MockUpstream::always(Action::Hang);
    let gw = TestGateway::start(&format!(
        "{}\n[limits]\nbody_idle_timeout = \"300ms\"\n",
        hanging_providers(&[&a], "5s", "")
    ));
    let mut conn = gw.conn();
    let sent = Instant::now();
    conn.send(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 200\r\n\r\n{\"model\":",
    );
    let r = conn.try_read_response(false).expect("408");
    assert_eq!(r.status, 408, "{}", r.text());
    assert!(sent.elapsed() < Duration::from_secs(3));
    assert_eq!(a.request_count(), 0);
}
