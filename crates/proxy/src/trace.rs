//! The record phase's OpenTelemetry output: a server span per request, a
//! client span per upstream attempt (retries visible), an LLM call's span with
//! the GenAI semantic conventions, and the call record as a log record, built
//! on the stack from borrowed values and written as protobuf into the shard's
//! [`TelemetrySink`] (no allocation per span; the exporter thread sends).
//! Built only for requests the sampler keeps: sampled at the head, or kept at
//! the end because they failed or were served by a canary.
//!
//! Depends on `exchange`, `state` and `hypergate-otel`.

use crate::exchange::{Downstream, Exchange, View};
use crate::routing::RequestInfo;
use crate::state::{Installed, ShardCtx};
use hypergate_core::error::Outcome;
use hypergate_otel::attributes as attr;
use hypergate_otel::{
    Attributes, LogBody, LogData, Severity, SpanData, SpanKind, SpanStatus, TelemetrySink,
};
use std::borrow::Cow;
use std::time::Instant;

/// When the request's head was complete, in nanoseconds since the Unix epoch
/// (the cached clock's millisecond, plus nothing finer: offsets within the
/// request come from the monotonic clock and are exact).
fn start_nanos(ex: &Exchange) -> u64 {
    hypergate_core::clock::unix_ms_at(ex.started) * 1_000_000
}

fn nanos_at(base: u64, ex: &Exchange, at: Instant) -> u64 {
    base + at.saturating_duration_since(ex.started).as_nanos() as u64
}

/// Whether the call went to a canary: a split side or an alias target that a
/// `[[hypercare.canaries]]` names as its canary.
fn is_canary(inst: &Installed, ex: &Exchange) -> bool {
    let canaries = &inst.config.raw.hypercare.canaries;
    if canaries.is_empty() {
        return false;
    }
    let cluster = ex.route.zip(ex.target).map(|(ri, t)| {
        inst.clusters[inst.routes[ri].targets[t].0]
            .spec
            .name
            .as_ref()
    });
    let target = ex.llm.as_deref().map(|l| l.target.as_str());
    canaries
        .iter()
        .any(|c| Some(c.canary.as_str()) == cluster || Some(c.canary.as_str()) == target)
}

/// Exports the request's spans (and its call record as a log record), when
/// the sampler keeps them.
#[allow(clippy::too_many_arguments)]
pub fn export(
    ctx: &ShardCtx,
    sink: &TelemetrySink,
    inst: &Installed,
    view: &View<'_>,
    ex: &Exchange,
    down: &Downstream,
    outcome: Outcome,
    end: Instant,
) {
    let canary = is_canary(inst, ex);
    let keep = ex.trace.sampled || sink.sampler().keep(false, outcome.is_error(), canary);
    let logs = sink.exports_logs();
    if !keep && !logs {
        return;
    }
    let base = start_nanos(ex);
    let end_nanos = nanos_at(base, ex, end);
    let method = view.method();
    let route = ex.route.map(|ri| &*inst.config.routes[ri].name);
    let cluster = ex
        .route
        .zip(ex.target)
        .map(|(ri, t)| &inst.clusters[inst.routes[ri].targets[t].0]);
    // Everything borrows from the request and the config until the sink has
    // written it.
    let mut common = Attributes::new();
    common.push((attr::HTTP_REQUEST_METHOD, method.into()));
    common.push((attr::URL_PATH, view.path().into()));
    if let Some(r) = route {
        common.push((attr::HTTP_ROUTE, r.into()));
        common.push((attr::HYPERGATE_ROUTE, r.into()));
    }
    if let Some(c) = cluster {
        common.push((attr::HYPERGATE_CLUSTER, (&*c.spec.name).into()));
        common.push((attr::HYPERGATE_VERSION, (&*c.spec.version).into()));
    }
    if ex.status > 0 {
        common.push((attr::HTTP_RESPONSE_STATUS_CODE, ex.status.into()));
    }
    if let Some(code) = ex.grpc_status {
        common.push((attr::RPC_SYSTEM, "grpc".into()));
        common.push((attr::RPC_GRPC_STATUS_CODE, u64::from(code).into()));
    }
    common.push((attr::HYPERGATE_OUTCOME, outcome.label().into()));
    if !ex.error.is_empty() {
        common.push((attr::ERROR_TYPE, ex.error.into()));
    }
    common.push((attr::HYPERGATE_REQUEST_ID, ex.rid.as_str().into()));
    if let Some(c) = ex.consumer {
        common.push((
            attr::HYPERGATE_CONSUMER,
            (&*inst.config.auth.consumers[c].name).into(),
        ));
    }
    if logs {
        let mut attributes = common.clone();
        attributes.push((
            attr::HYPERGATE_DURATION_US,
            (end_nanos.saturating_sub(base) / 1000).into(),
        ));
        if let Some(l) = ex.llm.as_deref() {
            attributes.push((attr::GEN_AI_RESPONSE_MODEL, l.model.as_str().into()));
            attributes.push((attr::GEN_AI_USAGE_INPUT_TOKENS, l.prompt_tokens.into()));
            attributes.push((attr::GEN_AI_USAGE_OUTPUT_TOKENS, l.completion_tokens.into()));
            attributes.push((
                attr::HYPERGATE_LLM_COST_USD,
                (l.cost_nanos as f64 / 1e9).into(),
            ));
        }
        sink.push_log(&LogData {
            time_unix_nanos: end_nanos,
            severity: Severity::for_status(ex.status),
            body: LogBody::Call {
                method,
                path: view.path(),
                status: ex.status,
            },
            attributes,
            trace_id: Some(ex.trace.trace_id),
            span_id: keep.then_some(ex.trace.span_id),
        });
    }
    if !keep {
        return;
    }
    let mut server = SpanData::new(&ex.trace, method, SpanKind::Server, base, end_nanos);
    server.name_detail = route.unwrap_or("");
    server.attributes = common;
    server.push_attr(attr::NETWORK_PEER_ADDRESS, &*down.peer_ip);
    if ex.retries > 0 {
        server.push_attr(attr::HYPERGATE_RETRIES, ex.retries);
    }
    if canary {
        server.push_attr(attr::HYPERGATE_CANARY, true);
    }
    if outcome.is_error() {
        server.status = SpanStatus::Error(Cow::Borrowed(ex.error_or(outcome)));
    }
    sink.push_span(&server);
    // A child of the server span: the same trace and trace state.
    let child = |span_id, name, start, end| {
        let mut span = SpanData::new(&ex.trace, name, SpanKind::Client, start, end);
        span.span_id = span_id;
        span.parent_span_id = Some(ex.trace.span_id);
        span
    };
    for (i, a) in ex.attempts.iter().enumerate() {
        let mut span = child(
            a.span_id,
            method,
            nanos_at(base, ex, a.start),
            nanos_at(base, ex, a.end),
        );
        span.push_attr(attr::HTTP_REQUEST_METHOD, method);
        if let Some(c) = cluster {
            span.push_attr(attr::SERVER_ADDRESS, &*c.endpoints[a.endpoint].label);
            span.push_attr(attr::HYPERGATE_CLUSTER, &*c.spec.name);
        }
        span.push_attr(attr::HYPERGATE_RETRY, i as u64);
        match a.result {
            Ok(status) => {
                span.push_attr(attr::HTTP_RESPONSE_STATUS_CODE, status);
                if status >= 500 {
                    span.push_attr(attr::ERROR_TYPE, status.to_string());
                    span.status =
                        SpanStatus::Error(Cow::Owned(format!("upstream answered {status}")));
                }
            }
            Err(label) => {
                span.push_attr(attr::ERROR_TYPE, label);
                span.status = SpanStatus::Error(Cow::Borrowed(label));
            }
        }
        sink.push_span(&span);
    }
    if let Some(l) = ex.llm.as_deref() {
        let operation = if view.path().ends_with("/embeddings") {
            "embeddings"
        } else {
            "chat"
        };
        let started = ex
            .upstream_us
            .map_or(base, |us| end_nanos.saturating_sub(us * 1000).max(base));
        let id = hypergate_core::rng::next_random(&ctx.rng)
            .max(1)
            .to_be_bytes();
        let mut span = child(id, operation, started, end_nanos);
        span.name_detail = &l.model;
        span.push_attr(attr::GEN_AI_OPERATION_NAME, operation);
        span.push_attr(attr::GEN_AI_PROVIDER_NAME, l.provider.as_str());
        span.push_attr(attr::GEN_AI_REQUEST_MODEL, l.alias.as_str());
        span.push_attr(attr::GEN_AI_RESPONSE_MODEL, l.model.as_str());
        span.push_attr(attr::GEN_AI_USAGE_INPUT_TOKENS, l.prompt_tokens);
        span.push_attr(attr::GEN_AI_USAGE_OUTPUT_TOKENS, l.completion_tokens);
        if let Some(t) = l.ttft_us {
            span.push_attr(attr::GEN_AI_SERVER_TIME_TO_FIRST_TOKEN, t as f64 / 1e6);
        }
        span.push_attr(attr::HYPERGATE_LLM_TARGET, l.target.as_str());
        span.push_attr(attr::HYPERGATE_LLM_ATTEMPTS, l.attempts);
        span.push_attr(attr::HYPERGATE_LLM_COST_USD, l.cost_nanos as f64 / 1e9);
        if outcome.is_error() {
            span.status = SpanStatus::Error(Cow::Borrowed(ex.error_or(outcome)));
        }
        sink.push_span(&span);
    }
}
