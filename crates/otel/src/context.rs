//! W3C trace context (<https://www.w3.org/TR/trace-context/>): the incoming
//! `traceparent` and `tracestate`, the contexts of the gateway's own spans, and
//! the `traceparent` it sends upstream.
//!
//! A valid `traceparent` gives the trace id, the caller's span id (the parent
//! of the gateway's server span) and the caller's sampled flag; `tracestate`
//! is carried through only with a valid `traceparent`, and only when it is at
//! most [`TRACESTATE_MAX_LEN`] bytes of well-formed list members (otherwise it
//! is dropped, as the spec allows). New ids come from the caller's generator
//! (a shard's own), so nothing here allocates except a kept `tracestate`.
//!
//! Depends on: [`crate::sampler`] (the head decision in [`SpanContext::server`]).

use crate::sampler::Sampler;
use std::sync::Arc;

/// A 16-byte trace id.
pub type TraceId = [u8; 16];
/// An 8-byte span id.
pub type SpanId = [u8; 8];

/// The longest `tracestate` carried through; a longer one is dropped.
pub const TRACESTATE_MAX_LEN: usize = 512;
/// The most list members a `tracestate` may have (W3C).
const TRACESTATE_MAX_MEMBERS: usize = 32;
/// The length of a version-00 `traceparent`.
pub const TRACEPARENT_LEN: usize = 55;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A `tracestate` value that passed the checks, shared cheaply between the
/// spans of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceState(Arc<str>);

impl TraceState {
    /// The value, trimmed, when it is at most [`TRACESTATE_MAX_LEN`] bytes of
    /// printable ASCII forming at most 32 `key=value` members; `None` drops it.
    pub fn parse(value: &[u8]) -> Option<TraceState> {
        let value = trim_ows(value);
        if value.is_empty()
            || value.len() > TRACESTATE_MAX_LEN
            || !value.iter().all(|b| (0x20..=0x7e).contains(b))
        {
            return None;
        }
        let mut members = 0;
        for member in value.split(|b| *b == b',') {
            let member = trim_ows(member);
            if member.is_empty() {
                continue;
            }
            members += 1;
            let eq = member.iter().position(|b| *b == b'=')?;
            if eq == 0 || eq + 1 == member.len() || members > TRACESTATE_MAX_MEMBERS {
                return None;
            }
        }
        // Printable ASCII is UTF-8.
        let text = std::str::from_utf8(value).ok()?;
        (members > 0).then(|| TraceState(Arc::from(text)))
    }

    /// The value as it goes into the `tracestate` header and the span.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What an incoming, valid `traceparent` (and `tracestate`) says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteParent {
    /// The trace the request belongs to.
    pub trace_id: TraceId,
    /// The caller's span: the parent of the gateway's server span.
    pub span_id: SpanId,
    /// The caller's sampled flag (bit 0 of the trace flags).
    pub sampled: bool,
    /// The caller's `tracestate`, when it passed [`TraceState::parse`].
    pub trace_state: Option<TraceState>,
}

impl RemoteParent {
    /// Parses `traceparent`; `None` when it is absent or invalid (the request
    /// then starts a new trace and `tracestate` is ignored, as the spec says).
    /// Version 00 must be exactly 55 bytes; a later version may append
    /// `-`-separated fields, which are ignored; version `ff` is invalid.
    pub fn parse(traceparent: &[u8], tracestate: Option<&[u8]>) -> Option<RemoteParent> {
        let v = trim_ows(traceparent);
        if v.len() < TRACEPARENT_LEN {
            return None;
        }
        let version = hex_byte(v[0], v[1])?;
        let length_ok = match version {
            0x00 => v.len() == TRACEPARENT_LEN,
            0xff => false,
            _ => v.len() == TRACEPARENT_LEN || v[TRACEPARENT_LEN] == b'-',
        };
        if !length_ok || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        decode_hex(&v[3..35], &mut trace_id)?;
        decode_hex(&v[36..52], &mut span_id)?;
        let flags = hex_byte(v[53], v[54])?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(RemoteParent {
            trace_id,
            span_id,
            sampled: flags & 0x01 != 0,
            trace_state: tracestate.and_then(TraceState::parse),
        })
    }
}

/// The identity of one of the gateway's spans and the head sampling decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanContext {
    /// The trace.
    pub trace_id: TraceId,
    /// This span.
    pub span_id: SpanId,
    /// The parent span: the caller's for the server span, the server span for
    /// its children; `None` for the root of a new trace.
    pub parent_span_id: Option<SpanId>,
    /// The head decision: whether the trace is sampled (the flag sent upstream).
    pub sampled: bool,
    /// The caller's `tracestate`, passed on unchanged.
    pub trace_state: Option<TraceState>,
}

impl SpanContext {
    /// The context of the gateway's server span: it continues `parent` (same
    /// trace, the caller's span as parent) or starts a new trace, with a new
    /// span id, and takes the head decision from `sampler`. `random` is the
    /// shard's generator (e.g. `hypergate_core::rng::next_random`).
    pub fn server(
        parent: Option<&RemoteParent>,
        sampler: &Sampler,
        mut random: impl FnMut() -> u64,
    ) -> SpanContext {
        let trace_id = match parent {
            Some(p) => p.trace_id,
            None => new_trace_id(&mut random),
        };
        SpanContext {
            trace_id,
            span_id: new_span_id(&mut random),
            parent_span_id: parent.map(|p| p.span_id),
            sampled: sampler.should_sample(parent.map(|p| p.sampled), &trace_id),
            trace_state: parent.and_then(|p| p.trace_state.clone()),
        }
    }

    /// A child span (an upstream attempt, an internal step): same trace and
    /// decision, this span as parent, a new span id from `random`.
    pub fn child(&self, random: u64) -> SpanContext {
        SpanContext {
            trace_id: self.trace_id,
            span_id: nonzero_span_id(random),
            parent_span_id: Some(self.span_id),
            sampled: self.sampled,
            trace_state: self.trace_state.clone(),
        }
    }

    /// The trace id in lowercase hex, as `traceparent` and the records show it.
    pub fn trace_id_hex(&self) -> [u8; 32] {
        let mut out = [0; 32];
        encode_hex(&self.trace_id, &mut out);
        out
    }

    /// The `traceparent` header naming this span as the parent of the next hop:
    /// `00-<trace id>-<span id>-<01 when sampled, else 00>`.
    pub fn traceparent(&self) -> [u8; TRACEPARENT_LEN] {
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        encode_hex(&self.trace_id, &mut out[3..35]);
        encode_hex(&self.span_id, &mut out[36..52]);
        if self.sampled {
            out[54] = b'1';
        }
        out
    }
}

fn new_trace_id(random: &mut impl FnMut() -> u64) -> TraceId {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&random().to_be_bytes());
    id[8..].copy_from_slice(&random().to_be_bytes());
    if id == [0; 16] {
        id[15] = 1;
    }
    id
}

fn new_span_id(random: &mut impl FnMut() -> u64) -> SpanId {
    nonzero_span_id(random())
}

fn nonzero_span_id(random: u64) -> SpanId {
    random.max(1).to_be_bytes()
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| *b != b' ' && *b != b'\t')
        .map_or(start, |i| i + 1);
    &v[start..end]
}

/// A lowercase hex digit's value (W3C allows only lowercase).
fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(high: u8, low: u8) -> Option<u8> {
    Some(hex_digit(high)? << 4 | hex_digit(low)?)
}

fn decode_hex(text: &[u8], out: &mut [u8]) -> Option<()> {
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = hex_byte(pair[0], pair[1])?;
    }
    Some(())
}

fn encode_hex(bytes: &[u8], out: &mut [u8]) {
    for (byte, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::SamplerPolicy;

    const INCOMING: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_a_valid_traceparent() {
        let p = RemoteParent::parse(INCOMING, Some(b"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"))
            .expect("valid");
        assert_eq!(
            p.trace_id,
            [
                0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
                0x47, 0x36
            ]
        );
        assert_eq!(p.span_id, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert!(p.sampled);
        assert_eq!(
            p.trace_state.as_ref().map(TraceState::as_str),
            Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
        );
        let unsampled = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(!RemoteParent::parse(unsampled, None).expect("valid").sampled);
    }

    #[test]
    fn the_trace_id_in_hex_is_the_one_traceparent_carries() {
        let ctx = SpanContext {
            trace_id: [
                0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
                0x47, 0x36,
            ],
            span_id: [1; 8],
            parent_span_id: None,
            sampled: true,
            trace_state: None,
        };
        assert_eq!(&ctx.trace_id_hex(), b"4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(&ctx.traceparent()[3..35], &ctx.trace_id_hex());
    }

    #[test]
    fn rejects_invalid_traceparents() {
        let bad: &[&[u8]] = &[
            b"",
            b"00-zz",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ];
        for v in bad {
            assert_eq!(
                RemoteParent::parse(v, Some(b"a=b")),
                None,
                "{}",
                String::from_utf8_lossy(v)
            );
        }
        let future = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later";
        assert!(RemoteParent::parse(future, None).is_some());
    }

    #[test]
    fn tracestate_is_bounded() {
        assert_eq!(
            TraceState::parse(b"  a=1 , b=2 ").map(|t| t.as_str().to_owned()),
            Some("a=1 , b=2".into())
        );
        let longest = format!("k={}", "v".repeat(TRACESTATE_MAX_LEN - 2));
        assert!(TraceState::parse(longest.as_bytes()).is_some());
        let too_long = format!("k={}", "v".repeat(TRACESTATE_MAX_LEN - 1));
        assert_eq!(TraceState::parse(too_long.as_bytes()), None);
        let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        assert_eq!(TraceState::parse(many.join(",").as_bytes()), None);
        for bad in [&b""[..], b"novalue", b"=v", b"k=", b"k=\x01"] {
            assert_eq!(TraceState::parse(bad), None);
        }
    }

    #[test]
    fn server_and_child_contexts() {
        let mut n = 0x1111_2222_3333_4444u64;
        let mut random = || {
            n = n.wrapping_add(1);
            n
        };
        let sampler = Sampler::new(SamplerPolicy::ParentBasedAlwaysOn, false, false);
        let parent = RemoteParent::parse(INCOMING, Some(b"a=b")).expect("valid");
        let server = SpanContext::server(Some(&parent), &sampler, &mut random);
        assert_eq!(server.trace_id, parent.trace_id);
        assert_eq!(server.parent_span_id, Some(parent.span_id));
        assert_ne!(server.span_id, parent.span_id);
        assert!(server.sampled);
        assert_eq!(server.trace_state, parent.trace_state);

        let child = server.child(random());
        assert_eq!(child.parent_span_id, Some(server.span_id));
        assert_eq!(child.trace_id, server.trace_id);
        let header = child.traceparent();
        let back = RemoteParent::parse(&header, None).expect("round trip");
        assert_eq!(back.trace_id, child.trace_id);
        assert_eq!(back.span_id, child.span_id);
        assert!(back.sampled);

        let root = SpanContext::server(None, &sampler, &mut random);
        assert_eq!(root.parent_span_id, None);
        assert_ne!(root.trace_id, [0; 16]);
        assert_eq!(server.child(0).span_id, [0, 0, 0, 0, 0, 0, 0, 1]);
        let off = Sampler::new(SamplerPolicy::AlwaysOff, false, false);
        let unsampled = SpanContext::server(None, &off, &mut random);
        assert_eq!(&unsampled.traceparent()[53..], b"00");
    }
}
