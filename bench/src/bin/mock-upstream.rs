//! `mock-upstream`: a fast HTTP/1.1 origin for benchmarks.
//!
//! Answers every request with `200 OK` and a fixed body of `--body-size` bytes, as
//! fast as the machine allows, so that a benchmark measures the proxy in front of
//! it rather than the origin.
//!
//! How it works:
//! 1. Thread 0 binds `--listen` (port 0 picks a free port); threads 1..N bind the
//!    same address with SO_REUSEPORT, so the kernel spreads connections over them.
//!    Each thread runs its own monoio runtime and is pinned to its CPU from
//!    `--cpu-list`, if given. Once every thread listens, `listening on ADDR` goes to
//!    stdout.
//! 2. A connection reads into one buffer and answers every complete request in it
//!    (pipelining) with one write. Request bodies (Content-Length or chunked) are
//!    skipped without being copied. `Expect: 100-continue` gets its interim answer.
//! 3. `Connection: close` (or HTTP/1.0 without keep-alive) gets a response that says
//!    so, then the connection closes. A malformed request gets `400` and a close.
//! 4. `--delay-ms` holds each batch of responses back for that long, to model a
//!    slower origin.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use clap::Parser;
use hypergate_bench::cpu;
use hypergate_bench::http1::{self, BodyDecoder};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{ListenerOpts, TcpListener, TcpStream};

/// Read buffer per connection; also the largest request head accepted.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// The interim answer to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The answer to a request that cannot be framed.
const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// The body used when `--body-size` is 13, and repeated to fill other sizes.
const BODY_PATTERN: &[u8] = b"hello, world\n";

#[derive(Debug, Parser)]
#[command(about = "Fast keep-alive HTTP/1.1 origin for benchmarks")]
struct Args {
    /// Address to listen on; port 0 picks a free port (printed once ready).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Worker threads, each with its own runtime and SO_REUSEPORT listener.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Response body size in bytes.
    #[arg(long, default_value_t = BODY_PATTERN.len())]
    body_size: usize,
    /// Delay before each batch of responses, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// CPUs to pin the threads to (`taskset -c` syntax); thread i gets the i-th.
    #[arg(long)]
    cpu_list: Option<String>,
}

/// What every connection answers with; built once, shared by all threads.
#[derive(Debug)]
struct Responses {
    keep_alive: &'static [u8],
    close: &'static [u8],
    delay: Option<Duration>,
}

impl Responses {
    fn new(body_size: usize, delay: Option<Duration>) -> Self {
        let body: Vec<u8> = BODY_PATTERN
            .iter()
            .copied()
            .cycle()
            .take(body_size)
            .collect();
        let build = |connection: &str| -> &'static [u8] {
            let mut response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {body_size}\r\n{connection}\r\n"
            )
            .into_bytes();
            response.extend_from_slice(&body);
            // Lives for the whole process; leaking gives every thread a free &'static.
            Vec::leak(response)
        };
        Self {
            keep_alive: build(""),
            close: build("Connection: close\r\n"),
            delay,
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.threads == 0 {
        return Err(anyhow!("--threads must be at least 1"));
    }
    let cpus = args
        .cpu_list
        .as_deref()
        .map(cpu::parse_cpu_list)
        .transpose()
        .context("--cpu-list")?;
    let delay = (args.delay_ms > 0).then(|| Duration::from_millis(args.delay_ms));
    let responses: &'static Responses = Box::leak(Box::new(Responses::new(args.body_size, delay)));

    let (ready_tx, ready_rx) = mpsc::channel();
    let mut address = args.listen;
    let mut workers = Vec::with_capacity(args.threads);
    for thread in 0..args.threads {
        let cpu = cpu::cpu_for_thread(cpus.as_deref(), thread);
        let ready = ready_tx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("upstream-{thread}"))
            .spawn(move || serve_thread(address, cpu, responses, ready))
            .context("spawning a worker thread")?;
        workers.push(handle);
        // Later threads bind the address the first one got (port 0 resolved).
        address = ready_rx
            .recv()
            .context("a worker thread exited before listening")??;
    }
    println!("listening on {address}");
    std::io::stdout().flush()?;
    for worker in workers {
        worker
            .join()
            .map_err(|_| anyhow!("a worker thread panicked"))??;
    }
    Ok(())
}

/// One worker thread: pin, build a runtime, listen, accept forever.
fn serve_thread(
    address: SocketAddr,
    cpu: Option<usize>,
    responses: &'static Responses,
    ready: mpsc::Sender<anyhow::Result<SocketAddr>>,
) -> anyhow::Result<()> {
    if let Some(cpu) = cpu {
        if !cpu::pin_current_thread(cpu) {
            eprintln!("mock-upstream: could not pin a thread to CPU {cpu}");
        }
    }
    let served = hypergate_bench::runtime::block_on(async move {
        let opts = ListenerOpts::new().reuse_port(true).backlog(4096);
        let listener = match TcpListener::bind_with_config(address, &opts)
            .and_then(|listener| Ok((listener.local_addr()?, listener)))
        {
            Ok((bound, listener)) => {
                // The main thread waits on this; if it is gone, so is the process.
                let _ = ready.send(Ok(bound));
                listener
            }
            Err(error) => {
                let _ = ready.send(Err(anyhow!(error).context(format!("binding {address}"))));
                return;
            }
        };
        accept_loop(listener, responses).await;
    });
    served.context("building the monoio runtime")
}

async fn accept_loop(listener: TcpListener, responses: &'static Responses) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                // Small responses must not wait for Nagle; failure only costs latency.
                let _ = stream.set_nodelay(true);
                monoio::spawn(serve_connection(stream, responses));
            }
            Err(error) => {
                // Out of file descriptors or similar: back off instead of spinning.
                eprintln!("mock-upstream: accept failed: {error}");
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Where the connection is inside the current request.
enum Phase {
    /// Waiting for a request head.
    Head,
    /// Skipping the body of a request; answer it with keep-alive or not once done.
    Body {
        decoder: BodyDecoder,
        keep_alive: bool,
    },
}

/// Serves one connection until the client closes it, asks to, or misbehaves.
async fn serve_connection(mut stream: TcpStream, responses: &'static Responses) {
    let mut buffer: Vec<u8> = Vec::with_capacity(READ_BUFFER_BYTES);
    let mut start = 0;
    let mut phase = Phase::Head;
    let mut batch: Vec<&'static [u8]> = Vec::new();
    let mut joined: Vec<u8> = Vec::new();
    loop {
        let mut close = false;
        let mut has_response = false;
        loop {
            let pending = &buffer[start..];
            match &mut phase {
                Phase::Head => match http1::parse_request_head(pending) {
                    Ok(None) => break,
                    Ok(Some((length, head))) => {
                        start += length;
                        let decoder = BodyDecoder::new(head.framing);
                        if head.expect_continue && !decoder.is_done() {
                            batch.push(CONTINUE);
                        }
                        phase = Phase::Body {
                            decoder,
                            keep_alive: head.keep_alive,
                        };
                    }
                    Err(_) => {
                        batch.push(BAD_REQUEST);
                        close = true;
                        break;
                    }
                },
                Phase::Body {
                    decoder,
                    keep_alive,
                } => match decoder.consume(pending) {
                    Ok(consumed) => {
                        start += consumed;
                        if !decoder.is_done() {
                            break;
                        }
                        has_response = true;
                        if *keep_alive {
                            batch.push(responses.keep_alive);
                            phase = Phase::Head;
                        } else {
                            batch.push(responses.close);
                            close = true;
                            break;
                        }
                    }
                    Err(_) => {
                        batch.push(BAD_REQUEST);
                        close = true;
                        break;
                    }
                },
            }
        }

        if !batch.is_empty() {
            if has_response {
                if let Some(delay) = responses.delay {
                    monoio::time::sleep(delay).await;
                }
            }
            let written = if let [only] = batch[..] {
                stream.write_all(only).await.0.map(drop)
            } else {
                joined.clear();
                batch.iter().for_each(|part| joined.extend_from_slice(part));
                let (result, returned) = stream.write_all(std::mem::take(&mut joined)).await;
                joined = returned;
                result.map(drop)
            };
            batch.clear();
            if written.is_err() {
                return;
            }
        }
        if close {
            return;
        }

        // Make room for the next read: drop consumed bytes, keep a partial message.
        if start == buffer.len() {
            buffer.clear();
            start = 0;
        } else if buffer.len() == buffer.capacity() {
            if start == 0 {
                // A request head larger than the whole buffer.
                let _ = stream.write_all(BAD_REQUEST).await;
                return;
            }
            buffer.drain(..start);
            start = 0;
        }
        let filled = buffer.len();
        let capacity = buffer.capacity();
        let (result, slice) = stream.read(buffer.slice_mut(filled..capacity)).await;
        buffer = slice.into_inner();
        match result {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
