//! Wall-clock time as the records and the store keep it, and the cached clock
//! the request path reads.
//!
//! [`unix_ms`] reads the system clock: for control threads and start-up.
//! [`unix_ms_at`] turns a monotonic reading the caller already has (a
//! request's start or end) into wall-clock time from a per-thread anchor
//! that is re-read once a second, so a per-request wall-clock read costs no
//! clock call. Between re-reads it follows the monotonic clock: an NTP step
//! shows within a second.
//!
//! [`coarse_now`] is the monotonic reading for deadlines and bookkeeping on
//! the request path (timeouts, idle ages, ejection and budget windows): the
//! kernel's coarse clock, which costs no time-stamp-counter read. Latencies
//! are measured with `Instant::now()`.

use std::cell::Cell;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long an anchor serves before the system clock is read again.
const REANCHOR: Duration = Duration::from_secs(1);

thread_local! {
    /// (monotonic reading, wall-clock ms at that reading).
    static ANCHOR: Cell<Option<(Instant, u64)>> = const { Cell::new(None) };
}

/// How long a coarse-clock anchor serves before it is taken again.
const COARSE_REANCHOR: Duration = Duration::from_secs(1);

thread_local! {
    /// (precise reading, coarse reading taken with it).
    static COARSE_ANCHOR: Cell<Option<(Instant, Duration)>> = const { Cell::new(None) };
}

/// Now, as an `Instant`, from the kernel's coarse monotonic clock: a few
/// nanoseconds (the clock's page is read, no time-stamp counter; a request
/// takes about ten such readings for its timeouts), against a few tens for
/// `Instant::now()` in a VM. It lags the precise clock by up to one
/// scheduler tick (1 to 4 ms), so a deadline taken from it is that much
/// early or late: right for timeouts of seconds, wrong for latencies.
/// Anchored to a precise reading per thread, re-taken once a second.
pub fn coarse_now() -> Instant {
    let coarse = coarse_monotonic();
    COARSE_ANCHOR.with(|anchor| match anchor.get() {
        Some((t0, c0)) if coarse >= c0 && coarse - c0 < COARSE_REANCHOR => t0 + (coarse - c0),
        _ => {
            let fresh = (Instant::now(), coarse_monotonic());
            anchor.set(Some(fresh));
            fresh.0
        }
    })
}

/// `CLOCK_MONOTONIC_COARSE`, since boot.
fn coarse_monotonic() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant
    // Linux has had since 2.6.32, so the call cannot fail (a zero reading
    // would only re-anchor more often).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Wall-clock time in Unix milliseconds (0 before 1970), the time base of
/// calls, events, rollups and saved progress, read from the system.
pub fn unix_ms() -> u64 {
    #[allow(
        clippy::disallowed_methods,
        reason = "the one place that reads the system's wall clock"
    )]
    let now = SystemTime::now();
    now.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Wall-clock Unix milliseconds at `at`, a monotonic reading the caller
/// already has, from this thread's cached anchor (re-read when older than a
/// second).
pub fn unix_ms_at(at: Instant) -> u64 {
    ANCHOR.with(|anchor| {
        let (t0, ms0) = match anchor.get() {
            Some((t0, ms0)) if at.saturating_duration_since(t0) < REANCHOR => (t0, ms0),
            _ => {
                let fresh = (Instant::now(), unix_ms());
                anchor.set(Some(fresh));
                fresh
            }
        };
        if at >= t0 {
            ms0 + at.duration_since(t0).as_millis() as u64
        } else {
            ms0.saturating_sub(t0.duration_since(at).as_millis() as u64)
        }
    })
}

/// Wall-clock Unix seconds at `at` (see [`unix_ms_at`]).
pub fn unix_secs_at(at: Instant) -> u64 {
    unix_ms_at(at) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(
        clippy::disallowed_methods,
        reason = "a test thread lets time pass, so the anchor is re-taken between readings"
    )]
    fn the_coarse_clock_stays_within_a_tick_of_the_precise_one() {
        for _ in 0..3 {
            let before = Instant::now();
            let coarse = coarse_now();
            let after = Instant::now();
            // One tick is at most 10 ms (HZ=100); allow for that either way.
            let tick = Duration::from_millis(10);
            assert!(coarse + tick >= before && coarse <= after + tick);
            std::thread::sleep(Duration::from_millis(600));
        }
    }

    #[test]
    fn the_cached_clock_follows_the_system_clock() {
        let before = unix_ms();
        let cached = unix_ms_at(Instant::now());
        let after = unix_ms();
        assert!(
            before <= cached + 1 && cached <= after + 1,
            "{before} {cached} {after}"
        );
        // An earlier monotonic reading maps to an earlier wall-clock time.
        let past = Instant::now() - Duration::from_millis(300);
        let then = unix_ms_at(past);
        assert!(then + 290 <= unix_ms_at(Instant::now()), "{then}");
        // A reading past the anchor's second re-anchors and stays right.
        let later = Instant::now() + Duration::from_secs(5);
        let at_later = unix_ms_at(later);
        let expected = unix_ms() + 5000;
        assert!(at_later.abs_diff(expected) < 50, "{at_later} {expected}");
        assert_eq!(unix_secs_at(later), at_later / 1000);
    }
}
