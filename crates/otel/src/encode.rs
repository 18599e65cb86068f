//! Writes OTLP protobuf by hand: each span and log record straight into its
//! shard's batch buffer when it is pushed (see [`put_span`], [`put_log`]), and
//! the export request around a batch on the exporter thread ([`request`]).
//! One resource and one instrumentation scope (`hypergate`) per request.
//!
//! Depends on: [`crate::span`], [`crate::log`], [`crate::resource`].

use crate::log::LogData;
use crate::resource::Resource;
use crate::span::{AttrValue, SpanData, SpanKind, SpanStatus};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
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

// Spans and records are written straight into protobuf bytes rather than
// built as `opentelemetry-proto` structs and encoded: the structs need an
// owned `String` for every attribute key and value and a `Vec` per id, and a
// span kept as owned data until the exporter thread encodes it costs
// allocations on the shard and frees on another thread. Both were most of
// tracing's cost with every request sampled (measured with `cargo xtask bench
// --scenario trace-all`). Field numbers are those of
// opentelemetry/proto/{trace,logs}/v1/*.proto and common/v1/common.proto; the
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

fn status_parts<'s>(s: &'s SpanStatus<'_>) -> Option<(u64, &'s str)> {
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

fn name_len(s: &SpanData) -> usize {
    s.name.len()
        + if s.name_detail.is_empty() {
            0
        } else {
            1 + s.name_detail.len()
        }
}

fn span_len(s: &SpanData) -> usize {
    let state = s.trace_state.map_or("", |t| t.as_str());
    let opt = |tag: u32, len: usize| if len == 0 { 0 } else { len_field(tag, len) };
    let fixed = |v: u64| if v == 0 { 0 } else { 9 };
    len_field(1, 16)
        + len_field(2, 8)
        + opt(3, state.len())
        + s.parent_span_id.map_or(0, |_| len_field(4, 8))
        + opt(5, name_len(s))
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

/// Appends `s` as one `spans` entry of a `ScopeSpans` (field 2).
pub(crate) fn put_span(out: &mut Vec<u8>, s: &SpanData) {
    let len = span_len(s);
    out.reserve(len_field(2, len));
    put_len(out, 2, len);
    put_bytes(out, 1, &s.trace_id);
    put_bytes(out, 2, &s.span_id);
    put_bytes(out, 3, s.trace_state.map_or("", |t| t.as_str()).as_bytes());
    if let Some(p) = &s.parent_span_id {
        put_bytes(out, 4, p);
    }
    let name = name_len(s);
    if name > 0 {
        put_len(out, 5, name);
        out.extend_from_slice(s.name.as_bytes());
        if !s.name_detail.is_empty() {
            out.push(b' ');
            out.extend_from_slice(s.name_detail.as_bytes());
        }
    }
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

fn log_len(l: &LogData) -> usize {
    let fixed = |v: u64| if v == 0 { 0 } else { 9 };
    let text = l.severity.text();
    fixed(l.time_unix_nanos)
        + 1
        + encoded_len_varint(l.severity.number() as u64)
        + len_field(3, text.len())
        + len_field(5, len_field(1, l.body.len()))
        + l.attributes
            .iter()
            .map(|(k, v)| len_field(6, key_value_len(k, v)))
            .sum::<usize>()
        + l.trace_id.map_or(0, |_| len_field(9, 16))
        + l.span_id.map_or(0, |_| len_field(10, 8))
        + fixed(l.time_unix_nanos)
}

/// Appends `l` as one `log_records` entry of a `ScopeLogs` (field 2).
pub(crate) fn put_log(out: &mut Vec<u8>, l: &LogData) {
    let len = log_len(l);
    out.reserve(len_field(2, len));
    put_len(out, 2, len);
    put_fixed64(out, 1, l.time_unix_nanos);
    put_varint(out, 2, l.severity.number() as u64);
    put_bytes(out, 3, l.severity.text().as_bytes());
    put_len(out, 5, len_field(1, l.body.len()));
    put_len(out, 1, l.body.len());
    l.body.write(out);
    for (k, v) in &l.attributes {
        put_key_value(out, 6, k, v);
    }
    if let Some(t) = &l.trace_id {
        put_bytes(out, 9, t);
    }
    if let Some(s) = &l.span_id {
        put_bytes(out, 10, s);
    }
    // The gateway observes the call when it ends.
    put_fixed64(out, 11, l.time_unix_nanos);
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

/// One export request around `items`, the entries [`put_span`] or
/// [`put_log`] wrote, into `out`. `ExportTraceServiceRequest` and
/// `ExportLogsServiceRequest` have the same shape and field numbers:
/// `resource_*` (1) { `resource` (1), `scope_*` (2) { `scope` (1), items (2) } }.
pub(crate) fn request(fixed: &Fixed, items: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let scope_len = len_field(1, fixed.scope.len()) + items.len();
    let resource_len = len_field(1, fixed.resource.len()) + len_field(2, scope_len);
    out.reserve(len_field(1, resource_len));
    put_len(out, 1, resource_len);
    put_len(out, 1, fixed.resource.len());
    out.extend_from_slice(&fixed.resource);
    put_len(out, 2, scope_len);
    put_len(out, 1, fixed.scope.len());
    out.extend_from_slice(&fixed.scope);
    out.extend_from_slice(items);
}
