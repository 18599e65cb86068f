//! The admin listener's defences over real sockets: DNS rebinding (`Host`),
//! cross-site mutations (`Origin`, `Sec-Fetch-Site`), `admin.allowed_hosts`, the
//! bearer token, the rule that an admin off loopback needs a token, and the
//! listener's own bounds (64 connections, 10 s to receive a request).
//!
//! Test gateways bind the admin to `127.0.0.2:0`, so "its own address" and
//! "a loopback address" are both exercised by `Host: 127.0.0.2:<port>`.

use hypergate_tests::gateway::{admin_send, metric_value};
use hypergate_tests::{preamble, wait_until, Conn, Request, Response, TestGateway};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// One shard, a direct route answering `body`, and `admin` lines added to `[admin]`.
fn config(body: &str, admin: &str) -> String {
    let preamble = preamble(1);
    let listen = "listen = \"127.0.0.2:0\"\n";
    assert!(preamble.contains(listen));
    format!(
        "{}\n[[routes]]\nname = \"hello\"\n[routes.direct]\nbody = \"{body}\"\n",
        preamble.replace(listen, &format!("{listen}{admin}\n"))
    )
}

fn send(gw: &TestGateway, req: Request) -> Response {
    admin_send(gw.admin, &req)
}

fn assert_json_error(r: &Response, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"), "{what}");
    assert!(r.json()["error"].is_string(), "{what}: {}", r.text());
}

fn reloads_ok(gw: &TestGateway) -> f64 {
    let r = send(
        gw,
        Request::get("/metrics").header("Authorization", "Bearer t0ken-for-tests"),
    );
    metric_value(&r.text(), "hypergate_config_reloads_total")
}

#[test]
fn dns_rebinding_requests_are_refused_and_change_nothing() {
    let gw = TestGateway::start(&config("v1", ""));
    // A page on attacker.example, re-resolved to the admin address, sends its own name.
    for host in [
        "attacker.example",
        "attacker.example:9901",
        &format!("attacker.example:{}", gw.admin.port()),
        "127.0.0.1.attacker.example",
        "localhost.attacker.example",
    ] {
        let r = send(&gw, Request::get("/config").header("Host", host));
        assert_json_error(&r, 403, host);
        assert!(!r.text().contains("routes"), "config leaked: {}", r.text());
    }
    gw.write_config(&config("v2", ""));
    let r = send(
        &gw,
        Request::post("/reload", "").header("Host", "attacker.example"),
    );
    assert_json_error(&r, 403, "rebound reload");
    assert_eq!(gw.get("/").text(), "v1", "the refused reload was applied");
    assert_eq!(gw.metric("hypergate_config_reloads_total"), 0.0);
    assert_eq!(gw.metric("hypergate_config_reloads_failed_total"), 0.0);

    // The admin's own names are accepted, with or without port.
    for host in [
        gw.admin.to_string(),
        "127.0.0.2".into(),
        "127.0.0.1:9901".into(),
        "[::1]".into(),
        "[::1]:9901".into(),
        "localhost".into(),
        format!("localhost:{}", gw.admin.port()),
    ] {
        let r = send(&gw, Request::get("/healthz").header("Host", &host));
        assert_eq!(r.status, 200, "{host}: {}", r.text());
    }
    // Two Host headers are refused; none at all is served to a loopback client.
    let r = send(
        &gw,
        Request::get("/healthz")
            .header("Host", "127.0.0.1")
            .header("Host", "attacker.example"),
    );
    assert_json_error(&r, 400, "two Host headers");
    let r = Conn::connect(gw.admin).request(&Request::get("/config").http10());
    assert_eq!(r.status, 200, "HTTP/1.0 without Host from loopback");
    assert!(r.json()["routes"].is_array());

    // A legitimate reload goes through.
    let r = send(&gw, Request::post("/reload", ""));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(gw.get("/").text(), "v2");
}

#[test]
fn cross_site_mutations_are_refused() {
    let gw = TestGateway::start(&config("v1", ""));
    gw.write_config(&config("v2", ""));
    let own_origin = format!("http://{}", gw.admin);
    for (name, value) in [
        ("Origin", "http://evil.example"),
        ("Origin", "https://evil.example:443"),
        ("Origin", "http://127.0.0.1.evil.example"),
        ("Origin", "null"),
        ("Sec-Fetch-Site", "cross-site"),
        ("Sec-Fetch-Site", "same-site"),
    ] {
        let r = send(&gw, Request::post("/reload", "").header(name, value));
        assert_json_error(&r, 403, &format!("{name}: {value}"));
    }
    // Own origin but a cross-site fetch: still refused.
    let r = send(
        &gw,
        Request::post("/reload", "")
            .header("Origin", &own_origin)
            .header("Sec-Fetch-Site", "cross-site"),
    );
    assert_json_error(&r, 403, "cross-site fetch with own origin");
    assert_eq!(gw.get("/").text(), "v1", "a refused reload was applied");
    assert_eq!(gw.metric("hypergate_config_reloads_total"), 0.0);

    // The rule is the router's: every mutating method on every path.
    let window = r#"{"name": "w", "route": "hello", "sustain": "1h"}"#;
    let r = send(
        &gw,
        Request::post("/hypercare/windows", window).header("Origin", "http://evil.example"),
    );
    assert_json_error(&r, 403, "cross-site window");
    let windows = gw.admin_request("GET", "/hypercare/windows").text();
    assert!(
        !windows.contains("\"w\""),
        "the refused window was opened: {windows}"
    );
    let r = send(&gw, Request::post("/hypercare/windows", window));
    assert_eq!(r.status, 201, "{}", r.text());
    for method in ["PUT", "DELETE", "PATCH"] {
        let r = send(
            &gw,
            Request::new(method, "/anything").header("Sec-Fetch-Site", "cross-site"),
        );
        assert_json_error(&r, 403, method);
        assert_eq!(send(&gw, Request::new(method, "/anything")).status, 404);
    }
    // Reads are not mutations (the Host rule still applies to them).
    let r = send(
        &gw,
        Request::get("/stats")
            .header("Origin", "http://evil.example")
            .header("Sec-Fetch-Site", "cross-site"),
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // The same reload without the cross-site headers is applied...
    let r = send(&gw, Request::post("/reload", ""));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(gw.get("/").text(), "v2");
    // ... and so is one from the dashboard's own origin.
    gw.write_config(&config("v3", ""));
    let r = send(
        &gw,
        Request::post("/reload", "")
            .header("Origin", &own_origin)
            .header("Sec-Fetch-Site", "same-origin"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(gw.get("/").text(), "v3");
    assert_eq!(gw.metric("hypergate_config_reloads_total"), 2.0);
}

#[test]
fn allowed_hosts_are_accepted_in_host_and_origin() {
    let admin = "allowed_hosts = [\"admin.internal\", \"gw-admin.example.com\"]";
    let gw = TestGateway::start(&config("v1", admin));
    for host in [
        "admin.internal",
        "admin.internal:9901",
        "ADMIN.Internal",
        "gw-admin.example.com.",
    ] {
        let r = send(&gw, Request::get("/config").header("Host", host));
        assert_eq!(r.status, 200, "{host}: {}", r.text());
        assert_eq!(r.json()["admin"]["allowed_hosts"][0], "admin.internal");
    }
    for host in ["other.internal", "internal", "x.admin.internal"] {
        let r = send(&gw, Request::get("/config").header("Host", host));
        assert_json_error(&r, 403, host);
    }
    gw.write_config(&config("v2", admin));
    let r = send(
        &gw,
        Request::post("/reload", "")
            .header("Host", "admin.internal:8443")
            .header("Origin", "https://admin.internal:8443"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(gw.get("/").text(), "v2");
    let r = send(
        &gw,
        Request::post("/reload", "")
            .header("Host", "admin.internal")
            .header("Origin", "https://other.internal"),
    );
    assert_json_error(&r, 403, "origin not allowed");
}

#[test]
fn token_is_required_except_for_health_checks() {
    std::env::set_var("HYPERGATE_TEST_ADMIN_TOKEN", "t0ken-for-tests");
    let gw = TestGateway::start(&config("v1", "token = \"${HYPERGATE_TEST_ADMIN_TOKEN}\""));
    let bearer = "Bearer t0ken-for-tests";
    for (method, path) in [
        ("GET", "/config"),
        ("GET", "/metrics"),
        ("GET", "/stats"),
        ("GET", "/hypercare/alerts"),
        ("POST", "/reload"),
        ("GET", "/nope"),
    ] {
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Bearer t0ken-for-test"),
            Some("Basic t0ken-for-tests"),
        ] {
            let mut req = Request::new(method, path);
            if let Some(a) = auth {
                req = req.header("Authorization", a);
            }
            let r = send(&gw, req);
            assert_json_error(&r, 401, &format!("{method} {path} {auth:?}"));
            assert_eq!(
                r.header("www-authenticate"),
                Some("Bearer realm=\"hypergate-admin\""),
                "{method} {path}"
            );
        }
    }
    let r = send(&gw, Request::get("/config").header("Authorization", bearer));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["admin"]["token"], "<redacted>");
    assert!(
        !r.text().contains("t0ken"),
        "the token leaked: {}",
        r.text()
    );
    let r = send(
        &gw,
        Request::get("/metrics").header("Authorization", "bearer t0ken-for-tests"),
    );
    assert_eq!(r.status, 200, "the scheme is case-insensitive");

    // Health checks, and the static dashboard files (which hold no data), are open.
    for path in ["/healthz", "/readyz", "/ui", "/ui/app.js"] {
        let r = send(&gw, Request::get(path));
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }

    // A reload without the token does not happen; with it, it does.
    gw.write_config(&config("v2", "token = \"${HYPERGATE_TEST_ADMIN_TOKEN}\""));
    assert_eq!(send(&gw, Request::post("/reload", "")).status, 401);
    assert_eq!(gw.get("/").text(), "v1");
    assert_eq!(reloads_ok(&gw), 0.0);
    let r = send(
        &gw,
        Request::post("/reload", "").header("Authorization", bearer),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(gw.get("/").text(), "v2");
    assert_eq!(reloads_ok(&gw), 1.0);
    // The Host and Origin rules still apply to a request with the token.
    let r = send(
        &gw,
        Request::get("/config")
            .header("Host", "attacker.example")
            .header("Authorization", bearer),
    );
    assert_json_error(&r, 403, "rebinding with a token");
}

#[test]
fn an_admin_off_loopback_needs_a_token() {
    let text = |listen: &str, admin: &str| {
        format!(
            "[admin]\nlisten = \"{listen}\"\n{admin}\n[[listeners]]\nname = \"main\"\naddress = \"127.0.0.1:0\"\n[[routes]]\nname = \"r\"\n[routes.direct]\n"
        )
    };
    for listen in ["0.0.0.0:9901", "[::]:9901", "192.0.2.10:9901"] {
        let e = hypergate::config::load_str(&text(listen, ""), "t.toml")
            .expect_err("an open admin without a token");
        let issue = e
            .issues
            .iter()
            .find(|i| i.path == "admin.listen")
            .unwrap_or_else(|| panic!("no admin.listen issue: {e}"));
        assert!(issue.reason.contains("not a loopback address"), "{issue:?}");
        assert!(issue.reason.contains("admin.token"), "{issue:?}");
    }
    let ok = text("0.0.0.0:9901", "token = \"a-long-admin-token\"");
    hypergate::config::load_str(&ok, "t.toml").expect("a token makes it acceptable");
    for listen in ["127.0.0.1:9901", "127.0.0.2:0", "[::1]:9901"] {
        hypergate::config::load_str(&text(listen, ""), "t.toml").expect("loopback needs no token");
    }

    let e = hypergate::config::load_str(
        &text(
            "127.0.0.1:0",
            "token = \"${HYPERGATE_TEST_SURELY_UNSET_ADMIN}\"\nallowed_hosts = [\"http://x\", \"x:80\", \"\", \"ok.example\"]",
        ),
        "t.toml",
    )
    .expect_err("bad admin section");
    let paths: Vec<&str> = e.issues.iter().map(|i| i.path.as_str()).collect();
    for want in [
        "admin.token",
        "admin.allowed_hosts[0]",
        "admin.allowed_hosts[1]",
        "admin.allowed_hosts[2]",
    ] {
        assert!(paths.contains(&want), "missing {want}: {paths:?}");
    }
    assert!(!paths.contains(&"admin.allowed_hosts[3]"), "{paths:?}");
    for bad in ["token = \"\"", "token = \"has space\""] {
        let e = hypergate::config::load_str(&text("127.0.0.1:0", bad), "t.toml")
            .expect_err("bad token");
        assert_eq!(e.issues[0].path, "admin.token", "{bad}: {e}");
        assert!(!e.to_string().contains("has space"), "{e}");
    }
}

/// Reads from `s` until the peer closes or resets; returns what arrived.
fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return out,
        }
    }
}

#[test]
fn admin_connections_are_bounded_in_number_and_time() {
    let gw = TestGateway::start(&config("v1", ""));
    let head = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n", gw.admin);
    let started = Instant::now();
    // 63 connections that send part of a head and stall...
    let mut stalled: Vec<TcpStream> = (0..63)
        .map(|_| {
            let mut s = TcpStream::connect(gw.admin).expect("connect");
            s.write_all(head.as_bytes()).expect("send a partial head");
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s
        })
        .collect();
    // ... and one that trickles a header byte every 200 ms: no single read ever
    // waits long, only the total deadline can end it.
    let mut trickle = TcpStream::connect(gw.admin).expect("connect");
    trickle.write_all(head.as_bytes()).unwrap();
    trickle.write_all(b"x-slow: ").unwrap();
    let trickler = std::thread::spawn(move || {
        trickle
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            if trickle.write_all(b"a").is_err() {
                break;
            }
            match trickle.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
            if started.elapsed() > Duration::from_secs(30) {
                break;
            }
        }
        (started.elapsed(), got)
    });

    // The 65th connection is answered 503 and closed at once.
    let mut extra = Conn::connect(gw.admin);
    let r = extra.read_response();
    assert_json_error(&r, 503, "the 65th connection");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refusing took {:?}",
        started.elapsed()
    );

    // The stalled ones are cut at the 10 s deadline, with a 408.
    let mut first = stalled.remove(0);
    let answer = String::from_utf8_lossy(&read_until_closed(&mut first)).into_owned();
    let cut = started.elapsed();
    assert!(
        answer.starts_with("HTTP/1.1 408 "),
        "a stalled request got {answer:?}"
    );
    assert!(
        cut >= Duration::from_secs(9) && cut < Duration::from_secs(14),
        "cut after {cut:?}"
    );
    let (trickle_cut, _) = trickler.join().expect("trickler");
    assert!(
        trickle_cut >= Duration::from_secs(9) && trickle_cut < Duration::from_secs(14),
        "a trickling request was cut after {trickle_cut:?}"
    );
    drop(stalled);

    // With the slots back, the admin answers again.
    wait_until("the admin serves again", Duration::from_secs(5), || {
        Conn::try_connect(gw.admin)
            .ok()
            .and_then(|mut c| {
                c.try_send(format!("{head}Connection: close\r\n\r\n").as_bytes())
                    .ok()?;
                c.try_read_response(false).ok()
            })
            .is_some_and(|r| r.status == 200)
    });
}
