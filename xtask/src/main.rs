//! `cargo xtask`: project automation for Hypergate.
//!
//! Orchestration only: each subcommand drives cargo and external tools and reports
//! what they did; none of the gateway's logic lives here.
//!
//! Subcommands:
//! - `bench`: builds the release binaries, starts a mock upstream, Hypergate, nginx
//!   and HAProxy on loopback, drives each with wrk (h2load for the HTTP/2
//!   scenario) in alternating rounds, prints a table with Hypergate/peer ratios
//!   and writes `target/bench/latest.json` (see `bench/README.md`); its LLM
//!   scenarios do the same with the mock LLM provider, LiteLLM and `loadgen` at
//!   a fixed rate.
//! - `build-ebpf`: installs the pinned nightly and bpf-linker when missing, builds the
//!   kernel probe in `ebpf/probe` and prints the object's path (see `xtask/src/ebpf.rs`).
//! - `alloc-check`: counts heap allocations per proxied request (see `xtask/src/alloc.rs`).
//! - `run`: builds the probe when possible, then runs the gateway (release, `ebpf`
//!   feature on) with the given arguments; the README's first command.

mod alloc;
mod bench;
mod ebpf;
mod run;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Hypergate project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Benchmark Hypergate against nginx, HAProxy, LiteLLM and the bare upstream.
    Bench(bench::BenchArgs),
    /// Install the pinned eBPF toolchain if missing and build the kernel probe object.
    BuildEbpf(ebpf::BuildEbpfArgs),
    /// Build the probe (when possible) and run the gateway, by default on the embedded quickstart.
    Run(run::RunArgs),
    /// Count heap allocations per proxied request (an `alloc-count` build under wrk).
    AllocCheck(alloc::AllocArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Bench(args) => bench::run(args),
        Command::BuildEbpf(args) => ebpf::run_build(args),
        Command::Run(args) => run::run(args),
        Command::AllocCheck(args) => alloc::run(args),
    }
}
