//! The one breaker: consecutive failures open it for a while, a success
//! closes it. Outlier detection ejects an endpoint with it, and the LLM
//! gateway takes a failing provider/model target out of its plans with it.
//!
//! Per shard and single-threaded (`Cell`s); depends on nothing but `std`.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// Breaker state of one endpoint or target on one shard.
#[derive(Debug, Default)]
pub struct Breaker {
    failures: Cell<u32>,
    open_until: Cell<Option<Instant>>,
    openings: Cell<u32>,
}

/// When a breaker opens and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Trip {
    /// Consecutive failures that open it; 0 never opens it.
    pub threshold: u32,
    /// First open time, doubled on each consecutive opening.
    pub base: Duration,
    /// Longest open time.
    pub max: Duration,
}

impl Breaker {
    /// Whether it is open at `now` (the endpoint or target is not to be used).
    pub fn is_open(&self, now: Instant) -> bool {
        self.open_until.get().is_some_and(|t| t > now)
    }

    /// A success: the failure count starts over and an open breaker closes.
    pub fn success(&self) {
        self.failures.set(0);
        if self.open_until.get().is_some() {
            self.open_until.set(None);
            self.openings.set(0);
        }
    }

    /// A failure. Failures while open are not counted. After `trip.threshold`
    /// consecutive ones, and when `may_open` agrees (outlier detection keeps a
    /// share of a cluster in service), it opens for `base` doubled per earlier
    /// consecutive opening, at most `max`; returns that time when it opened.
    pub fn failure(
        &self,
        trip: Trip,
        now: Instant,
        may_open: impl FnOnce() -> bool,
    ) -> Option<Duration> {
        if trip.threshold == 0 || self.is_open(now) {
            return None;
        }
        let failures = self.failures.get() + 1;
        self.failures.set(failures);
        if failures < trip.threshold || !may_open() {
            return None;
        }
        let shift = self.openings.get().min(16);
        let open_for = trip.base.saturating_mul(1 << shift).min(trip.max);
        self.openings.set(self.openings.get() + 1);
        self.failures.set(0);
        self.open_until.set(Some(now + open_for));
        Some(open_for)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRIP: Trip = Trip {
        threshold: 2,
        base: Duration::from_secs(10),
        max: Duration::from_secs(25),
    };

    #[test]
    fn opens_after_consecutive_failures_and_backs_off() {
        let b = Breaker::default();
        let now = Instant::now();
        assert_eq!(b.failure(TRIP, now, || true), None);
        assert_eq!(b.failure(TRIP, now, || true), Some(Duration::from_secs(10)));
        assert!(b.is_open(now));
        // Failures while open do not count.
        assert_eq!(b.failure(TRIP, now, || true), None);
        let later = now + Duration::from_secs(11);
        assert!(!b.is_open(later));
        b.failure(TRIP, later, || true);
        assert_eq!(
            b.failure(TRIP, later, || true),
            Some(Duration::from_secs(20))
        );
        let later = later + Duration::from_secs(21);
        b.failure(TRIP, later, || true);
        assert_eq!(
            b.failure(TRIP, later, || true),
            Some(Duration::from_secs(25)),
            "capped at max"
        );
        b.success();
        assert!(!b.is_open(later));
        b.failure(TRIP, later, || true);
        assert_eq!(
            b.failure(TRIP, later, || true),
            Some(Duration::from_secs(10)),
            "a success resets the backoff"
        );
    }

    #[test]
    fn a_success_between_failures_keeps_it_closed_and_may_open_can_refuse() {
        let b = Breaker::default();
        let now = Instant::now();
        b.failure(TRIP, now, || true);
        b.success();
        assert_eq!(b.failure(TRIP, now, || true), None);
        assert_eq!(b.failure(TRIP, now, || false), None);
        assert!(!b.is_open(now));
        let never = Trip {
            threshold: 0,
            ..TRIP
        };
        for _ in 0..10 {
            assert_eq!(b.failure(never, now, || true), None);
        }
    }
}
