//! The one upstream client: how every request leaves the gateway, proxied or
//! an LLM provider call.
//!
//! - [`attempt`]: one attempt on one endpoint: lease a connection (pooled or
//!   new), write the request through its [`Outgoing`], read the response head
//!   by its deadline (interim 1xx skipped). A pooled connection that turns out
//!   closed before the upstream answered anything is replaced by a new one,
//!   once, when the request can be written again.
//! - [`Response`]: an answered attempt: the leased connection with the head
//!   still in its buffer, and [`Body`], the body read piece by piece
//!   (de-chunked) for callers that consume it themselves.
//! - [`Retries`]: the one retry decision, for both callers: whether the failure
//!   is safe to retry for this request ([`retry_safe`]), attempts left, the
//!   cluster's retry budget, backoff with jitter and `Retry-After`, all within
//!   the call's deadline.
//! - [`record_outcome`]: what an attempt tells outlier detection.
//! - [`Failure`]: why an attempt failed, as a [`GatewayError`].
//!
//! Depends on this crate's pools, leases and breakers, and on `hypergate-core`.

use crate::lease::{lease, Lease, LeaseError};
use crate::{next_random, ClusterRuntime, UpstreamConn};
use bytes::Buf;
use hypergate_core::clock::coarse_now;
use hypergate_core::error::{ErrorKind, GatewayError};
use hypergate_core::http::chunked::{ChunkedDecoder, Step};
use hypergate_core::http::codec::{at, parse_response, BodyFraming, Parsed, ResponseHead};
use hypergate_core::io::{read_more, write_out, PumpError, ReadOutcome};
use std::cell::Cell;
use std::time::{Duration, Instant};

/// Why an attempt failed before a response head was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No endpoint of the cluster is available.
    NoEndpoint,
    /// The endpoint's pool is at `max_connections`.
    PoolFull,
    /// Connecting (or the TLS handshake) failed.
    Connect,
    /// Connecting timed out.
    ConnectTimeout,
    /// Writing the request failed.
    Write,
    /// The upstream closed or reset before a complete response head.
    Reset,
    /// No response head in time.
    Timeout,
    /// The response head was not valid HTTP.
    BadResponse,
    /// The client's request body could not be streamed (the client's fault).
    Body(PumpError),
}

impl Failure {
    /// Whether the request surely never reached the upstream, so sending it
    /// again is safe whatever its method.
    pub fn unsent(self) -> bool {
        matches!(
            self,
            Failure::NoEndpoint | Failure::PoolFull | Failure::Connect | Failure::ConnectTimeout
        )
    }

    /// Whether it counts against the endpoint (outlier detection).
    pub fn endpoint_fault(self) -> bool {
        !matches!(
            self,
            Failure::NoEndpoint | Failure::PoolFull | Failure::Body(_)
        )
    }

    /// Short label (metrics, logs).
    pub fn label(self) -> &'static str {
        match self {
            Failure::NoEndpoint => "no_endpoint",
            Failure::PoolFull => "pool_full",
            Failure::Connect => "connect_error",
            Failure::ConnectTimeout => "connect_timeout",
            Failure::Write => "write_error",
            Failure::Reset => "reset",
            Failure::Timeout => "timeout",
            Failure::BadResponse => "bad_response",
            Failure::Body(_) => "request_body",
        }
    }

    /// The error answered for it on an API route.
    pub fn error(self) -> GatewayError {
        use ErrorKind::*;
        let (kind, message) = match self {
            Failure::NoEndpoint => (NoHealthyEndpoint, "no healthy endpoint in the cluster"),
            Failure::PoolFull => (PoolExhausted, "the upstream connection limit is reached"),
            Failure::Connect => (ConnectFailed, "could not connect to the upstream"),
            Failure::ConnectTimeout => (ConnectTimeout, "connecting to the upstream timed out"),
            Failure::Write => (UpstreamWriteFailed, "sending the request upstream failed"),
            Failure::Reset => (
                UpstreamReset,
                "the upstream closed the connection without a response",
            ),
            Failure::Timeout => (UpstreamTimeout, "the upstream did not answer in time"),
            Failure::BadResponse => (BadUpstreamResponse, "the upstream sent an invalid response"),
            Failure::Body(p) => return GatewayError::request_body(p),
        };
        GatewayError::new(kind, message)
    }
}

/// A request as the client writes it.
#[allow(async_fn_in_trait)] // Shards are single-threaded: no `Send` bound is wanted.
pub trait Outgoing {
    /// Writes the request head for `endpoint` (its `host:port` label) into
    /// `out`, with any body bytes that leave in the same write.
    fn write_head(&mut self, out: &mut Vec<u8>, endpoint: &str);

    /// Streams what is left of the body once the head is written (nothing, by
    /// default: the body went with the head, or there is none).
    async fn send_body(
        &mut self,
        _conn: &mut UpstreamConn,
        _out: &mut Vec<u8>,
    ) -> Result<(), Failure> {
        Ok(())
    }

    /// Whether the request can be written again from its start (no body byte
    /// was taken from the client that cannot be read again).
    fn resendable(&self) -> bool;

    /// Whether the body streams while the response is read (a gRPC call):
    /// [`attempt`] then returns once the head is sent, before any response
    /// byte, and the caller sends the body and reads the head itself.
    fn duplex(&self) -> bool {
        false
    }
}

/// The limits of one attempt.
#[derive(Debug, Clone, Copy)]
pub struct AttemptLimits {
    /// Longest wait for a write to the upstream.
    pub write_timeout: Duration,
    /// Longest wait for the response head, counted from when the request was
    /// sent whole (a streamed body has its own deadlines).
    pub response_timeout: Duration,
    /// The call's deadline, if any: the attempt ends there, whatever it waits on.
    pub deadline: Option<Instant>,
    /// Largest response head.
    pub max_head: usize,
    /// The request is a HEAD (its response has no body).
    pub head_request: bool,
    /// Check a pooled connection with a peek before use (for requests whose
    /// body cannot be written again).
    pub verify_open: bool,
}

/// An answered attempt: the head is parsed into the caller's [`ResponseHead`]
/// and still in the connection's buffer (`conn().rbuf`).
pub struct Response<'a> {
    /// The connection, returned to the pool only by [`Lease::release`].
    pub lease: Lease<'a>,
    /// When the request was sent.
    pub sent_at: Instant,
    /// Time from sending the request to a complete response head, µs.
    pub upstream_us: u64,
}

impl<'a> Response<'a> {
    /// The connection.
    pub fn conn(&mut self) -> &mut UpstreamConn {
        self.lease.conn()
    }

    /// The body, to read piece by piece: consumes the head from the buffer.
    /// `timeout`: the longest silence while reading.
    pub fn into_body(mut self, head: &ResponseHead, timeout: Duration) -> Body<'a> {
        self.conn().rbuf.advance(head.len);
        let framing = match head.body {
            BodyFraming::None => Framing::Done,
            BodyFraming::Length(n) => Framing::Length(n),
            BodyFraming::Chunked => Framing::Chunked(ChunkedDecoder::default()),
            BodyFraming::UntilClose => Framing::Close,
        };
        Body {
            lease: self.lease,
            framing,
            keep_alive: head.keep_alive,
            timeout,
        }
    }
}

/// One attempt of `request` on endpoint `ep` of `cluster`; the response head
/// is parsed into `head`.
pub async fn attempt<'a>(
    cluster: &'a ClusterRuntime,
    ep: usize,
    request: &mut impl Outgoing,
    head: &mut ResponseHead,
    out: &mut Vec<u8>,
    limits: AttemptLimits,
) -> Result<Response<'a>, Failure> {
    match limits.deadline {
        None => attempt_inner(cluster, ep, request, head, out, limits).await,
        Some(deadline) => {
            // Past the deadline the attempt is abandoned (its connection closed).
            let at = monoio::time::Instant::from_std(deadline);
            monoio::time::timeout_at(at, attempt_inner(cluster, ep, request, head, out, limits))
                .await
                .unwrap_or(Err(Failure::Timeout))
        }
    }
}

async fn attempt_inner<'a>(
    cluster: &'a ClusterRuntime,
    ep: usize,
    request: &mut impl Outgoing,
    head: &mut ResponseHead,
    out: &mut Vec<u8>,
    limits: AttemptLimits,
) -> Result<Response<'a>, Failure> {
    let mut pooled = true;
    loop {
        let mut lease = match lease(cluster, ep, pooled, limits.verify_open).await {
            Ok(l) => l,
            Err(LeaseError::PoolFull) => return Err(Failure::PoolFull),
            Err(LeaseError::Connect) => return Err(Failure::Connect),
            Err(LeaseError::ConnectTimeout) => return Err(Failure::ConnectTimeout),
        };
        // A keep-alive the upstream closed meanwhile fails at first use: a race,
        // not the endpoint's fault. Once, on a new connection, if the request
        // can be written again.
        let reused = lease.conn().reused && pooled;
        out.clear();
        request.write_head(out, &cluster.endpoints[ep].label);
        let sent_at = Instant::now();
        if write_out(&mut lease.conn().stream, out, limits.write_timeout)
            .await
            .is_err()
        {
            if reused && request.resendable() {
                pooled = false;
                continue;
            }
            return Err(Failure::Write);
        }
        if request.duplex() {
            // The body streams alongside the response: the caller reads the
            // head ([`read_head`]) while it sends the body.
            return Ok(Response {
                lease,
                sent_at,
                upstream_us: 0,
            });
        }
        request.send_body(lease.conn(), out).await?;
        let deadline = coarse_now() + limits.response_timeout;
        let conn = lease.conn();
        let read = read_head(&mut conn.stream, &mut conn.rbuf, head, &limits, deadline);
        match read.await {
            Ok(()) => {
                let upstream_us = sent_at.elapsed().as_micros() as u64;
                return Ok(Response {
                    lease,
                    sent_at,
                    upstream_us,
                });
            }
            Err(Failure::Reset) if reused && request.resendable() => pooled = false,
            Err(f) => return Err(f),
        }
    }
}

/// Reads a response head from `src` into `rbuf` and parses it into `head`
/// (interim 1xx responses skipped) by `deadline`. A close before any byte
/// is [`Failure::Reset`].
pub async fn read_head<R: monoio::io::AsyncReadRent>(
    src: &mut R,
    rbuf: &mut bytes::BytesMut,
    head: &mut ResponseHead,
    limits: &AttemptLimits,
    deadline: Instant,
) -> Result<(), Failure> {
    loop {
        match parse_response(rbuf, limits.max_head, limits.head_request, head) {
            Ok(Parsed::Complete(n)) => {
                if (100..200).contains(&head.status) && head.status != 101 {
                    // Interim responses: the gateway answers 100-continue itself.
                    rbuf.advance(n);
                    continue;
                }
                return Ok(());
            }
            Ok(Parsed::Partial) => {}
            Err(_) => return Err(Failure::BadResponse),
        }
        let left = deadline.saturating_duration_since(coarse_now());
        if left.is_zero() {
            return Err(Failure::Timeout);
        }
        let was_empty = rbuf.is_empty();
        match read_more(src, rbuf, left).await {
            ReadOutcome::Data => {}
            ReadOutcome::Timeout => return Err(Failure::Timeout),
            ReadOutcome::Eof | ReadOutcome::Failed if was_empty => return Err(Failure::Reset),
            ReadOutcome::Eof | ReadOutcome::Failed => return Err(Failure::BadResponse),
        }
    }
}

/// What an attempt came to, for the retry decision and outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It failed before a response head.
    Failed(Failure),
    /// The upstream answered with this status.
    Answered(u16),
}

/// Tells outlier detection what endpoint `ep` did: failures that are the
/// endpoint's and 5xx answers count against it, anything else for it.
pub fn record_outcome(cluster: &ClusterRuntime, ep: usize, outcome: Outcome) {
    match outcome {
        Outcome::Failed(f) if f.endpoint_fault() => cluster.failure(ep),
        Outcome::Failed(_) => {}
        Outcome::Answered(s) if s >= 500 => cluster.failure(ep),
        Outcome::Answered(_) => cluster.success(ep),
    }
}

/// Which answers are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryStatuses {
    /// None: every answer goes to the client.
    None,
    /// 502, 503 and 504 (`retry.on_5xx` of a cluster).
    Gateway,
    /// 408, 429 and every 5xx (LLM providers: overload and outages).
    Overload,
}

impl RetryStatuses {
    fn retries(self, status: u16) -> bool {
        match self {
            RetryStatuses::None => false,
            RetryStatuses::Gateway => (502..=504).contains(&status),
            RetryStatuses::Overload => status == 408 || status == 429 || status >= 500,
        }
    }
}

/// How a call retries.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// Which answers are retried (for replayable requests).
    pub statuses: RetryStatuses,
    /// Whether an attempt that timed out waiting for its answer is retried: the
    /// upstream may still act on it (and an LLM provider bill it).
    pub on_timeout: bool,
    /// Attempts made before backoff starts (a fallback chain's first pass
    /// goes through its targets at once).
    pub free: u32,
    /// Backoff base, doubled per round; full jitter.
    pub backoff: Duration,
    /// Longest wait between attempts (`Retry-After` included).
    pub max_backoff: Duration,
}

/// The one rule of retry safety. A failure before the request reached the
/// upstream is always safe; otherwise only a replayable request (idempotent,
/// or one the caller knows is safe to send twice, with its body still at
/// hand) is sent again, and a timed-out one only when the policy says so.
pub fn retry_safe(policy: &RetryPolicy, outcome: Outcome, replayable: bool) -> bool {
    match outcome {
        Outcome::Failed(Failure::Body(_)) => false,
        Outcome::Failed(f) if f.unsent() => true,
        Outcome::Failed(Failure::Timeout) => replayable && policy.on_timeout,
        Outcome::Failed(_) => replayable,
        Outcome::Answered(s) => replayable && policy.statuses.retries(s),
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Try again after this wait.
    Again(Duration),
    /// Stop: not safe, no attempt left, or no retry budget.
    Stop,
    /// Stop: the next attempt could not start before the deadline.
    OutOfTime,
}

/// A call's retries: attempts made, the budget they draw on, the deadline.
pub struct Retries<'c> {
    policy: RetryPolicy,
    budget: &'c ClusterRuntime,
    made: u32,
    deadline: Option<Instant>,
}

impl<'c> Retries<'c> {
    /// A call under `policy`, drawing retries from `budget`'s retry budget
    /// (the call deposits into it), ending at `deadline` if given.
    pub fn new(policy: RetryPolicy, budget: &'c ClusterRuntime, deadline: Option<Instant>) -> Self {
        budget.deposit();
        Self {
            policy,
            budget,
            made: 0,
            deadline,
        }
    }

    /// Counts an attempt about to be made.
    pub fn attempt(&mut self) {
        self.made += 1;
    }

    /// Attempts made.
    pub fn made(&self) -> u32 {
        self.made
    }

    /// Whether the deadline has passed.
    pub fn out_of_time(&self) -> bool {
        self.deadline.is_some_and(|d| coarse_now() >= d)
    }

    /// Decides on the next attempt after one that came to `outcome`:
    /// safety first, then attempts left, the deadline (the wait must end
    /// before it), and one token of the retry budget. `retry_after`: what the
    /// upstream asked for, honoured once backoff applies.
    pub fn next(
        &mut self,
        outcome: Outcome,
        replayable: bool,
        retry_after: Option<u64>,
        rng: &Cell<u64>,
    ) -> Next {
        if !retry_safe(&self.policy, outcome, replayable) || self.made >= self.policy.attempts {
            return Next::Stop;
        }
        let mut wait = Duration::ZERO;
        let free = self.policy.free.max(1);
        if self.made >= free && !self.policy.backoff.is_zero() {
            let round = self.made / free;
            let base = self.policy.backoff.saturating_mul(1 << (round - 1).min(10));
            wait = Duration::from_micros(next_random(rng) % (base.as_micros() as u64 + 1));
            if let Some(s) = retry_after {
                wait = wait.max(Duration::from_secs(s));
            }
            wait = wait.min(self.policy.max_backoff);
        }
        if self.deadline.is_some_and(|d| coarse_now() + wait >= d) {
            return Next::OutOfTime;
        }
        if !self.budget.take_retry() {
            return Next::Stop;
        }
        Next::Again(wait)
    }
}

enum Framing {
    Length(u64),
    Chunked(ChunkedDecoder),
    Close,
    Done,
}

/// A response body read piece by piece (de-chunked as it arrives), for
/// callers that consume it themselves (the LLM gateway's streams).
pub struct Body<'a> {
    lease: Lease<'a>,
    framing: Framing,
    keep_alive: bool,
    timeout: Duration,
}

/// Why reading a response body failed. The messages complete a sentence
/// whose subject is the upstream ("the provider {e}").
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Nothing arrived within the timeout.
    #[error("sent nothing within its timeout")]
    Timeout,
    /// The connection ended before the body did.
    #[error("closed the connection before the end of the stream")]
    Truncated,
    /// Invalid chunked framing.
    #[error("sent invalid chunked framing")]
    Framing,
    /// The body is larger than allowed.
    #[error("sent an answer larger than allowed")]
    TooLarge,
}

impl Body<'_> {
    /// Appends the next piece of the body to `dst`. `Ok(false)`: the body ended.
    pub async fn next(&mut self, dst: &mut Vec<u8>) -> Result<bool, BodyError> {
        loop {
            let conn = self.lease.conn();
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
    /// the upstream keeps it alive; closes it otherwise.
    pub fn finish(self) {
        if matches!(self.framing, Framing::Done) && self.keep_alive {
            self.lease.release();
        }
    }
}

/// The value of response header `name` (`head` parsed from `buf`).
pub fn header<'b>(buf: &'b [u8], head: &ResponseHead, name: &str) -> Option<&'b [u8]> {
    head.headers
        .iter()
        .find(|(n, _)| at(buf, n).eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| at(buf, v))
}
