//! The log-record model for call records: one record per finished request,
//! exported as an OTLP log with the request's trace and span ids so that a
//! backend can jump from the record to the trace. Like a span, it borrows
//! from the request and is written as protobuf bytes when pushed.
//!
//! Depends on: [`crate::context`] (ids) and [`crate::span`] (attribute values).

use crate::context::{SpanId, TraceId};
use crate::span::Attributes;
use std::borrow::Cow;

/// A record's severity. Calls answered below 500 are `Info`, 5xx are `Error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// A call answered with a status below 500.
    Info,
    /// A call answered with a 5xx.
    Error,
}

impl Severity {
    /// `Error` for a 5xx status, else `Info`.
    pub fn for_status(status: u16) -> Severity {
        if status >= 500 {
            Severity::Error
        } else {
            Severity::Info
        }
    }

    /// OTLP's `SeverityNumber` (INFO = 9, ERROR = 17).
    pub fn number(self) -> i32 {
        match self {
            Severity::Info => 9,
            Severity::Error => 17,
        }
    }

    /// OTLP's `severity_text`.
    pub fn text(self) -> &'static str {
        match self {
            Severity::Info => "INFO",
            Severity::Error => "ERROR",
        }
    }
}

/// One call record as a log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogData<'a> {
    /// When the call ended, in nanoseconds since the Unix epoch.
    pub time_unix_nanos: u64,
    /// Info or error (see [`Severity::for_status`]).
    pub severity: Severity,
    /// A one-line summary, e.g. `GET /v1/chat/completions 200`.
    pub body: Cow<'a, str>,
    /// Attributes, keyed by the names in [`crate::attributes`].
    pub attributes: Attributes<'a>,
    /// The request's trace, when it has one.
    pub trace_id: Option<TraceId>,
    /// The request's server span, when it has one.
    pub span_id: Option<SpanId>,
}
