//! The `hypergate` command line: `run`, `check`, `--version`, `--help`.
//!
//! Everything but argument parsing, logging set-up and signal wiring lives in
//! the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use hypergate::config;
use hypergate::gateway::Gateway;
use std::path::PathBuf;

#[cfg(not(feature = "alloc-count"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(feature = "alloc-count")]
#[global_allocator]
static GLOBAL: hypergate::alloc_count::CountingAlloc = hypergate::alloc_count::CountingAlloc;

#[derive(Parser)]
#[command(
    name = "hypergate",
    version,
    about = "Shard-per-core HTTP reverse proxy and API gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (on the embedded quickstart config when --config is not given).
    Run {
        /// TOML config file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config file, print every error, exit non-zero if any.
    Check {
        /// TOML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// API key helpers.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Print the `sha256:<hex>` form of an API key, for `consumers[].api_keys`.
    Hash {
        /// The key (read from standard input when absent, so it stays out of shell history).
        key: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Check { config } => match config::load_file(&config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} listeners, {} clusters, {} routes, {} shards)",
                    config.display(),
                    c.listeners.len(),
                    c.clusters.len(),
                    c.routes.len(),
                    c.shards
                );
                Ok(())
            }
            Err(e) => {
                eprint!("{e}");
                std::process::exit(1);
            }
        },
        Command::Run { config } => run(config),
        Command::Key {
            command: KeyCommand::Hash { key },
        } => {
            let key = match key {
                Some(k) => k,
                None => {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line)?;
                    line.trim_end_matches(['\r', '\n']).to_string()
                }
            };
            anyhow::ensure!(!key.is_empty(), "the key is empty");
            println!("{}", hypergate::auth::hash_key(&key));
            Ok(())
        }
    }
}

fn run(path: Option<PathBuf>) -> anyhow::Result<()> {
    let cfg = match &path {
        Some(p) => config::load_file(p),
        None => {
            tracing::info!("no --config given: running the embedded quickstart config");
            config::load_str(config::EMBEDDED_QUICKSTART, "<embedded quickstart>")
        }
    };
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            std::process::exit(1);
        }
    };
    let gateway = Gateway::start(cfg, path).context("starting the gateway")?;
    let controller = gateway.controller.clone();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .context("installing signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig == signal_hook::consts::SIGHUP {
                    tracing::info!("SIGHUP: reloading the config file");
                    let _ = controller.reload_from_file();
                } else {
                    controller.start_drain();
                }
            }
        })?;
    gateway.wait();
    tracing::info!("drained; exiting");
    Ok(())
}
