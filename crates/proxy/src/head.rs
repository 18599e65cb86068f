//! The first phase: read one request head (within `header_timeout` and the
//! size limits), parse it strictly, and make its path canonical. Every later
//! phase, and the upstream, sees the canonical path; the client's stays in
//! `head.raw_path`.
//!
//! Depends on `hypergate-core`'s codec, canonical path and socket reads.

use crate::exchange::ClientStream;
use crate::state::Installed;
use bytes::{Buf, BytesMut};
use hypergate_core::clock::coarse_now;
use hypergate_core::error::{ErrorKind, GatewayError};
use hypergate_core::http::codec::{at, parse_request, HeadLimits, Parsed, Reject, RequestHead};
use hypergate_core::http::path::{normalize, Normalized, PathPolicy};
use hypergate_core::io::{read_more, ReadOutcome};

/// Where a head is read into (the connection's buffers, reused per request).
pub struct HeadBufs<'a> {
    /// Bytes read from the client and not yet consumed.
    pub rbuf: &'a mut BytesMut,
    /// The head's bytes (and the canonical path, when rewritten).
    pub head_buf: &'a mut Vec<u8>,
    /// The parsed head.
    pub head: &'a mut RequestHead,
    /// Scratch for the canonical path.
    pub canon: &'a mut Vec<u8>,
}

/// Reads and parses one request head. `Ok(false)`: the client went away
/// without a complete head.
pub async fn read<S: ClientStream>(
    inst: &Installed,
    stream: &mut S,
    b: HeadBufs<'_>,
) -> Result<bool, GatewayError> {
    let l = &inst.config.raw.limits;
    let limits = HeadLimits {
        max_request_line: l.max_request_line,
        max_header_bytes: l.max_header_bytes,
        max_headers: l.max_headers,
    };
    let deadline = coarse_now() + l.header_timeout;
    loop {
        match parse_request(b.rbuf, &limits, b.head)? {
            Parsed::Complete(n) => {
                b.head_buf.clear();
                b.head_buf.extend_from_slice(&b.rbuf[..n]);
                b.rbuf.advance(n);
                canonicalize(&inst.config.path, b.head_buf, b.head, b.canon)?;
                return Ok(true);
            }
            Parsed::Partial => {
                let left = deadline.saturating_duration_since(coarse_now());
                if left.is_zero() {
                    return Err(Reject::HeaderTimeout.into());
                }
                match read_more(stream, b.rbuf, left).await {
                    ReadOutcome::Data => {}
                    ReadOutcome::Timeout => return Err(Reject::HeaderTimeout.into()),
                    ReadOutcome::Eof | ReadOutcome::Failed => return Ok(false),
                }
            }
        }
    }
}

/// Replaces the head's path with its canonical form. A rewritten path is
/// appended to the head buffer and `head.path` points at it, so everything that
/// reads the path through the head sees the canonical one; `head.raw_path`
/// keeps what the client sent.
fn canonicalize(
    policy: &PathPolicy,
    head_buf: &mut Vec<u8>,
    head: &mut RequestHead,
    canon: &mut Vec<u8>,
) -> Result<(), GatewayError> {
    let raw = at(head_buf, &head.path);
    if raw == b"*" {
        // `OPTIONS *`: no path to route on.
        return Ok(());
    }
    let normalized = normalize(raw, policy, canon).map_err(|p| {
        GatewayError::new(
            ErrorKind::Rejected(Reject::BadPath),
            format!("{p}; nothing was forwarded"),
        )
    })?;
    if let Normalized::Rewritten = normalized {
        let start = head_buf.len() as u32;
        head_buf.extend_from_slice(canon);
        head.path = start..head_buf.len() as u32;
    }
    Ok(())
}
