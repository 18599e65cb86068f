//! The span model the request path fills: borrowed data on the shard's stack,
//! no locks, no allocation; the sink writes it as protobuf bytes at once.
//!
//! Build a [`SpanData`] at the end of a request, once [`crate::sampler::Sampler::keep`]
//! said to keep it: by then every attribute is known and unsampled requests
//! cost nothing. Names and string values borrow from the request and the
//! config for as long as the span lives (until [`crate::TelemetrySink::push_span`]
//! has encoded it); attributes sit in an inline list of [`INLINE_ATTRIBUTES`].
//! Only a value made for the span (an error text) is an owned string.
//!
//! Depends on: [`crate::context`] (ids and the span context).

use crate::context::{SpanContext, SpanId, TraceId, TraceState};
use smallvec::SmallVec;
use std::borrow::Cow;

/// Attributes a span or log record holds without allocating: the most the
/// gateway's server span carries.
pub const INLINE_ATTRIBUTES: usize = 16;

/// A span's or log record's attributes, keyed by the names in
/// [`crate::attributes`]; inline up to [`INLINE_ATTRIBUTES`].
pub type Attributes<'a> = SmallVec<[(&'static str, AttrValue<'a>); INLINE_ATTRIBUTES]>;

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
pub enum SpanStatus<'a> {
    /// Not set: the default for a span that did not fail.
    Unset,
    /// Explicitly successful.
    Ok,
    /// Failed, with a short description.
    Error(Cow<'a, str>),
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue<'a> {
    /// A string, borrowed where it can be.
    Str(Cow<'a, str>),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
}

impl<'a> From<&'a str> for AttrValue<'a> {
    fn from(v: &'a str) -> Self {
        AttrValue::Str(Cow::Borrowed(v))
    }
}

impl From<String> for AttrValue<'_> {
    fn from(v: String) -> Self {
        AttrValue::Str(Cow::Owned(v))
    }
}

impl<'a> From<Cow<'a, str>> for AttrValue<'a> {
    fn from(v: Cow<'a, str>) -> Self {
        AttrValue::Str(v)
    }
}

impl From<i64> for AttrValue<'_> {
    fn from(v: i64) -> Self {
        AttrValue::Int(v)
    }
}

impl From<u64> for AttrValue<'_> {
    /// Saturates at `i64::MAX` (OTLP integers are signed).
    fn from(v: u64) -> Self {
        AttrValue::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl From<u32> for AttrValue<'_> {
    fn from(v: u32) -> Self {
        AttrValue::Int(i64::from(v))
    }
}

impl From<u16> for AttrValue<'_> {
    fn from(v: u16) -> Self {
        AttrValue::Int(i64::from(v))
    }
}

impl From<f64> for AttrValue<'_> {
    fn from(v: f64) -> Self {
        AttrValue::Float(v)
    }
}

impl From<bool> for AttrValue<'_> {
    fn from(v: bool) -> Self {
        AttrValue::Bool(v)
    }
}

/// One finished span.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanData<'a> {
    /// The trace.
    pub trace_id: TraceId,
    /// This span.
    pub span_id: SpanId,
    /// The parent span; `None` for a trace's root.
    pub parent_span_id: Option<SpanId>,
    /// The caller's `tracestate`, carried through.
    pub trace_state: Option<&'a TraceState>,
    /// The span name, e.g. `POST` or `chat`.
    pub name: Cow<'a, str>,
    /// When not empty, written after `name` and a space: OpenTelemetry's
    /// span names are `{method} {route}` and `{operation} {model}`, and the
    /// two parts are kept apart so that the request path formats nothing.
    pub name_detail: &'a str,
    /// Server, client or internal.
    pub kind: SpanKind,
    /// Start, in nanoseconds since the Unix epoch.
    pub start_unix_nanos: u64,
    /// End, in nanoseconds since the Unix epoch.
    pub end_unix_nanos: u64,
    /// The outcome.
    pub status: SpanStatus<'a>,
    /// Attributes, keyed by the names in [`crate::attributes`].
    pub attributes: Attributes<'a>,
}

impl<'a> SpanData<'a> {
    /// A span for `context` with no attributes and an unset status. Take
    /// `start_unix_nanos` from the request's wall-clock start and add the
    /// monotonic duration for the end, so the span's length is exact.
    pub fn new(
        context: &'a SpanContext,
        name: impl Into<Cow<'a, str>>,
        kind: SpanKind,
        start_unix_nanos: u64,
        end_unix_nanos: u64,
    ) -> SpanData<'a> {
        SpanData {
            trace_id: context.trace_id,
            span_id: context.span_id,
            parent_span_id: context.parent_span_id,
            trace_state: context.trace_state.as_ref(),
            name: name.into(),
            name_detail: "",
            kind,
            start_unix_nanos,
            end_unix_nanos,
            status: SpanStatus::Unset,
            attributes: Attributes::new(),
        }
    }

    /// Adds an attribute.
    pub fn push_attr(&mut self, key: &'static str, value: impl Into<AttrValue<'a>>) {
        self.attributes.push((key, value.into()));
    }
}
