//! `cargo xtask alloc-check`: counts heap allocations per proxied request.
//!
//! Builds the gateway with the `alloc-count` feature (a counting wrapper around
//! mimalloc, exported as `hypergate_heap_allocations_total`), proxies keep-alive
//! GETs to the mock upstream with wrk, and reads the counter around two runs of
//! different length over the same number of connections. The difference between
//! the runs cancels what does not scale with requests (accepting connections,
//! buffers per connection, the metrics scrapes themselves), so
//! `(allocations_long - allocations_short) / (requests_long - requests_short)` is
//! what the hot path allocates per request once warm.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Options of `alloc-check`.
#[derive(Debug, clap::Args)]
pub struct AllocArgs {
    /// Client connections.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Length of the long run in seconds (the short run is a third of it).
    #[arg(long, default_value_t = 6)]
    pub seconds: u64,
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo(args: &[&str], target_dir: &Path) -> Result<()> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(root())
        .status()
        .context("running cargo")?;
    anyhow::ensure!(status.success(), "cargo {} failed", args.join(" "));
    Ok(())
}

fn free_port() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Reads the allocation and request counters from `/metrics`.
fn counters(admin: SocketAddr) -> Result<(u64, u64)> {
    let mut s = TcpStream::connect(admin)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    let value = |line: &str| {
        line.rsplit(' ')
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let allocations = body
        .lines()
        .find(|l| l.starts_with("hypergate_heap_allocations_total "))
        .map(value)
        .context("no hypergate_heap_allocations_total: not an alloc-count build")?;
    let requests = body
        .lines()
        .filter(|l| l.starts_with("hypergate_requests_total{"))
        .map(value)
        .sum();
    Ok((allocations, requests))
}

fn wrk(target: SocketAddr, connections: usize, seconds: u64) -> Result<()> {
    let status = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--timeout",
            "5s",
        ])
        .arg(format!("http://{target}/"))
        .stdout(Stdio::null())
        .status()
        .context("running wrk (apt-get install -y wrk)")?;
    anyhow::ensure!(status.success(), "wrk failed");
    Ok(())
}

/// Runs `cargo xtask alloc-check`.
pub fn run(args: AllocArgs) -> Result<()> {
    let target_dir = root().join("target/alloc-check");
    eprintln!("==> building hypergate with --features alloc-count and the mock upstream");
    cargo(
        &[
            "build",
            "-p",
            "hypergate",
            "--features",
            "alloc-count",
            "--bin",
            "hypergate",
        ],
        &target_dir,
    )?;
    cargo(
        &["build", "-p", "hypergate-bench", "--bin", "mock-upstream"],
        &target_dir,
    )?;

    let mut upstream = Killed(
        Command::new(target_dir.join("debug/mock-upstream"))
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .context("starting mock-upstream")?,
    );
    let mut line = String::new();
    BufReader::new(upstream.0.stdout.take().context("mock-upstream stdout")?)
        .read_line(&mut line)?;
    let upstream_addr = line
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_string();

    let (listen, admin) = (free_port()?, free_port()?);
    let dir = std::env::temp_dir().join(format!("hypergate-alloc-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("hypergate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nshards = 1\npin_cores = false\n[admin]\nlisten = \"{admin}\"\n\
             [[listeners]]\nname = \"main\"\naddress = \"{listen}\"\n\
             [[clusters]]\nname = \"backend\"\nendpoints = [{{ address = \"{upstream_addr}\" }}]\n\
             [[routes]]\nname = \"all\"\ncluster = \"backend\"\n"
        ),
    )?;
    let _gateway = Killed(
        Command::new(target_dir.join("debug/hypergate"))
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .spawn()
            .context("starting hypergate")?,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while counters(admin).is_err() {
        if Instant::now() > deadline {
            bail!("hypergate did not answer on its admin port");
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    eprintln!(
        "==> warm-up, then a short and a long run of {} connections",
        args.connections
    );
    wrk(listen, args.connections, 1)?;
    let short = (args.seconds / 3).max(1);
    let mut deltas = Vec::new();
    for seconds in [short, args.seconds] {
        let (a0, r0) = counters(admin)?;
        wrk(listen, args.connections, seconds)?;
        let (a1, r1) = counters(admin)?;
        deltas.push((a1 - a0, r1 - r0));
    }
    let [(a_short, r_short), (a_long, r_long)] = [deltas[0], deltas[1]];
    let per_request = (a_long as f64 - a_short as f64) / (r_long as f64 - r_short as f64).max(1.0);
    println!("run    requests  allocations");
    println!("short  {r_short:>8}  {a_short:>11}");
    println!("long   {r_long:>8}  {a_long:>11}");
    println!("heap allocations per request on the hot path (long - short): {per_request:.4}");
    let out = root().join("target/bench/alloc.json");
    std::fs::create_dir_all(out.parent().expect("has a parent"))?;
    std::fs::write(
        &out,
        serde_json::to_string_pretty(&serde_json::json!({
            "connections": args.connections,
            "short": {"requests": r_short, "allocations": a_short},
            "long": {"requests": r_long, "allocations": a_long},
            "allocations_per_request": per_request,
        }))?,
    )?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
