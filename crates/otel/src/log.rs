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

/// A record's body.
#[derive(Debug, Clone, PartialEq)]
pub enum LogBody<'a> {
    /// Any text.
    Text(Cow<'a, str>),
    /// A call's summary line, `GET /path 200`, written by the encoder from
    /// its parts so that the request path formats nothing.
    Call {
        /// The method.
        method: &'a str,
        /// The (canonical) path.
        path: &'a str,
        /// The status sent (0: none).
        status: u16,
    },
}

impl LogBody<'_> {
    /// The body's length in bytes.
    pub fn len(&self) -> usize {
        match self {
            LogBody::Text(t) => t.len(),
            LogBody::Call {
                method,
                path,
                status,
            } => method.len() + 1 + path.len() + 1 + digits(*status),
        }
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the body's bytes.
    pub fn write(&self, out: &mut Vec<u8>) {
        match self {
            LogBody::Text(t) => out.extend_from_slice(t.as_bytes()),
            LogBody::Call {
                method,
                path,
                status,
            } => {
                out.extend_from_slice(method.as_bytes());
                out.push(b' ');
                out.extend_from_slice(path.as_bytes());
                out.push(b' ');
                let mut buf = [0u8; 5];
                let n = digits(*status);
                let mut v = *status;
                for i in (0..n).rev() {
                    buf[i] = b'0' + (v % 10) as u8;
                    v /= 10;
                }
                out.extend_from_slice(&buf[..n]);
            }
        }
    }
}

impl<'a> From<&'a str> for LogBody<'a> {
    fn from(t: &'a str) -> Self {
        LogBody::Text(Cow::Borrowed(t))
    }
}

/// Decimal digits of `v`.
fn digits(v: u16) -> usize {
    match v {
        0..=9 => 1,
        10..=99 => 2,
        100..=999 => 3,
        1000..=9999 => 4,
        _ => 5,
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
    pub body: LogBody<'a>,
    /// Attributes, keyed by the names in [`crate::attributes`].
    pub attributes: Attributes<'a>,
    /// The request's trace, when it has one.
    pub trace_id: Option<TraceId>,
    /// The request's server span, when it has one.
    pub span_id: Option<SpanId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_body_is_written_from_its_parts() {
        for (status, text) in [
            (200, "GET /a/b 200"),
            (0, "GET /a/b 0"),
            (57, "GET /a/b 57"),
        ] {
            let body = LogBody::Call {
                method: "GET",
                path: "/a/b",
                status,
            };
            let mut out = Vec::new();
            body.write(&mut out);
            assert_eq!(out, text.as_bytes());
            assert_eq!(body.len(), text.len());
        }
    }
}
