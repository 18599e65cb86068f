//! End to end: sinks → exporter thread → an in-process OTLP/HTTP receiver.

use hypergate_otel::attributes::*;
use hypergate_otel::{
    AttrValue, Exporter, LogData, OtlpConfig, OtlpEnv, OtlpSettings, RemoteParent, Resource,
    Severity, SpanContext, SpanData, SpanKind, SpanStatus,
};
use hypergate_tests::otlp::{Event, MockCollector, Reply};
use opentelemetry_proto::tonic::common::v1::{any_value::Value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{span, status, Span};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const INCOMING: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn settings(collector: &MockCollector, edit: impl FnOnce(&mut OtlpConfig)) -> OtlpSettings {
    let mut config = OtlpConfig {
        endpoint: collector.url(),
        ..OtlpConfig::default()
    };
    edit(&mut config);
    config
        .validate(&OtlpEnv::default())
        .expect("valid settings")
}

fn random() -> impl FnMut() -> u64 {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

fn push_plain(sink: &hypergate_otel::TelemetrySink, n: u64) {
    let context = SpanContext {
        trace_id: [1; 16],
        span_id: n.max(1).to_be_bytes(),
        parent_span_id: None,
        sampled: true,
        trace_state: None,
    };
    sink.push_span(&SpanData::new(&context, "span", SpanKind::Internal, 1, 2));
}

fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn spans_of(event: &Event) -> Vec<Span> {
    match event {
        Event::Traces { request, .. } => request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| s.spans.clone())
            .collect(),
        _ => Vec::new(),
    }
}

/// Drops the sinks, shuts the exporter down and returns every event seen.
fn finish(
    collector: &MockCollector,
    exporter: Exporter,
    sinks: Vec<hypergate_otel::TelemetrySink>,
) -> Vec<Event> {
    drop(sinks);
    assert!(
        exporter.shutdown(Duration::from_secs(10)),
        "the exporter stops in time"
    );
    collector.events.try_iter().collect()
}

fn counter(
    exporter: &Exporter,
    pick: fn(&hypergate_otel::OtlpStats) -> &std::sync::atomic::AtomicU64,
) -> u64 {
    pick(exporter.stats()).load(Ordering::Relaxed)
}

#[test]
fn spans_and_logs_arrive_with_ids_kinds_attributes_and_status() {
    let collector = MockCollector::start(None);
    let settings = settings(&collector, |c| {
        c.export_logs = true;
        c.service_name = "edge-gw".into();
        c.resource_attributes = BTreeMap::from([(
            "deployment.environment.name".to_string(),
            "test".to_string(),
        )]);
        c.headers = BTreeMap::from([(
            "Authorization".to_string(),
            hypergate_otel::config::SecretValue::new("Bearer t0k"),
        )]);
    });
    let resource = Resource::from_settings(&settings);
    let (exporter, sinks) = Exporter::start(&settings, &resource, 2).expect("start");
    let stats = std::sync::Arc::clone(exporter.stats());

    let mut random = random();
    let parent = RemoteParent::parse(INCOMING, Some(b"vendor=abc")).expect("valid traceparent");
    let server = SpanContext::server(Some(&parent), sinks[0].sampler(), &mut random);
    assert!(server.sampled);
    let client = server.child(random());
    let start = 1_700_000_000_000_000_000u64;

    let mut upstream = SpanData::new(&client, "POST", SpanKind::Client, start + 10, start + 900);
    upstream.push_attr(HYPERGATE_RETRY, 1u32);
    upstream.push_attr(NETWORK_PEER_ADDRESS, "10.0.0.7");
    upstream.status = SpanStatus::Ok;
    let mut request = SpanData::new(
        &server,
        "POST /v1/chat/completions",
        SpanKind::Server,
        start,
        start + 1_000,
    );
    request.push_attr(HTTP_REQUEST_METHOD, "POST");
    request.push_attr(URL_PATH, String::from("/v1/chat/completions"));
    request.push_attr(HTTP_RESPONSE_STATUS_CODE, 502u16);
    request.push_attr(GEN_AI_USAGE_INPUT_TOKENS, 12u64);
    request.push_attr(GEN_AI_SERVER_TIME_TO_FIRST_TOKEN, 0.25);
    request.push_attr("hypergate.cached", false);
    request.status = SpanStatus::Error("upstream answered 502".into());
    sinks[0].push_span(&upstream);
    sinks[0].push_span(&request);

    sinks[1].push_log(&LogData {
        time_unix_nanos: start + 1_000,
        severity: Severity::for_status(502),
        body: "POST /v1/chat/completions 502".into(),
        attributes: [(HTTP_RESPONSE_STATUS_CODE, AttrValue::Int(502))]
            .into_iter()
            .collect(),
        trace_id: Some(server.trace_id),
        span_id: Some(server.span_id),
    });

    let events = finish(&collector, exporter, sinks);
    let traces: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e, Event::Traces { .. }))
        .collect();
    assert_eq!(traces.len(), 1, "one batch: {events:?}");
    let Event::Traces { headers, request } = traces[0] else {
        unreachable!()
    };
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(header("content-type"), Some("application/x-protobuf"));
    assert_eq!(header("authorization"), Some("Bearer t0k"));

    let resource_spans = &request.resource_spans[0];
    let resource_attrs = &resource_spans
        .resource
        .as_ref()
        .expect("resource")
        .attributes;
    assert_eq!(
        attr(resource_attrs, "service.name"),
        Some(&Value::StringValue("edge-gw".into()))
    );
    assert_eq!(
        attr(resource_attrs, "service.version"),
        Some(&Value::StringValue(env!("CARGO_PKG_VERSION").into()))
    );
    assert_eq!(
        attr(resource_attrs, "deployment.environment.name"),
        Some(&Value::StringValue("test".into()))
    );
    assert_eq!(
        resource_spans.scope_spans[0]
            .scope
            .as_ref()
            .expect("scope")
            .name,
        "hypergate"
    );

    let spans = spans_of(traces[0]);
    assert_eq!(spans.len(), 2);
    let (up, srv) = (&spans[0], &spans[1]);
    assert_eq!(srv.trace_id, parent.trace_id.to_vec());
    assert_eq!(srv.parent_span_id, parent.span_id.to_vec());
    assert_eq!(srv.span_id, server.span_id.to_vec());
    assert_eq!(srv.trace_state, "vendor=abc");
    assert_eq!(srv.kind, span::SpanKind::Server as i32);
    assert_eq!(srv.name, "POST /v1/chat/completions");
    assert_eq!(
        (srv.start_time_unix_nano, srv.end_time_unix_nano),
        (start, start + 1_000)
    );
    let srv_status = srv.status.as_ref().expect("status");
    assert_eq!(srv_status.code, status::StatusCode::Error as i32);
    assert_eq!(srv_status.message, "upstream answered 502");
    assert_eq!(
        attr(&srv.attributes, HTTP_REQUEST_METHOD),
        Some(&Value::StringValue("POST".into()))
    );
    assert_eq!(
        attr(&srv.attributes, HTTP_RESPONSE_STATUS_CODE),
        Some(&Value::IntValue(502))
    );
    assert_eq!(
        attr(&srv.attributes, GEN_AI_USAGE_INPUT_TOKENS),
        Some(&Value::IntValue(12))
    );
    assert_eq!(
        attr(&srv.attributes, GEN_AI_SERVER_TIME_TO_FIRST_TOKEN),
        Some(&Value::DoubleValue(0.25))
    );
    assert_eq!(
        attr(&srv.attributes, "hypergate.cached"),
        Some(&Value::BoolValue(false))
    );

    assert_eq!(up.trace_id, parent.trace_id.to_vec());
    assert_eq!(up.parent_span_id, server.span_id.to_vec());
    assert_eq!(up.kind, span::SpanKind::Client as i32);
    assert_eq!(
        up.status.as_ref().expect("status").code,
        status::StatusCode::Ok as i32
    );
    assert_eq!(
        attr(&up.attributes, HYPERGATE_RETRY),
        Some(&Value::IntValue(1))
    );

    let logs: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Logs { headers, request } => Some((headers, request)),
            _ => None,
        })
        .collect();
    assert_eq!(logs.len(), 1);
    let (log_headers, log_request) = logs[0];
    assert!(log_headers
        .iter()
        .any(|(k, v)| k == "authorization" && v == "Bearer t0k"));
    let record = &log_request.resource_logs[0].scope_logs[0].log_records[0];
    assert_eq!(record.severity_number, 17);
    assert_eq!(record.severity_text, "ERROR");
    assert_eq!(
        record.body.as_ref().and_then(|b| b.value.as_ref()),
        Some(&Value::StringValue("POST /v1/chat/completions 502".into()))
    );
    assert_eq!(record.trace_id, server.trace_id.to_vec());
    assert_eq!(record.span_id, server.span_id.to_vec());
    assert_eq!(record.time_unix_nano, start + 1_000);

    assert_eq!(stats.spans_exported.load(Ordering::Relaxed), 2);
    assert_eq!(stats.logs_exported.load(Ordering::Relaxed), 1);
    assert_eq!(stats.export_requests.load(Ordering::Relaxed), 2);
    assert_eq!(stats.spans_failed.load(Ordering::Relaxed), 0);
}

#[test]
fn sampling_decisions_pick_what_is_exported() {
    let collector = MockCollector::start(None);
    let settings = settings(&collector, |c| {
        c.always_sample_errors = true;
        c.always_sample_canary = false;
    });
    let (exporter, sinks) =
        Exporter::start(&settings, &Resource::from_settings(&settings), 1).expect("start");
    let sink = &sinks[0];
    let mut random = random();
    let unsampled = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    // (traceparent, is_error, is_canary) and whether the span is kept.
    let cases: [(&[u8], bool, bool, bool); 5] = [
        (INCOMING, false, false, true),
        (unsampled, false, false, false),
        (unsampled, true, false, true),
        (unsampled, false, true, false),
        (b"garbage", false, false, true),
    ];
    let mut kept = Vec::new();
    for (i, (header, is_error, is_canary, expect)) in cases.into_iter().enumerate() {
        let parent = RemoteParent::parse(header, None);
        let context = SpanContext::server(parent.as_ref(), sink.sampler(), &mut random);
        let keep = sink.sampler().keep(context.sampled, is_error, is_canary);
        assert_eq!(keep, expect, "case {i}");
        if keep {
            sink.push_span(&SpanData::new(
                &context,
                format!("case {i}"),
                SpanKind::Server,
                1,
                2,
            ));
            kept.push(format!("case {i}"));
        }
    }
    let events = finish(&collector, exporter, sinks);
    let names: Vec<String> = events.iter().flat_map(spans_of).map(|s| s.name).collect();
    assert_eq!(names, kept);
}

#[test]
fn queue_full_drops_are_counted_exactly() {
    let (release, stalled) = crossbeam_channel::bounded::<()>(0);
    let collector = MockCollector::start(Some(stalled));
    let settings = settings(&collector, |c| {
        c.batch_size = 1;
        c.queue_batches = 1;
    });
    let (exporter, sinks) =
        Exporter::start(&settings, &Resource::from_settings(&settings), 1).expect("start");
    push_plain(&sinks[0], 1);
    // The exporter took batch 1 off the queue: it is connected, waiting for an answer.
    assert!(matches!(collector.next(), Event::Accepted));
    push_plain(&sinks[0], 2); // fills the one queue slot
    for n in 3..=5 {
        push_plain(&sinks[0], n); // dropped
    }
    assert_eq!(counter(&exporter, |s| &s.spans_dropped), 3);
    drop(release); // the receiver reads and answers now
    let stats = std::sync::Arc::clone(exporter.stats());
    let events = finish(&collector, exporter, sinks);
    assert_eq!(events.iter().flat_map(spans_of).count(), 2);
    assert_eq!(stats.spans_exported.load(Ordering::Relaxed), 2);
    assert_eq!(stats.spans_dropped.load(Ordering::Relaxed), 3);
    assert_eq!(stats.spans_failed.load(Ordering::Relaxed), 0);
    let mut text = String::new();
    stats.prometheus(&mut text);
    assert!(
        text.contains("hypergate_otlp_spans_total{outcome=\"dropped\"} 3\n"),
        "{text}"
    );
    assert!(
        text.contains("hypergate_otlp_spans_total{outcome=\"exported\"} 2\n"),
        "{text}"
    );
}

#[test]
fn a_500_counts_the_batch_as_failed() {
    let collector = MockCollector::start(None);
    collector.replies.send(Reply::Status(500)).expect("script");
    let settings = settings(&collector, |c| c.batch_size = 3);
    let (exporter, sinks) =
        Exporter::start(&settings, &Resource::from_settings(&settings), 1).expect("start");
    for n in 1..=3 {
        push_plain(&sinks[0], n);
    }
    let stats = std::sync::Arc::clone(exporter.stats());
    finish(&collector, exporter, sinks);
    assert_eq!(stats.spans_failed.load(Ordering::Relaxed), 3);
    assert_eq!(stats.spans_exported.load(Ordering::Relaxed), 0);
    assert_eq!(stats.export_failures.load(Ordering::Relaxed), 1);
    assert_eq!(
        stats.export_requests.load(Ordering::Relaxed),
        1,
        "a 500 is not retried"
    );
}

#[test]
fn a_503_or_429_is_retried_once() {
    let collector = MockCollector::start(None);
    for reply in [503, 200, 429, 429] {
        collector
            .replies
            .send(Reply::Status(reply))
            .expect("script");
    }
    let settings = settings(&collector, |c| c.batch_size = 1);
    let (exporter, sinks) =
        Exporter::start(&settings, &Resource::from_settings(&settings), 1).expect("start");
    push_plain(&sinks[0], 1); // 503, then 200
    push_plain(&sinks[0], 2); // 429, then 429: failed
    let stats = std::sync::Arc::clone(exporter.stats());
    finish(&collector, exporter, sinks);
    assert_eq!(stats.spans_exported.load(Ordering::Relaxed), 1);
    assert_eq!(stats.spans_failed.load(Ordering::Relaxed), 1);
    assert_eq!(stats.export_requests.load(Ordering::Relaxed), 4);
}

#[test]
fn keep_alive_reuses_one_connection_whatever_the_body_framing() {
    let collector = MockCollector::start(None);
    for reply in [
        Reply::Chunked,
        Reply::Status(200),
        Reply::Chunked,
        Reply::Status(202),
    ] {
        collector.replies.send(reply).expect("script");
    }
    let settings = settings(&collector, |c| c.batch_size = 1);
    let (exporter, sinks) =
        Exporter::start(&settings, &Resource::from_settings(&settings), 1).expect("start");
    for n in 1..=4 {
        push_plain(&sinks[0], n);
    }
    let stats = std::sync::Arc::clone(exporter.stats());
    let events = finish(&collector, exporter, sinks);
    let accepted = events
        .iter()
        .filter(|e| matches!(e, Event::Accepted))
        .count();
    assert_eq!(accepted, 1, "{events:?}");
    assert_eq!(stats.spans_exported.load(Ordering::Relaxed), 4);
}

#[test]
fn a_connection_the_collector_closed_is_replaced() {
    let collector = MockCollector::start(None);
    collector.replies.send(Reply::SilentClose).expect("script");
    let settings = settings(&collector, |c| c.batch_size = 1);
    let (exporter, sinks) =
        Exporter::start(&settings, &Resource::from_settings(&settings), 1).expect("start");
    push_plain(&sinks[0], 1);
    // Wait until the first request was answered and its connection closed.
    assert!(matches!(collector.next(), Event::Accepted));
    assert!(matches!(collector.next(), Event::Traces { .. }));
    push_plain(&sinks[0], 2);
    let stats = std::sync::Arc::clone(exporter.stats());
    let events = finish(&collector, exporter, sinks);
    assert_eq!(stats.spans_exported.load(Ordering::Relaxed), 2);
    assert_eq!(stats.spans_failed.load(Ordering::Relaxed), 0);
    let accepted = events
        .iter()
        .filter(|e| matches!(e, Event::Accepted))
        .count();
    assert_eq!(
        accepted, 1,
        "one new connection for the second batch: {events:?}"
    );
    assert_eq!(
        stats.export_requests.load(Ordering::Relaxed),
        3,
        "the second request was sent on the closed connection, then again on a new one"
    );
}

#[test]
fn an_unreachable_collector_counts_failures() {
    // Bind a port, then free it: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let config = OtlpConfig {
        endpoint: format!("http://127.0.0.1:{port}"),
        export_logs: true,
        ..OtlpConfig::default()
    };
    let settings = config.validate(&OtlpEnv::default()).expect("valid");
    let (exporter, sinks) =
        Exporter::start(&settings, &Resource::from_settings(&settings), 1).expect("start");
    push_plain(&sinks[0], 1);
    sinks[0].push_log(&LogData {
        time_unix_nanos: 1,
        severity: Severity::Info,
        body: "GET / 200".into(),
        attributes: Default::default(),
        trace_id: None,
        span_id: None,
    });
    let stats = std::sync::Arc::clone(exporter.stats());
    drop(sinks);
    assert!(exporter.shutdown(Duration::from_secs(10)));
    assert_eq!(stats.spans_failed.load(Ordering::Relaxed), 1);
    assert_eq!(stats.logs_failed.load(Ordering::Relaxed), 1);
    assert_eq!(stats.export_failures.load(Ordering::Relaxed), 2);
}

#[test]
fn shutdown_waits_at_most_its_bound() {
    let (_release, stalled) = crossbeam_channel::bounded::<()>(0);
    let collector = MockCollector::start(Some(stalled));
    let settings = settings(&collector, |c| c.batch_size = 1);
    let (exporter, sinks) =
        Exporter::start(&settings, &Resource::from_settings(&settings), 1).expect("start");
    push_plain(&sinks[0], 1);
    assert!(matches!(collector.next(), Event::Accepted));
    let started = Instant::now();
    assert!(
        !exporter.shutdown(Duration::from_millis(100)),
        "the export is stuck"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(sinks);
}
