//! Fuzz target: the strict request-head parser, `hypergate::http::codec::parse_request`.
//!
//! Arbitrary bytes go to the parser under the default `[limits]`. Whatever the
//! verdict, it must not panic. For every head it accepts (`Parsed::Complete`),
//! the invariants the proxy relies on when it re-serialises the head upstream
//! are checked:
//! 1. the head length and every stored range lie inside the input and the head;
//! 2. method, target and headers hold only the bytes httparse allows (nothing
//!    that could split a forwarded head: no CR, LF or other control bytes);
//! 3. body framing is unambiguous: never Content-Length with Transfer-Encoding,
//!    `Chunked` only for a lone `chunked` coding on HTTP/1.1, `Length(n)` only
//!    for a single Content-Length of `n`;
//! 4. Host, keep-alive, Expect, Upgrade and Connection tokens agree with the headers;
//! 5. the verdict does not depend on history: re-parsing the head alone,
//!    parsing into a head that held another request, parsing under the
//!    tightest valid limits, and parsing strict prefixes (which must be
//!    `Partial`, as the proxy parses a growing buffer) all agree.
#![no_main]

use hypergate::http::codec::{
    at, host_without_port, parse_request, tokens, BodyFraming, HeadLimits, Parsed, RequestHead,
    MAX_HEADERS,
};
use libfuzzer_sys::fuzz_target;
use std::ops::Range;

/// The defaults of `[limits]` in the config.
const DEFAULT_LIMITS: HeadLimits = HeadLimits {
    max_request_line: 8 * 1024,
    max_header_bytes: 32 * 1024,
    max_headers: 100,
};

/// Close to the smallest limits `config::validate` accepts.
const TIGHT_LIMITS: HeadLimits = HeadLimits {
    max_request_line: 64,
    max_header_bytes: 256,
    max_headers: 4,
};

/// A request that sets every field of a head, parsed before the input to make the head dirty.
const DIRTY: &[u8] = b"POST /dirty/path?q=1 HTTP/1.1\r\nHost: dirty.example:81\r\n\
Content-Length: 5\r\nConnection: keep-alive, X-Hop, Upgrade\r\nUpgrade: websocket\r\n\
Expect: 100-continue\r\nX-Extra: 1\r\n\r\n";

/// Most strict prefixes re-parsed per input (keeps one run fast).
const MAX_PREFIXES: usize = 48;

fuzz_target!(|data: &[u8]| {
    let mut head = RequestHead::default();
    let verdict = parse_request(data, &DEFAULT_LIMITS, &mut head);

    // The same bytes into a head that already held another request: same verdict.
    let mut dirty = RequestHead::default();
    assert_eq!(
        parse_request(DIRTY, &DEFAULT_LIMITS, &mut dirty),
        Ok(Parsed::Complete(DIRTY.len()))
    );
    let dirty_verdict = parse_request(data, &DEFAULT_LIMITS, &mut dirty);
    assert_eq!(
        verdict, dirty_verdict,
        "verdict depends on the head's previous content"
    );

    let Ok(Parsed::Complete(n)) = verdict else {
        return;
    };
    check_head(data, n, &head, &DEFAULT_LIMITS);
    assert_eq!(
        format!("{head:?}"),
        format!("{dirty:?}"),
        "stale fields survive from the previous request"
    );

    // The head alone, without whatever followed it (body, pipelined requests).
    let mut alone = RequestHead::default();
    assert_eq!(
        parse_request(&data[..n], &DEFAULT_LIMITS, &mut alone),
        Ok(Parsed::Complete(n)),
        "the head parses differently without the bytes after it"
    );
    assert_eq!(format!("{head:?}"), format!("{alone:?}"));

    // Tighter limits may reject, but never accept differently or ask for more.
    let mut tight = RequestHead::default();
    match parse_request(data, &TIGHT_LIMITS, &mut tight) {
        Ok(Parsed::Complete(m)) => {
            assert_eq!(m, n);
            check_head(data, m, &tight, &TIGHT_LIMITS);
            assert_eq!(format!("{head:?}"), format!("{tight:?}"));
        }
        Ok(Parsed::Partial) => panic!("a complete head reads as partial under tighter limits"),
        Err(_) => {}
    }

    // The proxy parses a growing buffer: every strict prefix of an accepted head must
    // ask for more bytes, never be rejected (that would make acceptance depend on
    // TCP segmentation) and never be complete.
    let cuts = (1..n)
        .filter(|&k| matches!(data[k - 1], b'\n' | b'\r' | b' ' | b':' | b'/'))
        .take(MAX_PREFIXES)
        .chain([n - 1]);
    for k in cuts {
        let mut partial = RequestHead::default();
        assert_eq!(
            parse_request(&data[..k], &DEFAULT_LIMITS, &mut partial),
            Ok(Parsed::Partial),
            "prefix of {k} of {n} head bytes"
        );
    }
});

fn inside(r: &Range<u32>, n: usize) -> bool {
    r.start <= r.end && r.end as usize <= n
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_target_byte(b: u8) -> bool {
    (b'!'..=b'~').contains(&b) || b >= 0x80
}

fn is_value_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

fn ci(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Checks one accepted head of `n` bytes against the input it was parsed from.
fn check_head(data: &[u8], n: usize, head: &RequestHead, limits: &HeadLimits) {
    assert_eq!(head.len, n);
    assert!(
        n > 0 && n <= data.len(),
        "head length {n} outside input of {}",
        data.len()
    );
    let buf = &data[..n];
    assert_eq!(buf.last(), Some(&b'\n'), "a head ends with a line break");
    assert!(n <= limits.max_header_bytes);
    // httparse skips empty lines before the request line (RFC 9112 section 2.2).
    let line_start = head.method.start as usize;
    assert!(buf[..line_start].iter().all(|b| matches!(b, b'\r' | b'\n')));
    let line_end = line_start
        + buf[line_start..]
            .iter()
            .position(|b| *b == b'\n')
            .expect("a head has a request line");
    // Found by this target: empty lines before the request line used to hide its
    // length from `max_request_line` (regressions/request_head/leading_*).
    assert!(
        line_end - line_start <= limits.max_request_line,
        "request line of {} bytes accepted with max_request_line = {}",
        line_end - line_start,
        limits.max_request_line
    );
    assert!(head.headers.len() <= limits.max_headers.min(MAX_HEADERS));
    assert!(head.version <= 1);

    // Request line: method, path and query ranges in order, inside the first line.
    for r in [&head.method, &head.path, &head.query, &head.host] {
        assert!(inside(r, n), "range {r:?} outside the {n}-byte head");
    }
    assert!(head.method.end <= head.path.start && head.path.end <= head.query.start);
    assert!((head.query.end as usize) <= line_end);
    let method = at(buf, &head.method);
    assert!(!method.is_empty() && method.iter().all(|b| is_token(*b)));
    assert_ne!(method, b"CONNECT");
    let path = at(buf, &head.path);
    assert!(path.iter().all(|b| is_target_byte(*b)), "path {path:?}");
    assert!(path.starts_with(b"/") || (path == b"*" && method == b"OPTIONS"));
    let query = at(buf, &head.query);
    assert!(query.iter().all(|b| is_target_byte(*b)), "query {query:?}");
    if !query.is_empty() {
        assert_eq!(buf[head.query.start as usize - 1], b'?');
    }

    // Headers: valid names and values, after the request line, in order.
    let mut previous_end = line_end as u32;
    let mut content_lengths = Vec::new();
    let (mut te_headers, mut te_tokens) = (0, Vec::new());
    let mut hosts = Vec::new();
    let (mut close, mut keep_alive, mut conn_upgrade, mut has_upgrade) =
        (false, false, false, false);
    let mut expect_continue = false;
    let mut other_tokens = 0;
    for (name_range, value_range) in &head.headers {
        assert!(inside(name_range, n) && inside(value_range, n));
        assert!(previous_end < name_range.start && name_range.end <= value_range.start);
        previous_end = value_range.end;
        let (name, value) = (at(buf, name_range), at(buf, value_range));
        assert!(
            !name.is_empty() && name.iter().all(|b| is_token(*b)),
            "name {name:?}"
        );
        assert!(value.iter().all(|b| is_value_byte(*b)), "value {value:?}");
        if ci(name, b"content-length") {
            content_lengths.push(value);
        } else if ci(name, b"transfer-encoding") {
            te_headers += 1;
            te_tokens.extend(tokens(value));
        } else if ci(name, b"host") {
            hosts.push(value_range.clone());
        } else if ci(name, b"connection") {
            for t in tokens(value) {
                if ci(t, b"close") {
                    close = true;
                } else if ci(t, b"keep-alive") {
                    keep_alive = true;
                } else if ci(t, b"upgrade") {
                    conn_upgrade = true;
                } else {
                    other_tokens += 1;
                }
            }
        } else if ci(name, b"upgrade") {
            has_upgrade = true;
        } else if ci(name, b"expect") {
            assert!(
                ci(value.trim_ascii(), b"100-continue"),
                "accepted Expect {value:?}"
            );
            expect_continue = true;
        }
    }

    // Framing: exactly one reading of where the body ends.
    assert!(
        content_lengths.is_empty() || te_headers == 0,
        "accepted both Content-Length and Transfer-Encoding"
    );
    let length_of = |v: &[u8]| -> u64 {
        assert!(
            !v.is_empty() && v.iter().all(u8::is_ascii_digit),
            "Content-Length {v:?}"
        );
        std::str::from_utf8(v).unwrap().parse().unwrap()
    };
    match head.body {
        BodyFraming::UntilClose => panic!("a request body is never framed by close"),
        BodyFraming::Chunked => {
            assert_eq!(head.version, 1, "chunked on HTTP/1.0");
            assert_eq!(te_tokens.len(), 1, "codings {te_tokens:?}");
            assert!(ci(te_tokens[0], b"chunked"));
        }
        BodyFraming::Length(len) => {
            // `Content-Length: 0` stays `Length(0)` so that it is forwarded as sent.
            assert_eq!(te_headers, 0);
            assert_eq!(content_lengths.len(), 1);
            assert_eq!(length_of(content_lengths[0]), len);
        }
        BodyFraming::None => {
            assert_eq!(te_headers, 0);
            assert!(content_lengths.is_empty());
        }
    }

    // Host: exactly one on HTTP/1.1, at most one on 1.0; the stored host is its value without port.
    if head.version == 1 {
        assert_eq!(hosts.len(), 1, "HTTP/1.1 needs exactly one Host");
    }
    assert!(hosts.len() <= 1);
    match hosts.first() {
        Some(v) => {
            assert!(v.start <= head.host.start && head.host.end <= v.end);
            assert_eq!(
                at(buf, &head.host),
                host_without_port(at(buf, v).trim_ascii())
            );
        }
        None => assert_eq!(head.host, 0..0),
    }

    // Connection management flags.
    let want_keep_alive = if head.version == 1 {
        !close
    } else {
        keep_alive && !close
    };
    assert_eq!(head.keep_alive, want_keep_alive);
    assert_eq!(
        head.upgrade,
        conn_upgrade && has_upgrade && head.version == 1
    );
    let has_body = !matches!(head.body, BodyFraming::None | BodyFraming::Length(0));
    assert_eq!(head.has_body(), has_body);
    assert_eq!(head.expect_continue, expect_continue && has_body);
    assert_eq!(head.connection_tokens.len(), other_tokens);
    for t in &head.connection_tokens {
        assert!(inside(t, n));
        let token = at(buf, t);
        assert!(!token.is_empty());
        assert!(!ci(token, b"close") && !ci(token, b"keep-alive") && !ci(token, b"upgrade"));
        assert!(
            head.headers
                .iter()
                .any(|(name, value)| ci(at(buf, name), b"connection")
                    && value.start <= t.start
                    && t.end <= value.end),
            "connection token outside every Connection header"
        );
    }
}
