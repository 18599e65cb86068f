//! Hypergate: a shard-per-core HTTP/1.1 reverse proxy and API gateway on monoio.
//!
//! Architecture, top to bottom:
//! - [`config`]: TOML -> raw serde types -> validated, immutable [`config::Config`].
//! - [`gateway`]: binds listeners, starts [`shard`]s and side threads, runs reloads and drains.
//! - [`shard`]: one pinned thread per core with its own monoio runtime, listener,
//!   pools, counters and histograms.
//! - [`proxy`]: the request pipeline, phase by phase, for one connection.
//! - [`http`]: strict HTTP/1.1 heads and chunked framing.
//! - [`routing`], [`upstream`]: route lookup; pools, balancing, health, outliers, retries.
//! - [`ai`]: the LLM gateway phase (providers, translation, budgets, guardrails, cache).
//! - [`observability`], [`admin`]: metrics, access log, and the admin listener.
//! - [`secret`]: [`secret::Secret`], the type of every secret in the config (never printed).
#![deny(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod admin;
pub mod config;
pub mod demo;
pub mod edge;
pub mod gateway;

pub use hypergate_hypercare as hypercare;
#[cfg(feature = "alloc-count")]
pub use hypergate_runtime::alloc_count;
pub use hypergate_runtime::{observability, shard, tls};

pub use hypergate_core::{http, secret};
pub use hypergate_edge::{auth, policy};
pub use hypergate_llm as ai;
pub use hypergate_proxy as proxy;
pub use hypergate_proxy::routing;
pub use hypergate_upstream as upstream;
