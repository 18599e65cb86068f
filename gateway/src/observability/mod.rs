//! Observability: per-shard metrics, their Prometheus and JSON export, and the access log.
//!
//! - [`metrics`]: single-writer counters and HDR histograms per shard, merged off the hot path.
//! - [`export`]: Prometheus text exposition and `/stats` JSON from merged snapshots.
//! - [`access_log`]: bounded, drop-don't-block JSON access log writer.
//! - [`ebpf`]: the kernel TCP probe's loader and its `hypergate_tcp_*` metrics.

pub mod access_log;
pub mod ebpf;
pub mod export;
pub mod metrics;

pub use metrics::{ClusterStats, MergedStats, RouteStats, ShardSnapshot, ShardStats, TargetStats};
