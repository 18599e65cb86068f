//! Auth bypass by path variants: no spelling of a request target reaches a
//! protected route's upstream resource without the route's credentials.
//!
//! The gateway protects `/private` with an API key and sends everything else to
//! an open catch-all route; both routes go to the same mock upstream. That
//! upstream reads paths the way permissive web frameworks do ([`upstream_path`]:
//! percent-decoding, `\` as `/`, `;params` stripped, slashes merged, dot segments
//! resolved, overlong UTF-8 accepted; a second setup decodes twice) and serves
//! `SECRET` for anything that lands on `/private`. Every variant in [`VARIANTS`]
//! is sent byte for byte over a raw socket, and the suite proves:
//! 1. Without a key, each variant is rejected (400) or routed to `private` and
//!    refused (401); none is served `SECRET`, and the upstream never receives a
//!    target that it would read as `/private...`. Variants whose canonical form
//!    lies outside `/private` reach the catch-all and are answered `public`.
//! 2. With the key, a variant whose canonical form is protected is served, and
//!    the upstream receives the canonical target (`//private/x` arrives as
//!    `/private/x`); escapes that are not unreserved (`%20`) and the query stay
//!    as they were sent.
//!
//! Every variant is tried before anything is asserted, and one assertion lists
//! every failure, so a single run shows every bypass. A failure is labelled
//! `BYPASS` when the protected resource was served or reached, and `WRONG`
//! when the answer is merely not the expected one.

use hypergate_tests::mock::Request as UpstreamRequest;
use hypergate_tests::{cluster, preamble, Conn, MockUpstream, Reply, Response, TestGateway};

/// The API key of the one consumer.
const KEY: &str = "k";
/// What the upstream answers for its protected resource.
const SECRET: &str = "SECRET";
/// What the upstream answers for everything else.
const PUBLIC: &str = "public";

/// What a correct gateway does with a variant (sent without a key, then with one).
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Rejected before routing, with or without a key: 400, nothing goes upstream.
    Reject400,
    /// The canonical target is this protected one: 401 without a key; with the
    /// key 200, and the upstream receives exactly this target.
    Auth401(&'static str),
    /// Either of the above, by policy choice: 400 and nothing upstream, or
    /// [`Expect::Auth401`] with this canonical target.
    Either(&'static str),
    /// The canonical target lies outside `/private`: the catch-all answers, with
    /// or without a key, and the upstream receives exactly this target.
    Public(&'static str),
}

use Expect::{Auth401, Either, Public, Reject400};

/// Request targets aimed at `/private/x`, grouped by the attack they represent.
const VARIANTS: &[(&str, Expect)] = &[
    // Controls: the plain forms, so a broken harness cannot pass vacuously, and
    // an escape that is not unreserved (`%20`), which must stay encoded.
    ("/private/x", Auth401("/private/x")),
    ("/private", Auth401("/private")),
    ("/public/a%20b", Public("/public/a%20b")),
    // Repeated slashes: an empty first segment misses the `/private` prefix,
    // and the upstream merges slashes back into `/private/x`.
    ("//private/x", Auth401("/private/x")),
    ("///private//x", Auth401("/private/x")),
    ("/private//x", Auth401("/private/x")),
    // Dot segments: the router sees `.`, `hello` or `public` first; the upstream
    // resolves them (and `..` above the root stays at the root).
    ("/./private/x", Auth401("/private/x")),
    ("/hello/../private/x", Auth401("/private/x")),
    ("/public/../private/x", Auth401("/private/x")),
    ("/public/../../private/x", Auth401("/private/x")),
    ("/private/./x", Auth401("/private/x")),
    // Trailing dot segments: they stay inside or climb out of the protected
    // prefix, and routing must follow the resolved path either way.
    ("/private/.", Auth401("/private/")),
    ("/private/x/..", Auth401("/private/")),
    ("/private/..", Public("/")),
    // Percent-encoded unreserved characters: `%70` is `p`, so the router sees a
    // different first segment than the upstream does after decoding.
    ("/%70rivate/x", Auth401("/private/x")),
    ("/priv%61te/x", Auth401("/private/x")),
    ("/%70%72%69%76%61%74%65/x", Auth401("/private/x")),
    ("/private/%78", Auth401("/private/x")),
    // Case: `%50` is `P`, and paths are case-sensitive, so `/Private` is not the
    // protected resource for the router nor for this upstream.
    ("/%50rivate/x", Public("/Private/x")),
    ("/PRIVATE/x", Public("/PRIVATE/x")),
    // Encoded dot segments (any case mix): decoded, then resolved.
    ("/%2e/private/x", Auth401("/private/x")),
    ("/%2E%2E/private/x", Auth401("/private/x")),
    ("/.%2e/private/x", Auth401("/private/x")),
    ("/%2e%2E/private/x", Auth401("/private/x")),
    ("/public/%2e%2e/private/x", Auth401("/private/x")),
    ("/hello/%2E%2e/private", Auth401("/private")),
    // Double encoding: harmless after one decode, the attack after a second one
    // (by a double-decoding framework or a second proxy).
    ("/%2570rivate/x", Reject400),
    ("/%2570%2572ivate/x", Reject400),
    ("/%252e%252e/private/x", Reject400),
    ("/public/%252e%252e/private/x", Reject400),
    ("/%252fprivate/x", Reject400),
    // Double encoding built escape by escape: decoding the unreserved `%32%65`
    // yields `%252e`, so the check must hold after decoding too.
    ("/%25%32%65%25%32%65/private/x", Reject400),
    // Double-nibble encoding (IIS): `%%32%65` is `%2e` after one lenient decode.
    ("/%%32%65%%32%65/private/x", Reject400),
    // Encoded slashes: one segment for the router, two for a decoding upstream.
    ("/%2fprivate/x", Reject400),
    ("/%2Fprivate", Reject400),
    ("/private%2fx", Reject400),
    ("/%2F%2Fprivate", Reject400),
    ("/hello%2f..%2fprivate/x", Reject400),
    // Encoded and raw backslashes: Windows servers and many frameworks read `\`
    // as `/`.
    ("/%5cprivate/x", Reject400),
    ("/hello%5C..%5Cprivate", Reject400),
    ("/\\private/x", Reject400),
    ("/hello\\..\\private", Reject400),
    // Overlong UTF-8: invalid, but old IIS decoded `%C0%AE` as `.`, `%C0%AF` as
    // `/` and `%C1%9C` as `\`; 3- and 4-byte overlongs of `.` too.
    ("/%C0%AE%C0%AE/private/x", Reject400),
    ("/%c0%afprivate/x", Reject400),
    ("/hello%c0%af..%c0%afprivate/x", Reject400),
    ("/%C1%9Cprivate/x", Reject400),
    ("/%E0%80%AE%E0%80%AE/private", Reject400),
    ("/hello/%F0%80%80%AE%F0%80%80%AE/private/x", Reject400),
    // Escapes that decode to invalid UTF-8 of any kind.
    ("/private%FF/x", Reject400),
    // NUL and control characters: a segment the router files under the
    // catch-all, a C backend's string end, a regex matcher's line end, and
    // CR LF that would split the request if forwarded decoded.
    ("/private%00/x", Reject400),
    ("/%00/../private", Reject400),
    ("/private%0a", Reject400),
    ("/%0a/../private/x", Reject400),
    ("/private%09/x", Reject400),
    ("/private%0D%0AX-Injected:%201", Reject400),
    ("/private%7F", Reject400),
    // Semicolons: Tomcat and Spring strip `;params` from each segment, so
    // `/public/..;/private/x` is `/private/x` to them.
    ("/private;x/y", Reject400),
    ("/;/private/x", Reject400),
    ("/private;jsessionid=1", Reject400),
    ("/private/..;/x", Reject400),
    ("/public/..;/private/x", Reject400),
    // Encoded semicolons: a framework that decodes before stripping `;params`
    // reads `%3B` as `;` (Spring's firewall rejects both forms).
    ("/private%3bx/y", Reject400),
    ("/%3B/private/x", Reject400),
    // Invalid percent-encoding, including IIS `%u` escapes: lenient decoders
    // pass it through, others guess.
    ("/private%zz", Reject400),
    ("/%u0070rivate/x", Reject400),
    ("/private/x%", Reject400),
    // Query and fragment confusion: only the path is canonicalised and routed,
    // and the query is forwarded untouched.
    ("/public?/../private/x", Public("/public?/../private/x")),
    ("/public/..?/private/x", Public("/?/private/x")),
    ("/private?/../public", Auth401("/private?/../public")),
    (
        "/private/x?next=%2F..%2Fpublic",
        Auth401("/private/x?next=%2F..%2Fpublic"),
    ),
    ("/%3F/../private/x", Auth401("/private/x")),
    ("/public%23/../private", Auth401("/private")),
    // A raw `#` cannot appear in a request target: reject it, or take it as a
    // path character like any other (then `..` resolves past it).
    ("/public#/../private", Either("/private")),
    // Not origin-form: a relative target is invalid; absolute-form must be
    // accepted by servers (RFC 9112, 3.2.2) and then canonicalised like a path.
    ("private/x", Reject400),
    ("http://test.local//private/x", Either("/private/x")),
    ("http://test.local/%70rivate/x", Either("/private/x")),
];

/// How the mock upstream reads a request target, like a permissive framework.
///
/// The query and fragment are cut off first (as `urllib.parse.urlsplit` does);
/// an absolute-form target loses its scheme and authority. The rest is
/// percent-decoded `decode_passes` times like `urllib.parse.unquote` (an invalid
/// escape stays as it is), decoded as UTF-8 that tolerates overlong forms (as old
/// IIS did), `\` becomes `/`, each segment loses its `;params` (Tomcat, Spring),
/// and empty and `.` segments are dropped while `..` removes the one before.
fn upstream_path(target: &str, decode_passes: usize) -> String {
    let mut path = target.split(['?', '#']).next().unwrap_or("");
    for scheme in ["http://", "https://"] {
        if let Some(rest) = path.strip_prefix(scheme) {
            path = rest.find('/').map_or("/", |at| &rest[at..]);
        }
    }
    let mut bytes = path.as_bytes().to_vec();
    for _ in 0..decode_passes {
        bytes = percent_decode_once(&bytes);
    }
    let text = decode_utf8_leniently(&bytes).replace('\\', "/");
    let mut segments: Vec<&str> = Vec::new();
    for segment in text.split('/') {
        match segment.split(';').next().unwrap_or("") {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            kept => segments.push(kept),
        }
    }
    format!("/{}", segments.join("/"))
}

/// Whether the upstream serves its protected resource for this (normalised) path.
fn is_private(path: &str) -> bool {
    path == "/private" || path.starts_with("/private/")
}

/// One pass of `%XX` decoding; anything else, invalid escapes included, is kept.
fn percent_decode_once(input: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' {
            if let Some(&[high, low]) = input.get(i + 1..i + 3) {
                if let (Some(high), Some(low)) = (hex(high), hex(low)) {
                    out.push((high * 16 + low) as u8);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(input[i]);
        i += 1;
    }
    out
}

/// UTF-8 decoding that accepts overlong forms (`C0 AE` is `.`); any other
/// malformed byte becomes U+FFFD.
fn decode_utf8_leniently(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let lead = bytes[i];
        let (len, bits) = match lead {
            0x00..=0x7F => (1, u32::from(lead)),
            0xC0..=0xDF => (2, u32::from(lead & 0x1F)),
            0xE0..=0xEF => (3, u32::from(lead & 0x0F)),
            0xF0..=0xF7 => (4, u32::from(lead & 0x07)),
            _ => (0, 0),
        };
        match bytes.get(i + 1..i + len.max(1)) {
            Some(tail) if len > 0 && tail.iter().all(|b| b & 0xC0 == 0x80) => {
                let code = tail
                    .iter()
                    .fold(bits, |acc, b| (acc << 6) | u32::from(b & 0x3F));
                out.push(char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER));
                i += len;
            }
            _ => {
                out.push(char::REPLACEMENT_CHARACTER);
                i += 1;
            }
        }
    }
    out
}

/// A gateway with a key-protected `/private` route and an open catch-all, both
/// to one mock upstream that normalises with `decode_passes` decodes.
struct Setup {
    mock: MockUpstream,
    gateway: TestGateway,
    decode_passes: usize,
}

/// What one request did: the gateway's answer and what reached the upstream.
struct Exchange {
    response: Result<Response, String>,
    upstream: Vec<UpstreamRequest>,
}

impl Setup {
    fn start(decode_passes: usize) -> Setup {
        let mock = MockUpstream::start(move |request| {
            let served = if is_private(&upstream_path(&request.target, decode_passes)) {
                SECRET
            } else {
                PUBLIC
            };
            Reply::ok(served).into()
        });
        let toml = format!(
            r#"{preamble}
{cluster}
[[consumers]]
name = "holder"
api_keys = ["{hash}"]

[auth.api_key]
header = "x-api-key"

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
            cluster = cluster("backend", &[mock.addr()], ""),
            hash = hypergate::auth::hash_key(KEY),
        );
        let gateway = TestGateway::start(&toml);
        Setup {
            mock,
            gateway,
            decode_passes,
        }
    }

    fn name(&self) -> String {
        match self.decode_passes {
            1 => "decoding upstream".into(),
            n => format!("{n}x-decoding upstream"),
        }
    }

    /// Sends `GET target` byte for byte on a fresh connection, with the key if
    /// `key`, and collects what reached the upstream meanwhile.
    fn exchange(&self, target: &str, key: bool) -> Exchange {
        let before = self.mock.request_count();
        let key_header = if key {
            format!("x-api-key: {KEY}\r\n")
        } else {
            String::new()
        };
        let head = format!(
            "GET {target} HTTP/1.1\r\nHost: test.local\r\n{key_header}Connection: close\r\n\r\n"
        );
        let response = Conn::try_connect(self.gateway.addr)
            .map_err(|e| format!("connect: {e}"))
            .and_then(|mut conn| {
                conn.try_send(head.as_bytes())
                    .map_err(|e| format!("send: {e}"))?;
                conn.try_read_response(false)
                    .map_err(|e| format!("no response: {e}"))
            });
        let upstream = self.mock.requests().split_off(before);
        Exchange { response, upstream }
    }

    /// Whether anything that reached the upstream reads as its protected resource.
    fn reached_private(&self, exchange: &Exchange) -> bool {
        exchange
            .upstream
            .iter()
            .any(|r| is_private(&upstream_path(&r.target, self.decode_passes)))
    }

    /// A failure line: the variant, what went wrong, the whole response, and
    /// every target the upstream received with its reading of it. Without a
    /// key, reaching the protected resource makes it a `BYPASS`.
    fn describe(
        &self,
        target: &str,
        expect: Expect,
        key: bool,
        what: &str,
        exchange: &Exchange,
    ) -> String {
        let leaked = !key
            && (exchange.response.as_ref().is_ok_and(|r| r.text() == SECRET)
                || self.reached_private(exchange));
        let response = match &exchange.response {
            Ok(r) => format!(
                "{}{}",
                String::from_utf8_lossy(&r.raw_head).trim_end(),
                if r.body.is_empty() {
                    String::new()
                } else {
                    format!("\n      body: {:?}", r.text())
                }
            ),
            Err(e) => e.clone(),
        };
        let upstream: Vec<String> = exchange
            .upstream
            .iter()
            .map(|r| {
                format!(
                    "{:?} (reads as {:?})",
                    r.target,
                    upstream_path(&r.target, self.decode_passes)
                )
            })
            .collect();
        format!(
            "{} [{}] {target:?} expected {expect:?}: {what}\n      upstream received: [{}]\n      {}",
            if leaked { "BYPASS" } else { "WRONG " },
            self.name(),
            upstream.join(", "),
            response.replace("\r\n", "\n      "),
        )
    }
}

/// Why an exchange without a key is wrong for `expect`, if it is.
fn check_without_key(setup: &Setup, expect: Expect, exchange: &Exchange) -> Option<String> {
    let Ok(response) = &exchange.response else {
        return Some("no response".into());
    };
    if response.text() == SECRET || setup.reached_private(exchange) {
        return Some(format!(
            "{} without a key; upstream served {:?}",
            response.status,
            response.text()
        ));
    }
    let status_ok = match expect {
        Reject400 => response.status == 400,
        Auth401(_) => response.status == 401,
        Either(_) => matches!(response.status, 400 | 401),
        Public(_) => response.status == 200,
    };
    if !status_ok {
        return Some(format!("status {}", response.status));
    }
    match expect {
        Public(canonical) => check_forwarded(exchange, canonical, PUBLIC),
        _ if !exchange.upstream.is_empty() => Some("a refused request went upstream".into()),
        _ => None,
    }
}

/// Why an exchange with the key is wrong for `expect`, if it is.
fn check_with_key(expect: Expect, exchange: &Exchange) -> Option<String> {
    let Ok(response) = &exchange.response else {
        return Some("no response".into());
    };
    let rejected = || {
        if response.status != 400 {
            Some(format!("status {}, want 400", response.status))
        } else if !exchange.upstream.is_empty() {
            Some("a rejected request went upstream".into())
        } else {
            None
        }
    };
    match expect {
        Reject400 => rejected(),
        Either(_) if response.status == 400 => rejected(),
        Auth401(canonical) | Either(canonical) => check_forwarded(exchange, canonical, SECRET),
        Public(canonical) => check_forwarded(exchange, canonical, PUBLIC),
    }
}

/// Why the exchange is not "200 with `body`, the upstream got exactly `target`", if it is not.
fn check_forwarded(exchange: &Exchange, target: &str, body: &str) -> Option<String> {
    let response = exchange.response.as_ref().ok()?;
    let targets: Vec<&str> = exchange
        .upstream
        .iter()
        .map(|r| r.target.as_str())
        .collect();
    if response.status != 200 || response.text() != body {
        Some(format!(
            "status {} body {:?}, want 200 {body:?}",
            response.status,
            response.text()
        ))
    } else if targets != [target] {
        Some(format!("upstream received {targets:?}, want [{target:?}]"))
    } else {
        None
    }
}

/// Panics with every failure, one per line, when there are any.
fn assert_no_failures(failures: &[String], checks: usize, what: &str) {
    let bypasses = failures.iter().filter(|f| f.starts_with("BYPASS")).count();
    assert!(
        failures.is_empty(),
        "{} of {checks} checks failed ({bypasses} bypasses) {what}:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

#[test]
fn no_path_variant_reaches_the_protected_resource_without_a_key() {
    let mut failures = Vec::new();
    // A framework that decodes once, and one that decodes twice (a second
    // decode is where double encoding turns into an attack).
    for decode_passes in [1, 2] {
        let setup = Setup::start(decode_passes);
        for &(target, expect) in VARIANTS {
            let exchange = setup.exchange(target, false);
            if let Some(what) = check_without_key(&setup, expect, &exchange) {
                failures.push(setup.describe(target, expect, false, &what, &exchange));
            }
        }
    }
    assert_no_failures(&failures, 2 * VARIANTS.len(), "without a key");
}

#[test]
fn with_the_key_the_upstream_receives_the_canonical_target() {
    let setup = Setup::start(1);
    let mut failures = Vec::new();
    for &(target, expect) in VARIANTS {
        let exchange = setup.exchange(target, true);
        if let Some(what) = check_with_key(expect, &exchange) {
            failures.push(setup.describe(target, expect, true, &what, &exchange));
        }
    }
    assert_no_failures(&failures, VARIANTS.len(), "with the key");
}

/// The upstream model itself, so a bypass reported above is one a real
/// framework of that kind would serve.
#[test]
fn the_upstream_model_reads_paths_like_a_permissive_framework() {
    let once = [
        ("/private/x", "/private/x"),
        ("//private/x", "/private/x"),
        ("/%70rivate/x", "/private/x"),
        ("/hello/../private/x", "/private/x"),
        ("/public/..;/private/x", "/private/x"),
        ("/private%2fx", "/private/x"),
        ("/hello\\..\\private", "/private"),
        ("/%C0%AE%C0%AE/private/x", "/private/x"),
        ("/%c0%afprivate/x", "/private/x"),
        ("/%E0%80%AE%E0%80%AE/private", "/private"),
        ("/public?/../private/x", "/public"),
        ("/public#/../private", "/public"),
        ("/%2570rivate/x", "/%70rivate/x"),
        ("/private%zz", "/private%zz"),
        ("http://test.local//private/x", "/private/x"),
        ("/private/..", "/"),
        ("/%50rivate/x", "/Private/x"),
    ];
    for (target, want) in once {
        assert_eq!(upstream_path(target, 1), want, "{target:?} decoded once");
    }
    let twice = [
        ("/%2570rivate/x", "/private/x"),
        ("/%252e%252e/private/x", "/private/x"),
        ("/%%32%65%%32%65/private/x", "/private/x"),
        ("/%252fprivate/x", "/private/x"),
    ];
    for (target, want) in twice {
        assert_eq!(upstream_path(target, 2), want, "{target:?} decoded twice");
    }
    for (target, expect) in VARIANTS {
        if let Auth401(canonical) | Either(canonical) = expect {
            assert!(
                is_private(&upstream_path(canonical, 1)),
                "{target:?}: canonical {canonical:?} is not the protected resource"
            );
        }
        if let Public(canonical) = expect {
            assert!(
                !is_private(&upstream_path(canonical, 2)),
                "{target:?}: canonical {canonical:?} is the protected resource"
            );
        }
    }
}
