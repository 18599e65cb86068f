//! User-space side of the probe's figures: HDR histograms fed from kernel events,
//! counters copied from the kernel's per-CPU maps, and their rendering as
//! `hypergate_tcp_*` Prometheus families and `/stats` JSON.
//!
//! Only the control thread owns an [`Aggregates`] (single writer); the admin
//! thread gets rendered text or JSON back over a channel, never a lock.

use super::labels::{key_addr, PeerLabels, PeerName};
use hdrhistogram::Histogram;
use hypergate_ebpf_common::{
    Event, PeerCounters, PeerKey, EVENT_CLOSE, EVENT_HANDSHAKE, EVENT_RTT_SAMPLE, SIDE_DOWNSTREAM,
};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::fmt::Write;

/// Highest latency tracked (handshake, RTT), in µs: 100 s.
const MAX_LATENCY_US: u64 = 100_000_000;
/// Highest lifetime tracked, in µs: 30 days.
const MAX_LIFETIME_US: u64 = 30 * 24 * 3600 * 1_000_000;

/// Prometheus bucket bounds (seconds) for handshake and RTT: network scale.
const LATENCY_BUCKETS_S: [f64; 19] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Prometheus bucket bounds (seconds) for connection lifetimes.
const LIFETIME_BUCKETS_S: [f64; 15] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 86400.0,
];

/// A histogram in µs, allocated on its first sample, with the exact sum beside it.
#[derive(Clone, Default)]
pub struct LatencyHistogram {
    hist: Option<Histogram<u64>>,
    sum_us: u64,
    max_us: u64,
}

impl LatencyHistogram {
    fn with_max(max_us: u64) -> LatencyHistogram {
        LatencyHistogram {
            hist: None,
            sum_us: 0,
            max_us,
        }
    }

    /// Records one value in µs (clamped to the tracked range).
    pub fn record(&mut self, us: u64) {
        let max = self.max_us;
        let h = self.hist.get_or_insert_with(|| {
            Histogram::new_with_bounds(1, max, 3).expect("static histogram bounds are valid")
        });
        let us = us.clamp(1, max);
        h.saturating_record(us);
        self.sum_us = self.sum_us.saturating_add(us);
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        let Some(o) = &other.hist else { return };
        let max = self.max_us.max(other.max_us);
        let h = self.hist.get_or_insert_with(|| {
            Histogram::new_with_bounds(1, max, 3).expect("static histogram bounds are valid")
        });
        // Same bounds on both sides, so adding cannot fail; a failure would only lose samples.
        let _ = h.add(o);
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.hist.as_ref().map_or(0, Histogram::len)
    }

    /// Exact quantiles as JSON (`count`, `mean_us`, `p50_us` .. `max_us`).
    pub fn quantiles(&self) -> Value {
        match &self.hist {
            None => json!({"count": 0}),
            Some(h) => json!({
                "count": h.len(),
                "mean_us": self.sum_us as f64 / h.len().max(1) as f64,
                "min_us": h.min(),
                "p50_us": h.value_at_quantile(0.50),
                "p90_us": h.value_at_quantile(0.90),
                "p99_us": h.value_at_quantile(0.99),
                "p999_us": h.value_at_quantile(0.999),
                "max_us": h.max(),
            }),
        }
    }

    fn prometheus(&self, out: &mut String, name: &str, labels: &str, buckets: &[f64]) {
        for b in buckets {
            let le_us = (b * 1e6).round() as u64;
            let count = self.hist.as_ref().map_or(0, |h| h.count_between(0, le_us));
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels},le=\"+Inf\"}} {}",
            self.count()
        );
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum_us as f64 / 1e6);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count());
    }
}

/// Everything known about one [`PeerKey`].
#[derive(Clone)]
pub struct PeerAggregate {
    /// Kernel counters, summed over CPUs (cumulative since the probe loaded).
    pub counters: PeerCounters,
    /// Handshake time.
    pub handshake: LatencyHistogram,
    /// Smoothed RTT sampled on live connections (one per connection per period).
    pub srtt: LatencyHistogram,
    /// Smoothed RTT when an established connection closed.
    pub srtt_at_close: LatencyHistogram,
    /// Established-to-closed time.
    pub lifetime: LatencyHistogram,
}

impl Default for PeerAggregate {
    fn default() -> Self {
        PeerAggregate {
            counters: PeerCounters::default(),
            handshake: LatencyHistogram::with_max(MAX_LATENCY_US),
            srtt: LatencyHistogram::with_max(MAX_LATENCY_US),
            srtt_at_close: LatencyHistogram::with_max(MAX_LATENCY_US),
            lifetime: LatencyHistogram::with_max(MAX_LIFETIME_US),
        }
    }
}

impl PeerAggregate {
    fn merge(&mut self, other: &PeerAggregate) {
        self.counters.add(&other.counters);
        self.handshake.merge(&other.handshake);
        self.srtt.merge(&other.srtt);
        self.srtt_at_close.merge(&other.srtt_at_close);
        self.lifetime.merge(&other.lifetime);
    }

    fn json(&self) -> Value {
        let c = &self.counters;
        json!({
            "opened": c.opened,
            "closed": c.closed,
            "open": c.opened.saturating_sub(c.closed),
            "connect_failures": c.connect_failures,
            "closes_by_gateway": c.closes_by_gateway,
            "closes_by_peer": c.closes_by_peer,
            "retransmits": c.retransmits,
            "resets_sent": c.resets_sent,
            "resets_received": c.resets_received,
            "bytes_acked": c.bytes_acked,
            "bytes_received": c.bytes_received,
            "handshake": self.handshake.quantiles(),
            "srtt": self.srtt.quantiles(),
            "srtt_at_close": self.srtt_at_close.quantiles(),
            "lifetime": self.lifetime.quantiles(),
        })
    }
}

/// The probe's health figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeHealth {
    /// Events dropped because the ring buffer was full.
    pub events_lost: u64,
    /// Connections not tracked because a kernel map insert failed.
    pub untracked: u64,
}

/// All figures, by raw key. Owned by the control thread.
#[derive(Default)]
pub struct Aggregates {
    peers: BTreeMap<PeerKey, PeerAggregate>,
    health: ProbeHealth,
}

impl Aggregates {
    /// Records one ring-buffer event.
    pub fn record(&mut self, event: &Event) {
        let peer = self.peers.entry(event.key).or_default();
        match event.kind {
            EVENT_HANDSHAKE => peer.handshake.record(event.value / 1_000),
            EVENT_RTT_SAMPLE => peer.srtt.record(event.value),
            EVENT_CLOSE => {
                peer.lifetime.record(event.value / 1_000);
                if event.value2 != 0 {
                    peer.srtt_at_close.record(event.value2);
                }
            }
            _ => {}
        }
    }

    /// Replaces a key's counters with the kernel's current (cumulative) sums.
    pub fn set_counters(&mut self, key: PeerKey, counters: PeerCounters) {
        self.peers.entry(key).or_default().counters = counters;
    }

    /// Replaces the probe's health figures.
    pub fn set_health(&mut self, health: ProbeHealth) {
        self.health = health;
    }

    /// Merges peers by their exported names (several keys can share a name, e.g. an
    /// endpoint reached over IPv4 and IPv6, or a listener with several addresses).
    fn by_name(&self, labels: &PeerLabels) -> BTreeMap<NameKey, PeerAggregate> {
        let mut out: BTreeMap<NameKey, PeerAggregate> = BTreeMap::new();
        for (key, agg) in &self.peers {
            out.entry(NameKey::of(labels.name(key)))
                .or_default()
                .merge(agg);
        }
        out
    }

    /// Appends the `hypergate_tcp_*` families in Prometheus text format.
    pub fn prometheus(&self, labels: &PeerLabels, out: &mut String) {
        let named = self.by_name(labels);
        type Field = fn(&PeerCounters) -> u64;
        let counters: [(&str, &str, &str, Field); 8] = [
            (
                "hypergate_tcp_connections_opened_total",
                "counter",
                "TCP connections of the gateway that reached ESTABLISHED (kernel view).",
                |c| c.opened,
            ),
            (
                "hypergate_tcp_connections_closed_total",
                "counter",
                "Established TCP connections of the gateway that reached CLOSE.",
                |c| c.closed,
            ),
            (
                "hypergate_tcp_connect_failures_total",
                "counter",
                "Upstream connects that closed before being established (refused, timed out, cancelled).",
                |c| c.connect_failures,
            ),
            (
                "hypergate_tcp_retransmits_total",
                "counter",
                "TCP segments the gateway retransmitted, SYNs included.",
                |c| c.retransmits,
            ),
            (
                "hypergate_tcp_resets_sent_total",
                "counter",
                "TCP resets sent on the gateway's connections.",
                |c| c.resets_sent,
            ),
            (
                "hypergate_tcp_resets_received_total",
                "counter",
                "TCP resets received on the gateway's connections.",
                |c| c.resets_received,
            ),
            (
                "hypergate_tcp_acked_bytes_total",
                "counter",
                "Bytes the gateway sent that the peer acknowledged (sequence space: an upstream SYN and each FIN count one).",
                |c| c.bytes_acked,
            ),
            (
                "hypergate_tcp_received_bytes_total",
                "counter",
                "Bytes the gateway received (a FIN counts one).",
                |c| c.bytes_received,
            ),
        ];
        for (name, kind, help, field) in counters {
            header(out, name, kind, help);
            for (n, agg) in &named {
                if name == "hypergate_tcp_connect_failures_total" && n.is_downstream() {
                    continue;
                }
                let _ = writeln!(out, "{name}{{{}}} {}", n.labels(), field(&agg.counters));
            }
        }
        header(
            out,
            "hypergate_tcp_closes_initiated_total",
            "counter",
            "Established connections by who sent the first FIN: by=\"gateway\" or by=\"peer\".",
        );
        for (n, agg) in &named {
            let c = &agg.counters;
            for (by, v) in [("gateway", c.closes_by_gateway), ("peer", c.closes_by_peer)] {
                let _ = writeln!(
                    out,
                    "hypergate_tcp_closes_initiated_total{{{},by=\"{by}\"}} {v}",
                    n.labels()
                );
            }
        }
        header(
            out,
            "hypergate_tcp_open_connections",
            "gauge",
            "Established connections not yet closed (opened minus closed).",
        );
        for (n, agg) in &named {
            let c = &agg.counters;
            let _ = writeln!(
                out,
                "hypergate_tcp_open_connections{{{}}} {}",
                n.labels(),
                c.opened.saturating_sub(c.closed)
            );
        }
        type Hist = fn(&PeerAggregate) -> &LatencyHistogram;
        let histograms: [(&str, &str, Hist, &[f64]); 4] = [
            (
                "hypergate_tcp_handshake_duration_seconds",
                "TCP handshake time: upstream connect() to ESTABLISHED; downstream SYN received to handshake ACK received.",
                |a| &a.handshake,
                &LATENCY_BUCKETS_S,
            ),
            (
                "hypergate_tcp_srtt_seconds",
                "Kernel smoothed RTT of live connections, sampled at most once per connection per drain interval.",
                |a| &a.srtt,
                &LATENCY_BUCKETS_S,
            ),
            (
                "hypergate_tcp_srtt_at_close_seconds",
                "Kernel smoothed RTT of each established connection when it closed.",
                |a| &a.srtt_at_close,
                &LATENCY_BUCKETS_S,
            ),
            (
                "hypergate_tcp_connection_duration_seconds",
                "Lifetime of established connections, ESTABLISHED to CLOSE.",
                |a| &a.lifetime,
                &LIFETIME_BUCKETS_S,
            ),
        ];
        for (name, help, hist, buckets) in histograms {
            header(out, name, "histogram", help);
            for (n, agg) in &named {
                hist(agg).prometheus(out, name, &n.labels(), buckets);
            }
        }
        let probe: [(&str, &str, u64); 2] = [
            (
                "hypergate_tcp_probe_events_lost_total",
                "Probe latency samples dropped because the kernel ring buffer was full.",
                self.health.events_lost,
            ),
            (
                "hypergate_tcp_probe_untracked_connections_total",
                "Connections the probe could not track because a kernel map was full.",
                self.health.untracked,
            ),
        ];
        for (name, help, v) in probe {
            header(out, name, "counter", help);
            let _ = writeln!(out, "{name} {v}");
        }
    }

    /// The `/stats` view: exact quantiles by listener, and by cluster and endpoint.
    ///
    /// `upstream.<cluster>` also carries `srtt` (periodic and at-close samples of all
    /// its endpoints) and `handshake`, the figures `/stats` shows next to the
    /// cluster's L7 upstream latency.
    pub fn stats_json(&self, labels: &PeerLabels) -> Value {
        let named = self.by_name(labels);
        let mut downstream = Map::new();
        let mut upstream: BTreeMap<String, (PeerAggregate, Map<String, Value>)> = BTreeMap::new();
        for (n, agg) in &named {
            match n {
                NameKey::Downstream(listener) => {
                    downstream.insert(listener.clone(), agg.json());
                }
                NameKey::Upstream(cluster, endpoint) => {
                    let entry = upstream.entry(cluster.clone()).or_default();
                    entry.0.merge(agg);
                    entry.1.insert(endpoint.clone(), agg.json());
                }
            }
        }
        // A cluster's kernel RTT also counts endpoints it shares with an earlier cluster.
        for (cluster, addrs) in labels.clusters() {
            for (key, agg) in &self.peers {
                let shared = key.side != SIDE_DOWNSTREAM
                    && key_addr(key).is_some_and(|a| addrs.contains(&a))
                    && !matches!(labels.name(key), PeerName::Upstream(ref e) if e.cluster == *cluster);
                if shared {
                    upstream
                        .entry(cluster.to_string())
                        .or_default()
                        .0
                        .merge(agg);
                }
            }
        }
        let upstream: Map<String, Value> = upstream
            .into_iter()
            .map(|(cluster, (total, endpoints))| {
                let mut rtt = total.srtt.clone();
                rtt.merge(&total.srtt_at_close);
                let mut v = total.json();
                v["srtt_all"] = rtt.quantiles();
                v["endpoints"] = Value::Object(endpoints);
                (cluster, v)
            })
            .collect();
        json!({
            "downstream": downstream,
            "upstream": upstream,
            "probe": {
                "events_lost": self.health.events_lost,
                "untracked_connections": self.health.untracked,
            },
        })
    }
}

/// A peer's exported name, ordered for stable output.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum NameKey {
    Downstream(String),
    Upstream(String, String),
}

impl NameKey {
    fn of(name: PeerName) -> NameKey {
        match name {
            PeerName::Downstream { listener } => NameKey::Downstream(listener.to_string()),
            PeerName::Upstream(e) => {
                NameKey::Upstream(e.cluster.to_string(), e.endpoint.to_string())
            }
        }
    }

    fn is_downstream(&self) -> bool {
        matches!(self, NameKey::Downstream(_))
    }

    fn labels(&self) -> String {
        match self {
            NameKey::Downstream(l) => format!("side=\"downstream\",listener=\"{}\"", escape(l)),
            NameKey::Upstream(c, e) => format!(
                "side=\"upstream\",cluster=\"{}\",endpoint=\"{}\"",
                escape(c),
                escape(e)
            ),
        }
    }
}

use crate::observability::export::{escape, header};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observability::ebpf::labels::upstream_key;
    use hypergate_ebpf_common::FAMILY_INET;

    fn downstream(port: u16) -> PeerKey {
        PeerKey {
            side: SIDE_DOWNSTREAM,
            family: FAMILY_INET,
            port,
            ..PeerKey::default()
        }
    }

    fn sample() -> (Aggregates, PeerLabels) {
        let cfg = crate::config::load_str(
            r#"
[[listeners]]
name = "web"
address = "127.0.0.1:8080"
[[clusters]]
name = "api"
endpoints = [{ address = "127.0.0.1:7001" }]
[[routes]]
name = "all"
cluster = "api"
"#,
            "test",
        )
        .unwrap();
        let labels = PeerLabels::from_config(&cfg);
        let mut agg = Aggregates::default();
        let up = upstream_key("127.0.0.1:7001".parse().unwrap());
        for (key, n) in [(downstream(8080), 3u64), (up, 2)] {
            agg.set_counters(
                key,
                PeerCounters {
                    opened: n,
                    closed: n,
                    ..PeerCounters::default()
                },
            );
            for i in 0..n {
                let ev = |kind, value, value2| Event {
                    key,
                    kind,
                    value,
                    value2,
                    ..Event::default()
                };
                agg.record(&ev(EVENT_HANDSHAKE, 40_000 + i * 1_000, 0));
                agg.record(&ev(EVENT_CLOSE, 2_000_000, 30));
            }
        }
        (agg, labels)
    }

    #[test]
    fn events_land_in_the_right_histograms() {
        let (agg, labels) = sample();
        let v = agg.stats_json(&labels);
        let web = &v["downstream"]["web"];
        assert_eq!(web["opened"], 3);
        assert_eq!(web["handshake"]["count"], 3);
        assert_eq!(web["handshake"]["min_us"], 40);
        assert_eq!(web["srtt_at_close"]["count"], 3);
        assert_eq!(web["lifetime"]["p50_us"], 2000);
        let api = &v["upstream"]["api"];
        assert_eq!(api["opened"], 2);
        assert_eq!(api["srtt_all"]["count"], 2);
        assert_eq!(api["endpoints"]["127.0.0.1:7001"]["closed"], 2);
    }

    #[test]
    fn prometheus_families_are_well_formed() {
        let (agg, labels) = sample();
        let mut out = String::new();
        agg.prometheus(&labels, &mut out);
        assert!(out.contains(
            "hypergate_tcp_connections_opened_total{side=\"downstream\",listener=\"web\"} 3\n"
        ));
        assert!(out.contains(
            "hypergate_tcp_handshake_duration_seconds_count{side=\"upstream\",cluster=\"api\",endpoint=\"127.0.0.1:7001\"} 2\n"
        ));
        assert!(out.contains(
            "hypergate_tcp_handshake_duration_seconds_bucket{side=\"downstream\",listener=\"web\",le=\"0.00005\"} 3\n"
        ));
        assert!(!out.contains("hypergate_tcp_connect_failures_total{side=\"downstream\""));
        // Every sample line belongs to the family announced last.
        let mut family = "";
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap_or("");
            } else if !line.starts_with('#') {
                assert!(line.starts_with(family), "{line} outside {family}");
            }
        }
    }
}
