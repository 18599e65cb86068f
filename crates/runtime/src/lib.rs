//! `hypergate-runtime`: the running data plane: shard threads, their control
//! (transactional reloads, runtime overrides, drains), the assembled config,
//! metrics export, the record writer, TLS termination and the eBPF loader.
//!
//! - [`shard`]: one pinned thread per core, with its own monoio runtime,
//!   listeners and data-plane state; commands from the control thread
//!   (prepare / commit / abort a reload, set overrides, snapshot, drain).
//! - [`gateway`]: binds the sockets, starts the shards and side threads; the
//!   [`Controller`](gateway::Controller) runs reloads, overrides and drains.
//! - [`config`]: the validated config assembled from each feature's build step.
//! - [`observability`]: merged stats, Prometheus and `/stats` export, the
//!   record writer (JSON access log and a [`RecordStore`](hypergate_core::record::RecordStore)),
//!   the kernel TCP probe.
//! - [`tls`]: listener TLS with SNI certificate selection.
//! - [`control`]: the narrow handle the layers above steer it through.
//!
//! Allowed dependencies: `hypergate-core`, `hypergate-upstream`,
//! `hypergate-edge`, `hypergate-proxy`, `hypergate-llm` (and third-party
//! crates). Hypercare reaches it only through [`control::Control`]; the admin
//! API and the binary use the [`Controller`](gateway::Controller) and the hooks
//! given at start.
#![deny(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

#[cfg(feature = "alloc-count")]
pub mod alloc_count;
pub mod config;
pub mod control;
pub mod gateway;
pub mod observability;
pub mod shard;
pub mod tls;
