//! Header handling on the way through: hop-by-hop removal, `X-Forwarded-*`,
//! request ids and W3C trace context.

use hypergate_tests::{cluster, preamble, route_all, MockUpstream, Request, TestGateway};

fn gateway_to(mock: &MockUpstream) -> TestGateway {
    TestGateway::start(&format!(
        "{}{}{}",
        preamble(1),
        cluster("backend", &[mock.addr()], ""),
        route_all("all", "backend", "")
    ))
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[test]
fn hop_by_hop_headers_are_not_forwarded() {
    let mock = MockUpstream::ok("ok");
    let gw = gateway_to(&mock);
    let mut conn = gw.conn();
    let r = conn.request(
        &Request::get("/hop")
            .header("Connection", "keep-alive, X-Secret, x-other")
            .header("X-Secret", "do not forward")
            .header("X-Other", "nor this")
            .header("Keep-Alive", "timeout=5")
            .header("TE", "trailers")
            .header("Proxy-Connection", "keep-alive")
            .header("Proxy-Authorization", "Basic Zm9vOmJhcg==")
            .header("Trailer", "X-T")
            .header("X-Kept", "yes"),
    );
    assert_eq!(r.status, 200);
    let seen = mock.last();
    for h in [
        "x-secret",
        "x-other",
        "keep-alive",
        "te",
        "proxy-connection",
        "proxy-authorization",
        "trailer",
    ] {
        assert!(
            seen.header(h).is_none(),
            "{h} reached the upstream: {:?}",
            String::from_utf8_lossy(&seen.raw_head)
        );
    }
    assert!(
        seen.headers_named("connection")
            .iter()
            .all(|v| !v.to_ascii_lowercase().contains("x-secret")),
        "Connection tokens forwarded: {:?}",
        seen.headers
    );
    assert_eq!(seen.header("x-kept"), Some("yes"));
}

#[test]
fn hop_by_hop_response_headers_are_not_returned() {
    let mock = MockUpstream::start(|_| {
        hypergate_tests::Reply::ok("ok")
            .header("Connection", "X-Internal")
            .header("X-Internal", "secret")
            .header("Keep-Alive", "timeout=3")
            .header("X-Public", "fine")
            .into()
    });
    let gw = gateway_to(&mock);
    let r = gw.get("/resp");
    assert_eq!(r.status, 200);
    assert!(r.header("x-internal").is_none(), "{:?}", r.headers);
    assert!(r.header("keep-alive").is_none(), "{:?}", r.headers);
    assert_eq!(r.header("x-public"), Some("fine"));
}

#[test]
fn forwarded_headers_are_added_and_appended() {
    let mock = MockUpstream::ok("ok");
    let gw = gateway_to(&mock);
    let r = gw.send(&Request::get("/fwd").header("Host", "shop.example:8443"));
    assert_eq!(r.status, 200);
    let seen = mock.last();
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("shop.example:8443"));
    assert_eq!(
        seen.header("host"),
        Some("shop.example:8443"),
        "Host must be forwarded unchanged"
    );

    let r = gw.send(
        &Request::get("/fwd")
            .header("X-Forwarded-For", "203.0.113.7")
            .header("X-Forwarded-For", "198.51.100.1, 10.0.0.1")
            .header("X-Forwarded-Proto", "https")
            .header("X-Forwarded-Host", "spoofed.example"),
    );
    assert_eq!(r.status, 200);
    let seen = mock.last();
    assert_eq!(
        seen.headers_named("x-forwarded-for"),
        vec!["203.0.113.7, 198.51.100.1, 10.0.0.1, 127.0.0.1"]
    );
    assert_eq!(seen.headers_named("x-forwarded-proto"), vec!["http"]);
    assert_eq!(seen.headers_named("x-forwarded-host"), vec!["test.local"]);
}

#[test]
fn request_id_is_generated_when_absent_and_kept_when_present() {
    let mock = MockUpstream::ok("ok");
    let gw = gateway_to(&mock);
    let mut conn = gw.conn();

    let r = conn.request(&Request::get("/id"));
    let id = r
        .header("x-request-id")
        .expect("x-request-id returned")
        .to_string();
    assert!(is_hex(&id, 32), "generated id {id:?}");
    assert_eq!(mock.last().headers_named("x-request-id"), vec![id.as_str()]);

    let r2 = conn.request(&Request::get("/id"));
    assert_ne!(
        r2.header("x-request-id"),
        Some(id.as_str()),
        "ids must differ per request"
    );

    let r = conn.request(&Request::get("/id").header("X-Request-Id", "client-chosen-42"));
    assert_eq!(r.header("x-request-id"), Some("client-chosen-42"));
    assert_eq!(
        mock.last().headers_named("x-request-id"),
        vec!["client-chosen-42"]
    );
}

#[test]
fn error_responses_carry_the_request_id() {
    let gw = TestGateway::start(&format!(
        "{}{}\n[[routes]]\nname = \"only\"\ncluster = \"backend\"\n[routes.match]\npath_prefix = \"/only\"\n",
        preamble(1),
        cluster("backend", &[hypergate_tests::util::closed_port()], "")
    ));
    let r = gw.send(&Request::get("/nowhere").header("X-Request-Id", "trace-me"));
    assert_eq!(r.status, 404);
    assert_eq!(r.header("x-request-id"), Some("trace-me"));
    assert_eq!(r.json()["error"]["request_id"], "trace-me");
}

#[test]
fn traceparent_is_continued_with_a_new_span_or_started() {
    let mock = MockUpstream::ok("ok");
    let gw = gateway_to(&mock);
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = gw.send(&Request::get("/trace").header("traceparent", incoming));
    assert_eq!(r.status, 200);
    let seen = mock.last();
    let tp = seen.headers_named("traceparent");
    assert_eq!(tp.len(), 1, "{tp:?}");
    let parts: Vec<&str> = tp[0].split('-').collect();
    assert_eq!(parts.len(), 4, "{tp:?}");
    assert_eq!(parts[0], "00");
    assert_eq!(
        parts[1], "4bf92f3577b34da6a3ce929d0e0e4736",
        "trace id must be kept"
    );
    assert!(is_hex(parts[2], 16));
    assert_ne!(
        parts[2], "00f067aa0ba902b7",
        "the gateway hop needs its own span id"
    );
    assert_eq!(parts[3], "01");

    for absent_or_invalid in [
        None,
        Some("00-zz-bad-01"),
        Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
    ] {
        let mut req = Request::get("/trace");
        if let Some(v) = absent_or_invalid {
            req = req.header("traceparent", v);
        }
        gw.send(&req);
        let seen = mock.last();
        let tp = seen.headers_named("traceparent");
        assert_eq!(tp.len(), 1, "{tp:?}");
        let parts: Vec<&str> = tp[0].split('-').collect();
        assert_eq!(parts.len(), 4, "{tp:?}");
        assert_eq!(parts[0], "00");
        assert!(is_hex(parts[1], 32) && parts[1] != "0".repeat(32), "{tp:?}");
        assert!(is_hex(parts[2], 16) && parts[2] != "0".repeat(16), "{tp:?}");
    }
}
