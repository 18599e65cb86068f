//! The last phase: count the request by route, split side, status and
//! latency, and hand its call record to the writer thread (never blocking:
//! a full queue drops the record and counts the drop).
//!
//! Depends on `exchange`, `state` and `hypergate-core`'s records.

use crate::exchange::{Exchange, View};
use crate::routing::RequestInfo;
use crate::state::{Installed, ShardCtx};
use std::net::SocketAddr;
use std::time::Instant;

/// Counts the request and submits its access-log record.
pub fn record(ctx: &ShardCtx, inst: &Installed, view: &View<'_>, ex: &Exchange, peer: SocketAddr) {
    // One clock read serves the latency and the record's wall-clock time.
    let now = Instant::now();
    let total_us = now.duration_since(ex.started).as_micros() as u64;
    let Some(ri) = ex.route else {
        return record_log(ctx, inst, view, ex, peer, total_us, now);
    };
    let rr = &inst.routes[ri];
    match ex.target {
        Some(t) => {
            rr.targets[t].1.count(ex.status);
            if let Some(us) = ex.upstream_us {
                inst.clusters[rr.targets[t].0]
                    .stats
                    .upstream_latency
                    .record(us);
            }
        }
        None => rr.local.count(ex.status),
    }
    rr.stats.latency.record(total_us);
    record_log(ctx, inst, view, ex, peer, total_us, now);
}

fn record_log(
    ctx: &ShardCtx,
    inst: &Installed,
    view: &View<'_>,
    ex: &Exchange,
    peer: SocketAddr,
    total_us: u64,
    now: Instant,
) {
    let sink = ctx.access_log.borrow();
    let Some(sink) = sink.as_ref() else { return };
    let Some(mut r) = sink.take() else {
        ctx.stats
            .access_log_dropped
            .set(ctx.stats.access_log_dropped.get() + 1);
        return;
    };
    r.unix_ms = hypergate_core::clock::unix_ms_at(now);
    r.request_id.push_str(ex.rid.as_str());
    r.trace_id.push_str(ex.trace.trace_id());
    r.method.push_str(view.method());
    if sink.json {
        // Only JSON lines show these; the call store does not keep them.
        r.client = Some(peer);
        r.host
            .push_str(std::str::from_utf8(view.header("host").unwrap_or_default()).unwrap_or(""));
    }
    r.path.push_str(view.path());
    if !view.query().is_empty() {
        r.path.push('?');
        r.path.push_str(view.query());
    }
    if let Some(ri) = ex.route {
        r.route.push_str(&inst.config.routes[ri].name);
        if let Some(t) = ex.target {
            let cl = &inst.clusters[inst.routes[ri].targets[t].0];
            r.cluster.push_str(&cl.spec.name);
            r.version.push_str(&cl.spec.version);
            if let Some(e) = ex.endpoint {
                r.endpoint.push_str(&cl.endpoints[e].label);
            }
        }
    }
    if let Some(c) = ex.consumer {
        r.consumer.push_str(&inst.config.auth.consumers[c].name);
    }
    r.status = ex.status;
    r.bytes_in = ex.bytes_in;
    r.bytes_out = ex.bytes_out;
    r.upstream_us = ex.upstream_us;
    r.total_us = total_us;
    r.retries = ex.retries;
    r.error = ex.error;
    r.llm.clone_from(&ex.llm);
    if let Some(c) = &ex.capture {
        // Redacted (and cut) by the record writer, off the request path.
        r.request_body = Some(String::from_utf8_lossy(&c.request).into_owned());
        r.response_body = Some(String::from_utf8_lossy(&c.response).into_owned());
    }
    if !sink.submit(r) {
        ctx.stats
            .access_log_dropped
            .set(ctx.stats.access_log_dropped.get() + 1);
    }
}
