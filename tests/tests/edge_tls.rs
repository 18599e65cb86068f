//! TLS termination and upstream TLS, checked with real clients (`curl`,
//! `openssl s_client`) and rustls: SNI picks each name's certificate, TLS 1.2
//! and 1.3 both work and `min_version` is enforced, ALPN `http/1.1`,
//! `X-Forwarded-Proto: https` upstream, handshake failures counted by reason,
//! certificates reloaded with the config, and verified TLS to a cluster.

use hypergate_tests::tls::{curl, fingerprint, s_client, served_certificate, Pki, ServerCert};
use hypergate_tests::{cluster, preamble, wait_until, MockUpstream, TestGateway};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One TLS listener (first, so `TestGateway::addr` is it) with `certs` and
/// `min_version`, and a catch-all route to `mock`.
fn tls_config(certs: &[(&ServerCert, &[&str])], min_version: &str, mock: &MockUpstream) -> String {
    let entries: Vec<String> = certs
        .iter()
        .map(|(c, names)| {
            let names: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
            format!(
                "{{ cert_file = \"{}\", key_file = \"{}\", server_names = [{}] }}",
                c.cert.display(),
                c.key.display(),
                names.join(", ")
            )
        })
        .collect();
    format!(
        r#"
[server]
shards = 2
pin_cores = false
drain_timeout = "2s"

[admin]
listen = "127.0.0.2:0"

[[listeners]]
name = "tls"
address = "127.0.0.1:0"
[listeners.tls]
min_version = "{min_version}"
certificates = [
  {}
]
{}
[[routes]]
name = "all"
cluster = "backend"
"#,
        entries.join(",\n  "),
        cluster("backend", &[mock.addr()], "")
    )
}

/// A gateway serving `a.test`, `b.test` and `*.wild.test` from three certificates.
struct SniSetup {
    pki: Pki,
    a: ServerCert,
    b: ServerCert,
    wild: ServerCert,
    mock: MockUpstream,
    gw: TestGateway,
    toml: String,
}

fn sni_setup(min_version: &str) -> SniSetup {
    let pki = Pki::new();
    let a = pki.issue("a", &["a.test"]);
    let b = pki.issue("b", &["b.test"]);
    let wild = pki.issue("wild", &["*.wild.test"]);
    let mock = MockUpstream::start(|req| {
        hypergate_tests::Reply::ok(format!("upstream saw {}", req.path())).into()
    });
    let toml = tls_config(
        &[
            (&a, &["a.test"]),
            (&b, &["b.test"]),
            (&wild, &["*.wild.test"]),
        ],
        min_version,
        &mock,
    );
    let gw = TestGateway::start(&toml);
    SniSetup {
        pki,
        a,
        b,
        wild,
        mock,
        gw,
        toml,
    }
}

fn handshakes_failed(gw: &TestGateway, reason: &str) -> f64 {
    gw.metric(&format!(
        "hypergate_tls_handshake_failures_total{{reason=\"{reason}\"}}"
    ))
}

#[test]
fn sni_serves_each_name_its_own_certificate() {
    let s = sni_setup("1.2");
    let scratch = s.pki.dir();
    let fp_a = fingerprint(&s.a.cert);
    let fp_b = fingerprint(&s.b.cert);
    let fp_wild = fingerprint(&s.wild.cert);
    assert_ne!(fp_a, fp_b);
    for (name, want) in [
        ("a.test", &fp_a),
        ("b.test", &fp_b),
        ("api.wild.test", &fp_wild),
        ("B.TEST", &fp_b),
    ] {
        assert_eq!(
            &served_certificate(s.gw.addr, name, scratch),
            want,
            "certificate served for {name}"
        );
    }
    // No SNI, an unknown name, or a name two labels under the wildcard: the default (first).
    assert_eq!(served_certificate(s.gw.addr, "", scratch), fp_a, "no SNI");
    assert_eq!(
        served_certificate(s.gw.addr, "c.test", scratch),
        fp_a,
        "unknown name"
    );
    assert_eq!(
        served_certificate(s.gw.addr, "x.y.wild.test", scratch),
        fp_a,
        "wildcards cover one label"
    );

    // curl verifies each name against the CA: only the right certificate passes.
    for name in ["a.test", "b.test", "api.wild.test"] {
        let out = curl(s.gw.addr, name, "/hello", s.pki.ca_cert(), &[]);
        assert_eq!(out.exit_code, 0, "curl https://{name}: {}", out.stderr);
        assert_eq!(out.status, Some(200), "{name}");
        assert_eq!(out.body, "upstream saw /hello", "{name}");
    }
    let out = curl(s.gw.addr, "c.test", "/hello", s.pki.ca_cert(), &[]);
    assert_eq!(
        out.exit_code, 60,
        "c.test gets a.test's certificate, which curl rejects: {}",
        out.stderr
    );
    assert!(s.gw.metric("hypergate_tls_handshakes_total") >= 7.0);
}

/// As documented (`CertificateConfig::server_names`, docs/config.md): only the
/// configured `server_names` select a certificate, not the names inside it; a
/// certificate without `server_names` is served only as the default (first).
#[test]
fn only_server_names_select_a_certificate() {
    let pki = Pki::new();
    let a = pki.issue("a", &["a.test"]);
    let b = pki.issue("b", &["b.test", "www.b.test"]);
    let c = pki.issue("c", &["c.test"]);
    let mock = MockUpstream::ok("ok");
    let gw = TestGateway::start(&tls_config(
        &[(&a, &[]), (&b, &[]), (&c, &["c.test"])],
        "1.2",
        &mock,
    ));
    let fp_a = fingerprint(&a.cert);
    for name in ["a.test", "b.test", "www.b.test", "unknown.test"] {
        assert_eq!(
            served_certificate(gw.addr, name, pki.dir()),
            fp_a,
            "{name} gets the default certificate"
        );
    }
    assert_eq!(
        served_certificate(gw.addr, "c.test", pki.dir()),
        fingerprint(&c.cert)
    );
    // b.test's own certificate is never served, so a verifying client fails.
    let out = curl(gw.addr, "b.test", "/", pki.ca_cert(), &[]);
    assert_eq!(out.exit_code, 60, "{}", out.stderr);
    let out = curl(gw.addr, "a.test", "/", pki.ca_cert(), &[]);
    assert_eq!(out.status, Some(200), "{}", out.stderr);
}

#[test]
fn tls_12_and_13_both_work() {
    let s = sni_setup("1.2");
    let hs = s_client(s.gw.addr, "a.test", &["-tls1_2"]);
    assert!(hs.established, "TLS 1.2 handshake:\n{}", hs.output);
    assert_eq!(hs.protocol(), Some("TLSv1.2"), "{}", hs.output);
    let hs = s_client(s.gw.addr, "a.test", &["-tls1_3"]);
    assert!(hs.established, "TLS 1.3 handshake:\n{}", hs.output);
    assert_eq!(hs.protocol(), Some("TLSv1.3"), "{}", hs.output);
    // Whole requests over each version.
    let out = curl(
        s.gw.addr,
        "b.test",
        "/v12",
        s.pki.ca_cert(),
        &["--tlsv1.2", "--tls-max", "1.2"],
    );
    assert_eq!(out.status, Some(200), "{}", out.stderr);
    assert!(out.stderr.contains("TLSv1.2"), "{}", out.stderr);
    let out = curl(s.gw.addr, "b.test", "/v13", s.pki.ca_cert(), &["--tlsv1.3"]);
    assert_eq!(out.status, Some(200), "{}", out.stderr);
    assert!(out.stderr.contains("TLSv1.3"), "{}", out.stderr);
    assert_eq!(s.mock.count_path("/v12"), 1);
    assert_eq!(s.mock.count_path("/v13"), 1);
}

#[test]
fn min_version_13_refuses_a_tls12_only_client() {
    let s = sni_setup("1.3");
    let before = handshakes_failed(&s.gw, "no_shared_version_or_cipher");
    let out = curl(
        s.gw.addr,
        "a.test",
        "/old",
        s.pki.ca_cert(),
        &["--tlsv1.2", "--tls-max", "1.2"],
    );
    assert_eq!(
        out.exit_code, 35,
        "a TLS 1.2-only client must fail the handshake: {}",
        out.stderr
    );
    assert_eq!(out.status, None);
    let hs = s_client(s.gw.addr, "a.test", &["-tls1_2"]);
    assert!(
        !hs.established,
        "TLS 1.2 against min_version 1.3:\n{}",
        hs.output
    );
    wait_until("both refusals are counted", Duration::from_secs(5), || {
        handshakes_failed(&s.gw, "no_shared_version_or_cipher") >= before + 2.0
    });
    let out = curl(s.gw.addr, "a.test", "/new", s.pki.ca_cert(), &["--tlsv1.3"]);
    assert_eq!(out.status, Some(200), "{}", out.stderr);
    assert_eq!(s.mock.count_path("/old"), 0);
}

#[test]
fn alpn_negotiates_http11() {
    let s = sni_setup("1.2");
    for offer in ["http/1.1", "h2,http/1.1"] {
        let hs = s_client(s.gw.addr, "a.test", &["-alpn", offer]);
        assert!(hs.established, "{}", hs.output);
        assert_eq!(
            hs.alpn(),
            Some("http/1.1"),
            "client offered {offer}:\n{}",
            hs.output
        );
    }
    // curl offers h2 first; the gateway settles on HTTP/1.1.
    let out = curl(s.gw.addr, "a.test", "/alpn", s.pki.ca_cert(), &["--http2"]);
    assert_eq!(out.status, Some(200), "{}", out.stderr);
    assert!(
        out.stderr
            .lines()
            .any(|l| l.contains("ALPN") && l.contains("accepted") && l.contains("http/1.1")),
        "{}",
        out.stderr
    );
}

#[test]
fn upstream_sees_x_forwarded_proto_https() {
    let s = sni_setup("1.2");
    let out = curl(
        s.gw.addr,
        "a.test",
        "/proto",
        s.pki.ca_cert(),
        &["-H", "X-Forwarded-Proto: http"],
    );
    assert_eq!(out.status, Some(200), "{}", out.stderr);
    let seen = s.mock.last();
    assert_eq!(
        seen.headers_named("x-forwarded-proto"),
        vec!["https"],
        "{:?}",
        seen.headers
    );
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some(&*format!("a.test:{}", s.gw.addr.port()))
    );
}

/// A rustls client with the test CA: several requests on one TLS connection.
#[test]
fn keep_alive_and_request_bodies_over_tls() {
    let s = sni_setup("1.2");
    s.mock.set_handler(|req| {
        hypergate_tests::Reply::ok("")
            .echo()
            .header("x-path", req.path())
            .into()
    });
    let mut conn = TlsClient::connect(s.gw.addr, "b.test", s.pki.ca_cert());
    for i in 0..5 {
        let body = format!("request body number {i}");
        let (status, head, echoed) = conn.post(&format!("/ka/{i}"), body.as_bytes());
        assert_eq!(status, 200, "{head}");
        assert_eq!(echoed, body.as_bytes());
    }
    let conns: std::collections::HashSet<usize> =
        s.mock.requests().iter().map(|r| r.connection).collect();
    assert_eq!(s.mock.request_count(), 5);
    assert!(
        conns.len() <= 2,
        "upstream keep-alive is used behind TLS too: {conns:?}"
    );
    assert_eq!(s.gw.metric("hypergate_tls_handshakes_total"), 1.0);
}

#[test]
fn handshake_failures_are_counted_by_reason() {
    let s = sni_setup("1.2");
    // Plain HTTP on the TLS port.
    let before = handshakes_failed(&s.gw, "peer_misbehaved");
    let mut plain = TcpStream::connect(s.gw.addr).expect("connect");
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .expect("write");
    let mut answer = Vec::new();
    plain
        .read_to_end(&mut answer)
        .expect("plain HTTP on TLS is answered with an alert and closed");
    assert_eq!(
        answer.first(),
        Some(&0x15),
        "a TLS alert record, not HTTP: {answer:?}"
    );
    wait_until(
        "plain HTTP counted as peer_misbehaved",
        Duration::from_secs(5),
        || handshakes_failed(&s.gw, "peer_misbehaved") == before + 1.0,
    );
    // A client that does not trust the certificate aborts with an alert.
    let before = handshakes_failed(&s.gw, "bad_certificate");
    let untrusted = Pki::new();
    let out = curl(s.gw.addr, "a.test", "/", untrusted.ca_cert(), &[]);
    assert_eq!(out.exit_code, 60, "{}", out.stderr);
    wait_until(
        "an untrusting client counted as bad_certificate",
        Duration::from_secs(5),
        || handshakes_failed(&s.gw, "bad_certificate") == before + 1.0,
    );
    // A client that connects and leaves.
    let before = handshakes_failed(&s.gw, "eof");
    drop(TcpStream::connect(s.gw.addr).expect("connect"));
    wait_until(
        "an immediate close counted as eof",
        Duration::from_secs(5),
        || handshakes_failed(&s.gw, "eof") == before + 1.0,
    );
    assert_eq!(s.mock.request_count(), 0);
    assert_eq!(s.gw.metric("hypergate_tls_handshakes_total"), 0.0);
}

#[test]
fn certificates_reload_with_the_config() {
    let s = sni_setup("1.2");
    let old_a = fingerprint(&s.a.cert);
    let old_b = fingerprint(&s.b.cert);
    assert_eq!(served_certificate(s.gw.addr, "a.test", s.pki.dir()), old_a);
    // Renew a.test in place (same file names, new key), then reload the unchanged config.
    let renewed = s.pki.issue("a", &["a.test"]);
    assert_eq!(renewed.cert, s.a.cert);
    let new_a = fingerprint(&renewed.cert);
    assert_ne!(new_a, old_a);
    assert_eq!(
        served_certificate(s.gw.addr, "a.test", s.pki.dir()),
        old_a,
        "certificates are read at config load, not per handshake"
    );
    let r = s.gw.reload(&s.toml);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        served_certificate(s.gw.addr, "a.test", s.pki.dir()),
        new_a,
        "renewed certificate after reload"
    );
    assert_eq!(served_certificate(s.gw.addr, "b.test", s.pki.dir()), old_b);
    let out = curl(s.gw.addr, "a.test", "/after-reload", s.pki.ca_cert(), &[]);
    assert_eq!(out.status, Some(200), "{}", out.stderr);

    // A new name added by reload.
    let c = s.pki.issue("c", &["c.test"]);
    let more = tls_config(
        &[
            (&renewed, &["a.test"]),
            (&s.b, &["b.test"]),
            (&s.wild, &["*.wild.test"]),
            (&c, &["c.test"]),
        ],
        "1.2",
        &s.mock,
    );
    let r = s.gw.reload(&more);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        served_certificate(s.gw.addr, "c.test", s.pki.dir()),
        fingerprint(&c.cert)
    );

    // A broken key file is refused, naming the field; the running certificates stay.
    std::fs::write(
        &c.key,
        "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
    )
    .expect("break key");
    let r = s.gw.reload(&more);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("key_file"), "{}", r.text());
    assert_eq!(
        served_certificate(s.gw.addr, "c.test", s.pki.dir()),
        fingerprint(&c.cert)
    );
    let out = curl(s.gw.addr, "c.test", "/still", s.pki.ca_cert(), &[]);
    assert_eq!(out.status, Some(200), "{}", out.stderr);
}

/// A client that connects and never sends a ClientHello is cut off after
/// `limits.header_timeout` and counted as `timeout`.
#[test]
fn a_silent_client_times_out_the_handshake() {
    let pki = Pki::new();
    let a = pki.issue("a", &["a.test"]);
    let mock = MockUpstream::ok("ok");
    let toml = tls_config(&[(&a, &["a.test"])], "1.2", &mock).replacen(
        "[admin]",
        "[limits]\ntls_handshake_timeout = \"300ms\"\n\n[admin]",
        1,
    );
    let gw = TestGateway::start(&toml);
    let mut silent = TcpStream::connect(gw.addr).expect("connect");
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = silent.read_to_end(&mut rest);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "a silent TLS client was not cut off"
    );
    wait_until(
        "the silent client counted as timeout",
        Duration::from_secs(5),
        || handshakes_failed(&gw, "timeout") == 1.0,
    );
}

/// Over `protection.max_connections`, a TLS listener must not answer in
/// plaintext: a TLS client would read `HTTP/1.1 503` as a broken record
/// ("wrong version number"). It should answer the 503 over TLS, or just close.
#[test]
fn connection_cap_on_a_tls_listener_does_not_answer_in_plaintext() {
    let pki = Pki::new();
    let a = pki.issue("a", &["a.test"]);
    let mock = MockUpstream::ok("ok");
    let toml = tls_config(&[(&a, &["a.test"])], "1.2", &mock).replacen(
        "[admin]",
        "[protection]\nmax_connections = 1\n\n[admin]",
        1,
    );
    let gw = TestGateway::start(&toml);
    let mut held = TlsClient::connect(gw.addr, "a.test", pki.ca_cert());
    let (status, head, _) = held.post("/held", b"x");
    assert_eq!(status, 200, "{head}");

    let mut raw = TcpStream::connect(gw.addr).expect("connect");
    raw.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut first = Vec::new();
    let _ = raw.read_to_end(&mut first);
    assert!(
        !first.starts_with(b"HTTP/"),
        "plaintext HTTP on a TLS port: {:?}",
        String::from_utf8_lossy(&first)
    );
    let out = curl(gw.addr, "a.test", "/over-cap", pki.ca_cert(), &[]);
    assert!(
        out.status == Some(503) || !out.stderr.contains("wrong version number"),
        "curl over the cap: exit {} {}",
        out.exit_code,
        out.stderr
    );
    assert_eq!(
        gw.metric(
            r#"hypergate_edge_rejections_total{phase="connection",reason="max_connections"}"#
        ),
        2.0
    );
}

// ---------------------------------------------------------------------------
// Upstream TLS

/// A minimal HTTPS origin (rustls, blocking): answers every request with
/// `200 over-tls-ok` on a keep-alive connection and records request heads.
struct TlsUpstream {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    handshakes: Arc<Mutex<usize>>,
    stop: Arc<AtomicBool>,
}

impl TlsUpstream {
    fn start(cert: &ServerCert) -> TlsUpstream {
        let chain = load_certs(&cert.cert);
        let key =
            rustls_pemfile::private_key(&mut std::fs::read(&cert.key).expect("key").as_slice())
                .expect("parse key")
                .expect("a key");
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server cert"),
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let heads = Arc::new(Mutex::new(Vec::new()));
        let handshakes = Arc::new(Mutex::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, n, st) = (heads.clone(), handshakes.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let (config, h, n) = (config.clone(), h.clone(), n.clone());
                std::thread::spawn(move || {
                    let _ = serve_tls_origin(stream, config, &h, &n);
                });
            }
        });
        TlsUpstream {
            addr,
            heads,
            handshakes,
            stop,
        }
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve_tls_origin(
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    heads: &Mutex<Vec<String>>,
    handshakes: &Mutex<usize>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let conn = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, stream);
    let mut buf = Vec::new();
    let mut counted = false;
    loop {
        let mut chunk = [0u8; 4096];
        let n = tls.read(&mut chunk)?;
        if !counted && !tls.conn.is_handshaking() {
            counted = true;
            *handshakes.lock().unwrap() += 1;
        }
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            heads.lock().unwrap().push(head);
            tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nover-tls-ok")?;
            tls.flush()?;
        }
    }
}

fn load_certs(path: &Path) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    rustls_pemfile::certs(&mut std::fs::read(path).expect("read certs").as_slice())
        .collect::<Result<_, _>>()
        .expect("parse certs")
}

fn upstream_tls_config(up: &TlsUpstream, ca: &Path, server_name: &str) -> String {
    format!(
        r#"{}
{}
[[routes]]
name = "all"
cluster = "secure"
"#,
        preamble(1),
        cluster(
            "secure",
            &[up.addr],
            &format!(
                "tls = {{ ca_file = \"{}\", server_name = \"{server_name}\" }}",
                ca.display()
            )
        )
    )
}

#[test]
fn upstream_tls_is_verified_against_the_ca_and_server_name() {
    let pki = Pki::new();
    let cert = pki.issue("upstream", &["upstream.test"]);
    let up = TlsUpstream::start(&cert);
    let gw = TestGateway::start(&upstream_tls_config(&up, pki.ca_cert(), "upstream.test"));
    let mut conn = gw.conn();
    for i in 0..3 {
        let r = conn.request(&hypergate_tests::Request::get(&format!("/secure/{i}")));
        assert_eq!(r.status, 200, "request {i} over upstream TLS: {}", r.text());
        assert_eq!(r.text(), "over-tls-ok");
    }
    let heads = up.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 3, "{heads:?}");
    assert!(heads[0].starts_with("GET /secure/0 HTTP/1.1"), "{heads:?}");
    assert!(
        heads[0]
            .to_ascii_lowercase()
            .contains("x-forwarded-proto: http"),
        "{heads:?}"
    );
    assert_eq!(
        *up.handshakes.lock().unwrap(),
        1,
        "the TLS connection is pooled"
    );
    drop(gw);

    // Wrong name: the certificate does not match, nothing is sent.
    let gw = TestGateway::start(&upstream_tls_config(&up, pki.ca_cert(), "other.test"));
    let r = gw.get("/wrong-name");
    assert_eq!(r.status, 502, "{}", r.text());
    // Another CA: verification fails.
    let stranger = Pki::new();
    let gw2 = TestGateway::start(&upstream_tls_config(
        &up,
        stranger.ca_cert(),
        "upstream.test",
    ));
    assert_eq!(gw2.get("/wrong-ca").status, 502);
    let heads = up.heads.lock().unwrap().clone();
    assert!(
        heads.iter().all(|h| !h.contains("/wrong-")),
        "a request went to an unverified upstream: {heads:?}"
    );
}

// ---------------------------------------------------------------------------

/// A blocking rustls client for one TLS connection.
struct TlsClient {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    buf: Vec<u8>,
}

impl TlsClient {
    fn connect(addr: SocketAddr, name: &str, ca: &Path) -> TlsClient {
        let mut roots = rustls::RootCertStore::empty();
        for c in load_certs(ca) {
            roots.add(c).expect("add CA");
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let server_name = rustls::pki_types::ServerName::try_from(name.to_string()).expect("name");
        let conn = rustls::ClientConnection::new(Arc::new(config), server_name).expect("client");
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        TlsClient {
            tls: rustls::StreamOwned::new(conn, stream),
            buf: Vec::new(),
        }
    }

    /// Sends a POST and reads a `Content-Length` response: (status, head, body).
    fn post(&mut self, path: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: b.test\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.tls.write_all(req.as_bytes()).expect("write head");
        self.tls.write_all(body).expect("write body");
        self.tls.flush().expect("flush");
        let end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            self.fill();
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end);
        let status: u16 = head[9..12].parse().expect("status code");
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while self.buf.len() < len {
            self.fill();
        }
        let body = self.buf.drain(..len).collect();
        (status, head, body)
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 8192];
        let n = self.tls.read(&mut chunk).expect("read over TLS");
        assert!(n > 0, "connection closed early");
        self.buf.extend_from_slice(&chunk[..n]);
    }
}
