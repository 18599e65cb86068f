//! Kernel-level TCP observability: the eBPF probe's loader and its metrics.
//!
//! The kernel's view of every gateway connection (handshake time, smoothed RTT,
//! lifetime, bytes, retransmits, resets), on the same `/metrics` and `/stats` as
//! the L7 figures, so "network or application?" has an answer. `docs/ebpf.md` has
//! the metric reference and the requirements.
//!
//! How it works:
//! 1. [`start`] runs before any listener or upstream socket exists (sock_ops only
//!    sees connections set up after it attaches). It moves the process into its own
//!    cgroup v2 (or `[observability.ebpf] cgroup`), loads the probe object that the
//!    build embedded (`ebpf/probe`, built by `cargo xtask build-ebpf`), attaches
//!    `sock_ops` to that cgroup and the `tp_btf` programs (retransmits, resets sent
//!    and received, state changes).
//! 2. The kernel aggregates: per-CPU counters per listener port / upstream address,
//!    and at most one latency sample per connection per period on a ring buffer;
//!    never an event per ACK.
//! 3. A control thread ([`control`]) drains the maps every `drain_interval` (and
//!    before each scrape) into HDR histograms ([`aggregate`]) and names keys with
//!    the config's listeners, clusters and endpoints ([`labels`]).
//! 4. The admin thread asks it for `hypergate_tcp_*` text or `/stats` JSON over a
//!    channel ([`TcpProbe::prometheus`], [`TcpProbe::stats_json`]).
//!
//! Built without the `ebpf` feature the API is the same, and [`start`] returns
//! [`ProbeError::NotBuilt`]: the gateway logs that and runs without kernel metrics.

pub mod aggregate;
mod control;
pub mod labels;

#[cfg(feature = "ebpf")]
mod cgroup;
#[cfg(feature = "ebpf")]
mod loader;

use control::ControlRequest;
use crossbeam_channel::Sender;
use labels::PeerLabels;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Longest wait for the control thread to answer a scrape.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// Shortest drain interval honoured (a smaller configured value is raised to it).
const MIN_DRAIN_INTERVAL: Duration = Duration::from_millis(10);

/// Why the probe did not load. The gateway logs it and runs without kernel metrics.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The binary has no probe in it.
    #[error("this binary was built without the `ebpf` feature (build with `cargo xtask build-ebpf` and then `cargo build --features ebpf`)")]
    NotBuilt,
    /// The kernel has no BTF, which the tracepoint programs need.
    #[error(
        "kernel BTF is not available ({0}); a kernel built with CONFIG_DEBUG_INFO_BTF is needed"
    )]
    NoBtf(String),
    /// Not allowed to load or attach BPF programs.
    #[error("not permitted to {what}: run as root or with CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN ({detail})")]
    Permission {
        /// What was attempted.
        what: String,
        /// The kernel's answer.
        detail: String,
    },
    /// The cgroup v2 to run in could not be set up.
    #[error("cgroup v2 {path}: {reason}")]
    Cgroup {
        /// The cgroup directory (or the mount table when none was found).
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The kernel refused a program or map (verifier log, missing hook...).
    #[error("cannot {what}: {detail}")]
    Kernel {
        /// What was attempted.
        what: String,
        /// The loader's error, verifier output included.
        detail: String,
    },
    /// The control thread could not be started.
    #[error("cannot start the probe's control thread: {0}")]
    Thread(std::io::Error),
}

/// A loaded probe. Owned by the control side (`Arc`); the programs stay attached
/// until it is dropped.
pub struct TcpProbe {
    requests: Sender<ControlRequest>,
}

impl std::fmt::Debug for TcpProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpProbe").finish_non_exhaustive()
    }
}

/// Loads the probe for `cfg`. Call it before any listener or upstream socket opens:
/// it moves the process into its cgroup and only connections set up afterwards are
/// seen. Fails, changing nothing else, when the probe cannot load.
pub fn start(cfg: &hypergate_proxy::spec::Config) -> Result<TcpProbe, ProbeError> {
    #[cfg(feature = "ebpf")]
    {
        let settings = &cfg.raw.observability.ebpf;
        let interval = settings.drain_interval.max(MIN_DRAIN_INTERVAL);
        let source = loader::load(settings.cgroup.as_deref(), interval)?;
        spawn(source, interval, PeerLabels::from_config(cfg))
    }
    #[cfg(not(feature = "ebpf"))]
    {
        let _ = (cfg, MIN_DRAIN_INTERVAL);
        Err(ProbeError::NotBuilt)
    }
}

/// Starts the control thread over a kernel source.
#[cfg_attr(not(feature = "ebpf"), allow(dead_code))]
fn spawn(
    source: impl control::KernelSource,
    interval: Duration,
    labels: PeerLabels,
) -> Result<TcpProbe, ProbeError> {
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name("ebpf-control".into())
        .spawn(move || control::run(source, interval, labels, rx))
        .map_err(ProbeError::Thread)?;
    Ok(TcpProbe { requests: tx })
}

impl TcpProbe {
    /// Renames keys after a reload: listener ports, endpoint address -> (cluster,
    /// endpoint). Counts and histograms are kept.
    pub fn update_config(&self, cfg: &hypergate_proxy::spec::Config) {
        let _ = self
            .requests
            .send(ControlRequest::Labels(PeerLabels::from_config(cfg)));
    }

    /// Tells the probe which addresses the listeners were bound to, so that a
    /// listener configured on port 0 (and the admin listener, named `admin`) gets
    /// its name. Call once, after binding.
    pub fn listeners_bound(&self, listeners: &[(String, SocketAddr)], admin: SocketAddr) {
        let mut bound: Vec<(Arc<str>, SocketAddr)> = listeners
            .iter()
            .map(|(name, addr)| (Arc::from(name.as_str()), *addr))
            .collect();
        bound.push((Arc::from("admin"), admin));
        let _ = self.requests.send(ControlRequest::BoundListeners(bound));
    }

    /// Appends the `hypergate_tcp_*` families (Prometheus text format).
    pub fn prometheus(&self, out: &mut String) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self.requests.send(ControlRequest::Prometheus(tx)).is_ok() {
            if let Ok(text) = rx.recv_timeout(REPLY_TIMEOUT) {
                out.push_str(&text);
                return;
            }
        }
        out.push_str("# hypergate_tcp_* unavailable: the eBPF control thread did not answer\n");
    }

    /// Exact quantiles and counters by listener, and by cluster and endpoint
    /// (`{"downstream": {..}, "upstream": {cluster: {.., "endpoints": {..}}}, "probe": {..}}`).
    pub fn stats_json(&self) -> serde_json::Value {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self.requests.send(ControlRequest::Json(tx)).is_ok() {
            if let Ok(v) = rx.recv_timeout(REPLY_TIMEOUT) {
                return v;
            }
        }
        serde_json::json!({"error": "the eBPF control thread did not answer"})
    }
}

#[cfg(test)]
mod tests {
    use super::aggregate::Aggregates;
    use super::*;
    use hypergate_ebpf_common::{PeerCounters, PeerKey, FAMILY_INET, SIDE_DOWNSTREAM};

    fn minimal_config() -> hypergate_proxy::spec::Config {
        crate::config::load_str(
            r#"
[[listeners]]
name = "web"
address = "127.0.0.1:0"
[[routes]]
name = "hello"
[routes.direct]
status = 200
"#,
            "test",
        )
        .unwrap()
    }

    /// A kernel that reports one more opened connection on every drain.
    struct FakeKernel(u64);

    impl control::KernelSource for FakeKernel {
        fn drain(&mut self, agg: &mut Aggregates) {
            self.0 += 1;
            let key = PeerKey {
                side: SIDE_DOWNSTREAM,
                family: FAMILY_INET,
                port: 4321,
                ..PeerKey::default()
            };
            agg.set_counters(
                key,
                PeerCounters {
                    opened: self.0,
                    ..PeerCounters::default()
                },
            );
        }
    }

    #[test]
    fn probe_handle_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<TcpProbe>();
    }

    #[test]
    fn scrapes_drain_first_and_use_bound_listener_names() {
        let cfg = minimal_config();
        let probe = spawn(
            FakeKernel(0),
            Duration::from_secs(3600),
            PeerLabels::from_config(&cfg),
        )
        .unwrap();
        probe.listeners_bound(
            &[("web".into(), "127.0.0.1:4321".parse().unwrap())],
            "127.0.0.1:9901".parse().unwrap(),
        );
        assert_eq!(probe.stats_json()["downstream"]["web"]["opened"], 1);
        let mut out = String::new();
        probe.prometheus(&mut out);
        assert!(out.contains(
            "hypergate_tcp_connections_opened_total{side=\"downstream\",listener=\"web\"} 2\n"
        ));
        probe.update_config(&cfg);
        assert_eq!(probe.stats_json()["downstream"]["web"]["opened"], 3);
    }

    #[cfg(not(feature = "ebpf"))]
    #[test]
    fn start_without_the_feature_says_so() {
        let cfg = minimal_config();
        let err = start(&cfg).unwrap_err();
        assert!(
            err.to_string().contains("without the `ebpf` feature"),
            "{err}"
        );
    }
}
