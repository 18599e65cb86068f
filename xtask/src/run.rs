//! `cargo xtask run`: the README's first command. Builds the kernel probe (when
//! the toolchain can be had), then runs the gateway in release mode with the
//! `ebpf` feature on; without the probe it says why and runs the plain build.

use anyhow::{Context, Result};
use std::process::Command;

/// Arguments passed through to `hypergate run` (e.g. `--config FILE`).
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Arguments for `hypergate run`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// Runs `cargo xtask run`.
pub fn run(args: RunArgs) -> Result<()> {
    let with_probe = match crate::ebpf::run_build(crate::ebpf::BuildEbpfArgs {
        reinstall_linker: false,
    }) {
        Ok(()) => true,
        Err(e) => {
            eprintln!(
                "==> the eBPF probe could not be built ({e:#}); running without kernel TCP metrics"
            );
            false
        }
    };
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo.args(["run", "--release", "-p", "hypergate"]);
    if with_probe {
        cargo.args(["--features", "ebpf"]);
    }
    cargo.args(["--", "run"]).args(&args.args);
    let status = cargo.status().context("starting cargo run")?;
    anyhow::ensure!(status.success(), "hypergate exited with {status}");
    Ok(())
}
