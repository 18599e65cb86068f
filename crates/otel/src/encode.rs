//! Turns batches into OTLP messages (`opentelemetry-proto`'s generated types):
//! one resource, one instrumentation scope (`hypergate`), every item of the
//! batch. Runs on the exporter thread; the request path never encodes.
//!
//! Depends on: [`crate::span`], [`crate::log`], [`crate::resource`].

use crate::log::LogData;
use crate::resource::Resource;
use crate::span::{AttrValue, SpanData, SpanKind, SpanStatus};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};

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
                AttrValue::Int(i) => any_value::Value::IntValue(i),
                AttrValue::Float(f) => any_value::Value::DoubleValue(f),
                AttrValue::Bool(b) => any_value::Value::BoolValue(b),
            };
            key_value(k.to_string(), value)
        })
        .collect()
}

fn span(s: SpanData) -> Span {
    let kind = match s.kind {
        SpanKind::Server => span::SpanKind::Server,
        SpanKind::Client => span::SpanKind::Client,
        SpanKind::Internal => span::SpanKind::Internal,
    };
    let status = match s.status {
        SpanStatus::Unset => None,
        SpanStatus::Ok => Some(Status {
            code: status::StatusCode::Ok as i32,
            message: String::new(),
        }),
        SpanStatus::Error(message) => Some(Status {
            code: status::StatusCode::Error as i32,
            message: message.into_owned(),
        }),
    };
    Span {
        trace_id: s.trace_id.to_vec(),
        span_id: s.span_id.to_vec(),
        trace_state: s
            .trace_state
            .map(|t| t.as_str().to_string())
            .unwrap_or_default(),
        parent_span_id: s.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
        name: s.name.into_owned(),
        kind: kind as i32,
        start_time_unix_nano: s.start_unix_nanos,
        end_time_unix_nano: s.end_unix_nanos,
        attributes: attributes(s.attributes),
        status,
        ..Default::default()
    }
}

/// One export request for a batch of spans.
pub(crate) fn trace_request(
    resource: &ProtoResource,
    spans: Vec<SpanData>,
) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(scope()),
                spans: spans.into_iter().map(span).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
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
