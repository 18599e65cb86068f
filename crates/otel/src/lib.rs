//! `hypergate-otel`: OpenTelemetry traces and call-record logs, exported over
//! OTLP/HTTP with protobuf bodies, built so that a shard pays only for filling
//! a struct on its stack and writing it as bytes into a buffer.
//!
//! - [`context`]: W3C trace context: parse an incoming `traceparent` and
//!   `tracestate`, make the gateway's span ids, format the outgoing header.
//! - [`sampler`]: the head decision (parent-based, trace-id ratio) and the
//!   decision at the end of a request (keep errors and canary calls anyway).
//! - [`span`], [`log`], [`attributes`]: the span and log-record models the
//!   request path fills, and the attribute names it uses.
//! - [`config`]: the `[observability.otlp]` table, the standard `OTEL_*`
//!   environment variables over it, and validation into [`config::OtlpSettings`].
//! - [`sink`]: the per-shard buffer ([`sink::TelemetrySink`]) that hands full
//!   batches to the exporter thread without blocking.
//! - [`exporter`]: the exporter thread: wraps batches in export requests and
//!   POSTs them with a small blocking HTTP/1.1 client. The protobuf is
//!   written by hand (field numbers from `opentelemetry-proto`, whose
//!   generated types encode the resource and the tests decode).
//! - [`resource`], [`stats`]: the resource every batch carries, and the
//!   exporter's counters with their Prometheus text.
//!
//! How a shard uses it: parse the incoming headers with
//! [`context::RemoteParent::parse`], make the server span's context with
//! [`context::SpanContext::server`] (the head decision), and at the end of the
//! request ask [`sampler::Sampler::keep`] whether to build a
//! [`span::SpanData`]; push it into the shard's sink (which encodes it), and call
//! [`sink::TelemetrySink::flush_if_due`] from the shard's periodic tick.
//!
//! Allowed dependencies: third-party crates only (no other Hypergate crate),
//! so that any layer, `core`'s raw config types included, may use it.
#![deny(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod attributes;
pub mod config;
pub mod context;
mod encode;
pub mod exporter;
pub mod log;
pub mod resource;
pub mod sampler;
pub mod sink;
pub mod span;
pub mod stats;

pub use config::{OtlpConfig, OtlpConfigIssue, OtlpEnv, OtlpSettings};
pub use context::{RemoteParent, SpanContext, SpanId, TraceId, TraceState};
pub use exporter::Exporter;
pub use log::{LogBody, LogData, Severity};
pub use resource::Resource;
pub use sampler::{Sampler, SamplerPolicy};
pub use sink::TelemetrySink;
pub use span::{AttrValue, Attributes, SpanData, SpanKind, SpanStatus};
pub use stats::OtlpStats;
