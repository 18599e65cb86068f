//! OpenTelemetry tracing end to end: the gateway continues the caller's W3C
//! trace, exports a server span per request and a client span per upstream
//! attempt (retries visible) over OTLP/HTTP to an in-process receiver
//! (`hypergate_tests::otlp`), names each attempt as the upstream's parent,
//! samples by the caller's decision while keeping errors, and exports LLM calls
//! with the GenAI semantic conventions and call records as log records. A
//! client traced with the official Python `opentelemetry-sdk` sees its trace
//! continued through the gateway to the upstream.

use hypergate_mock_llm::{MockConfig, MockLlm};
use hypergate_tests::otlp::MockCollector;
use hypergate_tests::util::closed_port;
use hypergate_tests::{cluster, preamble, route_all, MockUpstream, Reply, Request, TestGateway};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode, Span};
use serde_json::json;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr<'a>(
    attributes: &'a [opentelemetry_proto::tonic::common::v1::KeyValue],
    key: &str,
) -> Option<&'a Any> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn str_attr(s: &Span, key: &str) -> Option<String> {
    match attr(&s.attributes, key) {
        Some(Any::StringValue(v)) => Some(v.clone()),
        _ => None,
    }
}

fn int_attr(s: &Span, key: &str) -> Option<i64> {
    match attr(&s.attributes, key) {
        Some(Any::IntValue(v)) => Some(*v),
        _ => None,
    }
}

fn otlp(collector: &MockCollector, extra: &str) -> String {
    format!(
        "\n[observability.otlp]\nendpoint = \"{}\"\nflush_interval = \"50ms\"\n{extra}\n",
        collector.url()
    )
}

/// The caller's `traceparent`: its trace id and span id.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[test]
fn spans_follow_the_request_through_retries_to_the_upstream() {
    let collector = MockCollector::start(None);
    let up = MockUpstream::ok("fine");
    let dead = closed_port();
    // One shard, round robin over [dead, up]: the first request tries the dead
    // endpoint first and retries on the live one.
    let gw = TestGateway::start(&format!(
        "{}{}{}{}",
        preamble(1),
        cluster("api", &[dead, up.addr()], "retry = { attempts = 1 }"),
        route_all("api", "api", ""),
        otlp(&collector, ""),
    ));
    let r = gw.send(
        &Request::get("/orders/7")
            .header("traceparent", &format!("00-{TRACE}-{CALLER_SPAN}-01"))
            .header("tracestate", "vendor=abc"),
    );
    assert_eq!(r.status, 200);
    let seen = up.requests();
    let upstream_parent = seen[0]
        .header("traceparent")
        .expect("traceparent upstream")
        .to_string();
    assert_eq!(&upstream_parent[3..35], TRACE, "{upstream_parent}");
    assert!(upstream_parent.ends_with("-01"), "{upstream_parent}");
    assert_eq!(seen[0].header("tracestate"), Some("vendor=abc"));

    let (spans, _) = collector.collect(|spans, _| spans.len() >= 3);
    let server = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .expect("a server span");
    assert_eq!(hex(&server.trace_id), TRACE);
    assert_eq!(
        hex(&server.parent_span_id),
        CALLER_SPAN,
        "the caller's span is the parent"
    );
    assert_eq!(server.name, "GET api");
    assert_eq!(
        str_attr(server, "http.request.method").as_deref(),
        Some("GET")
    );
    assert_eq!(str_attr(server, "url.path").as_deref(), Some("/orders/7"));
    assert_eq!(str_attr(server, "http.route").as_deref(), Some("api"));
    assert_eq!(int_attr(server, "http.response.status_code"), Some(200));
    assert_eq!(str_attr(server, "hypergate.outcome").as_deref(), Some("ok"));
    assert_eq!(int_attr(server, "hypergate.retries"), Some(1));
    assert_eq!(server.trace_state, "vendor=abc");
    assert!(server.end_time_unix_nano > server.start_time_unix_nano);

    let mut clients: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client as i32)
        .collect();
    clients.sort_by_key(|s| int_attr(s, "hypergate.retry"));
    assert_eq!(clients.len(), 2, "one client span per attempt");
    for c in &clients {
        assert_eq!(c.trace_id, server.trace_id);
        assert_eq!(
            c.parent_span_id, server.span_id,
            "attempts are children of the server span"
        );
        assert!(c.start_time_unix_nano >= server.start_time_unix_nano);
        assert!(c.end_time_unix_nano <= server.end_time_unix_nano);
    }
    assert_eq!(
        str_attr(clients[0], "server.address"),
        Some(dead.to_string())
    );
    assert_eq!(
        str_attr(clients[0], "error.type").as_deref(),
        Some("connect_error")
    );
    assert_eq!(
        clients[0].status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );
    assert_eq!(
        str_attr(clients[1], "server.address"),
        Some(up.addr().to_string())
    );
    assert_eq!(int_attr(clients[1], "http.response.status_code"), Some(200));
    // The upstream was told the second attempt is its parent.
    assert_eq!(&upstream_parent[36..52], hex(&clients[1].span_id));

    let metrics = gw.metrics();
    assert!(
        metrics.contains("hypergate_otlp_spans_total{outcome=\"exported\"}"),
        "{metrics}"
    );
}

#[test]
fn unsampled_calls_are_left_out_but_errors_are_kept() {
    let collector = MockCollector::start(None);
    let up = MockUpstream::start(|req| {
        if req.target.starts_with("/fail") {
            Reply::status(500).into()
        } else {
            Reply::ok("fine").into()
        }
    });
    let gw = TestGateway::start(&format!(
        "{}{}{}{}",
        preamble(1),
        cluster("api", &[up.addr()], ""),
        route_all("api", "api", ""),
        otlp(
            &collector,
            "sampler = \"parentbased_traceidratio\"\nsampler_arg = 0.0"
        ),
    ));
    // A caller that did not sample, then one new trace (ratio 0: not sampled).
    let quiet = "0af7651916cd43dd8448eb211c80319c";
    let r = gw.send(
        &Request::get("/ok").header("traceparent", &format!("00-{quiet}-b7ad6b7169203331-00")),
    );
    assert_eq!(r.status, 200);
    assert_eq!(gw.send(&Request::get("/ok-too")).status, 200);
    let sent = up.requests();
    assert!(
        sent[0].header("traceparent").unwrap().ends_with("-00"),
        "the decision is passed on"
    );
    assert!(sent[1].header("traceparent").unwrap().ends_with("-00"));
    // An error is kept whatever the head decision (always_sample_errors).
    assert_eq!(gw.send(&Request::get("/fail")).status, 500);
    // One shard, one sink: spans leave in request order, so once the error's
    // span is here, any span of the earlier calls would be too.
    let (spans, _) = collector.collect(|spans, _| {
        spans
            .iter()
            .any(|s| str_attr(s, "url.path").as_deref() == Some("/fail"))
    });
    let servers: Vec<String> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Server as i32)
        .filter_map(|s| str_attr(s, "url.path"))
        .collect();
    assert_eq!(servers, ["/fail"]);
    let fail = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .unwrap();
    assert_eq!(
        str_attr(fail, "hypergate.outcome").as_deref(),
        Some("upstream_error")
    );
    assert_eq!(
        fail.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );
}

#[test]
fn llm_calls_follow_the_gen_ai_conventions_and_records_go_out_as_logs() {
    let collector = MockCollector::start(None);
    let llm = MockLlm::start("127.0.0.1:0", MockConfig::default()).expect("mock provider");
    let gw = TestGateway::start(&format!(
        "{}\n[[routes]]\nname = \"llm\"\n[routes.match]\npath_prefix = \"/v1\"\n[routes.ai]\n\
         [[ai.providers]]\nname = \"p\"\nkind = \"openai\"\nbase_url = \"http://{}/v1\"\napi_key = \"sk-test\"\n\
         [[ai.models]]\nalias = \"smart\"\ntargets = [{{ provider = \"p\", model = \"m1\" }}]\n\
         [[ai.prices]]\nmodel = \"m1\"\ninput = 1.0\noutput = 2.0\n{}",
        preamble(1),
        llm.addr(),
        otlp(&collector, "export_logs = true"),
    ));
    let body = json!({"model": "smart", "stream": true, "messages": [{"role": "user", "content": "one two three"}]});
    let r = gw.send(
        &Request::post("/v1/chat/completions", body.to_string().into_bytes())
            .header("content-type", "application/json"),
    );
    assert_eq!(r.status, 200);
    let (spans, logs) = collector.collect(|spans, logs: &[LogRecord]| {
        spans.iter().any(|s| s.name.starts_with("chat ")) && !logs.is_empty()
    });
    let server = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .unwrap();
    let chat = spans
        .iter()
        .find(|s| s.name == "chat m1")
        .expect("the LLM call's span");
    assert_eq!(chat.kind, SpanKind::Client as i32);
    assert_eq!(chat.parent_span_id, server.span_id);
    assert_eq!(
        str_attr(chat, "gen_ai.operation.name").as_deref(),
        Some("chat")
    );
    assert_eq!(str_attr(chat, "gen_ai.provider.name").as_deref(), Some("p"));
    assert_eq!(
        str_attr(chat, "gen_ai.request.model").as_deref(),
        Some("smart")
    );
    assert_eq!(
        str_attr(chat, "gen_ai.response.model").as_deref(),
        Some("m1")
    );
    assert!(int_attr(chat, "gen_ai.usage.input_tokens").unwrap() > 0);
    assert!(int_attr(chat, "gen_ai.usage.output_tokens").unwrap() > 0);
    match attr(&chat.attributes, "gen_ai.server.time_to_first_token") {
        Some(Any::DoubleValue(s)) => assert!(*s > 0.0 && *s < 10.0, "{s}"),
        other => panic!("time to first token: {other:?}"),
    }
    let log = &logs[0];
    assert_eq!(log.trace_id, server.trace_id);
    assert_eq!(log.span_id, server.span_id);
    match log.body.as_ref().and_then(|b| b.value.as_ref()) {
        Some(Any::StringValue(b)) => assert_eq!(b, "POST /v1/chat/completions 200"),
        other => panic!("log body: {other:?}"),
    }
}

#[test]
fn a_client_traced_with_the_python_sdk_is_continued_to_the_upstream() {
    let collector = MockCollector::start(None);
    let up = MockUpstream::ok("fine");
    let gw = TestGateway::start(&format!(
        "{}{}{}{}",
        preamble(2),
        cluster("api", &[up.addr()], ""),
        route_all("api", "api", ""),
        otlp(&collector, ""),
    ));
    let out = hypergate_tests::python::run_script("otel_client.py", gw.addr, &["/checkout"]);
    assert_eq!(out["status"], 200, "{out}");
    assert_eq!(out["finished_spans"], 1, "{out}");
    let trace = out["trace_id"].as_str().unwrap();
    let client_span = out["span_id"].as_str().unwrap();
    let upstream = up.requests()[0]
        .header("traceparent")
        .expect("traceparent upstream")
        .to_string();
    assert_eq!(
        &upstream[3..35],
        trace,
        "the upstream is in the client's trace"
    );
    assert_ne!(
        &upstream[36..52],
        client_span,
        "the gateway is a hop of its own"
    );
    let (spans, _) = collector.collect(|spans, _| spans.len() >= 2);
    let server = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .unwrap();
    assert_eq!(hex(&server.trace_id), trace);
    assert_eq!(
        hex(&server.parent_span_id),
        client_span,
        "a child of the SDK's span"
    );
    let attempt = spans
        .iter()
        .find(|s| s.kind == SpanKind::Client as i32)
        .unwrap();
    assert_eq!(
        &upstream[36..52],
        hex(&attempt.span_id),
        "the upstream's parent is the attempt"
    );
}
