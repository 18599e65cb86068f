//! `hypergate-upstream`: upstream clusters as a shard sees them (pools, load
//! balancing, outlier detection, retry budget, health checks, leases, TLS to
//! upstreams) and the one client that sends requests to them ([`client`]),
//! used by the proxy and by the LLM gateway's provider calls alike.
//!
//! Allowed dependencies: `hypergate-core` (and third-party crates).
//!
//! Everything here is per shard and single-threaded (`Cell`/`RefCell`): each
//! shard keeps its own keep-alive pool per endpoint, its own balancer state,
//! its own passive outlier detection and retry budget. The only shared state
//! is the active health-check verdict per endpoint, an `AtomicBool` written by
//! the health-check thread ([`health`]) and read with a relaxed load.
#![deny(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod breaker;
pub mod client;
pub mod cluster;
pub mod h2;
pub mod health;
pub mod lease;
pub mod tls;

pub use cluster::{Cluster, Endpoint};
use hypergate_core::clock::coarse_now;
use hypergate_core::config::raw::LbPolicy;
pub use hypergate_core::rng::{next_random, sampled};
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, Split};
use monoio::net::TcpStream;
use monoio::BufResult;
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An upstream byte stream: plain TCP, or TLS to clusters with `tls` set.
pub enum UpstreamStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP (boxed: the session state is large).
    Tls(Box<monoio_rustls::ClientTlsStream<TcpStream>>),
    /// One stream on a multiplexed HTTP/2 connection (see [`h2`]).
    H2(Box<h2::H2Stream>),
}

impl AsyncReadRent for UpstreamStream {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Plain(s) => s.read(buf).await,
            UpstreamStream::Tls(s) => s.read(buf).await,
            UpstreamStream::H2(s) => s.read(buf).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Plain(s) => s.readv(buf).await,
            UpstreamStream::Tls(s) => s.readv(buf).await,
            UpstreamStream::H2(s) => s.readv(buf).await,
        }
    }
}

impl AsyncWriteRent for UpstreamStream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Plain(s) => s.write(buf).await,
            UpstreamStream::Tls(s) => s.write(buf).await,
            UpstreamStream::H2(s) => s.write(buf).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Plain(s) => s.writev(buf).await,
            UpstreamStream::Tls(s) => s.writev(buf).await,
            UpstreamStream::H2(s) => s.writev(buf).await,
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        match self {
            UpstreamStream::Plain(s) => s.flush().await,
            UpstreamStream::Tls(s) => s.flush().await,
            UpstreamStream::H2(s) => s.flush().await,
        }
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        match self {
            UpstreamStream::Plain(s) => s.shutdown().await,
            UpstreamStream::Tls(s) => s.shutdown().await,
            UpstreamStream::H2(s) => s.shutdown().await,
        }
    }
}

// SAFETY: every variant is `Split` (monoio's TcpStream, rustls streams over
// it, and `H2Stream`): their reads and writes touch independent state and may
// run concurrently.
unsafe impl Split for UpstreamStream {}

/// An upstream connection with its read buffer.
pub struct UpstreamConn {
    /// The byte stream.
    pub stream: UpstreamStream,
    /// The socket's fd (for the liveness peek).
    fd: std::os::fd::RawFd,
    /// Bytes read but not yet consumed.
    pub rbuf: bytes::BytesMut,
    /// Whether it came from the pool (a stale keep-alive may fail at first use).
    pub reused: bool,
    idle_since: Instant,
}

impl UpstreamConn {
    /// Wraps a freshly connected stream; `fd` is its socket.
    pub fn new(stream: UpstreamStream, fd: std::os::fd::RawFd) -> Self {
        Self::with_buffer(stream, fd, 16 * 1024)
    }

    /// Wraps `stream` with a read buffer of `capacity` bytes to begin with
    /// (an HTTP/2 stream's serves one exchange: a small one, grown if needed).
    fn with_buffer(stream: UpstreamStream, fd: std::os::fd::RawFd, capacity: usize) -> Self {
        Self {
            stream,
            fd,
            rbuf: bytes::BytesMut::with_capacity(capacity),
            reused: false,
            idle_since: coarse_now(),
        }
    }

    /// The socket's fd (a drain shuts a tunnel's sockets down through it).
    pub fn fd(&self) -> std::os::fd::RawFd {
        self.fd
    }

    /// Whether this is a stream on a multiplexed (HTTP/2) connection: it is
    /// never pooled itself, and its connection is counted once, not per stream.
    pub fn multiplexed(&self) -> bool {
        matches!(self.stream, UpstreamStream::H2(_))
    }
}

/// Per-shard state of one endpoint.
pub struct EndpointRuntime {
    /// Address.
    pub addr: SocketAddr,
    /// Metrics label.
    pub label: Arc<str>,
    /// Weight.
    pub weight: u32,
    idle: RefCell<Vec<UpstreamConn>>,
    /// HTTP/2 clusters: the open multiplexed connections.
    h2: RefCell<Vec<Rc<h2::H2Conn>>>,
    /// Open connections (busy + idle) on this shard.
    pub open: Cell<usize>,
    /// Requests in flight on this shard.
    pub in_flight: Cell<u32>,
    /// Passive outlier detection: consecutive failures eject the endpoint.
    outlier: breaker::Breaker,
    /// Health-check verdict (true when no checks are configured).
    pub healthy: Arc<AtomicBool>,
    /// Balancer state for smooth weighted round robin.
    current_weight: Cell<i64>,
}

impl EndpointRuntime {
    /// Idle pooled connections on this shard.
    pub fn idle_count(&self) -> usize {
        self.idle.borrow().len()
    }

    /// Whether passive outlier detection has ejected this endpoint on this shard.
    pub fn is_ejected(&self) -> bool {
        self.ejected(coarse_now())
    }

    fn ejected(&self, now: Instant) -> bool {
        self.outlier.is_open(now)
    }

    fn available(&self, now: Instant) -> bool {
        self.healthy.load(Ordering::Relaxed) && !self.ejected(now)
    }
}

/// Per-shard retry budget: each request deposits `ratio` tokens, a retry takes one;
/// `min_per_second` retries are always allowed.
struct RetryBudget {
    tokens: Cell<f64>,
    window_start: Cell<Instant>,
    used_in_window: Cell<u32>,
}

/// Per-shard state of one cluster.
pub struct ClusterRuntime {
    /// The validated cluster.
    pub spec: Arc<Cluster>,
    /// Endpoints, parallel to `spec.endpoints`.
    pub endpoints: Vec<Rc<EndpointRuntime>>,
    budget: RetryBudget,
    /// Counters and histograms of this cluster on this shard.
    pub stats: Rc<ClusterStats>,
}

/// Why no endpoint could be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoEndpoint;

impl ClusterRuntime {
    /// Builds runtime state for `spec`, keeping pools and outlier state of
    /// endpoints that `previous` already had at the same address.
    pub fn new(
        spec: Arc<Cluster>,
        previous: Option<&ClusterRuntime>,
        health: &health::HealthRegistry,
        stats: Rc<ClusterStats>,
    ) -> Self {
        let endpoints = spec
            .endpoints
            .iter()
            .map(|e| {
                // Pools are kept only for endpoints spoken to the same way.
                let previous = previous.filter(|p| p.spec.raw.protocol == spec.raw.protocol);
                if let Some(old) = previous.and_then(|p| {
                    p.endpoints
                        .iter()
                        .find(|o| o.addr == e.addr && o.weight == e.weight)
                }) {
                    return old.clone();
                }
                Rc::new(EndpointRuntime {
                    addr: e.addr,
                    label: e.label.clone(),
                    weight: e.weight,
                    idle: RefCell::new(Vec::new()),
                    h2: RefCell::new(Vec::new()),
                    open: Cell::new(0),
                    in_flight: Cell::new(0),
                    outlier: breaker::Breaker::default(),
                    healthy: health.flag(&spec.name, e.addr),
                    current_weight: Cell::new(0),
                })
            })
            .collect();
        Self {
            spec,
            endpoints,
            budget: RetryBudget {
                tokens: Cell::new(0.0),
                window_start: Cell::new(Instant::now()),
                used_in_window: Cell::new(0),
            },
            stats,
        }
    }

    /// Picks an endpoint index, skipping unavailable ones and those in `tried` (a bitmask).
    pub fn pick(&self, key: Option<u64>, tried: u64, rng: &Cell<u64>) -> Result<usize, NoEndpoint> {
        let now = coarse_now();
        let usable =
            |i: usize| self.endpoints[i].available(now) && (i >= 64 || tried & (1 << i) == 0);
        let n = self.endpoints.len();
        match (self.spec.lb, key) {
            (LbPolicy::Hash, Some(h)) if !self.spec.ring.is_empty() => {
                let ring = &self.spec.ring;
                let start = ring.partition_point(|(p, _)| *p < h);
                (0..ring.len())
                    .map(|k| ring[(start + k) % ring.len()].1 as usize)
                    .find(|&i| usable(i))
                    .ok_or(NoEndpoint)
            }
            (LbPolicy::LeastRequest, _) if n > 1 => {
                let mut best: Option<usize> = None;
                for _ in 0..2 {
                    let start = (next_random(rng) % n as u64) as usize;
                    let Some(i) = (0..n).map(|k| (start + k) % n).find(|&i| usable(i)) else {
                        return Err(NoEndpoint);
                    };
                    best = Some(match best {
                        Some(b) if self.load_ratio_less(b, i) => b,
                        _ => i,
                    });
                }
                best.ok_or(NoEndpoint)
            }
            _ => {
                // Smooth weighted round robin (as in nginx) over usable endpoints.
                let mut total = 0i64;
                let mut best: Option<usize> = None;
                for i in 0..n {
                    if !usable(i) {
                        continue;
                    }
                    let e = &self.endpoints[i];
                    let w = i64::from(e.weight);
                    e.current_weight.set(e.current_weight.get() + w);
                    total += w;
                    if best.is_none_or(|b| {
                        e.current_weight.get() > self.endpoints[b].current_weight.get()
                    }) {
                        best = Some(i);
                    }
                }
                let b = best.ok_or(NoEndpoint)?;
                let e = &self.endpoints[b];
                e.current_weight.set(e.current_weight.get() - total);
                Ok(b)
            }
        }
    }

    fn load_ratio_less(&self, a: usize, b: usize) -> bool {
        let (ea, eb) = (&self.endpoints[a], &self.endpoints[b]);
        u64::from(ea.in_flight.get()) * u64::from(eb.weight)
            <= u64::from(eb.in_flight.get()) * u64::from(ea.weight)
    }

    /// Takes a pooled connection that has not idled out, if any. With
    /// `verify_open`, a connection the upstream already closed is discarded
    /// first (one non-blocking peek): used for requests whose body cannot be
    /// replayed, where a stale keep-alive could not be retried.
    pub fn checkout(&self, i: usize, verify_open: bool) -> Option<UpstreamConn> {
        let e = &self.endpoints[i];
        let idle_timeout = self.spec.raw.pool.idle_timeout;
        let mut idle = e.idle.borrow_mut();
        while let Some(mut c) = idle.pop() {
            if coarse_now().saturating_duration_since(c.idle_since) < idle_timeout
                && (!verify_open || still_open(c.fd))
            {
                c.reused = true;
                return Some(c);
            }
            e.open.set(e.open.get() - 1);
        }
        None
    }

    /// Whether a new connection to endpoint `i` is allowed by `pool.max_connections`.
    pub fn may_connect(&self, i: usize) -> bool {
        self.endpoints[i].open.get() < self.spec.raw.pool.max_connections
    }

    /// Counts a newly opened connection.
    pub fn opened(&self, i: usize) {
        let e = &self.endpoints[i];
        e.open.set(e.open.get() + 1);
    }

    /// Returns a connection to the pool, or closes it when the pool is full.
    pub fn checkin(&self, i: usize, mut conn: UpstreamConn) {
        if conn.multiplexed() {
            // The stream is over; its connection stays with the endpoint.
            return;
        }
        let e = &self.endpoints[i];
        let mut idle = e.idle.borrow_mut();
        if idle.len() < self.spec.raw.pool.max_idle && conn.rbuf.is_empty() {
            conn.idle_since = coarse_now();
            idle.push(conn);
        } else {
            e.open.set(e.open.get() - 1);
        }
    }

    /// Counts a connection closed instead of pooled.
    pub fn closed(&self, i: usize) {
        let e = &self.endpoints[i];
        e.open.set(e.open.get().saturating_sub(1));
    }

    /// Records a successful exchange with endpoint `i`.
    pub fn success(&self, i: usize) {
        self.endpoints[i].outlier.success();
    }

    /// Records a failure of endpoint `i`; ejects it after enough consecutive
    /// failures, unless `max_ejection_percent` of the cluster is out already
    /// (one endpoint may always be ejected when there are several).
    pub fn failure(&self, i: usize) {
        let o = &self.spec.raw.outlier;
        let e = &self.endpoints[i];
        let now = coarse_now();
        let trip = breaker::Trip {
            threshold: o.consecutive_failures,
            base: o.base_ejection,
            max: o.max_ejection,
        };
        let may_eject = || {
            let ejected_now = self.endpoints.iter().filter(|x| x.ejected(now)).count();
            let allowed = self.endpoints.len() * o.max_ejection_percent as usize / 100;
            ejected_now < allowed.max(usize::from(self.endpoints.len() > 1))
        };
        if let Some(duration) = e.outlier.failure(trip, now, may_eject) {
            self.stats.ejections.set(self.stats.ejections.get() + 1);
            tracing::warn!(
                cluster = %self.spec.name,
                endpoint = %e.label,
                seconds = duration.as_secs_f64(),
                "endpoint ejected after consecutive failures"
            );
        }
    }

    /// Deposits a request into the retry budget.
    pub fn deposit(&self) {
        let r = &self.spec.raw.retry;
        let cap = 100.0f64.max(r.budget_ratio * 1000.0);
        self.budget
            .tokens
            .set((self.budget.tokens.get() + r.budget_ratio).min(cap));
    }

    /// Takes one retry from the budget if allowed.
    pub fn take_retry(&self) -> bool {
        let r = &self.spec.raw.retry;
        let now = coarse_now();
        if now.duration_since(self.budget.window_start.get()) >= Duration::from_secs(1) {
            self.budget.window_start.set(now);
            self.budget.used_in_window.set(0);
        }
        if self.budget.used_in_window.get() < r.budget_min_per_second {
            self.budget
                .used_in_window
                .set(self.budget.used_in_window.get() + 1);
            return true;
        }
        if self.budget.tokens.get() >= 1.0 {
            self.budget.tokens.set(self.budget.tokens.get() - 1.0);
            return true;
        }
        false
    }
}

/// Whether an idle connection is still open and silent: a peek that would
/// block means open; end-of-file or unexpected bytes mean it must not be reused.
fn still_open(fd: std::os::fd::RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: `fd` is the live socket of a pooled connection we own; recv with
    // MSG_PEEK | MSG_DONTWAIT writes at most one byte into `byte` and consumes nothing.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
}

/// Per-cluster upstream figures.
#[derive(Default)]
pub struct ClusterStats {
    /// Upstream latency: request sent to response head received.
    pub upstream_latency: hypergate_core::metrics::LazyHistogram,
    /// Failed connects.
    pub connect_errors: Cell<u64>,
    /// Response-head timeouts.
    pub timeouts: Cell<u64>,
    /// Retries made.
    pub retries: Cell<u64>,
    /// Endpoint ejections.
    pub ejections: Cell<u64>,
    /// Invalid responses (502).
    pub bad_responses: Cell<u64>,
}
