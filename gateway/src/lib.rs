//! `hypergate`: the gateway assembled, and its command line.
//!
//! The architecture is the crate graph; each crate's `//!` doc says what it
//! owns and what it may depend on, and `tests/tests/layering.rs` fails on an
//! edge that is not allowed. Bottom up:
//! - `hypergate-core`: the HTTP/1.1 codec and canonical path, socket I/O, the
//!   configuration as data (raw types, diffs, the overrides layer), metric
//!   primitives, records, ids, secrets.
//! - `hypergate-upstream` (clusters, pools, balancing, health, leases, TLS to
//!   upstreams) and `hypergate-edge` (auth, IP rules, CORS, connection caps,
//!   rate limits).
//! - `hypergate-proxy`: the request pipeline over one connection, routing, the
//!   data plane's validated config and shard state, and the [`proxy::Handler`]
//!   seam to the layer above.
//! - `hypergate-llm`: the LLM gateway, as that handler.
//! - `hypergate-runtime`: shard threads, the controller (transactional reloads,
//!   runtime overrides, drains), config assembly, metrics export, the record writer.
//! - `hypergate-hypercare`: the call store, alerts, canaries, windows, reports;
//!   it reaches the data plane only through the runtime's controller.
//! - `hypergate-admin`: the admin listener and the dashboard.
//! - this crate: [`config`] (a file loaded with every layer's checks),
//!   [`gateway`] (everything started and wired), [`demo`] (built-in demo
//!   upstreams: HTTP, the mock LLM provider, and gRPC in `demo_grpc`) and the `hypergate` binary; it re-exports the crates under short
//!   names (`hypergate::proxy`, `hypergate::hypercare`, ...) for the tests,
//!   benchmarks and fuzz targets.
//!
//! Allowed dependencies: every Hypergate crate (and `hypergate-mock-llm`, the
//! built-in demo LLM provider).
#![deny(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod config;
pub mod demo;
mod demo_grpc;
pub mod gateway;

pub use hypergate_admin as admin;
pub use hypergate_hypercare as hypercare;
#[cfg(feature = "alloc-count")]
pub use hypergate_runtime::alloc_count;
pub use hypergate_runtime::{observability, shard, tls};

pub use hypergate_core::{http, secret};
pub use hypergate_edge as edge;
pub use hypergate_edge::{auth, policy};
pub use hypergate_llm as ai;
pub use hypergate_proxy as proxy;
pub use hypergate_proxy::routing;
pub use hypergate_upstream as upstream;
