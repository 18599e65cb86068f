//! `loadgen`: an open-loop, fixed-rate HTTP/1.1 load generator.
//!
//! `wrk` is closed-loop: it sends as fast as responses come back, so it measures
//! throughput, and a server that stalls simply receives fewer requests during the
//! stall. Latency at a *given* request rate needs an open loop, which this is.
//!
//! How it works:
//! 1. `--connections` keep-alive connections share `--rate` requests per second:
//!    connection `i` intends to send its `k`-th request at
//!    `start + i / rate + k * connections / rate`, spread over `--threads` threads
//!    (one monoio runtime each, optionally pinned with `--cpu-list`).
//! 2. A connection sends one request at a time. If the previous response came back
//!    after the next request's intended send time, the server held the request up,
//!    so its latency counts from the *intended* send time (coordinated-omission
//!    correction, as in wrk2). Otherwise it was sent on schedule, and latency counts
//!    from the actual send, so the timer's own jitter is not blamed on the server.
//!    Latency includes connecting when a request needs a new connection.
//! 3. Latencies go into one HDR histogram per thread (1 µs to 60 s, 3 significant
//!    digits), merged at the end. Failed connects, reads, writes, timeouts and
//!    non-2xx responses are counted as errors; a connection is never reused after an
//!    error or a timeout.
//!
//!    With `--ttfb`, latency ends at the first byte of the response *body* instead
//!    of the end of the response (for an SSE stream: its first chunk after the
//!    head; for a bodiless response: its end). The whole response is still read
//!    before the connection sends again.
//! 4. Sending stops at the end of `--duration`; requests a connection was still
//!    behind on then are counted as `unsent` (a sign the server could not keep up,
//!    as is `rps` below `target_rps`). Requests in flight get up to `--timeout-ms`.
//! 5. One JSON line goes to stdout, with the same fields as `bench/wrk/report.lua`
//!    prints for wrk, plus `unsent`, `target_rps` and `latency` (`"response"`, or
//!    `"ttfb"` with `--ttfb`).
//!
//! A request body is `--body-size` filler bytes, or JSON from `--body` /
//! `--body-file`, sent with `Content-Type: application/json`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use clap::Parser;
use hdrhistogram::Histogram;
use hypergate_bench::cpu;
use hypergate_bench::http1::{self, BodyDecoder, FramingError};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::time::Instant;
use serde::Serialize;

/// Read buffer per connection; also the largest response head accepted.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Highest latency the histogram tracks (60 s), in microseconds.
const MAX_LATENCY_US: u64 = 60_000_000;

/// How long threads get to start before the first intended send.
const START_DELAY: Duration = Duration::from_millis(100);

#[derive(Debug, Parser)]
#[command(about = "Open-loop fixed-rate HTTP/1.1 load generator (JSON report on stdout)")]
struct Args {
    /// Server address, e.g. 127.0.0.1:8080.
    #[arg(long)]
    target: SocketAddr,
    /// Request path.
    #[arg(long, default_value = "/")]
    path: String,
    /// Total target rate in requests per second, over all connections.
    #[arg(long)]
    rate: f64,
    /// Keep-alive connections (each has at most one request in flight).
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Run time in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Threads, each with its own runtime; connections are spread over them.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// CPUs to pin the threads to (`taskset -c` syntax).
    #[arg(long)]
    cpu_list: Option<String>,
    /// Request method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// Request body size in bytes (sent with Content-Length when above 0).
    #[arg(long, default_value_t = 0, conflicts_with_all = ["body", "body_file"])]
    body_size: usize,
    /// JSON request body, sent with `Content-Type: application/json`.
    #[arg(long, conflicts_with = "body_file")]
    body: Option<String>,
    /// File whose content is the JSON request body (as `--body`).
    #[arg(long, value_name = "PATH")]
    body_file: Option<std::path::PathBuf>,
    /// Measure latency to the first byte of the response body (time to first
    /// byte; for SSE, the first chunk) instead of to the end of the response.
    #[arg(long)]
    ttfb: bool,
    /// Extra request header, `Name: value`; repeatable.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Per-request timeout in milliseconds (connect included).
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

/// Everything a connection task needs, shared read-only by all threads.
#[derive(Debug)]
struct Plan {
    target: SocketAddr,
    request: &'static [u8],
    rate: f64,
    connections: usize,
    start: std::time::Instant,
    end: std::time::Instant,
    timeout: Duration,
    ttfb: bool,
}

/// The JSON report; the field names match `bench/wrk/report.lua`.
#[derive(Debug, Serialize)]
struct Report {
    requests: u64,
    errors: u64,
    errors_connect: u64,
    errors_read: u64,
    errors_write: u64,
    errors_timeout: u64,
    errors_status: u64,
    unsent: u64,
    duration_us: u64,
    rps: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    target_rps: f64,
    /// What the latencies measure: `"response"` (to the end of the response) or
    /// `"ttfb"` (to the first byte of its body).
    latency: &'static str,
}

/// What one connection (and, merged, one thread) measured.
#[derive(Debug)]
struct Tally {
    latency_us: Histogram<u64>,
    requests: u64,
    errors_connect: u64,
    errors_read: u64,
    errors_write: u64,
    errors_timeout: u64,
    errors_status: u64,
    unsent: u64,
    last_completion: std::time::Instant,
}

impl Tally {
    fn new(start: std::time::Instant) -> anyhow::Result<Self> {
        Ok(Self {
            latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?,
            requests: 0,
            errors_connect: 0,
            errors_read: 0,
            errors_write: 0,
            errors_timeout: 0,
            errors_status: 0,
            unsent: 0,
            last_completion: start,
        })
    }

    fn merge(&mut self, other: &Tally) -> anyhow::Result<()> {
        self.latency_us.add(&other.latency_us)?;
        self.requests += other.requests;
        self.errors_connect += other.errors_connect;
        self.errors_read += other.errors_read;
        self.errors_write += other.errors_write;
        self.errors_timeout += other.errors_timeout;
        self.errors_status += other.errors_status;
        self.unsent += other.unsent;
        self.last_completion = self.last_completion.max(other.last_completion);
        Ok(())
    }

    fn report(&self, start: std::time::Instant, target_rps: f64, ttfb: bool) -> Report {
        let duration = self.last_completion.saturating_duration_since(start);
        let errors = self.errors_connect
            + self.errors_read
            + self.errors_write
            + self.errors_timeout
            + self.errors_status;
        let seconds = duration.as_secs_f64();
        Report {
            requests: self.requests,
            errors,
            errors_connect: self.errors_connect,
            errors_read: self.errors_read,
            errors_write: self.errors_write,
            errors_timeout: self.errors_timeout,
            errors_status: self.errors_status,
            unsent: self.unsent,
            duration_us: u64::try_from(duration.as_micros()).unwrap_or(u64::MAX),
            rps: if seconds > 0.0 {
                self.requests as f64 / seconds
            } else {
                0.0
            },
            p50_us: self.latency_us.value_at_quantile(0.50),
            p99_us: self.latency_us.value_at_quantile(0.99),
            p999_us: self.latency_us.value_at_quantile(0.999),
            max_us: self.latency_us.max(),
            target_rps,
            latency: if ttfb { "ttfb" } else { "response" },
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !(args.rate.is_finite() && args.rate > 0.0) {
        return Err(anyhow!("--rate must be a positive number"));
    }
    if !(args.duration.is_finite() && args.duration > 0.0) {
        return Err(anyhow!("--duration must be a positive number of seconds"));
    }
    if args.connections == 0 || args.threads == 0 {
        return Err(anyhow!("--connections and --threads must be at least 1"));
    }
    let threads = args.threads.min(args.connections);
    let cpus = args
        .cpu_list
        .as_deref()
        .map(cpu::parse_cpu_list)
        .transpose()
        .context("--cpu-list")?;
    let request = build_request(&args)?;
    let start = std::time::Instant::now() + START_DELAY;
    let plan: &'static Plan = Box::leak(Box::new(Plan {
        target: args.target,
        request: Vec::leak(request),
        rate: args.rate,
        connections: args.connections,
        start,
        end: start + Duration::from_secs_f64(args.duration),
        timeout: Duration::from_millis(args.timeout_ms),
        ttfb: args.ttfb,
    }));

    let mut workers = Vec::with_capacity(threads);
    for thread in 0..threads {
        // Connection i belongs to thread i % threads.
        let connections: Vec<usize> = (thread..args.connections).step_by(threads).collect();
        let cpu = cpu::cpu_for_thread(cpus.as_deref(), thread);
        let handle = std::thread::Builder::new()
            .name(format!("loadgen-{thread}"))
            .spawn(move || run_thread(plan, connections, cpu))
            .context("spawning a load thread")?;
        workers.push(handle);
    }
    let mut total = Tally::new(start)?;
    for worker in workers {
        let tally = worker
            .join()
            .map_err(|_| anyhow!("a load thread panicked"))??;
        total.merge(&tally)?;
    }
    println!(
        "{}",
        serde_json::to_string(&total.report(start, args.rate, args.ttfb))?
    );
    Ok(())
}

/// The request every connection sends, head and body.
fn build_request(args: &Args) -> anyhow::Result<Vec<u8>> {
    let json = match (&args.body, &args.body_file) {
        (Some(body), _) => Some(body.clone().into_bytes()),
        (None, Some(path)) => {
            Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
        }
        (None, None) => None,
    };
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\n",
        args.method, args.path, args.target
    );
    for header in &args.headers {
        head.push_str(header.trim());
        head.push_str("\r\n");
    }
    if json.is_some() {
        head.push_str("Content-Type: application/json\r\n");
    }
    let body_length = json.as_ref().map_or(args.body_size, Vec::len);
    if body_length > 0 {
        head.push_str(&format!("Content-Length: {body_length}\r\n"));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    match json {
        Some(json) => request.extend_from_slice(&json),
        None => request.resize(request.len() + args.body_size, b'x'),
    }
    Ok(request)
}

/// One load thread: pin, run its connections on one runtime, merge their tallies.
fn run_thread(
    plan: &'static Plan,
    connections: Vec<usize>,
    cpu: Option<usize>,
) -> anyhow::Result<Tally> {
    if let Some(cpu) = cpu {
        if !cpu::pin_current_thread(cpu) {
            eprintln!("loadgen: could not pin a thread to CPU {cpu}");
        }
    }
    hypergate_bench::runtime::block_on(async move {
        let tasks: Vec<_> = connections
            .into_iter()
            .map(|index| monoio::spawn(drive_connection(plan, index)))
            .collect();
        let mut total = Tally::new(plan.start)?;
        for task in tasks {
            total.merge(&task.await?)?;
        }
        Ok(total)
    })
    .context("building the monoio runtime")?
}

/// How one request/response exchange failed.
#[derive(Debug)]
enum ExchangeError {
    Write,
    Read,
}

/// A keep-alive connection with its read buffer.
struct Connection {
    stream: TcpStream,
    buffer: Vec<u8>,
}

/// What a completed exchange told us.
struct Exchange {
    status: u16,
    keep_alive: bool,
    /// When the first byte of the body was read (the end of the response if it
    /// had no body).
    first_body_byte: Instant,
}

impl Connection {
    async fn open(target: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect_addr(target).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buffer: Vec::with_capacity(READ_BUFFER_BYTES),
        })
    }

    /// Reads more bytes into the buffer; `Ok(false)` at end of stream.
    async fn fill(&mut self) -> std::io::Result<bool> {
        if self.buffer.len() == self.buffer.capacity() {
            return Err(std::io::Error::other("response head too large"));
        }
        let filled = self.buffer.len();
        let capacity = self.buffer.capacity();
        let buffer = std::mem::take(&mut self.buffer);
        let (result, slice) = self.stream.read(buffer.slice_mut(filled..capacity)).await;
        self.buffer = slice.into_inner();
        Ok(result? > 0)
    }

    /// Sends `request` and reads its final response, skipping its body.
    async fn exchange(&mut self, request: &'static [u8]) -> Result<Exchange, ExchangeError> {
        let (written, _) = self.stream.write_all(request).await;
        written.map_err(|_| ExchangeError::Write)?;
        let head = loop {
            match http1::parse_response_head(&self.buffer) {
                Ok(Some((length, head))) => {
                    self.buffer.drain(..length);
                    // Interim responses (100 Continue) precede the real one.
                    if !(100..200).contains(&head.status) {
                        break head;
                    }
                }
                Ok(None) => {
                    if !self.fill().await.map_err(|_| ExchangeError::Read)? {
                        return Err(ExchangeError::Read);
                    }
                }
                Err(_) => return Err(ExchangeError::Read),
            }
        };
        let mut decoder = BodyDecoder::new(head.framing);
        let mut first_body_byte = None;
        loop {
            if first_body_byte.is_none() && !self.buffer.is_empty() {
                first_body_byte = Some(Instant::now());
            }
            let consumed = decoder
                .consume(&self.buffer)
                .map_err(|_: FramingError| ExchangeError::Read)?;
            self.buffer.drain(..consumed);
            if decoder.is_done() {
                break;
            }
            let more = self.fill().await.map_err(|_| ExchangeError::Read)?;
            if !more {
                if decoder.is_until_close() {
                    break;
                }
                return Err(ExchangeError::Read);
            }
        }
        Ok(Exchange {
            status: head.status,
            keep_alive: head.keep_alive,
            first_body_byte: first_body_byte.unwrap_or_else(Instant::now),
        })
    }
}

/// Runs connection `index`'s share of the schedule and tallies what happened.
async fn drive_connection(plan: &'static Plan, index: usize) -> anyhow::Result<Tally> {
    let start = Instant::from_std(plan.start);
    let end = Instant::from_std(plan.end);
    let offset = Duration::from_secs_f64(index as f64 / plan.rate);
    let interval = Duration::from_secs_f64(plan.connections as f64 / plan.rate);
    let mut tally = Tally::new(plan.start)?;
    let mut connection: Option<Connection> = None;
    let mut previous_done = start;
    let mut sequence: u32 = 0;
    loop {
        let intended = start + offset + interval * sequence;
        if intended >= end {
            break;
        }
        sequence = sequence.saturating_add(1);
        let now = Instant::now();
        if now >= end {
            // Behind schedule when time is up: the backlog is reported, not sent.
            tally.unsent += 1;
            continue;
        }
        if now < intended {
            monoio::time::sleep_until(intended).await;
        }
        let sent = Instant::now();
        // Held up by the previous response: count from the intended time.
        let origin = if previous_done > intended {
            intended
        } else {
            sent
        };
        let deadline = sent + plan.timeout;
        let mut open = match connection.take() {
            Some(open) => open,
            None => match monoio::time::timeout_at(deadline, Connection::open(plan.target)).await {
                Ok(Ok(open)) => open,
                Ok(Err(_)) | Err(_) => {
                    tally.errors_connect += 1;
                    previous_done = Instant::now();
                    continue;
                }
            },
        };
        match monoio::time::timeout_at(deadline, open.exchange(plan.request)).await {
            Ok(Ok(exchange)) => {
                let done = Instant::now();
                let measured_until = if plan.ttfb {
                    exchange.first_body_byte
                } else {
                    done
                };
                tally
                    .latency_us
                    .saturating_record(micros(measured_until.saturating_duration_since(origin)));
                tally.requests += 1;
                tally.last_completion = done.into_std();
                if !(200..300).contains(&exchange.status) {
                    tally.errors_status += 1;
                }
                if exchange.keep_alive {
                    connection = Some(open);
                }
                previous_done = done;
            }
            Ok(Err(ExchangeError::Write)) => {
                tally.errors_write += 1;
                previous_done = Instant::now();
            }
            Ok(Err(ExchangeError::Read)) => {
                tally.errors_read += 1;
                previous_done = Instant::now();
            }
            Err(_) => {
                tally.errors_timeout += 1;
                previous_done = Instant::now();
            }
        }
    }
    Ok(tally)
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}
