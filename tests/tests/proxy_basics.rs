//! Core proxying: keep-alive reuse, pipelining, `Expect: 100-continue`,
//! HTTP/1.0 clients, and chunked bodies in both directions.

use hypergate_tests::client::Framing;
use hypergate_tests::mock::Request as Seen;
use hypergate_tests::util::assert_bytes_eq;
use hypergate_tests::{
    cluster, preamble, route_all, Action, MockUpstream, Reply, Request, TestGateway,
};
use std::time::Duration;

fn gateway_to(mock: &MockUpstream, shards: usize) -> TestGateway {
    TestGateway::start(&format!(
        "{}{}{}",
        preamble(shards),
        cluster("backend", &[mock.addr()], ""),
        route_all("all", "backend", "")
    ))
}

#[test]
fn sequential_requests_on_one_connection_reuse_one_upstream_connection() {
    let mock = MockUpstream::ok("hi");
    let gw = gateway_to(&mock, 1);
    let mut conn = gw.conn();
    for i in 0..20 {
        let r = conn.request(&Request::get(&format!("/ka/{i}")));
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"hi");
        assert!(!r.says_close(), "request {i} closed the connection");
    }
    assert_eq!(mock.request_count(), 20);
    assert_eq!(mock.accepted(), 1, "the upstream connection was not reused");
}

#[test]
fn upstream_connections_stay_within_one_per_shard_across_client_connections() {
    let mock = MockUpstream::ok("hi");
    let shards = 2;
    let gw = gateway_to(&mock, shards);
    for i in 0..12 {
        // A new client connection each time: SO_REUSEPORT spreads them over shards.
        let mut conn = gw.conn();
        for j in 0..3 {
            let r = conn.request(&Request::get(&format!("/c/{i}/{j}")));
            assert_eq!(r.status, 200);
        }
    }
    assert_eq!(mock.request_count(), 36);
    assert!(
        mock.accepted() <= shards,
        "{} upstream connections for {shards} shards of sequential traffic",
        mock.accepted()
    );
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let mock =
        MockUpstream::start(|req: &Seen| Reply::ok(format!("body of {}", req.target)).into());
    let gw = gateway_to(&mock, 1);
    let mut conn = gw.conn();
    let mut batch = Vec::new();
    for i in 0..8 {
        batch.extend_from_slice(&Request::get(&format!("/p/{i}")).to_bytes());
    }
    batch.extend_from_slice(&Request::post("/p/post", "payload").to_bytes());
    conn.send(&batch);
    for i in 0..8 {
        let r = conn.read_response();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), format!("body of /p/{i}"));
    }
    let r = conn.read_response();
    assert_eq!(r.text(), "body of /p/post");
    let seen: Vec<String> = mock.requests().iter().map(|r| r.target.clone()).collect();
    let mut want: Vec<String> = (0..8).map(|i| format!("/p/{i}")).collect();
    want.push("/p/post".into());
    assert_eq!(seen, want);
    assert_eq!(mock.last().body, b"payload");
}

#[test]
fn expect_100_continue_gets_interim_response_before_the_body_is_sent() {
    let mock = MockUpstream::start(|_| Reply::ok("").echo().into());
    let gw = gateway_to(&mock, 1);
    let mut conn = gw.conn();
    conn.send(
        b"PUT /upload HTTP/1.1\r\nHost: test.local\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n",
    );
    let interim = conn.read_head(false).expect("interim response");
    assert_eq!(
        interim.status,
        100,
        "expected 100 Continue, got {:?}",
        String::from_utf8_lossy(&interim.raw_head)
    );
    conn.send(b"hello world");
    let r = conn.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello world");
    let seen = mock.last();
    assert_eq!(seen.body, b"hello world");
    assert!(seen.body_complete);
    assert!(
        seen.header("expect").is_none(),
        "Expect was forwarded: {seen:?}"
    );
    // The connection stays usable.
    let r = conn.request(&Request::get("/after"));
    assert_eq!(r.status, 200);
}

#[test]
fn http10_client_gets_a_closed_connection_unless_it_asks_for_keep_alive() {
    let mock = MockUpstream::ok("ten");
    let gw = gateway_to(&mock, 1);

    let mut conn = gw.conn();
    conn.send(b"GET /old HTTP/1.0\r\n\r\n");
    let r = conn.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"ten");
    assert!(
        conn.closed_within(Duration::from_secs(5)),
        "HTTP/1.0 connection left open"
    );

    let mut conn = gw.conn();
    for _ in 0..3 {
        let r = conn.request(
            &Request::get("/old")
                .http10()
                .header("Connection", "keep-alive"),
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"ten");
        assert_eq!(
            r.header("connection")
                .map(str::to_ascii_lowercase)
                .as_deref(),
            Some("keep-alive")
        );
    }
    assert!(
        !conn.closed_within(Duration::from_millis(200)),
        "keep-alive 1.0 connection was closed"
    );
}

#[test]
fn chunked_upstream_response_reaches_http10_client_dechunked() {
    let body: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let b = body.clone();
    let mock = MockUpstream::start(move |_| Reply::ok(b.clone()).chunked(333).into());
    let gw = gateway_to(&mock, 1);
    let mut conn = gw.conn();
    conn.send(b"GET /chunky HTTP/1.0\r\n\r\n");
    let r = conn.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.framing,
        Framing::UntilClose,
        "head: {:?}",
        String::from_utf8_lossy(&r.raw_head)
    );
    assert!(r.header("transfer-encoding").is_none());
    assert_bytes_eq(&r.body, &body, "de-chunked body");
}

#[test]
fn chunked_request_and_response_bodies_pass_through_intact() {
    let mock = MockUpstream::start(|_| Reply::ok("").echo().chunked(1000).into());
    let gw = gateway_to(&mock, 1);
    let body: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let mut conn = gw.conn();
    // Chunk extensions and a trailer on the way in.
    let mut raw =
        b"POST /echo HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for (i, c) in body.chunks(4093).enumerate() {
        raw.extend_from_slice(format!("{:x};ext={i}\r\n", c.len()).as_bytes());
        raw.extend_from_slice(c);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\n");
    conn.send(&raw);
    let r = conn.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.framing, Framing::Chunked);
    assert_bytes_eq(&r.body, &body, "chunked echo");
    let seen = mock.last();
    assert!(seen.body_complete);
    assert_bytes_eq(&seen.body, &body, "body seen upstream");
    assert_eq!(seen.header("transfer-encoding"), Some("chunked"));
    assert!(seen.header("content-length").is_none());
    // Same connection, Content-Length upload, chunked echo.
    let r = conn.request(&Request::post("/echo", body.clone()));
    assert_bytes_eq(&r.body, &body, "content-length echo");
}

#[test]
fn head_request_passes_content_length_without_a_body() {
    let mock = MockUpstream::ok("twelve bytes");
    let gw = gateway_to(&mock, 1);
    let mut conn = gw.conn();
    for _ in 0..2 {
        let r = conn.request(&Request::new("HEAD", "/h"));
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-length"), Some("12"));
        assert!(r.body.is_empty());
    }
    let r = conn.request(&Request::get("/h"));
    assert_eq!(r.body, b"twelve bytes");
}

#[test]
fn close_delimited_upstream_response_is_rechunked_for_http11_clients() {
    let mock = MockUpstream::always(Action::Respond(Reply::ok("until the end").until_close()));
    let gw = gateway_to(&mock, 1);
    let mut conn = gw.conn();
    let r = conn.request(&Request::get("/eof"));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"until the end");
    assert_eq!(r.framing, Framing::Chunked);
    let r = conn.request(&Request::get("/eof"));
    assert_eq!(r.body, b"until the end");
}

/// Writes `bytes` in pieces with pauses, so each piece arrives in its own read at
/// the gateway (the pauses shape the traffic; they synchronise nothing). Stops
/// early if the gateway already closed the connection; the response says why.
fn trickle(conn: &mut hypergate_tests::Conn, bytes: &[u8], piece: usize) {
    for p in bytes.chunks(piece) {
        if conn.try_send(p).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(15));
    }
}

#[test]
fn request_head_split_across_reads_is_parsed() {
    let mock = MockUpstream::start(|req: &Seen| Reply::ok(format!("got {}", req.target)).into());
    let gw = gateway_to(&mock, 1);
    let mut conn = gw.conn();
    trickle(
        &mut conn,
        b"GET /split/head?x=1 HTTP/1.1\r\nHost: test.local\r\nX-Long-Header: abcdefghijklmnop\r\n\r\n",
        7,
    );
    let r = conn.read_response();
    assert_eq!(
        r.status,
        200,
        "a head split across reads was rejected: {}",
        r.text()
    );
    assert_eq!(r.text(), "got /split/head?x=1");
}

#[test]
fn chunked_request_body_split_across_reads_is_decoded() {
    let mock = MockUpstream::start(|_| Reply::ok("").echo().into());
    let gw = gateway_to(&mock, 1);
    let mut conn = gw.conn();
    conn.send(
        b"POST /split/body HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    trickle(
        &mut conn,
        b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n",
        3,
    );
    let r = conn.read_response();
    assert_eq!(
        r.status,
        200,
        "a chunked body split across reads was rejected: {}",
        r.text()
    );
    assert_eq!(r.body, b"hello, world");
    assert!(mock.last().body_complete);
}

#[test]
fn content_length_body_split_across_reads_is_forwarded() {
    let mock = MockUpstream::start(|_| Reply::ok("").echo().into());
    let gw = gateway_to(&mock, 1);
    let mut conn = gw.conn();
    conn.send(b"POST /split/cl HTTP/1.1\r\nHost: test.local\r\nContent-Length: 26\r\n\r\n");
    trickle(&mut conn, b"abcdefghijklmnopqrstuvwxyz", 5);
    let r = conn.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, b"abcdefghijklmnopqrstuvwxyz");
}

#[test]
fn upstream_response_split_across_reads_is_relayed() {
    let body: Vec<u8> = (0..3000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let b = body.clone();
    let mock = MockUpstream::start(move |req: &Seen| {
        let reply = Reply::ok(b.clone())
            .header("X-Some-Header", "some value")
            .trickle(97, Duration::from_millis(2));
        if req.path() == "/chunked" {
            reply.chunked(50).into()
        } else {
            reply.into()
        }
    });
    let gw = gateway_to(&mock, 1);
    let mut conn = gw.conn();
    for path in ["/length", "/chunked"] {
        let r = conn.request(&Request::get(path));
        assert_eq!(
            r.status,
            200,
            "{path}: a response split across reads was refused: {}",
            r.text()
        );
        assert_eq!(r.header("x-some-header"), Some("some value"));
        assert_bytes_eq(&r.body, &body, path);
    }
}

#[test]
fn client_connection_close_is_honoured() {
    let mock = MockUpstream::ok("bye");
    let gw = gateway_to(&mock, 1);
    let mut conn = gw.conn();
    let r = conn.request(&Request::get("/bye").header("Connection", "close"));
    assert_eq!(r.status, 200);
    assert!(r.says_close(), "{:?}", r.headers);
    assert!(conn.closed_within(Duration::from_secs(5)));
    // The upstream connection is still pooled for the next client.
    assert_eq!(gw.get("/again").text(), "bye");
    assert_eq!(mock.accepted(), 1);
}

#[test]
fn http10_request_without_host_reaches_the_upstream_with_a_host() {
    let mock = MockUpstream::ok("ten");
    let gw = gateway_to(&mock, 1);
    let mut conn = gw.conn();
    conn.send(b"GET /no-host HTTP/1.0\r\n\r\n");
    assert_eq!(conn.read_response().status, 200);
    let seen = mock.last();
    assert!(
        seen.raw_head.starts_with(b"GET /no-host HTTP/1.1\r\n"),
        "{:?}",
        String::from_utf8_lossy(&seen.raw_head)
    );
    // An HTTP/1.1 request must carry exactly one Host (RFC 9112 section 3.2).
    let hosts = seen.headers_named("host");
    assert!(
        hosts.len() == 1 && !hosts[0].is_empty(),
        "HTTP/1.1 request sent upstream without a Host header: {:?}",
        String::from_utf8_lossy(&seen.raw_head)
    );
}

#[test]
fn empty_post_keeps_its_content_length() {
    let mock = MockUpstream::ok("ok");
    let gw = gateway_to(&mock, 1);
    let r = gw.send(&Request::new("POST", "/empty").header("Content-Length", "0"));
    assert_eq!(r.status, 200);
    let seen = mock.last();
    // Without it many origins answer 411 Length Required to a POST or PUT.
    assert_eq!(
        seen.headers_named("content-length"),
        vec!["0"],
        "Content-Length: 0 was dropped: {:?}",
        String::from_utf8_lossy(&seen.raw_head)
    );
}
