//! `hypergate-proxy`: the request path of one downstream connection, and the
//! data plane's view of the config and of its shard.
//!
//! - [`pipeline`]: a connection, request by request: read and canonicalise the
//!   head, route, the edge phase, body limits, then a direct answer, the
//!   [`Handler`] (the LLM gateway) or the upstream; respond; record.
//! - [`routing`]: route lookup on the canonical path.
//! - [`spec`]: the validated config the shards run on, and route validation.
//! - [`state`]: a shard's data-plane state (installed config, connections).
//! - [`stats`]: per-shard counters and histograms, merged off the request path.
//! - [`handler`]: the seam to the layer above (the LLM gateway).
//!
//! Allowed dependencies: `hypergate-core`, `hypergate-upstream`,
//! `hypergate-edge` (and third-party crates).
#![deny(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod edge_phase;
pub mod handler;
pub mod pipeline;
pub mod routing;
pub mod spec;
pub mod state;
pub mod stats;

pub use handler::{Handler, HandlerOutcome, HandlerRequest};
pub use hypergate_edge::EdgeReject;
pub use pipeline::{serve_connection, shutdown_both, ClientStream};
