//! The last phase: decide the call's outcome (once, [`Exchange::outcome`]),
//! count the request by route, split side, status, outcome and latency, count
//! it into its exact per-minute rollup, and hand its call record to the writer
//! thread (never blocking: a full queue drops the record and counts the drop;
//! the store's sampling rules may leave the row out, and the rollup says so).
//!
//! Depends on `exchange`, `state` and `hypergate-core`'s records.

use crate::exchange::{Downstream, Exchange, View};
use crate::routing::RequestInfo;
use crate::state::{Installed, ShardCtx};
use hypergate_core::error::Outcome;
use hypergate_core::record::AccessLogSink;
use hypergate_core::rollup::{CallFacts, RowFate};
use std::net::SocketAddr;
use std::time::Instant;

/// Counts the request and submits its access-log record.
pub fn record(ctx: &ShardCtx, inst: &Installed, view: &View<'_>, ex: &Exchange, down: &Downstream) {
    let peer = down.peer;
    // One clock read serves the latency and the record's wall-clock time.
    let now = Instant::now();
    let total_us = now.duration_since(ex.started).as_micros() as u64;
    let outcome = ex.outcome();
    if let Some(ri) = ex.route {
        count(inst, ri, ex, outcome, total_us);
        if let Some(code) = grpc_code(ex) {
            ctx.stats
                .grpc_call(&inst.config.routes[ri].name, view.path(), code);
        }
    }
    record_log(ctx, inst, view, ex, peer, total_us, now, outcome);
    if let Some(sink) = &ctx.telemetry {
        crate::trace::export(ctx, sink, inst, view, ex, down, outcome, now);
    }
}

/// Counts the request on its route and split side.
fn count(inst: &Installed, ri: usize, ex: &Exchange, outcome: Outcome, total_us: u64) {
    let rr = &inst.routes[ri];
    match ex.target {
        Some(t) => {
            rr.targets[t].1.count(ex.status, outcome);
            if let Some(us) = ex.upstream_us {
                inst.clusters[rr.targets[t].0]
                    .stats
                    .upstream_latency
                    .record(us);
            }
        }
        None => rr.local.count(ex.status, outcome),
    }
    rr.stats.latency.record(total_us);
}

/// A gRPC call's status: the upstream's `grpc-status`, else the one the
/// gateway answered with (or the client's cancellation); `None` for other
/// requests.
fn grpc_code(ex: &Exchange) -> Option<u8> {
    if let Some(code) = ex.grpc_status {
        return Some(code);
    }
    ex.grpc.then(|| ex.error_kind.map_or(0, |k| k.grpc_code()))
}

/// Whether the call store keeps this call's row, by `[hypercare.store]`'s
/// sampling rules: errors, LLM calls and calls on split routes (canaries)
/// always by default, a `sample_ratio` share of the rest. Totals never depend
/// on it: rollups count every call.
fn keeps_row(ctx: &ShardCtx, inst: &Installed, ex: &Exchange, outcome: Outcome) -> bool {
    let rules = &inst.config.raw.hypercare.store;
    (rules.keep_errors && outcome != Outcome::Ok)
        || (rules.keep_llm && ex.llm.is_some())
        || (rules.keep_splits && ex.route.is_some_and(|ri| inst.routes[ri].targets.len() > 1))
        || hypergate_core::rng::sampled(&ctx.rng, rules.sample_ratio)
}

#[allow(clippy::too_many_arguments)]
fn record_log(
    ctx: &ShardCtx,
    inst: &Installed,
    view: &View<'_>,
    ex: &Exchange,
    peer: SocketAddr,
    total_us: u64,
    now: Instant,
    outcome: Outcome,
) {
    let sink = ctx.access_log.borrow();
    let Some(sink) = sink.as_ref() else { return };
    let unix_ms = hypergate_core::clock::unix_ms_at(now);
    let store_row = sink.rollups.is_none() || keeps_row(ctx, inst, ex, outcome);
    let fate = if store_row || sink.json {
        match submit(
            sink, inst, view, ex, peer, total_us, unix_ms, outcome, store_row,
        ) {
            true if store_row => RowFate::Recorded,
            true => RowFate::SampledOut,
            false => {
                ctx.stats
                    .access_log_dropped
                    .set(ctx.stats.access_log_dropped.get() + 1);
                if store_row {
                    RowFate::Dropped
                } else {
                    RowFate::SampledOut
                }
            }
        }
    } else {
        RowFate::SampledOut
    };
    if fate == RowFate::SampledOut {
        ctx.stats
            .records_sampled_out
            .set(ctx.stats.records_sampled_out.get() + 1);
    }
    let Some(rollups) = &sink.rollups else { return };
    let (mut route, mut cluster, mut version) = ("", "", "");
    if let Some(ri) = ex.route {
        route = &inst.config.routes[ri].name;
        if let Some(t) = ex.target {
            let cl = &inst.clusters[inst.routes[ri].targets[t].0];
            (cluster, version) = (&cl.spec.name, &cl.spec.version);
        }
    }
    let llm = ex.llm.as_deref();
    let facts = CallFacts {
        status: ex.status,
        outcome,
        total_us,
        tokens: llm.map_or((0, 0), |l| (l.prompt_tokens, l.completion_tokens)),
        cost_nanos: llm.map_or(0, |l| l.cost_nanos),
        estimated: llm.is_some_and(|l| l.estimated),
        ttft_us: llm.and_then(|l| l.ttft_us),
        row: fate,
    };
    let model = llm.map_or("", |l| l.model.as_str());
    rollups.borrow_mut().count(
        (unix_ms / 60_000) as i64,
        [route, cluster, version, model],
        &facts,
        now,
    );
}

/// Fills a record and hands it to the writer; false when it was dropped (no
/// free record, or a full queue).
#[allow(clippy::too_many_arguments)]
fn submit(
    sink: &AccessLogSink,
    inst: &Installed,
    view: &View<'_>,
    ex: &Exchange,
    peer: SocketAddr,
    total_us: u64,
    unix_ms: u64,
    outcome: Outcome,
    store_row: bool,
) -> bool {
    let Some(mut r) = sink.take() else {
        return false;
    };
    r.unix_ms = unix_ms;
    r.sampled_out = !store_row;
    r.request_id.push_str(ex.rid.as_str());
    // Hex digits only: always UTF-8.
    r.trace_id
        .push_str(std::str::from_utf8(&ex.trace.trace_id_hex()).unwrap_or_default());
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
    r.outcome = outcome;
    r.llm.clone_from(&ex.llm);
    if let Some(c) = &ex.capture {
        // Redacted (and cut) by the record writer, off the request path.
        r.request_body = Some(String::from_utf8_lossy(&c.request).into_owned());
        r.response_body = Some(String::from_utf8_lossy(&c.response).into_owned());
    }
    sink.submit(r)
}
