//! HTTP/1.1 calls to LLM providers over the data plane's per-shard pools.
//!
//! A provider is a hidden cluster (see `spec`), so a call checks a connection out
//! of that cluster's pool (or connects, with TLS for `https`), writes one request
//! with a `Content-Length` body, and parses the response head with the same strict
//! codec as proxied responses. The body is then pulled piece by piece with
//! [`ProviderResponse::next`], de-chunked as it arrives, so streams reach the
//! client as the provider sends them. The connection goes back to the pool only
//! when the body was read to its end and the provider keeps it alive.

use super::spec::Provider;
use bytes::Buf;
use hypergate_core::http::chunked::{ChunkedDecoder, Step};
use hypergate_core::http::codec::{at, parse_response, BodyFraming, Parsed, ResponseHead};
use hypergate_core::io::{read_more, write_out, ReadOutcome};
use hypergate_upstream::lease::{lease, Lease, LeaseError};
use hypergate_upstream::ClusterRuntime;
use std::time::{Duration, Instant};

/// Why a provider call failed before a response head arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// Could not connect (or the TLS handshake failed).
    Connect,
    /// No connection (or no response head) in time.
    Timeout,
    /// The provider closed or reset the connection.
    Reset,
    /// The response head was not valid HTTP.
    BadResponse,
    /// The provider's pool is at `max_connections`.
    PoolFull,
}

impl SendError {
    /// Label for metrics and errors.
    pub fn label(self) -> &'static str {
        match self {
            SendError::Connect => "connect_error",
            SendError::Timeout => "timeout",
            SendError::Reset => "reset",
            SendError::BadResponse => "bad_response",
            SendError::PoolFull => "pool_full",
        }
    }
}

/// Why reading a response body failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Nothing arrived within the provider's timeout.
    #[error("the provider sent nothing within its timeout")]
    Timeout,
    /// The connection ended before the body did.
    #[error("the provider closed the connection before the end of the stream")]
    Truncated,
    /// Invalid chunked framing.
    #[error("the provider's chunked framing is invalid")]
    Framing,
    /// The body is larger than allowed.
    #[error("the provider's answer is too large")]
    TooLarge,
}

enum Framing {
    Length(u64),
    Chunked(ChunkedDecoder),
    Close,
    Done,
}

/// A response whose head has arrived.
pub struct ProviderResponse<'a> {
    lease: Lease<'a>,
    /// Status code.
    pub status: u16,
    /// `Retry-After` in seconds, when given.
    pub retry_after: Option<u64>,
    /// Whether the body is an event stream.
    pub event_stream: bool,
    framing: Framing,
    keep_alive: bool,
    timeout: Duration,
    /// When the request was written.
    pub sent_at: Instant,
}

/// Sends `body` as `POST {base_path}{suffix}` (or GET without a body) to the provider.
#[allow(clippy::too_many_arguments)]
pub async fn send<'a>(
    cluster: &'a ClusterRuntime,
    provider: &Provider,
    method: &str,
    suffix: &str,
    body: &[u8],
    accept_stream: bool,
    request_id: &str,
    out: &mut Vec<u8>,
    max_head: usize,
) -> Result<ProviderResponse<'a>, SendError> {
    let mut attempt_fresh = false;
    loop {
        // A pooled connection that turned out closed is retried once on a fresh one.
        let mut lease = match lease(cluster, 0, !attempt_fresh, true).await {
            Ok(l) => l,
            Err(LeaseError::PoolFull) => return Err(SendError::PoolFull),
            Err(LeaseError::Connect) => return Err(SendError::Connect),
            // Nothing was sent: a connect timeout is retried like a refused connect.
            Err(LeaseError::ConnectTimeout) => return Err(SendError::Connect),
        };
        let reused = lease.conn().reused;
        out.clear();
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(provider.base_path.as_bytes());
        out.extend_from_slice(suffix.as_bytes());
        out.extend_from_slice(provider.query.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        out.extend_from_slice(provider.host.as_bytes());
        out.extend_from_slice(b"\r\nuser-agent: hypergate\r\nx-request-id: ");
        out.extend_from_slice(request_id.as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&provider.headers);
        out.extend_from_slice(if accept_stream {
            b"accept: text/event-stream\r\n".as_slice()
        } else {
            b"accept: application/json\r\n".as_slice()
        });
        if method == "POST" {
            out.extend_from_slice(b"content-type: application/json\r\ncontent-length: ");
            hypergate_core::http::write_u64(out, body.len() as u64);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
        let sent_at = Instant::now();
        if write_out(&mut lease.conn().stream, out, provider.timeout)
            .await
            .is_err()
        {
            if reused {
                attempt_fresh = true;
                continue;
            }
            return Err(SendError::Reset);
        }
        let mut head = ResponseHead::default();
        let deadline = sent_at + provider.timeout;
        let conn = lease.conn();
        loop {
            match parse_response(&conn.rbuf, max_head, false, &mut head) {
                Ok(Parsed::Complete(n)) => {
                    if (100..200).contains(&head.status) {
                        conn.rbuf.advance(n);
                        continue;
                    }
                    let mut retry_after = None;
                    let mut event_stream = false;
                    for (name, value) in &head.headers {
                        let (name, value) = (at(&conn.rbuf, name), at(&conn.rbuf, value));
                        if name.eq_ignore_ascii_case(b"retry-after") {
                            retry_after = std::str::from_utf8(value)
                                .ok()
                                .and_then(|v| v.trim().parse().ok());
                        } else if name.eq_ignore_ascii_case(b"content-type") {
                            event_stream = value
                                .windows(17)
                                .any(|w| w.eq_ignore_ascii_case(b"text/event-stream"));
                        }
                    }
                    conn.rbuf.advance(n);
                    let framing = match head.body {
                        BodyFraming::None => Framing::Done,
                        BodyFraming::Length(n) => Framing::Length(n),
                        BodyFraming::Chunked => Framing::Chunked(ChunkedDecoder::default()),
                        BodyFraming::UntilClose => Framing::Close,
                    };
                    return Ok(ProviderResponse {
                        lease,
                        status: head.status,
                        retry_after,
                        event_stream,
                        framing,
                        keep_alive: head.keep_alive,
                        timeout: provider.timeout,
                        sent_at,
                    });
                }
                Ok(Parsed::Partial) => {}
                Err(_) => return Err(SendError::BadResponse),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SendError::Timeout);
            }
            let was_empty = conn.rbuf.is_empty();
            match read_more(&mut conn.stream, &mut conn.rbuf, left).await {
                ReadOutcome::Data => {}
                ReadOutcome::Timeout => return Err(SendError::Timeout),
                ReadOutcome::Eof | ReadOutcome::Failed if was_empty && reused => {
                    attempt_fresh = true;
                    break;
                }
                ReadOutcome::Eof | ReadOutcome::Failed => return Err(SendError::Reset),
            }
        }
    }
}

impl ProviderResponse<'_> {
    /// Appends the next piece of the body to `dst`. `Ok(false)`: the body ended.
    pub async fn next(&mut self, dst: &mut Vec<u8>) -> Result<bool, BodyError> {
        loop {
            let conn = self
                .lease
                .conn
                .as_mut()
                .expect("the lease holds its connection until finished");
            match &mut self.framing {
                Framing::Done => return Ok(false),
                Framing::Length(0) => {
                    self.framing = Framing::Done;
                    return Ok(false);
                }
                Framing::Length(left) if !conn.rbuf.is_empty() => {
                    let n = (*left).min(conn.rbuf.len() as u64) as usize;
                    dst.extend_from_slice(&conn.rbuf[..n]);
                    conn.rbuf.advance(n);
                    *left -= n as u64;
                    return Ok(true);
                }
                Framing::Close if !conn.rbuf.is_empty() => {
                    dst.extend_from_slice(&conn.rbuf);
                    conn.rbuf.clear();
                    return Ok(true);
                }
                Framing::Chunked(dec) if !conn.rbuf.is_empty() => {
                    match dec.step(&conn.rbuf).map_err(|_| BodyError::Framing)? {
                        Step::Progress { consumed, data } => {
                            dst.extend_from_slice(&conn.rbuf[data]);
                            conn.rbuf.advance(consumed);
                            return Ok(true);
                        }
                        Step::Done { consumed } => {
                            conn.rbuf.advance(consumed);
                            self.framing = Framing::Done;
                            return Ok(false);
                        }
                        Step::NeedMore => {}
                    }
                }
                _ => {}
            }
            match read_more(&mut conn.stream, &mut conn.rbuf, self.timeout).await {
                ReadOutcome::Data => {}
                ReadOutcome::Timeout => return Err(BodyError::Timeout),
                ReadOutcome::Eof | ReadOutcome::Failed => {
                    if matches!(self.framing, Framing::Close) {
                        self.keep_alive = false;
                        self.framing = Framing::Done;
                        return Ok(false);
                    }
                    return Err(BodyError::Truncated);
                }
            }
        }
    }

    /// Reads the whole body (up to `limit` bytes).
    pub async fn read_all(&mut self, limit: usize) -> Result<Vec<u8>, BodyError> {
        let mut body = Vec::new();
        while self.next(&mut body).await? {
            if body.len() > limit {
                return Err(BodyError::TooLarge);
            }
        }
        Ok(body)
    }

    /// Reads and discards what is left of the body (at most `limit` bytes), so
    /// the connection can be reused.
    pub async fn drain(&mut self, limit: usize) {
        let mut rest = Vec::new();
        while rest.len() <= limit && matches!(self.next(&mut rest).await, Ok(true)) {}
    }

    /// Returns the connection to the pool if the body was read to its end and
    /// the provider keeps it alive; closes it otherwise.
    pub fn finish(self) {
        if matches!(self.framing, Framing::Done) && self.keep_alive {
            self.lease.release();
        }
    }
}
