//! Token and cost budgets shared by all shards: reserve before the call, settle after.
//!
//! Each (budget, key) has three windows (tokens per minute, nano-dollars per UTC
//! day and per UTC month). A window is one `AtomicU64` packing the window number
//! (high bits) and the amount used (low bits: 40 for tokens, 48 for a day's
//! nano-dollars, up to $281,474; 52 for a month's, up to $4,503,599; the window
//! numbers left, minutes, days and months since 1970, wrap after 31, 770 and
//! 341 years), so a reservation is one
//! compare-and-swap that checks `used + estimate <= limit` and a window rollover
//! resets the amount in the same step: no lock, and no shard can see a stale
//! window. Admission reserves the estimate on every window of every budget of the
//! route (releasing what it took if a later one refuses); settlement replaces the
//! estimate by the real figure. Because nothing is admitted beyond the limit, the
//! only overshoot possible is a call whose real usage exceeds its estimate.
//!
//! The map of keys is a `papaya` concurrent map (lock-free reads); one entry per
//! consumer (or per route) and budget.

use super::spec::BudgetSpec;
use hypergate_core::config::ai::BudgetScope;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Amount bits of the tokens-per-minute window.
const TOKEN_BITS: u32 = 40;
/// Amount bits of the cost-per-day window (nano-dollars).
const DAY_BITS: u32 = 48;
/// Amount bits of the cost-per-month window (nano-dollars).
const MONTH_BITS: u32 = 52;

// The limits the config accepts fit the windows.
const _: () = assert!(super::spec::MAX_COST_PER_DAY * 1e9 < (1u64 << DAY_BITS) as f64);
const _: () = assert!(super::spec::MAX_COST_PER_MONTH * 1e9 < (1u64 << MONTH_BITS) as f64);

/// Which window refused a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Tokens per minute.
    Minute,
    /// Cost per UTC day.
    Day,
    /// Cost per UTC month.
    Month,
}

impl Window {
    /// Label for metrics and errors.
    pub fn label(self) -> &'static str {
        match self {
            Window::Minute => "tokens_per_minute",
            Window::Day => "cost_per_day",
            Window::Month => "cost_per_month",
        }
    }
}

/// Window numbers for a Unix time in seconds.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    minute: u64,
    day: u64,
    month: u64,
    secs: u64,
    /// Seconds until the current minute ends.
    pub minute_left: u64,
}

impl Clock {
    /// Windows at `unix_secs`.
    pub fn at(unix_secs: u64) -> Clock {
        let day = unix_secs / 86_400;
        Clock {
            minute: unix_secs / 60,
            day,
            month: month_number(day),
            secs: unix_secs,
            minute_left: 60 - unix_secs % 60,
        }
    }

    /// Minutes since the Unix epoch.
    pub fn minute(&self) -> u64 {
        self.minute
    }

    /// Days since the Unix epoch.
    pub fn day(&self) -> u64 {
        self.day
    }

    /// Months since January 1970.
    pub fn month(&self) -> u64 {
        self.month
    }

    /// Seconds until the current UTC day ends.
    pub fn day_left(&self) -> u64 {
        86_400 - self.secs % 86_400
    }

    /// Windows now.
    pub fn now() -> Clock {
        Clock::at(hypergate_core::clock::unix_secs_at(
            std::time::Instant::now(),
        ))
    }
}

/// Months since 1970-01 for a day number (civil calendar, proleptic Gregorian).
fn month_number(days: u64) -> u64 {
    // Howard Hinnant's days-to-civil algorithm (public domain), month part only.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (y * 12 + m - 1 - 1970 * 12).max(0) as u64
}

/// One window's counter: the window number above `BITS`, the amount below.
#[derive(Default, Debug)]
struct Counter<const BITS: u32>(AtomicU64);

impl<const BITS: u32> Counter<BITS> {
    const AMOUNT_MASK: u64 = (1 << BITS) - 1;
    const WINDOW_MASK: u64 = (1 << (64 - BITS)) - 1;

    fn unpack(v: u64) -> (u64, u64) {
        (v >> BITS, v & Self::AMOUNT_MASK)
    }

    /// Adds `amount` if the total stays within `limit`.
    fn reserve(&self, window: u64, amount: u64, limit: u64) -> bool {
        let w = window & Self::WINDOW_MASK;
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            let (cw, used) = Self::unpack(cur);
            let used = if cw == w { used } else { 0 };
            if used + amount > limit {
                return false;
            }
            let next = (w << BITS) | (used + amount).min(Self::AMOUNT_MASK);
            match self
                .0
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(v) => cur = v,
            }
        }
    }

    /// Replaces a reservation of `reserved` made in `window` by `actual`. If the
    /// window has rolled over since, `actual` is charged to the new one.
    fn settle(&self, window: u64, reserved: u64, actual: u64, now_window: u64) {
        let (w, nw) = (window & Self::WINDOW_MASK, now_window & Self::WINDOW_MASK);
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            let (cw, used) = Self::unpack(cur);
            let next_used = if cw == w {
                used.saturating_sub(reserved) + actual
            } else if cw == nw {
                used + actual
            } else {
                actual
            };
            let next_w = if cw == w || cw == nw { cw } else { nw };
            let next = (next_w << BITS) | next_used.min(Self::AMOUNT_MASK);
            match self
                .0
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(v) => cur = v,
            }
        }
    }

    fn used(&self, window: u64) -> u64 {
        let (cw, used) = Self::unpack(self.0.load(Ordering::Relaxed));
        if cw == window & Self::WINDOW_MASK {
            used
        } else {
            0
        }
    }
}

/// The three windows of one (budget, key).
#[derive(Default, Debug)]
struct Account {
    tokens: Counter<TOKEN_BITS>,
    day: Counter<DAY_BITS>,
    month: Counter<MONTH_BITS>,
}

/// All budget accounts of the process.
#[derive(Default)]
pub struct BudgetBook {
    accounts: papaya::HashMap<(Arc<str>, Arc<str>), Arc<Account>>,
}

/// What one admitted call holds until it settles.
#[derive(Debug)]
pub struct Reservation {
    held: Vec<(Arc<Account>, Arc<BudgetSpec>)>,
    clock: Clock,
    tokens: u64,
    cost: u64,
}

/// A refused admission.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// Budget name.
    pub budget: Arc<str>,
    /// Window that is exhausted.
    pub window: Window,
    /// Seconds until it resets.
    pub retry_after: u64,
}

/// Budget figures for `/stats`-style reporting.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AccountView {
    /// Budget name.
    pub budget: String,
    /// Consumer or route.
    pub key: String,
    /// Tokens this minute.
    pub tokens_this_minute: u64,
    /// Dollars today.
    pub cost_today: f64,
    /// Dollars this month.
    pub cost_this_month: f64,
}

impl BudgetBook {
    /// A new, empty book.
    pub fn new() -> Arc<BudgetBook> {
        Arc::new(BudgetBook::default())
    }

    fn account(&self, budget: &BudgetSpec, key: &Arc<str>) -> Arc<Account> {
        let map = self.accounts.pin();
        let k = (budget.name.clone(), key.clone());
        if let Some(a) = map.get(&k) {
            return a.clone();
        }
        map.get_or_insert_with(k, || Arc::new(Account::default()))
            .clone()
    }

    /// Reserves `tokens` and `cost` (nano-dollars) on every budget. `consumer`
    /// and `route` name the keys for consumer- and route-scoped budgets.
    pub fn admit(
        &self,
        budgets: &[Arc<BudgetSpec>],
        consumer: &Arc<str>,
        route: &Arc<str>,
        tokens: u64,
        cost: u64,
        clock: Clock,
    ) -> Result<Reservation, Refusal> {
        let mut res = Reservation {
            held: Vec::with_capacity(budgets.len()),
            clock,
            tokens,
            cost,
        };
        for b in budgets {
            let key = match b.scope {
                BudgetScope::Consumer => consumer,
                BudgetScope::Route => route,
            };
            let acc = self.account(b, key);
            let refuse = |window, retry_after| Refusal {
                budget: b.name.clone(),
                window,
                retry_after,
            };
            if let Some(limit) = b.tokens_per_minute {
                if !acc.tokens.reserve(clock.minute, tokens, limit) {
                    self.release(&mut res);
                    return Err(refuse(Window::Minute, clock.minute_left));
                }
            }
            if let Some(limit) = b.cost_per_day {
                if !acc.day.reserve(clock.day, cost, limit) {
                    if b.tokens_per_minute.is_some() {
                        acc.tokens.settle(clock.minute, tokens, 0, clock.minute);
                    }
                    self.release(&mut res);
                    return Err(refuse(Window::Day, clock.day_left()));
                }
            }
            if let Some(limit) = b.cost_per_month {
                if !acc.month.reserve(clock.month, cost, limit) {
                    if b.tokens_per_minute.is_some() {
                        acc.tokens.settle(clock.minute, tokens, 0, clock.minute);
                    }
                    if b.cost_per_day.is_some() {
                        acc.day.settle(clock.day, cost, 0, clock.day);
                    }
                    self.release(&mut res);
                    return Err(refuse(Window::Month, 86_400));
                }
            }
            res.held.push((acc, b.clone()));
        }
        Ok(res)
    }

    fn release(&self, res: &mut Reservation) {
        let held = std::mem::take(&mut res.held);
        for (acc, b) in held {
            settle_one(&acc, &b, res, 0, 0, res.clock);
        }
    }

    /// Replaces the reservation by the real figures.
    pub fn settle(&self, mut res: Reservation, tokens: u64, cost: u64) {
        let now = Clock::now();
        let held = std::mem::take(&mut res.held);
        for (acc, b) in held {
            settle_one(&acc, &b, &res, tokens, cost, now);
        }
    }

    /// Current figures of every account.
    pub fn view(&self) -> Vec<AccountView> {
        let clock = Clock::now();
        let map = self.accounts.pin();
        let mut v: Vec<AccountView> = map
            .iter()
            .map(|((b, k), a)| AccountView {
                budget: b.to_string(),
                key: k.to_string(),
                tokens_this_minute: a.tokens.used(clock.minute),
                cost_today: a.day.used(clock.day) as f64 / 1e9,
                cost_this_month: a.month.used(clock.month) as f64 / 1e9,
            })
            .collect();
        v.sort_by(|a, b| (&a.budget, &a.key).cmp(&(&b.budget, &b.key)));
        v
    }
}

fn settle_one(
    acc: &Account,
    b: &BudgetSpec,
    res: &Reservation,
    tokens: u64,
    cost: u64,
    now: Clock,
) {
    if b.tokens_per_minute.is_some() {
        acc.tokens
            .settle(res.clock.minute, res.tokens, tokens, now.minute);
    }
    if b.cost_per_day.is_some() {
        acc.day.settle(res.clock.day, res.cost, cost, now.day);
    }
    if b.cost_per_month.is_some() {
        acc.month.settle(res.clock.month, res.cost, cost, now.month);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(tpm: Option<u64>, day: Option<u64>) -> Arc<BudgetSpec> {
        Arc::new(BudgetSpec {
            name: "b".into(),
            scope: BudgetScope::Consumer,
            tokens_per_minute: tpm,
            cost_per_day: day,
            cost_per_month: None,
            default_max_tokens: 100,
            backend: Default::default(),
            failure_mode: Default::default(),
        })
    }

    #[test]
    fn month_numbers_follow_the_calendar() {
        assert_eq!(month_number(0), 0); // 1970-01-01
        assert_eq!(month_number(31), 1); // 1970-02-01
        assert_eq!(month_number(30), 0); // 1970-01-31
                                         // 2026-11-27 is day 20,784: month (2026-1970)*12 + 10.
        assert_eq!(month_number(20_784), 56 * 12 + 10);
        assert_eq!(month_number(20_788), 56 * 12 + 11); // 2026-12-01
    }

    #[test]
    fn admission_stops_at_the_limit_and_settlement_frees_the_rest() {
        let book = BudgetBook::new();
        let budgets = [spec(Some(1000), None)];
        let (c, r): (Arc<str>, Arc<str>) = ("alice".into(), "llm".into());
        let clock = Clock::at(6_000);
        let a = book.admit(&budgets, &c, &r, 600, 0, clock).unwrap();
        let refused = book.admit(&budgets, &c, &r, 600, 0, clock).unwrap_err();
        assert_eq!(refused.window, Window::Minute);
        // Another consumer has its own account.
        let other: Arc<str> = "bob".into();
        book.admit(&budgets, &other, &r, 600, 0, clock).unwrap();
        // The call used 100 tokens, not 600: 900 left.
        book.settle(a, 100, 0);
        assert!(book.admit(&budgets, &c, &r, 900, 0, Clock::now()).is_ok());
    }

    #[test]
    fn a_refused_budget_releases_what_earlier_ones_took() {
        let book = BudgetBook::new();
        let first = spec(Some(1000), None);
        let second = Arc::new(BudgetSpec {
            name: "money".into(),
            ..*spec(None, Some(50))
        });
        let (c, r): (Arc<str>, Arc<str>) = ("alice".into(), "llm".into());
        let clock = Clock::now();
        let both = [first.clone(), second];
        assert!(book.admit(&both, &c, &r, 500, 100, clock).is_err());
        // The 500 tokens were given back: a full-size reservation still fits.
        assert!(book.admit(&[first], &c, &r, 1000, 0, clock).is_ok());
    }

    #[test]
    fn concurrent_admissions_never_exceed_the_limit() {
        let book = BudgetBook::new();
        let budgets = [spec(Some(10_000), None)];
        let clock = Clock::now();
        let admitted = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let (c, r): (Arc<str>, Arc<str>) = ("alice".into(), "llm".into());
                    for _ in 0..100 {
                        if book.admit(&budgets, &c, &r, 70, 0, clock).is_ok() {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        // 10,000 / 70 = 142 reservations fit, and exactly that many were admitted.
        assert_eq!(admitted.load(Ordering::Relaxed), 142);
    }

    #[test]
    fn a_day_window_holds_large_budgets_in_nano_dollars() {
        // $2,000 is 2 x 10^12 nano-dollars, past 40 bits.
        let c = Counter::<DAY_BITS>::default();
        let limit = 2_000 * 1_000_000_000;
        assert!(c.reserve(20_000, limit - 60, limit));
        assert!(c.reserve(20_000, 60, limit));
        assert!(!c.reserve(20_000, 1, limit));
        assert_eq!(c.used(20_000), limit);
    }

    #[test]
    fn a_new_window_starts_from_zero() {
        let c = Counter::<TOKEN_BITS>::default();
        assert!(c.reserve(5, 90, 100));
        assert!(!c.reserve(5, 20, 100));
        assert!(c.reserve(6, 100, 100));
        assert_eq!(c.used(6), 100);
        assert_eq!(c.used(5), 0);
    }
}
