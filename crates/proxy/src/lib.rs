//! `hypergate-proxy`: the request path of one downstream connection, and the
//! data plane's view of the config and of its shard.
//!
//! - [`pipeline`]: a connection, request by request, through the phases in
//!   order: `head` (read and canonicalise), route, `edge_phase` (CORS, IP
//!   rules, auth, groups, rate limits, body limit), then a direct answer, the
//!   [`Handler`] (the LLM gateway) or `forward` (split, the upstream client,
//!   the response); errors through `respond`, the one responder; `record`
//!   (metrics, rollups, the call record, and `trace`: OpenTelemetry spans).
//!   An allowed upgrade continues in `tunnel`. HTTP/2 connections are served
//!   by [`h2`], whose streams enter the same pipeline one request each.
//! - [`exchange`]: the request as the phases read it, and its running account.
//! - [`grpc`]: a gRPC call's deadline and status.
//! - [`respond`]: every answer the gateway writes itself.
//! - [`routing`]: route lookup on the canonical path.
//! - [`spec`]: the validated config the shards run on, and route validation.
//! - [`state`]: a shard's data-plane state (installed config, connections).
//! - [`stats`]: per-shard counters and histograms, merged off the request path.
//! - [`handler`]: the seam to the layer above (the LLM gateway).
//!
//! Allowed dependencies: `hypergate-core`, `hypergate-upstream`,
//! `hypergate-edge`, `hypergate-otel` (and third-party crates).
#![deny(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod edge_phase;
pub mod exchange;
mod forward;
pub mod grpc;
pub mod h2;
pub mod handler;
mod head;
pub mod pipeline;
mod record;
pub mod respond;
pub mod routing;
pub mod spec;
mod split;
pub mod state;
pub mod stats;
mod trace;
mod tunnel;

pub use exchange::ClientStream;
pub use handler::{Answered, Handler, HandlerOutcome, HandlerRequest};
pub use hypergate_edge::EdgeReject;
pub use pipeline::serve_connection;
