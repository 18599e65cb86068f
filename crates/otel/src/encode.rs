//! Turns batches into OTLP messages: one resource, one instrumentation scope
//! (`hypergate`), every item of the batch. Spans are written straight into
//! protobuf bytes (see [`trace_request`]); log records go through
//! `opentelemetry-proto`'s generated types. Runs on the exporter thread; the
//! request path never encodes.
//!
//! Depends on: [`crate::span`], [`crate::log`], [`crate::resource`].

use crate::log::LogData;
use crate::resource::Resource;
use crate::span::{AttrValue, SpanData, SpanKind, SpanStatus};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use opentelemetry_proto::tonic::trace::v1::{span, status};

/// The instrumentation scope of every span and record.
pub(crate) const SCOPE_NAME: &str = "hypergate";

/// The resource as OTLP, built once per exporter.
pub(crate) fn resource(resource: &Resource) -> ProtoResource {
    ProtoResource {
        attributes: resource
            .attributes()
            .iter()
            .map(|(k, v)| key_value(k.clone(), any_value::Value::StringValue(v.clone())))
            .collect(),
        ..Default::default()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: SCOPE_NAME.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        ..Default::default()
    }
}

fn key_value(key: String, value: any_value::Value) -> KeyValue {
    KeyValue {
        key,
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn attributes(attributes: Vec<(&'static str, AttrValue)>) -> Vec<KeyValue> {
    attributes
        .into_iter()
        .map(|(k, v)| {
            let value = match v {
                AttrValue::Str(s) => any_value::Value::StringValue(s.into_owned()),
                AttrValue::Shared(s) => any_value::Value::StringValue(s.to_string()),
                AttrValue::Int(i) => any_value::Value::IntValue(i),
                AttrValue::Float(f) => any_value::Value::DoubleValue(f),
                AttrValue::Bool(b) => any_value::Value::BoolValue(b),
            };
            key_value(k.to_string(), value)
        })
        .collect()
}

// Spans are written straight into protobuf bytes rather than built as
// `opentelemetry-proto` structs and encoded: the structs need an owned `String`
// for every attribute key and value and a `Vec` per id, which was most of the
// exporter's CPU with every request sampled (measured with `cargo xtask bench
// --scenario trace-all`). Field numbers are those of
// opentelemetry/proto/trace/v1/trace.proto and common/v1/common.proto; the
// tests decode the bytes with the generated types.
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};

fn len_field(tag: u32, len: usize) -> usize {
    encoded_len_varint(u64::from(tag << 3)) + encoded_len_varint(len as u64) + len
}

fn put_len(out: &mut Vec<u8>, tag: u32, len: usize) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
}

fn put_bytes(out: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    if !bytes.is_empty() {
        put_len(out, tag, bytes.len());
        out.extend_from_slice(bytes);
    }
}

fn put_fixed64(out: &mut Vec<u8>, tag: u32, v: u64) {
    if v != 0 {
        encode_key(tag, WireType::SixtyFourBit, out);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn put_varint(out: &mut Vec<u8>, tag: u32, v: u64) {
    if v != 0 {
        encode_key(tag, WireType::Varint, out);
        encode_varint(v, out);
    }
}

/// Length of an `AnyValue` holding `v` (a oneof: written even when zero).
fn any_value_len(v: &AttrValue) -> usize {
    match v {
        AttrValue::Str(s) => len_field(1, s.len()),
        AttrValue::Shared(s) => len_field(1, s.len()),
        AttrValue::Bool(_) => 2,
        AttrValue::Int(i) => 1 + encoded_len_varint(*i as u64),
        AttrValue::Float(_) => 9,
    }
}

fn key_value_len(k: &str, v: &AttrValue) -> usize {
    len_field(1, k.len()) + len_field(2, any_value_len(v))
}

fn put_key_value(out: &mut Vec<u8>, tag: u32, k: &str, v: &AttrValue) {
    put_len(out, tag, key_value_len(k, v));
    put_bytes(out, 1, k.as_bytes());
    put_len(out, 2, any_value_len(v));
    match v {
        AttrValue::Str(s) => {
            put_len(out, 1, s.len());
            out.extend_from_slice(s.as_bytes());
        }
        AttrValue::Shared(s) => {
            put_len(out, 1, s.len());
            out.extend_from_slice(s.as_bytes());
        }
        AttrValue::Bool(b) => {
            encode_key(2, WireType::Varint, out);
            encode_varint(u64::from(*b), out);
        }
        AttrValue::Int(i) => {
            encode_key(3, WireType::Varint, out);
            encode_varint(*i as u64, out);
        }
        AttrValue::Float(f) => {
            encode_key(4, WireType::SixtyFourBit, out);
            out.extend_from_slice(&f.to_le_bytes());
        }
    }
}

fn status_parts(s: &SpanStatus) -> Option<(u64, &str)> {
    match s {
        SpanStatus::Unset => None,
        SpanStatus::Ok => Some((status::StatusCode::Ok as u64, "")),
        SpanStatus::Error(m) => Some((status::StatusCode::Error as u64, m)),
    }
}

fn status_len(code: u64, message: &str) -> usize {
    (if message.is_empty() {
        0
    } else {
        len_field(2, message.len())
    }) + 1
        + encoded_len_varint(code)
}

fn kind(k: SpanKind) -> u64 {
    (match k {
        SpanKind::Server => span::SpanKind::Server,
        SpanKind::Client => span::SpanKind::Client,
        SpanKind::Internal => span::SpanKind::Internal,
    }) as u64
}

fn span_len(s: &SpanData) -> usize {
    let state = s.trace_state.as_ref().map_or("", |t| t.as_str());
    let opt = |tag: u32, len: usize| if len == 0 { 0 } else { len_field(tag, len) };
    let fixed = |v: u64| if v == 0 { 0 } else { 9 };
    len_field(1, 16)
        + len_field(2, 8)
        + opt(3, state.len())
        + s.parent_span_id.map_or(0, |_| len_field(4, 8))
        + opt(5, s.name.len())
        + 1
        + encoded_len_varint(kind(s.kind))
        + fixed(s.start_unix_nanos)
        + fixed(s.end_unix_nanos)
        + s.attributes
            .iter()
            .map(|(k, v)| len_field(9, key_value_len(k, v)))
            .sum::<usize>()
        + status_parts(&s.status).map_or(0, |(c, m)| len_field(15, status_len(c, m)))
}

fn put_span(out: &mut Vec<u8>, s: &SpanData, len: usize) {
    put_len(out, 2, len);
    put_bytes(out, 1, &s.trace_id);
    put_bytes(out, 2, &s.span_id);
    put_bytes(
        out,
        3,
        s.trace_state.as_ref().map_or("", |t| t.as_str()).as_bytes(),
    );
    if let Some(p) = &s.parent_span_id {
        put_bytes(out, 4, p);
    }
    put_bytes(out, 5, s.name.as_bytes());
    put_varint(out, 6, kind(s.kind));
    put_fixed64(out, 7, s.start_unix_nanos);
    put_fixed64(out, 8, s.end_unix_nanos);
    for (k, v) in &s.attributes {
        put_key_value(out, 9, k, v);
    }
    if let Some((code, message)) = status_parts(&s.status) {
        put_len(out, 15, status_len(code, message));
        put_bytes(out, 2, message.as_bytes());
        put_varint(out, 3, code);
    }
}

/// The encoded `Resource` and `InstrumentationScope`, built once per exporter.
pub(crate) struct Fixed {
    resource: Vec<u8>,
    scope: Vec<u8>,
}

/// Encodes the resource and scope once.
pub(crate) fn fixed(resource: &ProtoResource) -> Fixed {
    Fixed {
        resource: prost::Message::encode_to_vec(resource),
        scope: prost::Message::encode_to_vec(&scope()),
    }
}

/// One `ExportTraceServiceRequest` for a batch of spans, written into `out`.
pub(crate) fn trace_request(fixed: &Fixed, spans: &[SpanData], out: &mut Vec<u8>) {
    out.clear();
    let lens: Vec<usize> = spans.iter().map(span_len).collect();
    let scope_spans_len =
        len_field(1, fixed.scope.len()) + lens.iter().map(|l| len_field(2, *l)).sum::<usize>();
    let resource_spans_len = len_field(1, fixed.resource.len()) + len_field(2, scope_spans_len);
    out.reserve(len_field(1, resource_spans_len));
    put_len(out, 1, resource_spans_len);
    put_len(out, 1, fixed.resource.len());
    out.extend_from_slice(&fixed.resource);
    put_len(out, 2, scope_spans_len);
    put_len(out, 1, fixed.scope.len());
    out.extend_from_slice(&fixed.scope);
    for (s, len) in spans.iter().zip(lens) {
        put_span(out, s, len);
    }
}

fn log_record(l: LogData) -> LogRecord {
    LogRecord {
        time_unix_nano: l.time_unix_nanos,
        observed_time_unix_nano: l.time_unix_nanos,
        severity_number: l.severity.number(),
        severity_text: l.severity.text().to_string(),
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(l.body)),
        }),
        attributes: attributes(l.attributes),
        trace_id: l.trace_id.map(|t| t.to_vec()).unwrap_or_default(),
        span_id: l.span_id.map(|s| s.to_vec()).unwrap_or_default(),
        ..Default::default()
    }
}

/// One export request for a batch of log records.
pub(crate) fn logs_request(
    resource: &ProtoResource,
    logs: Vec<LogData>,
) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource.clone()),
            scope_logs: vec![ScopeLogs {
                scope: Some(scope()),
                log_records: logs.into_iter().map(log_record).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}
