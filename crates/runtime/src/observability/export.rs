//! Rendering merged stats: Prometheus text exposition and the `/stats` JSON.
//!
//! Prometheus histograms are derived from the merged HDR histograms with fixed
//! buckets; `/stats` reports exact quantiles straight from HDR.

use super::metrics::STATUS_CLASSES;
use super::Snapshot;
use hypergate_core::error::Outcome;
use hypergate_core::http::codec::Reject;
pub use hypergate_core::metrics::{escape, header, histogram, quantiles};
use hypergate_edge::auth::AuthFailure;
use hypergate_proxy::EdgeReject;
use serde_json::{json, Value};
use std::fmt::Write;

/// Process-level figures added by the gateway.
#[derive(Debug, Default, Clone)]
pub struct ProcessInfo {
    /// Successful reloads.
    pub reloads_ok: u64,
    /// Refused reloads.
    pub reloads_failed: u64,
    /// Whether io_uring is in use.
    pub io_uring: bool,
}

/// Renders Prometheus text exposition format.
pub fn prometheus(m: &Snapshot, p: &ProcessInfo) -> String {
    let mut out = String::with_capacity(16 * 1024);
    header(
        &mut out,
        "hypergate_build_info",
        "gauge",
        "Build information.",
    );
    let _ = writeln!(
        out,
        "hypergate_build_info{{version=\"{}\",io_uring=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        p.io_uring
    );
    header(
        &mut out,
        "hypergate_shards",
        "gauge",
        "Shards (worker threads) running.",
    );
    let _ = writeln!(out, "hypergate_shards {}", m.shards);

    header(
        &mut out,
        "hypergate_requests_total",
        "counter",
        "Requests by route, cluster, version and status class (status=\"none\": no response sent).",
    );
    for ((route, cluster, version), counts) in &m.targets {
        for (i, n) in counts.by_class.iter().enumerate() {
            if *n > 0 {
                let _ = writeln!(
                    out,
                    "hypergate_requests_total{{route=\"{}\",cluster=\"{}\",version=\"{}\",status=\"{}\"}} {n}",
                    escape(route),
                    escape(cluster),
                    escape(version),
                    STATUS_CLASSES[i]
                );
            }
        }
    }
    header(
        &mut out,
        "hypergate_request_outcomes_total",
        "counter",
        "Requests by route, cluster, version and outcome (ok, client_aborted, rejected, \
         upstream_error, gateway_error, timeout; the last three are errors of the service).",
    );
    for ((route, cluster, version), counts) in &m.targets {
        for o in Outcome::ALL {
            let n = counts.by_outcome[o.index()];
            if n > 0 {
                let _ = writeln!(
                    out,
                    "hypergate_request_outcomes_total{{route=\"{}\",cluster=\"{}\",version=\"{}\",outcome=\"{}\"}} {n}",
                    escape(route),
                    escape(cluster),
                    escape(version),
                    o.label()
                );
            }
        }
    }
    header(
        &mut out,
        "hypergate_request_duration_seconds",
        "histogram",
        "Total request latency at the gateway, by route.",
    );
    for (route, (h, sum)) in &m.routes {
        histogram(
            &mut out,
            "hypergate_request_duration_seconds",
            &format!("route=\"{}\"", escape(route)),
            h,
            *sum,
        );
    }
    header(
        &mut out,
        "hypergate_upstream_duration_seconds",
        "histogram",
        "Upstream latency (request sent to response head received), by cluster and version.",
    );
    for ((cluster, version), c) in &m.clusters {
        if let Some((h, sum)) = &c.latency {
            histogram(
                &mut out,
                "hypergate_upstream_duration_seconds",
                &format!(
                    "cluster=\"{}\",version=\"{}\"",
                    escape(cluster),
                    escape(version)
                ),
                h,
                *sum,
            );
        }
    }
    type Field = fn(&super::metrics::ClusterSnapshot) -> u64;
    let cluster_counters: [(&str, &str, Field); 5] = [
        (
            "hypergate_upstream_connect_errors_total",
            "Failed upstream connects.",
            |c| c.connect_errors,
        ),
        (
            "hypergate_upstream_timeouts_total",
            "Upstream response-head timeouts.",
            |c| c.timeouts,
        ),
        (
            "hypergate_upstream_retries_total",
            "Retried upstream attempts.",
            |c| c.retries,
        ),
        (
            "hypergate_upstream_ejections_total",
            "Endpoint ejections by outlier detection.",
            |c| c.ejections,
        ),
        (
            "hypergate_upstream_bad_responses_total",
            "Invalid upstream responses answered with 502.",
            |c| c.bad_responses,
        ),
    ];
    for (name, help, field) in cluster_counters {
        header(&mut out, name, "counter", help);
        for ((cluster, version), c) in &m.clusters {
            let _ = writeln!(
                out,
                "{name}{{cluster=\"{}\",version=\"{}\"}} {}",
                escape(cluster),
                escape(version),
                field(c)
            );
        }
    }
    type PoolField = fn(&super::metrics::PoolSnapshot) -> u64;
    let pool_gauges: [(&str, &str, PoolField); 4] = [
        (
            "hypergate_upstream_pool_idle_connections",
            "Idle pooled upstream connections (all shards).",
            |p| p.idle,
        ),
        (
            "hypergate_upstream_pool_open_connections",
            "Open upstream connections (all shards).",
            |p| p.open,
        ),
        (
            "hypergate_upstream_ejected",
            "Shards on which the endpoint is ejected.",
            |p| p.ejected,
        ),
        (
            "hypergate_upstream_healthy",
            "Active health-check verdict (1 healthy).",
            |p| u64::from(p.healthy),
        ),
    ];
    for (name, help, field) in pool_gauges {
        header(&mut out, name, "gauge", help);
        for ((cluster, endpoint), p) in &m.pools {
            let _ = writeln!(
                out,
                "{name}{{cluster=\"{}\",endpoint=\"{}\"}} {}",
                escape(cluster),
                escape(endpoint),
                field(p)
            );
        }
    }
    header(
        &mut out,
        "hypergate_rejections_total",
        "counter",
        "Requests rejected before forwarding, by reason.",
    );
    for r in Reject::ALL {
        let _ = writeln!(
            out,
            "hypergate_rejections_total{{reason=\"{}\"}} {}",
            r.label(),
            m.rejections[r.index()]
        );
    }
    let simple: [(&str, &str, &str, u64); 6] = [
        (
            "hypergate_no_route_total",
            "counter",
            "Requests that matched no route (404).",
            m.no_route,
        ),
        (
            "hypergate_downstream_active_connections",
            "gauge",
            "Open client connections.",
            m.active_connections,
        ),
        (
            "hypergate_downstream_connections_total",
            "counter",
            "Accepted client connections.",
            m.accepted_connections,
        ),
        (
            "hypergate_access_log_dropped_total",
            "counter",
            "Call records dropped because the writer fell behind (totals still count \
             the calls: rollups are counted on the shards).",
            m.access_log_dropped,
        ),
        (
            "hypergate_callstore_sampled_out_total",
            "counter",
            "Call records the store's sampling rules left out ([hypercare.store] \
             sample_ratio; totals still count the calls).",
            m.records_sampled_out,
        ),
        (
            "hypergate_config_reloads_failed_total",
            "counter",
            "Refused configuration reloads.",
            p.reloads_failed,
        ),
    ];
    for (name, kind, help, v) in simple {
        header(&mut out, name, kind, help);
        let _ = writeln!(out, "{name} {v}");
    }
    header(
        &mut out,
        "hypergate_errors_total",
        "counter",
        "Errors the gateway answered itself, by type (the error body's type) and side (downstream: the request; upstream: the upstream or provider; internal: the gateway or a backend it needs).",
    );
    for ((kind, side), n) in &m.errors {
        let _ = writeln!(
            out,
            "hypergate_errors_total{{type=\"{kind}\",side=\"{side}\"}} {n}"
        );
    }
    header(
        &mut out,
        "hypergate_edge_rejections_total",
        "counter",
        "Requests and connections refused by edge policy, by phase and reason.",
    );
    for r in EdgeReject::ALL {
        let (phase, reason) = r.labels();
        let _ = writeln!(
            out,
            "hypergate_edge_rejections_total{{phase=\"{phase}\",reason=\"{reason}\"}} {}",
            m.edge_rejections[r.index()]
        );
    }
    header(
        &mut out,
        "hypergate_auth_failures_total",
        "counter",
        "Authentication failures by reason.",
    );
    for f in AuthFailure::ALL {
        let _ = writeln!(
            out,
            "hypergate_auth_failures_total{{reason=\"{}\"}} {}",
            f.label(),
            m.auth_failures[f.index()]
        );
    }
    header(
        &mut out,
        "hypergate_consumer_requests_total",
        "counter",
        "Requests by authenticated consumer and route.",
    );
    for ((consumer, route), n) in &m.consumers {
        let _ = writeln!(
            out,
            "hypergate_consumer_requests_total{{consumer=\"{}\",route=\"{}\"}} {n}",
            escape(consumer),
            escape(route)
        );
    }
    header(
        &mut out,
        "hypergate_tunnels_active",
        "gauge",
        "Open tunnels (upgraded connections such as WebSockets).",
    );
    let _ = writeln!(out, "hypergate_tunnels_active {}", m.tunnels_active);
    header(
        &mut out,
        "hypergate_tunnels_total",
        "counter",
        "Ended tunnels by how they ended.",
    );
    for end in crate::observability::metrics::TunnelEnd::ALL {
        let _ = writeln!(
            out,
            "hypergate_tunnels_total{{end=\"{}\"}} {}",
            end.label(),
            m.tunnels_ended[end as usize]
        );
    }
    header(
        &mut out,
        "hypergate_tunnel_bytes_total",
        "counter",
        "Bytes carried by ended tunnels, by direction.",
    );
    for (i, direction) in ["upstream", "downstream"].iter().enumerate() {
        let _ = writeln!(
            out,
            "hypergate_tunnel_bytes_total{{direction=\"{direction}\"}} {}",
            m.tunnel_bytes[i]
        );
    }
    header(
        &mut out,
        "hypergate_h2_events_total",
        "counter",
        "HTTP/2: connections served, streams that entered the pipeline, streams refused \
         over the per-connection limit, connections ended by a protocol error.",
    );
    for (i, event) in hypergate_proxy::stats::H2_EVENTS.iter().enumerate() {
        let _ = writeln!(
            out,
            "hypergate_h2_events_total{{event=\"{event}\"}} {}",
            m.h2[i]
        );
    }
    header(
        &mut out,
        "hypergate_grpc_calls_total",
        "counter",
        "gRPC calls by route, method (service/method path; at most 256 per shard, the rest \
         as \"other\") and grpc-status code (the upstream's, or the gateway's own).",
    );
    for ((route, method), counts) in &m.grpc {
        for (code, n) in counts.iter().enumerate().filter(|(_, n)| **n > 0) {
            let _ = writeln!(
                out,
                "hypergate_grpc_calls_total{{route=\"{}\",method=\"{}\",code=\"{}\"}} {n}",
                escape(route),
                escape(method),
                hypergate_proxy::stats::grpc_code_label(code)
            );
        }
    }
    header(
        &mut out,
        "hypergate_tls_handshakes_total",
        "counter",
        "Completed TLS handshakes.",
    );
    let _ = writeln!(out, "hypergate_tls_handshakes_total {}", m.tls_handshakes);
    header(
        &mut out,
        "hypergate_tls_handshake_failures_total",
        "counter",
        "Failed TLS handshakes by reason.",
    );
    for (i, reason) in crate::tls::HANDSHAKE_FAILURES.iter().enumerate() {
        let _ = writeln!(
            out,
            "hypergate_tls_handshake_failures_total{{reason=\"{reason}\"}} {}",
            m.tls_failures[i]
        );
    }
    header(
        &mut out,
        "hypergate_config_reloads_total",
        "counter",
        "Applied configuration reloads.",
    );
    let _ = writeln!(out, "hypergate_config_reloads_total {}", p.reloads_ok);
    #[cfg(feature = "alloc-count")]
    {
        header(
            &mut out,
            "hypergate_heap_allocations_total",
            "counter",
            "Heap allocations since start (alloc-count builds only).",
        );
        let _ = writeln!(
            out,
            "hypergate_heap_allocations_total {}",
            crate::alloc_count::allocations()
        );
    }
    hypergate_llm::stats::prometheus(&m.ai, &mut out);
    out
}

/// Renders the `/stats` JSON document.
pub fn stats_json(m: &Snapshot) -> Value {
    let mut routes = serde_json::Map::new();
    for ((route, cluster, version), counts) in &m.targets {
        let entry = routes
            .entry(route.clone())
            .or_insert_with(|| json!({"requests": 0, "by_target": []}));
        let total = counts.requests();
        entry["requests"] = json!(entry["requests"].as_u64().unwrap_or(0) + total);
        let by_class: serde_json::Map<String, Value> = STATUS_CLASSES
            .iter()
            .zip(counts.by_class)
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let by_outcome: serde_json::Map<String, Value> = Outcome::ALL
            .iter()
            .map(|o| (o.label().to_string(), json!(counts.by_outcome[o.index()])))
            .collect();
        if let Some(list) = entry["by_target"].as_array_mut() {
            list.push(json!({
                "cluster": cluster,
                "version": version,
                "status": by_class,
                "outcome": by_outcome,
            }));
        }
    }
    for (route, (h, sum)) in &m.routes {
        let entry = routes
            .entry(route.clone())
            .or_insert_with(|| json!({"requests": 0, "by_target": []}));
        entry["latency"] = quantiles(h, *sum);
    }
    let mut clusters = serde_json::Map::new();
    for ((cluster, version), c) in &m.clusters {
        let mut v = json!({
            "version": version,
            "connect_errors": c.connect_errors,
            "timeouts": c.timeouts,
            "retries": c.retries,
            "ejections": c.ejections,
            "bad_responses": c.bad_responses,
        });
        if let Some((h, sum)) = &c.latency {
            v["upstream_latency"] = quantiles(h, *sum);
        }
        let endpoints: Vec<Value> = m
            .pools
            .iter()
            .filter(|((cl, _), _)| cl == cluster)
            .map(|((_, ep), p)| {
                json!({"endpoint": ep, "idle": p.idle, "open": p.open, "ejected_on_shards": p.ejected, "healthy": p.healthy})
            })
            .collect();
        v["endpoints"] = json!(endpoints);
        clusters.insert(cluster.clone(), v);
    }
    let rejections: serde_json::Map<String, Value> = Reject::ALL
        .iter()
        .map(|r| (r.label().to_string(), json!(m.rejections[r.index()])))
        .collect();
    json!({
        "shards": m.shards,
        "active_connections": m.active_connections,
        "accepted_connections": m.accepted_connections,
        "no_route": m.no_route,
        "access_log_dropped": m.access_log_dropped,
        "records_sampled_out": m.records_sampled_out,
        "errors": m.errors.iter().map(|((kind, side), n)| (format!("{side}/{kind}"), json!(n))).collect::<serde_json::Map<String, Value>>(),
        "edge_rejections": EdgeReject::ALL.iter().map(|r| (format!("{}/{}", r.labels().0, r.labels().1), json!(m.edge_rejections[r.index()]))).collect::<serde_json::Map<String, Value>>(),
        "auth_failures": AuthFailure::ALL.iter().map(|f| (f.label().to_string(), json!(m.auth_failures[f.index()]))).collect::<serde_json::Map<String, Value>>(),
        "consumers": m.consumers.iter().map(|((c, r), n)| json!({"consumer": c, "route": r, "requests": n})).collect::<Vec<_>>(),
        "rejections": rejections,
        "tunnels": {
            "active": m.tunnels_active,
            "ended": crate::observability::metrics::TunnelEnd::ALL.iter().map(|e| (e.label().to_string(), json!(m.tunnels_ended[*e as usize]))).collect::<serde_json::Map<String, Value>>(),
            "bytes_upstream": m.tunnel_bytes[0],
            "bytes_downstream": m.tunnel_bytes[1],
        },
        "routes": routes,
        "clusters": clusters,
        "llm": m.ai.json(),
    })
}
