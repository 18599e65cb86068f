//! HTTP/1.1 on the wire: strict head parsing, chunked framing, and error responses.
//!
//! - [`codec`]: request and response heads on `httparse`, stored as byte ranges.
//! - [`chunked`]: incremental chunked decoding and encoding.
//! - [`write_error`]: the one place error responses (JSON bodies) are written.

pub mod chunked;
pub mod codec;
pub mod path;

/// Reason phrase for a status code.
pub fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown")
}

/// Appends `HTTP/1.1 <status> <reason>\r\n`.
pub fn write_status_line(out: &mut Vec<u8>, status: u16) {
    out.extend_from_slice(b"HTTP/1.1 ");
    write_u64(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends a decimal number without allocating.
pub fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends `name: value\r\n`.
pub fn write_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends a complete error response with body
/// `{"error":{"type":...,"message":...,"request_id":...}}`; `extra` holds
/// pre-serialized header lines to add (CORS, challenges, rate-limit headers).
pub fn write_error(
    out: &mut Vec<u8>,
    status: u16,
    kind: &str,
    message: &str,
    request_id: &str,
    close: bool,
    extra: &[u8],
) {
    let body = serde_json::json!({
        "error": { "type": kind, "message": message, "request_id": request_id }
    })
    .to_string();
    write_status_line(out, status);
    write_header(out, b"content-type", b"application/json");
    out.extend_from_slice(b"content-length: ");
    write_u64(out, body.len() as u64);
    out.extend_from_slice(b"\r\n");
    if !request_id.is_empty() {
        write_header(out, b"x-request-id", request_id.as_bytes());
    }
    if close {
        write_header(out, b"connection", b"close");
    }
    out.extend_from_slice(extra);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_is_valid_http_with_json() {
        let mut out = Vec::new();
        write_error(
            &mut out,
            503,
            "no_healthy_endpoint",
            "all down",
            "abc",
            true,
            b"retry-after: 1\r\n",
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("\r\nretry-after: 1"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["type"], "no_healthy_endpoint");
        assert_eq!(v["error"]["request_id"], "abc");
    }

    #[test]
    fn numbers() {
        let mut out = Vec::new();
        write_u64(&mut out, 0);
        out.push(b' ');
        write_u64(&mut out, 18446744073709551615);
        assert_eq!(out, b"0 18446744073709551615");
    }
}
