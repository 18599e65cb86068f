//! Request and response heads: strict parsing on `httparse`, stored as offsets.
//!
//! A parsed head keeps byte ranges into the buffer it was parsed from, so the
//! hot path never copies header names or values into owned strings. Parsing
//! enforces the framing rules that keep request smuggling out: one
//! `Content-Length` of digits only, never both `Content-Length` and
//! `Transfer-Encoding`, `chunked` as the only (and final) transfer coding, no
//! obs-fold, a single `Host` on HTTP/1.1, and size limits on the request line
//! and header section. Each rejection names a [`Reject`] reason that metrics count.

use std::mem::MaybeUninit;
use std::ops::Range;

/// Most header slots `httparse` is given (config `limits.max_headers` is capped to this).
pub const MAX_HEADERS: usize = 256;

/// Why a request was rejected before anything was forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reject {
    /// Syntax error in the request line or a header (400).
    Malformed,
    /// Both Content-Length and Transfer-Encoding (400).
    ClAndTe,
    /// Several or unparsable Content-Length values (400).
    BadContentLength,
    /// Transfer-Encoding whose final coding is not chunked, or repeated (400).
    BadTransferEncoding,
    /// A transfer coding other than chunked (501).
    UnsupportedTransferEncoding,
    /// Invalid chunk size or chunk framing in a body (400).
    BadChunk,
    /// HTTP/1.1 request without exactly one Host (400).
    BadHost,
    /// A request target that is not origin-form (400).
    BadTarget,
    /// Request line longer than the limit (414).
    UriTooLong,
    /// Header section larger, or with more headers, than the limit (431).
    HeadersTooLarge,
    /// Body larger than the limit (413).
    BodyTooLarge,
    /// An `Expect` other than `100-continue` (417).
    Expectation,
    /// Methods the gateway does not proxy, such as CONNECT (501).
    MethodNotImplemented,
    /// The head did not arrive in time (408).
    HeaderTimeout,
    /// A path that cannot be made canonical, or that the `[path]` policy refuses (400).
    BadPath,
}

impl Reject {
    /// All reasons, for metrics.
    pub const ALL: [Reject; 15] = [
        Reject::Malformed,
        Reject::ClAndTe,
        Reject::BadContentLength,
        Reject::BadTransferEncoding,
        Reject::UnsupportedTransferEncoding,
        Reject::BadChunk,
        Reject::BadHost,
        Reject::BadTarget,
        Reject::UriTooLong,
        Reject::HeadersTooLarge,
        Reject::BodyTooLarge,
        Reject::Expectation,
        Reject::MethodNotImplemented,
        Reject::HeaderTimeout,
        Reject::BadPath,
    ];

    /// Status code sent for this rejection.
    pub fn status(self) -> u16 {
        match self {
            Reject::UriTooLong => 414,
            Reject::HeadersTooLarge => 431,
            Reject::BodyTooLarge => 413,
            Reject::Expectation => 417,
            Reject::UnsupportedTransferEncoding | Reject::MethodNotImplemented => 501,
            Reject::HeaderTimeout => 408,
            _ => 400,
        }
    }

    /// Metric label and error `type`.
    pub fn label(self) -> &'static str {
        match self {
            Reject::Malformed => "malformed",
            Reject::ClAndTe => "content_length_and_transfer_encoding",
            Reject::BadContentLength => "bad_content_length",
            Reject::BadTransferEncoding => "bad_transfer_encoding",
            Reject::UnsupportedTransferEncoding => "unsupported_transfer_encoding",
            Reject::BadChunk => "bad_chunk",
            Reject::BadHost => "bad_host",
            Reject::BadTarget => "bad_target",
            Reject::UriTooLong => "uri_too_long",
            Reject::HeadersTooLarge => "headers_too_large",
            Reject::BodyTooLarge => "body_too_large",
            Reject::Expectation => "expectation_failed",
            Reject::MethodNotImplemented => "method_not_implemented",
            Reject::HeaderTimeout => "header_timeout",
            Reject::BadPath => "bad_path",
        }
    }

    /// Index into per-reason counter arrays.
    pub fn index(self) -> usize {
        Reject::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// How a message body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyFraming {
    /// No body.
    #[default]
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// Limits for parsing a request head.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Longest request line.
    pub max_request_line: usize,
    /// Largest header section.
    pub max_header_bytes: usize,
    /// Most headers.
    pub max_headers: usize,
}

/// A header as two ranges into the head buffer.
pub type HeaderRange = (Range<u32>, Range<u32>);

/// A parsed request head; ranges point into the buffer it was parsed from.
#[derive(Debug, Default, Clone)]
pub struct RequestHead {
    /// Method bytes.
    pub method: Range<u32>,
    /// Path (up to `?`): the canonical path once the proxy normalised it.
    pub path: Range<u32>,
    /// The path exactly as the client sent it.
    pub raw_path: Range<u32>,
    /// Query without `?` (empty range when none).
    pub query: Range<u32>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// All headers in order.
    pub headers: Vec<HeaderRange>,
    /// Host value without port.
    pub host: Range<u32>,
    /// Body framing.
    pub body: BodyFraming,
    /// Whether the client wants the connection kept open.
    pub keep_alive: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// `Connection: upgrade` with an `Upgrade` header.
    pub upgrade: bool,
    /// Header names listed in `Connection` (hop-by-hop), as ranges.
    pub connection_tokens: Vec<Range<u32>>,
    /// Length of the head in bytes.
    pub len: usize,
}

impl RequestHead {
    /// Whether body bytes follow the head (`Content-Length: 0` has none).
    pub fn has_body(&self) -> bool {
        !matches!(self.body, BodyFraming::None | BodyFraming::Length(0))
    }
}

/// Slices a range out of the head buffer.
#[inline]
pub fn at<'a>(buf: &'a [u8], r: &Range<u32>) -> &'a [u8] {
    &buf[r.start as usize..r.end as usize]
}

fn range_of(buf: &[u8], part: &[u8]) -> Range<u32> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start as u32..(start + part.len()) as u32
}

/// Splits a comma-separated header value into trimmed, non-empty tokens.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|b| *b == b',').filter_map(|t| {
        let t = t.trim_ascii();
        (!t.is_empty()).then_some(t)
    })
}

/// Whether a header name is hop-by-hop (never forwarded as is).
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP: [&[u8]; 8] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
    ];
    HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

fn parse_content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Outcome of feeding bytes to a head parser.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A complete head of this many bytes.
    Complete(usize),
    /// More bytes are needed.
    Partial,
}

/// Parses a request head from `buf` into `head`.
pub fn parse_request(
    buf: &[u8],
    limits: &HeadLimits,
    head: &mut RequestHead,
) -> Result<Parsed, Reject> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let max = limits.max_headers.min(MAX_HEADERS);
    let mut req = httparse::Request::new(&mut []);
    let status = match req.parse_with_uninit_headers(buf, &mut slots[..max]) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => return Err(Reject::HeadersTooLarge),
        Err(_) => {
            return Err(if line_too_long(buf, limits.max_request_line) {
                Reject::UriTooLong
            } else {
                Reject::Malformed
            })
        }
    };
    let len = match status {
        httparse::Status::Partial => {
            if line_too_long(buf, limits.max_request_line) {
                return Err(Reject::UriTooLong);
            }
            if buf.len() > limits.max_header_bytes {
                return Err(Reject::HeadersTooLarge);
            }
            return Ok(Parsed::Partial);
        }
        httparse::Status::Complete(n) => n,
    };
    if line_too_long(buf, limits.max_request_line) {
        return Err(Reject::UriTooLong);
    }
    if len > limits.max_header_bytes {
        return Err(Reject::HeadersTooLarge);
    }
    let method = req.method.ok_or(Reject::Malformed)?;
    let target = req.path.ok_or(Reject::Malformed)?;
    head.version = req.version.ok_or(Reject::Malformed)?;
    head.len = len;
    head.method = range_of(buf, method.as_bytes());
    if method == "CONNECT" {
        return Err(Reject::MethodNotImplemented);
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, q),
        None => (target, &target[target.len()..]),
    };
    if !(path.starts_with('/') || (target == "*" && method == "OPTIONS")) {
        return Err(Reject::BadTarget);
    }
    head.path = range_of(buf, path.as_bytes());
    head.raw_path = head.path.clone();
    head.query = range_of(buf, query.as_bytes());
    head.headers.clear();
    head.connection_tokens.clear();
    head.host = 0..0;
    let (mut hosts, mut lengths, mut te_seen) = (0, 0, false);
    let mut content_length = None;
    let (mut chunked, mut has_upgrade, mut conn_upgrade) = (false, false, false);
    let (mut conn_close, mut conn_keep_alive) = (false, false);
    head.expect_continue = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        head.headers
            .push((range_of(buf, name), range_of(buf, h.value)));
        if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            let v = h.value.trim_ascii();
            let host_only = host_without_port(v);
            head.host = range_of(buf, host_only);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            lengths += 1;
            content_length = Some(parse_content_length(h.value).ok_or(Reject::BadContentLength)?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            for t in tokens(h.value) {
                if chunked {
                    // Anything after `chunked` (including a second one) is invalid.
                    return Err(Reject::BadTransferEncoding);
                }
                if t.eq_ignore_ascii_case(b"chunked") {
                    chunked = true;
                } else if te_seen || !is_known_coding(t) {
                    return Err(Reject::BadTransferEncoding);
                } else {
                    te_seen = true;
                }
            }
            te_seen = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"close") {
                    conn_close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    conn_keep_alive = true;
                } else if t.eq_ignore_ascii_case(b"upgrade") {
                    conn_upgrade = true;
                } else {
                    head.connection_tokens.push(range_of(buf, t));
                }
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            has_upgrade = true;
        } else if name.eq_ignore_ascii_case(b"expect") {
            if h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                head.expect_continue = true;
            } else {
                return Err(Reject::Expectation);
            }
        }
    }
    if lengths > 1 {
        return Err(Reject::BadContentLength);
    }
    if te_seen {
        if content_length.is_some() {
            return Err(Reject::ClAndTe);
        }
        if head.version == 0 {
            return Err(Reject::BadTransferEncoding);
        }
        if !chunked {
            return Err(Reject::BadTransferEncoding);
        }
    }
    if chunked && te_seen_other(&head.headers, buf) {
        return Err(Reject::UnsupportedTransferEncoding);
    }
    if head.version == 1 && hosts != 1 || hosts > 1 {
        return Err(Reject::BadHost);
    }
    head.body = if chunked {
        BodyFraming::Chunked
    } else {
        // `Content-Length: 0` stays `Length(0)`, so it is forwarded as sent
        // (some origins answer 411 to a POST without a length).
        content_length.map_or(BodyFraming::None, BodyFraming::Length)
    };
    head.keep_alive = if head.version == 1 {
        !conn_close
    } else {
        conn_keep_alive && !conn_close
    };
    head.upgrade = conn_upgrade && has_upgrade && head.version == 1;
    if !head.has_body() {
        head.expect_continue = false;
    }
    Ok(Parsed::Complete(len))
}

/// Codings we recognise; only `chunked` is supported, others get 501.
fn is_known_coding(t: &[u8]) -> bool {
    [
        &b"gzip"[..],
        b"deflate",
        b"compress",
        b"x-gzip",
        b"br",
        b"zstd",
        b"identity",
    ]
    .iter()
    .any(|c| c.eq_ignore_ascii_case(t))
}

/// Whether any Transfer-Encoding token other than `chunked` was given.
fn te_seen_other(headers: &[HeaderRange], buf: &[u8]) -> bool {
    headers.iter().any(|(n, v)| {
        at(buf, n).eq_ignore_ascii_case(b"transfer-encoding")
            && tokens(at(buf, v)).any(|t| !t.eq_ignore_ascii_case(b"chunked"))
    })
}

/// Whether the request line is longer than `max`. Empty lines before the request
/// line (which httparse skips, as RFC 9112 allows) are not part of it and must not
/// hide a long request line behind them.
fn line_too_long(buf: &[u8], max: usize) -> bool {
    let start = buf
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(buf.len());
    let buf = &buf[start..];
    match buf.iter().position(|b| *b == b'\n') {
        Some(n) => n > max,
        None => buf.len() > max,
    }
}

/// The host part of a Host header value (IPv6 literals keep their brackets).
pub fn host_without_port(v: &[u8]) -> &[u8] {
    if v.first() == Some(&b'[') {
        return match v.iter().position(|b| *b == b']') {
            Some(n) => &v[..=n],
            None => v,
        };
    }
    let host = match v.iter().rposition(|b| *b == b':') {
        Some(n) => &v[..n],
        None => v,
    };
    // `api.example.com.` is the same host (fully qualified): without this, a
    // trailing dot would slip past a route that matches `api.example.com`.
    host.strip_suffix(b".").unwrap_or(host)
}

/// A parsed upstream response head.
#[derive(Debug, Default, Clone)]
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    /// Reason phrase.
    pub reason: Range<u32>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// Headers in order.
    pub headers: Vec<HeaderRange>,
    /// Header names listed in `Connection`.
    pub connection_tokens: Vec<Range<u32>>,
    /// Body framing.
    pub body: BodyFraming,
    /// Whether the upstream keeps the connection open.
    pub keep_alive: bool,
    /// Whether the response carried an `x-request-id`.
    pub has_request_id: bool,
    /// Head length.
    pub len: usize,
}

/// Why an upstream response was refused (the client gets 502).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadResponse {
    /// Not parsable as HTTP/1.x.
    #[error("malformed response head")]
    Malformed,
    /// Header section over the limit.
    #[error("response head too large")]
    TooLarge,
    /// Ambiguous framing.
    #[error("ambiguous response framing")]
    Framing,
}

/// Parses an upstream response head. `request_was_head` marks responses to HEAD.
pub fn parse_response(
    buf: &[u8],
    max_bytes: usize,
    request_was_head: bool,
    head: &mut ResponseHead,
) -> Result<Parsed, BadResponse> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let status = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut res, buf, &mut slots)
        .map_err(|e| match e {
            httparse::Error::TooManyHeaders => BadResponse::TooLarge,
            _ => BadResponse::Malformed,
        })?;
    let len = match status {
        httparse::Status::Partial if buf.len() > max_bytes => return Err(BadResponse::TooLarge),
        httparse::Status::Partial => return Ok(Parsed::Partial),
        httparse::Status::Complete(n) if n > max_bytes => return Err(BadResponse::TooLarge),
        httparse::Status::Complete(n) => n,
    };
    head.len = len;
    head.status = res.code.ok_or(BadResponse::Malformed)?;
    head.version = res.version.ok_or(BadResponse::Malformed)?;
    head.reason = range_of(buf, res.reason.unwrap_or("").as_bytes());
    head.headers.clear();
    head.connection_tokens.clear();
    head.has_request_id = false;
    let (mut lengths, mut content_length, mut te, mut chunked) = (0, None, false, false);
    let (mut close, mut keep_alive) = (false, false);
    for h in res.headers.iter() {
        let name = h.name.as_bytes();
        head.headers
            .push((range_of(buf, name), range_of(buf, h.value)));
        if name.eq_ignore_ascii_case(b"content-length") {
            lengths += 1;
            content_length = Some(parse_content_length(h.value).ok_or(BadResponse::Framing)?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te = true;
            for t in tokens(h.value) {
                if chunked {
                    return Err(BadResponse::Framing);
                }
                chunked = t.eq_ignore_ascii_case(b"chunked");
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                } else if !t.eq_ignore_ascii_case(b"upgrade") {
                    head.connection_tokens.push(range_of(buf, t));
                }
            }
        } else if name.eq_ignore_ascii_case(b"x-request-id") {
            head.has_request_id = true;
        }
    }
    if lengths > 1 || (te && content_length.is_some()) {
        return Err(BadResponse::Framing);
    }
    head.keep_alive = if head.version == 1 {
        !close
    } else {
        keep_alive && !close
    };
    let no_body = request_was_head
        || (100..200).contains(&head.status)
        || head.status == 204
        || head.status == 304;
    head.body = if no_body {
        BodyFraming::None
    } else if te {
        if chunked {
            BodyFraming::Chunked
        } else {
            head.keep_alive = false;
            BodyFraming::UntilClose
        }
    } else {
        match content_length {
            Some(n) => BodyFraming::Length(n),
            None => {
                head.keep_alive = false;
                BodyFraming::UntilClose
            }
        }
    };
    if let BodyFraming::Length(0) = head.body {
        head.body = BodyFraming::None;
    }
    Ok(Parsed::Complete(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_request_line: 8192,
        max_header_bytes: 32768,
        max_headers: 100,
    };

    fn parse(raw: &str) -> Result<(RequestHead, Parsed), Reject> {
        let mut head = RequestHead::default();
        let p = parse_request(raw.as_bytes(), &LIMITS, &mut head)?;
        Ok((head, p))
    }

    #[test]
    fn simple_get() {
        let raw = "GET /a/b?x=1 HTTP/1.1\r\nHost: example.com:8080\r\nX-A: b\r\n\r\n";
        let (h, p) = parse(raw).unwrap();
        assert_eq!(p, Parsed::Complete(raw.len()));
        let b = raw.as_bytes();
        assert_eq!(at(b, &h.method), b"GET");
        assert_eq!(at(b, &h.path), b"/a/b");
        assert_eq!(at(b, &h.query), b"x=1");
        assert_eq!(at(b, &h.host), b"example.com");
        assert!(h.keep_alive);
        assert_eq!(h.body, BodyFraming::None);
    }

    #[test]
    fn host_is_compared_without_port_or_trailing_dot() {
        for (host, want) in [
            ("api.example.com", "api.example.com"),
            ("api.example.com.", "api.example.com"),
            ("api.example.com.:8443", "api.example.com"),
            ("[::1]:80", "[::1]"),
        ] {
            let raw = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
            let (h, _) = parse(&raw).unwrap();
            assert_eq!(at(raw.as_bytes(), &h.host), want.as_bytes(), "{host}");
        }
    }

    #[test]
    fn smuggling_vectors_are_rejected() {
        let cases = [
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", Reject::ClAndTe),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", Reject::BadContentLength),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", Reject::BadContentLength),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n", Reject::BadContentLength),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n", Reject::BadContentLength),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", Reject::BadTransferEncoding),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", Reject::BadTransferEncoding),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", Reject::BadTransferEncoding),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", Reject::UnsupportedTransferEncoding),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", Reject::BadTransferEncoding),
            ("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", Reject::Malformed),
            ("GET / HTTP/1.1\r\nHost: a\r\nBad Name: b\r\n\r\n", Reject::Malformed),
            ("GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n", Reject::Malformed),
            ("GET / HTTP/1.1\r\n\r\n", Reject::BadHost),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Reject::BadHost),
            ("GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n", Reject::BadTarget),
            ("CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", Reject::MethodNotImplemented),
            ("POST / HTTP/1.1\r\nHost: a\r\nExpect: magic\r\nContent-Length: 1\r\n\r\n", Reject::Expectation),
        ];
        for (raw, want) in cases {
            assert_eq!(parse(raw).err(), Some(want), "{raw:?}");
        }
    }

    #[test]
    fn limits_give_414_and_431() {
        let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(9000));
        assert_eq!(parse(&long).err(), Some(Reject::UriTooLong));
        let partial_long = format!("GET /{}", "a".repeat(9000));
        assert_eq!(parse(&partial_long).err(), Some(Reject::UriTooLong));
        // Found by the fuzzer: leading empty lines must not hide a long request line.
        let behind_empty_lines = format!(
            "\r\n\r\nGET /{} HTTP/1.1\r\nHost: a\r\n\r\n",
            "a".repeat(9000)
        );
        assert_eq!(parse(&behind_empty_lines).err(), Some(Reject::UriTooLong));
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        assert_eq!(parse(&raw).err(), Some(Reject::HeadersTooLarge));
        let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n", "v".repeat(40000));
        assert_eq!(parse(&big).err(), Some(Reject::HeadersTooLarge));
    }

    #[test]
    fn http10_and_connection_tokens() {
        let (h, _) = parse("GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(!h.keep_alive);
        let raw = "GET / HTTP/1.0\r\nConnection: keep-alive, X-Secret\r\n\r\n";
        let (h, _) = parse(raw).unwrap();
        assert!(h.keep_alive);
        assert_eq!(at(raw.as_bytes(), &h.connection_tokens[0]), b"X-Secret");
        let (h, _) =
            parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
                .unwrap();
        assert!(h.upgrade);
    }

    #[test]
    fn partial_heads_wait_for_more() {
        assert_eq!(
            parse("GET / HTTP/1.1\r\nHost: a\r\n").unwrap().1,
            Parsed::Partial
        );
    }

    #[test]
    fn responses() {
        let mut h = ResponseHead::default();
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(
            parse_response(raw, 65536, false, &mut h),
            Ok(Parsed::Complete(38))
        );
        assert_eq!(h.body, BodyFraming::Length(5));
        assert_eq!(
            parse_response(raw, 65536, true, &mut h),
            Ok(Parsed::Complete(38))
        );
        assert_eq!(h.body, BodyFraming::None);
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            parse_response(raw, 65536, false, &mut h),
            Err(BadResponse::Framing)
        );
        assert_eq!(
            parse_response(b"garbage\r\n\r\n", 65536, false, &mut h),
            Err(BadResponse::Malformed)
        );
        let raw = b"HTTP/1.1 200 OK\r\n\r\n";
        assert_eq!(
            parse_response(raw, 65536, false, &mut h),
            Ok(Parsed::Complete(19))
        );
        assert_eq!(h.body, BodyFraming::UntilClose);
        assert!(!h.keep_alive);
    }
}
