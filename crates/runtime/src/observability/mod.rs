//! Observability: per-shard metrics, their Prometheus and JSON export, and the access log.
//!
//! - [`metrics`]: single-writer counters and HDR histograms per shard, merged
//!   off the hot path (the data plane's, `hypergate_proxy::stats`), and
//!   [`Snapshot`]: the data plane's and the LLM layer's figures merged.
//! - [`export`]: Prometheus text exposition and `/stats` JSON from merged snapshots.
//! - [`access_log`]: bounded, drop-don't-block JSON access log writer.
//! - [`ebpf`]: the kernel TCP probe's loader and its `hypergate_tcp_*` metrics.

pub mod access_log;
pub mod ebpf;
pub mod export;
pub use hypergate_proxy::stats as metrics;

pub use metrics::{
    ClusterStats, MergedStats, RouteStats, ShardSnapshot, ShardStats, TargetCounts, TargetStats,
};

/// What one shard reports: the data plane's figures and the LLM layer's.
pub struct ShardReport {
    /// The data plane's counters and histograms.
    pub stats: ShardSnapshot,
    /// The LLM layer's.
    pub ai: hypergate_llm::stats::AiSnapshot,
}

/// Every shard's reports merged: the data plane's figures (reached through
/// `Deref`) and the LLM layer's.
#[derive(Default)]
pub struct Snapshot {
    /// The data plane's.
    pub stats: MergedStats,
    /// The LLM layer's.
    pub ai: hypergate_llm::stats::AiMerged,
}

impl Snapshot {
    /// Merges shard reports.
    pub fn merge(reports: &[ShardReport]) -> Snapshot {
        let stats: Vec<&ShardSnapshot> = reports.iter().map(|r| &r.stats).collect();
        let mut ai = hypergate_llm::stats::AiMerged::default();
        for r in reports {
            ai.add(&r.ai);
        }
        Snapshot {
            stats: MergedStats::merge_refs(&stats),
            ai,
        }
    }
}

impl std::ops::Deref for Snapshot {
    type Target = MergedStats;

    fn deref(&self) -> &MergedStats {
        &self.stats
    }
}
