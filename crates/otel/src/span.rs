//! The span model the request path fills: plain owned data, no locks, no
//! encoding; the exporter thread turns it into OTLP.
//!
//! Build a [`SpanData`] at the end of a request, once [`crate::sampler::Sampler::keep`]
//! said to keep it: by then every attribute is known and unsampled requests
//! cost nothing. Names and string values are `Cow<'static, str>`, so fixed
//! ones (a method, a route name held as `&'static str`) do not allocate.
//!
//! Depends on: [`crate::context`] (ids and the span context).

use crate::context::{SpanContext, SpanId, TraceId, TraceState};
use std::borrow::Cow;

/// What the span stands for, as OTLP's `SpanKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// The gateway serving a request.
    Server,
    /// A call the gateway makes (an upstream attempt, a provider call).
    Client,
    /// A step inside the gateway.
    Internal,
}

/// The span's outcome, as OTLP's `Status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpanStatus {
    /// Not set: the default for a span that did not fail.
    Unset,
    /// Explicitly successful.
    Ok,
    /// Failed, with a short description.
    Error(Cow<'static, str>),
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    /// A string.
    Str(Cow<'static, str>),
    /// A string shared with the config (route, cluster, version names): a
    /// reference count, not a copy, per span.
    Shared(std::sync::Arc<str>),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
}

impl From<std::sync::Arc<str>> for AttrValue {
    fn from(v: std::sync::Arc<str>) -> Self {
        AttrValue::Shared(v)
    }
}

impl From<&'static str> for AttrValue {
    fn from(v: &'static str) -> Self {
        AttrValue::Str(Cow::Borrowed(v))
    }
}

impl From<String> for AttrValue {
    fn from(v: String) -> Self {
        AttrValue::Str(Cow::Owned(v))
    }
}

impl From<Cow<'static, str>> for AttrValue {
    fn from(v: Cow<'static, str>) -> Self {
        AttrValue::Str(v)
    }
}

impl From<i64> for AttrValue {
    fn from(v: i64) -> Self {
        AttrValue::Int(v)
    }
}

impl From<u64> for AttrValue {
    /// Saturates at `i64::MAX` (OTLP integers are signed).
    fn from(v: u64) -> Self {
        AttrValue::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl From<u32> for AttrValue {
    fn from(v: u32) -> Self {
        AttrValue::Int(i64::from(v))
    }
}

impl From<u16> for AttrValue {
    fn from(v: u16) -> Self {
        AttrValue::Int(i64::from(v))
    }
}

impl From<f64> for AttrValue {
    fn from(v: f64) -> Self {
        AttrValue::Float(v)
    }
}

impl From<bool> for AttrValue {
    fn from(v: bool) -> Self {
        AttrValue::Bool(v)
    }
}

/// One finished span.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanData {
    /// The trace.
    pub trace_id: TraceId,
    /// This span.
    pub span_id: SpanId,
    /// The parent span; `None` for a trace's root.
    pub parent_span_id: Option<SpanId>,
    /// The caller's `tracestate`, carried through.
    pub trace_state: Option<TraceState>,
    /// The span name, e.g. `GET /v1/chat/completions` or `chat gpt-4o`.
    pub name: Cow<'static, str>,
    /// Server, client or internal.
    pub kind: SpanKind,
    /// Start, in nanoseconds since the Unix epoch.
    pub start_unix_nanos: u64,
    /// End, in nanoseconds since the Unix epoch.
    pub end_unix_nanos: u64,
    /// The outcome.
    pub status: SpanStatus,
    /// Attributes, keyed by the names in [`crate::attributes`].
    pub attributes: Vec<(&'static str, AttrValue)>,
}

impl SpanData {
    /// A span for `context` with no attributes and an unset status. Take
    /// `start_unix_nanos` from the request's wall-clock start and add the
    /// monotonic duration for the end, so the span's length is exact.
    pub fn new(
        context: &SpanContext,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        start_unix_nanos: u64,
        end_unix_nanos: u64,
    ) -> SpanData {
        SpanData {
            trace_id: context.trace_id,
            span_id: context.span_id,
            parent_span_id: context.parent_span_id,
            trace_state: context.trace_state.clone(),
            name: name.into(),
            kind,
            start_unix_nanos,
            end_unix_nanos,
            status: SpanStatus::Unset,
            attributes: Vec::new(),
        }
    }

    /// Adds an attribute.
    pub fn push_attr(&mut self, key: &'static str, value: impl Into<AttrValue>) {
        self.attributes.push((key, value.into()));
    }
}
