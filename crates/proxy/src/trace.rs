//! The record phase's OpenTelemetry output: a server span per request, a
//! client span per upstream attempt (retries visible), an LLM call's span with
//! the GenAI semantic conventions, and the call record as a log record, pushed
//! into the shard's [`TelemetrySink`] (a `Vec` push; the exporter thread
//! encodes and sends). Built only for requests the sampler keeps: sampled at
//! the head, or kept at the end because they failed or were served by a canary.
//!
//! Depends on `exchange`, `state` and `hypergate-otel`.

use crate::exchange::{Downstream, Exchange, View};
use crate::routing::RequestInfo;
use crate::state::{Installed, ShardCtx};
use hypergate_core::error::Outcome;
use hypergate_otel::attributes as attr;
use hypergate_otel::{
    AttrValue, LogData, Severity, SpanContext, SpanData, SpanKind, SpanStatus, TelemetrySink,
};
use std::borrow::Cow;
use std::time::Instant;

/// The method as a static string when it is a standard one (no copy per span).
fn method(m: &str) -> Cow<'static, str> {
    const STANDARD: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
    ];
    match STANDARD.iter().find(|s| **s == m) {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(m.to_string()),
    }
}

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
    let route = ex.route.map(|ri| &inst.config.routes[ri].name);
    let cluster = ex
        .route
        .zip(ex.target)
        .map(|(ri, t)| &inst.clusters[inst.routes[ri].targets[t].0]);
    // Room for every attribute the server span may get (no regrowth).
    let mut common: Vec<(&'static str, AttrValue)> = Vec::with_capacity(16);
    common.push((attr::HTTP_REQUEST_METHOD, method(view.method()).into()));
    common.push((attr::URL_PATH, view.path().to_string().into()));
    // Config names are shared (a reference count each), not copied.
    if let Some(r) = route {
        common.push((attr::HTTP_ROUTE, r.clone().into()));
        common.push((attr::HYPERGATE_ROUTE, r.clone().into()));
    }
    if let Some(c) = cluster {
        common.push((attr::HYPERGATE_CLUSTER, c.spec.name.clone().into()));
        common.push((attr::HYPERGATE_VERSION, c.spec.version.clone().into()));
    }
    if ex.status > 0 {
        common.push((attr::HTTP_RESPONSE_STATUS_CODE, ex.status.into()));
    }
    common.push((attr::HYPERGATE_OUTCOME, outcome.label().into()));
    if !ex.error.is_empty() {
        common.push((attr::ERROR_TYPE, ex.error.into()));
    }
    common.push((
        attr::HYPERGATE_REQUEST_ID,
        ex.rid.as_str().to_string().into(),
    ));
    if let Some(c) = ex.consumer {
        common.push((
            attr::HYPERGATE_CONSUMER,
            inst.config.auth.consumers[c].name.clone().into(),
        ));
    }
    if logs {
        let mut attributes = common.clone();
        attributes.push((
            attr::HYPERGATE_DURATION_US,
            (end_nanos.saturating_sub(base) / 1000).into(),
        ));
        if let Some(l) = ex.llm.as_deref() {
            attributes.push((attr::GEN_AI_RESPONSE_MODEL, l.model.clone().into()));
            attributes.push((attr::GEN_AI_USAGE_INPUT_TOKENS, l.prompt_tokens.into()));
            attributes.push((attr::GEN_AI_USAGE_OUTPUT_TOKENS, l.completion_tokens.into()));
            attributes.push((
                attr::HYPERGATE_LLM_COST_USD,
                (l.cost_nanos as f64 / 1e9).into(),
            ));
        }
        sink.push_log(LogData {
            time_unix_nanos: end_nanos,
            severity: Severity::for_status(ex.status),
            body: format!("{} {} {}", view.method(), view.path(), ex.status),
            attributes,
            trace_id: Some(ex.trace.trace_id),
            span_id: keep.then_some(ex.trace.span_id),
        });
    }
    if !keep {
        return;
    }
    let mut name = String::with_capacity(view.method().len() + 1 + route.map_or(0, |r| r.len()));
    name.push_str(view.method());
    if let Some(r) = route {
        name.push(' ');
        name.push_str(r);
    }
    let mut server = SpanData::new(&ex.trace, name, SpanKind::Server, base, end_nanos);
    server.attributes = common;
    server.push_attr(attr::NETWORK_PEER_ADDRESS, down.peer_ip.clone());
    if ex.retries > 0 {
        server.push_attr(attr::HYPERGATE_RETRIES, ex.retries);
    }
    if canary {
        server.push_attr(attr::HYPERGATE_CANARY, true);
    }
    if outcome.is_error() {
        server.status = SpanStatus::Error(Cow::Borrowed(ex.error_or(outcome)));
    }
    sink.push_span(server);
    let child = |span_id| SpanContext {
        span_id,
        parent_span_id: Some(ex.trace.span_id),
        ..ex.trace.clone()
    };
    for (i, a) in ex.attempts.iter().enumerate() {
        let mut span = SpanData::new(
            &child(a.span_id),
            method(view.method()),
            SpanKind::Client,
            nanos_at(base, ex, a.start),
            nanos_at(base, ex, a.end),
        );
        span.attributes = Vec::with_capacity(6);
        span.push_attr(attr::HTTP_REQUEST_METHOD, method(view.method()));
        if let Some(c) = cluster {
            span.push_attr(attr::SERVER_ADDRESS, c.endpoints[a.endpoint].label.clone());
            span.push_attr(attr::HYPERGATE_CLUSTER, c.spec.name.clone());
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
        sink.push_span(span);
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
        let mut span = SpanData::new(
            &child(id),
            format!("{operation} {}", l.model),
            SpanKind::Client,
            started,
            end_nanos,
        );
        span.attributes = Vec::with_capacity(11);
        span.push_attr(attr::GEN_AI_OPERATION_NAME, operation);
        span.push_attr(attr::GEN_AI_PROVIDER_NAME, l.provider.clone());
        span.push_attr(attr::GEN_AI_REQUEST_MODEL, l.alias.clone());
        span.push_attr(attr::GEN_AI_RESPONSE_MODEL, l.model.clone());
        span.push_attr(attr::GEN_AI_USAGE_INPUT_TOKENS, l.prompt_tokens);
        span.push_attr(attr::GEN_AI_USAGE_OUTPUT_TOKENS, l.completion_tokens);
        if let Some(t) = l.ttft_us {
            span.push_attr(attr::GEN_AI_SERVER_TIME_TO_FIRST_TOKEN, t as f64 / 1e6);
        }
        span.push_attr(attr::HYPERGATE_LLM_TARGET, l.target.clone());
        span.push_attr(attr::HYPERGATE_LLM_ATTEMPTS, l.attempts);
        span.push_attr(attr::HYPERGATE_LLM_COST_USD, l.cost_nanos as f64 / 1e9);
        if outcome.is_error() {
            span.status = SpanStatus::Error(Cow::Borrowed(ex.error_or(outcome)));
        }
        sink.push_span(span);
    }
}
