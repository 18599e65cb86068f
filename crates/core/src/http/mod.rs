//! HTTP/1.1 on the wire: strict head parsing, chunked framing, canonical paths,
//! and the small writers every response uses (status line, header, number,
//! percent-encoding).
//!
//! - [`codec`]: request and response heads on `httparse`, stored as byte ranges.
//! - [`chunked`]: incremental chunked decoding and encoding.
//! - [`path`]: the canonical path every later phase routes and checks on.
//! - [`bridge`]: HTTP/1.1 message bytes to and from HTTP/2 streams.
//!
//! Error responses are written by the `error` module's `write_response` only.

pub mod bridge;
pub mod chunked;
pub mod codec;
pub mod path;

/// Whether a `content-type` value names gRPC.
pub fn is_grpc(content_type: &[u8]) -> bool {
    content_type.len() >= 16
        && content_type[..16].eq_ignore_ascii_case(b"application/grpc")
        && matches!(content_type.get(16), None | Some(b'+' | b';'))
}

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

/// Appends `bytes` percent-encoded: each byte for which `keep` is false as
/// `%XX` (upper-case hex), the others as they are.
pub fn percent_encode(out: &mut Vec<u8>, bytes: &[u8], keep: impl Fn(u8) -> bool) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if keep(b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

/// RFC 3986's unreserved characters: what a path segment keeps unencoded.
pub fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        let mut out = Vec::new();
        write_u64(&mut out, 0);
        out.push(b' ');
        write_u64(&mut out, 18446744073709551615);
        assert_eq!(out, b"0 18446744073709551615");
    }

    #[test]
    fn percent_encoding() {
        let mut out = Vec::new();
        percent_encode(&mut out, b"a:b/c~d %", unreserved);
        assert_eq!(out, b"a%3Ab%2Fc~d%20%25");
    }
}
