//! GCRA (generic cell rate algorithm) on atomics: take up to `k` tokens with one CAS per window.
//!
//! A window's whole state is its *theoretical arrival time* (TAT), nanoseconds on
//! the process clock ([`now_ns`]), in one `AtomicU64`. With emission interval `t`
//! (the window length divided by its request count) and capacity `cap = burst × t`:
//! - the *debt* at `now` is `max(tat - now, 0)`; tokens available are `(cap - debt) / t`;
//! - taking `g` tokens sets `tat = max(tat, now) + g × t`;
//! - a TAT at or before `now` is a full bucket, the same as a fresh one (TAT 0), so
//!   such a key can be forgotten.
//!
//! Tokens taken together occupy consecutive slots of `t` ending at the TAT written
//! by the take (`tat_after`). Giving back `u` unused tokens removes only the part
//! of their slots still in the future, `min(u × t, tat_after - now)`: slots already
//! in the past were refilled by time anyway, so a give-back never creates
//! capacity that plain GCRA would not have had.
//!
//! Several windows: a request must fit all of them. [`take`] takes from window 0,
//! then 1, ...; when a window grants fewer tokens than asked, the excess is given
//! back to the windows already taken from (exactly: those slots were just taken).
//!
//! Deletion: window 0 of a key can be swapped to [`DEAD`] by the idle sweeper
//! (only while every window has been full for a grace period). A taker that
//! meets `DEAD` looks the key up again; a give-back to a dead key is a no-op.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Marks a key state removed by the sweeper (stored in window 0).
pub(crate) const DEAD: u64 = u64::MAX;

/// Most windows in one policy (kept inline, no per-key allocation).
pub const MAX_WINDOWS: usize = 4;

/// Nanoseconds on the process's monotonic clock, starting at 1 (0 is "never").
pub(crate) fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    epoch.elapsed().as_nanos() as u64 + 1
}

/// One window's GCRA parameters, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Gcra {
    /// Emission interval: nanoseconds per token (rounded up, so never faster than configured).
    pub t: u64,
    /// Bucket depth in nanoseconds: `burst × t`.
    pub cap: u64,
}

impl Gcra {
    /// Tokens available at `now` for a window whose TAT is `tat`.
    pub fn available(&self, tat: u64, now: u64) -> u64 {
        self.cap.saturating_sub(tat.saturating_sub(now)) / self.t
    }

    /// Nanoseconds from `now` until one token is available.
    pub fn wait_one(&self, tat: u64, now: u64) -> u64 {
        let debt = tat.saturating_sub(now);
        (debt + self.t).saturating_sub(self.cap)
    }
}

/// Result of taking from one window.
#[derive(Debug, Clone, Copy)]
struct TakeOne {
    granted: u64,
    /// TAT after the take (or the TAT seen, when nothing was granted).
    tat: u64,
}

/// The key was deleted by the sweeper; look it up again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dead;

fn take_one(cell: &AtomicU64, w: &Gcra, want: u64, now: u64) -> Result<TakeOne, Dead> {
    let mut cur = cell.load(Ordering::Acquire);
    loop {
        if cur == DEAD {
            return Err(Dead);
        }
        let base = cur.max(now);
        let granted = want.min(w.available(cur, now));
        if granted == 0 {
            return Ok(TakeOne { granted, tat: cur });
        }
        let new = base + granted * w.t;
        match cell.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Ok(TakeOne { granted, tat: new }),
            Err(seen) => cur = seen,
        }
    }
}

/// Gives back up to `unused` tokens whose slots end at `tat_after`; returns the
/// nanoseconds of debt removed (0 when their slots are already in the past).
pub(crate) fn give_back(cell: &AtomicU64, w: &Gcra, unused: u64, tat_after: u64, now: u64) -> u64 {
    let ret = unused
        .saturating_mul(w.t)
        .min(tat_after.saturating_sub(now));
    if ret == 0 {
        return 0;
    }
    let mut cur = cell.load(Ordering::Acquire);
    loop {
        if cur == DEAD || cur <= now {
            return 0;
        }
        let new = cur.saturating_sub(ret).max(now);
        match cell.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return cur - new,
            Err(seen) => cur = seen,
        }
    }
}

/// What [`take`] did across all windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Taken {
    /// Tokens granted in every window (0: limited).
    pub granted: u64,
    /// Per window: the TAT after the take (where the granted slots end); when
    /// nothing was granted, the TAT seen.
    pub tat: [u64; MAX_WINDOWS],
    /// When `granted == 0`: nanoseconds until the limiting window has a token.
    pub wait: u64,
}

/// Takes up to `want` tokens from every window, all-or-nothing per token: the
/// grant is the smallest any window allows, and the excess taken from earlier
/// windows is given back.
pub(crate) fn take(
    cells: &[AtomicU64],
    windows: &[Gcra],
    want: u64,
    now: u64,
) -> Result<Taken, Dead> {
    let mut out = Taken {
        granted: want,
        tat: [0; MAX_WINDOWS],
        wait: 0,
    };
    for (i, (cell, w)) in cells.iter().zip(windows).enumerate() {
        let one = match take_one(cell, w, out.granted, now) {
            Ok(one) => one,
            Err(Dead) => {
                roll_back(cells, windows, &mut out.tat, i, out.granted, now);
                return Err(Dead);
            }
        };
        if one.granted < out.granted {
            roll_back(
                cells,
                windows,
                &mut out.tat,
                i,
                out.granted - one.granted,
                now,
            );
            out.granted = one.granted;
        }
        out.tat[i] = one.tat;
        if out.granted == 0 {
            out.wait = w.wait_one(one.tat, now);
            // Report the TAT seen in the remaining windows too (for headers).
            for (j, (cell, _)) in cells.iter().zip(windows).enumerate().skip(i + 1) {
                out.tat[j] = cell.load(Ordering::Relaxed);
            }
            return Ok(out);
        }
    }
    Ok(out)
}

/// Gives `excess` just-taken tokens back to windows `0..upto`.
fn roll_back(
    cells: &[AtomicU64],
    windows: &[Gcra],
    tat: &mut [u64; MAX_WINDOWS],
    upto: usize,
    excess: u64,
    now: u64,
) {
    for j in 0..upto {
        give_back(&cells[j], &windows[j], excess, tat[j], now);
        tat[j] = tat[j].saturating_sub(excess * windows[j].t);
    }
}

/// Swaps window 0 to [`DEAD`] if every window has been full for `grace` ns.
/// Windows `1..` are checked first and window 0 last with a CAS, so a taker that
/// got a token from window 0 before the swap makes the swap fail, and one that
/// comes after sees `DEAD` and never touches the other windows.
pub(crate) fn try_kill(cells: &[AtomicU64], now: u64, grace: u64) -> bool {
    let idle = |v: u64| v != DEAD && v.saturating_add(grace) <= now;
    if !cells[1..].iter().all(|c| idle(c.load(Ordering::SeqCst))) {
        return false;
    }
    let first = cells[0].load(Ordering::SeqCst);
    idle(first)
        && cells[0]
            .compare_exchange(first, DEAD, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;

    fn win(requests: u64, per: u64, burst: u64) -> Gcra {
        let t = per.div_ceil(requests);
        Gcra { t, cap: burst * t }
    }

    fn cells(n: usize) -> Vec<AtomicU64> {
        (0..n).map(|_| AtomicU64::new(0)).collect()
    }

    #[test]
    fn burst_then_refill_at_the_rate() {
        let w = [win(10, S, 5)];
        let c = cells(1);
        let now = 100 * S;
        // A fresh bucket holds the burst, and not one more.
        assert_eq!(take(&c, &w, 100, now).unwrap().granted, 5);
        let limited = take(&c, &w, 1, now).unwrap();
        assert_eq!(limited.granted, 0);
        assert_eq!(limited.wait, 100 * MS);
        // One token per 100 ms afterwards.
        assert_eq!(take(&c, &w, 1, now + 99 * MS).unwrap().granted, 0);
        assert_eq!(take(&c, &w, 1, now + 100 * MS).unwrap().granted, 1);
        assert_eq!(take(&c, &w, 5, now + 350 * MS).unwrap().granted, 2);
        // After a long idle the bucket is full again, never fuller.
        assert_eq!(take(&c, &w, 100, now + 60 * S).unwrap().granted, 5);
    }

    #[test]
    fn admissions_over_a_period_are_rate_times_period_plus_burst() {
        let w = [win(100, S, 20)];
        let c = cells(1);
        let start = 10 * S;
        let mut admitted = 0;
        // One attempt per 1 ms for 10 s: 10 000 attempts.
        for i in 0..10_000u64 {
            admitted += take(&c, &w, 1, start + i * MS).unwrap().granted;
        }
        // 20 (burst) + 100/s × 9.999 s.
        assert!((1018..=1020).contains(&admitted), "{admitted}");
    }

    #[test]
    fn multi_window_rolls_back_the_windows_that_said_yes() {
        // 10 per second, but only 3 per minute.
        let w = [win(10, S, 10), win(3, 60 * S, 3)];
        let c = cells(2);
        let now = S;
        let got = take(&c, &w, 5, now).unwrap();
        assert_eq!(got.granted, 3, "the minute window allows 3");
        // The second window's refusal gave the 2 extra back to the first:
        // the first window holds exactly 3 tokens of debt.
        assert_eq!(c[0].load(Ordering::Relaxed), now + 3 * w[0].t);
        assert_eq!(got.tat[0], now + 3 * w[0].t);
        let limited = take(&c, &w, 1, now).unwrap();
        assert_eq!(limited.granted, 0);
        assert_eq!(
            c[0].load(Ordering::Relaxed),
            now + 3 * w[0].t,
            "fully rolled back"
        );
        assert_eq!(
            limited.wait,
            20 * S,
            "a minute-window token comes back in 20 s"
        );
    }

    #[test]
    fn give_back_returns_only_future_slots() {
        let w = [win(10, S, 10)];
        let c = cells(1);
        let now = S;
        let got = take(&c, &w, 5, now).unwrap();
        assert_eq!(got.tat[0], now + 500 * MS);
        // 3 unused, 100 ms later: all three slots are still in the future.
        assert_eq!(
            give_back(&c[0], &w[0], 3, got.tat[0], now + 100 * MS),
            300 * MS
        );
        assert_eq!(c[0].load(Ordering::Relaxed), now + 200 * MS);
        // A lease whose slots already passed gives nothing back.
        let c2 = cells(1);
        let got = take(&c2, &w, 5, now).unwrap();
        assert_eq!(give_back(&c2[0], &w[0], 5, got.tat[0], now + 600 * MS), 0);
        // Partly passed: only the future part.
        let c3 = cells(1);
        let got = take(&c3, &w, 5, now).unwrap();
        assert_eq!(
            give_back(&c3[0], &w[0], 5, got.tat[0], now + 300 * MS),
            200 * MS
        );
        assert_eq!(c3[0].load(Ordering::Relaxed), now + 300 * MS);
    }

    #[test]
    fn give_back_after_others_took_keeps_their_tokens() {
        let w = [win(10, S, 10)];
        let c = cells(1);
        let now = S;
        let mine = take(&c, &w, 4, now).unwrap();
        let theirs = take(&c, &w, 6, now).unwrap();
        assert_eq!(theirs.granted, 6);
        assert_eq!(take(&c, &w, 1, now).unwrap().granted, 0);
        give_back(&c[0], &w[0], 4, mine.tat[0], now);
        // Exactly my 4 are available again, theirs stay taken.
        assert_eq!(take(&c, &w, 10, now).unwrap().granted, 4);
    }

    #[test]
    fn idle_keys_can_be_killed_and_takers_see_it() {
        let w = [win(10, S, 10), win(100, 60 * S, 100)];
        let c = cells(2);
        let now = S;
        take(&c, &w, 1, now).unwrap();
        // Window 0 is full again at now + 100 ms, window 1 (600 ms slots) at now + 600 ms.
        assert!(!try_kill(&c, now + 50 * MS, 0), "not full yet");
        assert!(
            !try_kill(&c, now + 300 * MS, 0),
            "the minute window still holds the key"
        );
        assert!(
            !try_kill(&c, now + 1_500 * MS, S),
            "full, but not for the grace period"
        );
        assert!(try_kill(&c, now + 1_600 * MS, S));
        assert!(!try_kill(&c, now + 2 * S, S), "already dead");
        assert_eq!(take(&c, &w, 1, now + 3 * S), Err(Dead));
        assert_eq!(give_back(&c[0], &w[0], 1, now + 10 * S, now + 3 * S), 0);
    }

    #[test]
    fn concurrent_takers_never_exceed_the_budget() {
        let w = [win(1_000, S, 1_000)];
        let c = std::sync::Arc::new(cells(1));
        let now = S;
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    let mut n = 0;
                    for _ in 0..1_000 {
                        n += take(&c, &w, 3, now).unwrap().granted;
                    }
                    n
                })
            })
            .collect();
        let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 1_000);
    }
}
