//! `hypergate-core`: what every other Hypergate crate stands on, and nothing
//! that knows about a feature.
//!
//! - [`http`]: strict HTTP/1.1 heads (`httparse`), chunked framing, the canonical
//!   path.
//! - [`error`]: the one error type ([`error::GatewayError`]: kind, side,
//!   retryable) and the one writer of error responses (JSON, OpenAI or
//!   Anthropic shape).
//! - [`io`]: timed socket reads and writes with owned buffers, and the body pump.
//! - [`config`]: the configuration as data (raw serde types, the parser that
//!   reports every error with its path, reload diffs, the runtime-overrides layer).
//! - [`metrics`], [`record`], [`rollup`]: metric primitives, the per-call
//!   record, and the exact per-minute totals the shards count.
//! - [`ids`], [`rng`], [`clock`], [`keys`], [`secret`]: request ids, the
//!   per-shard generator, wall-clock time, request keys, and the
//!   type of every secret.
//!
//! Allowed dependencies: third-party crates, `hypergate-analysis` (canary
//! defaults) and `hypergate-otel` (the `[observability.otlp]` table's type),
//! both pure crates that depend on no other Hypergate crate.
//! Everything above depends on this crate: `upstream` and `edge`, then `proxy`,
//! `llm`, `runtime`, `hypercare`, `admin` and the `hypergate` binary.
#![deny(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod clock;
pub mod config;
pub mod error;
pub mod http;
pub mod ids;
pub mod io;
pub mod keys;
pub mod metrics;
pub mod record;
pub mod rng;
pub mod rollup;
pub mod secret;
