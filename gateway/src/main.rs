//! The `hypergate` command line: `run`, `check`, `calls`, `summary`, `diff`,
//! `report`, `export prometheus-rules`, `key hash`, `--version`, `--help`.
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
    /// Recent call records from the call store, newest first (JSON lines).
    Calls {
        /// The store's database (default: `[hypercare.store] path` of --config, or the embedded quickstart's ./quickstart.db).
        #[arg(long)]
        db: Option<PathBuf>,
        /// Config file whose store to read.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Filters: route, consumer, version, status (503 or 5xx), min_latency_ms,
        /// since / until (Unix ms, RFC 3339 or a duration ago like 15m), limit, cursor.
        #[arg(value_name = "KEY=VALUE")]
        filters: Vec<String>,
    },
    /// Any read-only SQL over the call store, rows printed as JSON lines. The
    /// table `calls` (one row per call) exists only through Hypergate: the
    /// store keeps calls in blocks, so the plain `sqlite3` shell sees
    /// `call_blocks`, `rollups`, `feedback` and `events` but not `calls`.
    Sql {
        /// The store's database.
        #[arg(long)]
        db: Option<PathBuf>,
        /// Config file whose store to read.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The query, e.g. "SELECT route, COUNT(*) FROM calls WHERE status >= 500 GROUP BY 1".
        query: String,
    },
    /// Traffic, errors, latency, tokens and cost per route and version (from rollups).
    Summary {
        /// The store's database.
        #[arg(long)]
        db: Option<PathBuf>,
        /// Config file whose store to read.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// How far back, e.g. 15m, 1h, 24h.
        #[arg(long, default_value = "1h")]
        window: String,
    },
    /// Compare two releases (version labels) from the call store, with significance.
    Diff {
        /// The release before.
        #[arg(long)]
        from: String,
        /// The release after.
        #[arg(long)]
        to: String,
        /// Only this route.
        #[arg(long)]
        route: Option<String>,
        /// How far back the baselines reach.
        #[arg(long, default_value = "24h")]
        window: String,
        /// The store's database.
        #[arg(long)]
        db: Option<PathBuf>,
        /// Config file whose store to read.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// The hypercare report: traffic, errors, latency against baselines, canary
    /// decisions, alerts, LLM usage and cost, feedback, hypercare windows.
    Report {
        /// How far back, e.g. 24h.
        #[arg(long, default_value = "24h")]
        since: String,
        /// `md` or `html`.
        #[arg(long, default_value = "md")]
        format: String,
        /// The store's database.
        #[arg(long)]
        db: Option<PathBuf>,
        /// Config file whose store to read.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The fleet's report instead (members, exact traffic of every
        /// instance, the leader's canary decisions), read from the Redis of
        /// the `[fleet]` in `--config`.
        #[arg(long, requires = "config")]
        fleet: bool,
    },
    /// Export configuration in other tools' formats.
    Export {
        #[command(subcommand)]
        command: ExportCommand,
    },
    /// API key helpers.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
}

#[derive(Subcommand)]
enum ExportCommand {
    /// Prometheus alerting rules equivalent to `[[hypercare.alerts]]` (YAML on stdout).
    PrometheusRules {
        /// TOML config file (the embedded quickstart when absent).
        #[arg(long, short)]
        config: Option<PathBuf>,
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

fn main() {
    if let Err(e) = real_main() {
        // One line: what failed and why, each cause once. A backtrace only when
        // asked for (RUST_BACKTRACE), as `{:?}` of the error.
        if std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0") {
            eprintln!("hypergate: error: {e:?}");
        } else {
            eprintln!("hypergate: error: {}", one_line(&e));
        }
        std::process::exit(1);
    }
}

/// The error and its causes as `a: b: c`, leaving out a cause whose text the
/// message before it already contains (as `thiserror` messages often do).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

/// Lifts the soft limit on open files to the hard limit: every client and
/// upstream connection is a file descriptor, and the usual soft limit of 1024
/// would cap the gateway far below its connection caps.
fn raise_open_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the valid `rlimit` struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::warn!("could not raise the open-file limit");
            }
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        // Commands that print (calls, report, ...) end quietly when their reader
        // goes away (`| head`), like other command-line tools; the server keeps
        // Rust's default of ignoring SIGPIPE and handling EPIPE per connection.
        // SAFETY: called once at start-up, before any other thread exists;
        // SIG_DFL is a valid disposition for SIGPIPE.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
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
        Command::Diff {
            from,
            to,
            route,
            window,
            db,
            config,
        } => {
            let conn = open_store(db, config)?;
            let window = humantime::parse_duration(&window)
                .with_context(|| format!("--window {window:?}: expected a duration like 24h"))?;
            let d = hypergate::hypercare::diff::diff(
                &conn,
                &from,
                &to,
                route.as_deref(),
                window,
                now_ms(),
            )?;
            println!("{}", serde_json::to_string_pretty(&d)?);
            Ok(())
        }
        Command::Report {
            since,
            format,
            db,
            config,
            fleet,
        } => {
            let format = match format.as_str() {
                "md" | "markdown" => hypergate::hypercare::report::Format::Markdown,
                "html" => hypergate::hypercare::report::Format::Html,
                other => anyhow::bail!("--format {other:?}: expected md or html"),
            };
            if fleet {
                let path = config.context("--fleet needs --config")?;
                let cfg = config::load_file(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
                let settings = hypergate::hypercare::fleet::FleetSettings::of(&cfg.raw, 0)
                    .with_context(|| format!("{}: [fleet] is not enabled", path.display()))?;
                let snapshot = hypergate::hypercare::fleet::read_snapshot(&settings)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                print!(
                    "{}",
                    hypergate::hypercare::report::fleet_report(&snapshot, now_ms(), format)
                );
                return Ok(());
            }
            let conn = open_store(db, config)?;
            let since = humantime::parse_duration(&since)
                .with_context(|| format!("--since {since:?}: expected a duration like 24h"))?;
            print!(
                "{}",
                hypergate::hypercare::report::report(&conn, since, now_ms(), format)?
            );
            Ok(())
        }
        Command::Export {
            command: ExportCommand::PrometheusRules { config: path },
        } => {
            let cfg = match &path {
                Some(p) => config::load_file(p),
                None => config::load_str(config::EMBEDDED_QUICKSTART, "<embedded quickstart>"),
            }
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            print!(
                "{}",
                hypergate::hypercare::alerts::prometheus_rules(&cfg.raw.hypercare.alerts)
            );
            Ok(())
        }
        Command::Calls {
            db,
            config,
            filters,
        } => {
            let conn = open_store(db, config)?;
            let filter =
                hypergate::hypercare::query::CallFilter::from_query(&filters.join("&"), now_ms())?;
            let page = hypergate::hypercare::query::calls(&conn, &filter)?;
            for call in page["calls"].as_array().into_iter().flatten() {
                println!("{call}");
            }
            if let Some(next) = page["next_cursor"].as_i64() {
                eprintln!("more: add cursor={next}");
            }
            Ok(())
        }
        Command::Sql { db, config, query } => {
            let conn = open_store(db, config)?;
            hypergate::hypercare::query::rows_as_json(&conn, &query, [], true, |row| {
                println!("{row}");
            })?;
            Ok(())
        }
        Command::Summary { db, config, window } => {
            let conn = open_store(db, config)?;
            let window = humantime::parse_duration(&window)
                .with_context(|| format!("--window {window:?}: expected a duration like 1h"))?;
            let s = hypergate::hypercare::query::summary(&conn, window, now_ms())?;
            println!("{}", serde_json::to_string_pretty(&s)?);
            Ok(())
        }
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

fn now_ms() -> i64 {
    hypergate::hypercare::unix_ms() as i64
}

/// Opens the call store read-only: `--db`, else the store of `--config`, else the
/// embedded quickstart's (`./quickstart.db`).
fn open_store(
    db: Option<PathBuf>,
    config: Option<PathBuf>,
) -> anyhow::Result<rusqlite::Connection> {
    let path = match (db, config) {
        (Some(db), _) => db,
        (None, Some(c)) => {
            let cfg = config::load_file(&c).map_err(|e| anyhow::anyhow!("{e}"))?;
            hypergate::hypercare::store::resolve_path(&cfg.raw.hypercare.store, Some(&c))
        }
        (None, None) => {
            let embedded = config::load_str(config::EMBEDDED_QUICKSTART, "embedded quickstart")
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            PathBuf::from(&embedded.raw.hypercare.store.path)
        }
    };
    anyhow::ensure!(path.exists(), "no call store at {}", path.display());
    hypergate::hypercare::store::open_for_reading(&path)
        .with_context(|| format!("opening {}", path.display()))
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
    raise_open_file_limit();
    #[cfg(not(feature = "alloc-count"))]
    hypergate::shard::set_memory_release(|| {
        // SAFETY: mi_collect only frees (and, forced, purges at once) unused allocator pages;
        // mimalloc is the global allocator of this binary.
        unsafe { libmimalloc_sys::mi_collect(true) }
    });
    let gateway = Gateway::start(cfg, path).context("cannot start the gateway")?;
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
