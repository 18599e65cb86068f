//! `cargo xtask`: project automation for Hypergate.
//!
//! Orchestration only: each subcommand drives cargo and external tools and reports
//! what they did; none of the gateway's logic lives here.
//!
//! Subcommands:
//! - `bench`: builds the release binaries, starts a mock upstream, Hypergate, nginx
//!   and HAProxy on loopback, drives each with wrk in alternating rounds, prints a
//!   table with Hypergate/peer ratios and writes `target/bench/latest.json`
//!   (see `bench/README.md`).

mod bench;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Hypergate project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Benchmark Hypergate against nginx, HAProxy and the bare upstream.
    Bench(bench::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Bench(args) => bench::run(args),
    }
}
