//! gRPC calls through the proxy phase: a call's deadline (`grpc-timeout`,
//! capped by the route), the status its answer carries, and the status the
//! gateway writes when a call breaks off. (Whether a request is a call is
//! `hypergate_core::http::is_grpc`, decided once in `Exchange::grpc`.)
//!
//! A gRPC call is an ordinary request to every phase; the proxy phase asks
//! this module for its deadline, streams it full duplex, and reads its
//! `grpc-status` for the call's outcome (see `Exchange::outcome`).
//!
//! Depends on `exchange` (the request view and its account) and `spec` (the
//! route's settings).

use crate::exchange::{Exchange, View};
use crate::routing::RequestInfo;
use crate::spec::Route;
pub use hypergate_core::http::is_grpc;
use hypergate_core::http::write_u64;
use std::time::{Duration, Instant};

/// A gRPC call's facts, fixed when it is forwarded.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    /// When the call must be over: the client's `grpc-timeout`, at most the
    /// route's `[routes.grpc] max_timeout`, from when its head arrived.
    pub deadline: Instant,
}

impl Call {
    /// The call `req` is, if it is a gRPC one (`ex.grpc`).
    pub fn of(req: &View<'_>, route: &Route, ex: &Exchange) -> Option<Call> {
        if !ex.grpc {
            return None;
        }
        let started = ex.started;
        let cap = route.grpc.max_timeout;
        let asked = req.header("grpc-timeout").and_then(parse_timeout);
        Some(Call {
            deadline: started + asked.map_or(cap, |t| t.min(cap)),
        })
    }

    /// Time left before the deadline (at least a millisecond, so a wait
    /// that starts at the deadline still ends).
    pub fn left(&self) -> Duration {
        self.deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    }

    /// Writes `grpc-timeout` with what is left of the deadline, in
    /// milliseconds (the upstream stops working on a call nobody waits for).
    pub fn write_timeout_header(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"grpc-timeout: ");
        // At most 8 digits (the protocol's limit): 99,999,999 ms is 27 hours.
        write_u64(out, (self.left().as_millis() as u64).min(99_999_999));
        out.extend_from_slice(b"m\r\n");
    }
}

/// Parses a `grpc-timeout` value: 1 to 8 digits and a unit (`H`, `M`, `S`,
/// `m`, `u`, `n`).
pub fn parse_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Parses a `grpc-status` value (a decimal code, 0 to 255; codes beyond 16
/// are kept as they are: the route's error set decides).
pub fn parse_status(value: &[u8]) -> Option<u8> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 3 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// The error label of a call that ended with `grpc-status` `code` (the
/// call record's `error`): `grpc_` and the code's name in lower case.
pub fn error_label(code: u8) -> &'static str {
    const LABELS: [&str; 18] = [
        "",
        "grpc_cancelled",
        "grpc_unknown",
        "grpc_invalid_argument",
        "grpc_deadline_exceeded",
        "grpc_not_found",
        "grpc_already_exists",
        "grpc_permission_denied",
        "grpc_resource_exhausted",
        "grpc_failed_precondition",
        "grpc_aborted",
        "grpc_out_of_range",
        "grpc_unimplemented",
        "grpc_internal",
        "grpc_unavailable",
        "grpc_data_loss",
        "grpc_unauthenticated",
        "grpc_other",
    ];
    LABELS[usize::from(code).min(LABELS.len() - 1)]
}

/// The end of a chunked response whose upstream broke off mid-call: the
/// last chunk with a `grpc-status` trailer, `DEADLINE_EXCEEDED` when the
/// call ran out of time, else `UNAVAILABLE` (the body was cut).
pub fn write_failed_trailers(out: &mut Vec<u8>, timed_out: bool) {
    out.extend_from_slice(if timed_out {
        &b"0\r\ngrpc-status: 4\r\ngrpc-message: the call's deadline passed\r\n\r\n"[..]
    } else {
        b"0\r\ngrpc-status: 14\r\ngrpc-message: the upstream broke off the call\r\n\r\n"
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypergate_core::http::is_grpc;

    #[test]
    fn timeouts_statuses_and_content_types() {
        assert_eq!(parse_timeout(b"100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout(b"999999999m"), None, "9 digits");
        assert_eq!(parse_timeout(b"10x"), None);
        assert_eq!(parse_timeout(b"m"), None);
        assert_eq!(parse_status(b"14"), Some(14));
        assert_eq!(parse_status(b" 0 "), Some(0));
        assert_eq!(parse_status(b"-1"), None);
        assert_eq!(parse_status(b"1000"), None);
        assert!(is_grpc(b"application/grpc"));
        assert!(is_grpc(b"application/grpc+proto"));
        assert!(is_grpc(b"Application/GRPC;charset=x"));
        assert!(!is_grpc(b"application/grpc-web"));
        assert!(!is_grpc(b"application/json"));
    }
}
