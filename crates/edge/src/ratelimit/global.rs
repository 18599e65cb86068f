//! Process-wide rate-limit state: policy buckets in lock-free maps, counters,
//! the idle-key sweeper and the Redis worker handle.
//!
//! Policies are published in an `ArcSwap` registry keyed by name; a reload
//! ([`RateLimiter::install`]) reuses the state of every policy whose buckets are
//! defined the same way (key, backend, windows), so their keys keep their TATs.
//! Shards resolve a policy to its state once per policy object and then only
//! touch the state's `papaya` map (reads are wait-free; inserts and CAS on the
//! per-window `AtomicU64`s are lock-free). The `Mutex` here guards `install`
//! and first-use registration only, never a request.

use super::gcra::{self, Gcra, MAX_WINDOWS};
use super::policy::{BucketSpec, RateBackend, RateLimitPolicy};
use super::redis::{RedisHandle, RedisStats};
use super::KeyDigest;
use crate::config::edge::RedisConfig;
use arc_swap::{ArcSwap, ArcSwapOption};
use crossbeam_utils::CachePadded;
use papaya::Guard;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
#[allow(clippy::disallowed_types, reason = "see RateLimiter::install")]
use std::sync::Mutex;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// A key is deleted once every window has been full for this long.
pub(crate) const IDLE_GRACE_NS: u64 = 1_000_000_000;
/// How often the sweeper runs.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Counter slots per policy (shard index modulo this); one writer each up to 64 shards.
const COUNTER_SLOTS: usize = 64;

/// One key's buckets. For local policies, window TATs (ns). For Redis policies,
/// `cells[0]` is when the key's Redis buckets are full again (ns), for expiry.
pub(crate) struct KeyState {
    pub cells: [AtomicU64; MAX_WINDOWS],
}

impl KeyState {
    fn new() -> KeyState {
        KeyState {
            cells: Default::default(),
        }
    }

    fn is_dead(&self) -> bool {
        self.cells[0].load(Ordering::Acquire) == gcra::DEAD
    }
}

/// Per-shard counter slot (written by one shard with relaxed atomics).
#[derive(Default)]
pub(crate) struct CounterSlot {
    pub admitted: AtomicU64,
    pub limited: AtomicU64,
    pub failed_open: AtomicU64,
    pub failed_closed: AtomicU64,
    pub overflow: AtomicU64,
    pub leases: AtomicU64,
}

/// Selects one counter of a slot.
type CounterField = fn(&CounterSlot) -> &AtomicU64;

/// Counters of one policy name; they survive reloads that change the policy.
pub(crate) struct PolicyCounters {
    slots: Box<[CachePadded<CounterSlot>]>,
    expired: AtomicU64,
}

impl PolicyCounters {
    fn new() -> PolicyCounters {
        PolicyCounters {
            slots: (0..COUNTER_SLOTS).map(|_| CachePadded::default()).collect(),
            expired: AtomicU64::new(0),
        }
    }

    /// The slot a shard writes to.
    pub fn slot(&self, shard: usize) -> &CounterSlot {
        &self.slots[shard % COUNTER_SLOTS]
    }

    fn sum(&self, f: impl Fn(&CounterSlot) -> &AtomicU64) -> u64 {
        self.slots
            .iter()
            .map(|s| f(s).load(Ordering::Relaxed))
            .sum()
    }
}

/// Where a key's tokens come from.
pub(crate) enum Bucket<'g> {
    /// Its own bucket.
    Key(&'g KeyState),
    /// `max_keys` reached: the policy's shared overflow bucket.
    Overflow,
}

/// One policy's buckets.
pub(crate) struct PolicyState {
    /// Unique per state object (shards key their lease tables by it).
    pub id: u64,
    pub name: Arc<str>,
    spec: BucketSpec,
    pub gcra: [Gcra; MAX_WINDOWS],
    pub windows: usize,
    keys: papaya::HashMap<KeyDigest, KeyState>,
    overflow: KeyState,
    tracked: AtomicUsize,
    max_keys: AtomicUsize,
    pub counters: Arc<PolicyCounters>,
    /// Redis key prefix: `hypergate:rl:<name>:<spec hash>:`.
    pub redis_prefix: Box<[u8]>,
    /// Longest time a bucket takes to fill up (largest `cap`), ns.
    pub longest_fill_ns: u64,
}

impl PolicyState {
    fn new(id: u64, policy: &RateLimitPolicy, counters: Arc<PolicyCounters>) -> PolicyState {
        let spec = policy.bucket_spec();
        // Stable across processes (no random seed): gateways with the same policy share Redis keys.
        let spec_hash = xxhash_rust::xxh3::xxh3_64(format!("{spec:?}").as_bytes());
        PolicyState {
            id,
            name: policy.name.clone(),
            gcra: policy.gcra,
            windows: policy.windows.len(),
            keys: papaya::HashMap::new(),
            overflow: KeyState::new(),
            tracked: AtomicUsize::new(0),
            max_keys: AtomicUsize::new(policy.max_keys),
            counters,
            redis_prefix: format!("hypergate:rl:{}:{:016x}:", policy.name, spec_hash)
                .into_bytes()
                .into(),
            longest_fill_ns: policy.gcra().iter().map(|g| g.cap).max().unwrap_or(0),
            spec,
        }
    }

    /// Keys tracked now.
    pub fn tracked(&self) -> usize {
        self.tracked.load(Ordering::Relaxed)
    }

    /// Finds or creates `key`'s bucket; the overflow bucket once `max_keys` are tracked.
    pub fn bucket<'g>(&'g self, key: &KeyDigest, guard: &'g impl Guard) -> Bucket<'g> {
        loop {
            if let Some(ks) = self.keys.get(key, guard) {
                if ks.is_dead() {
                    self.remove_dead(key, guard);
                    continue;
                }
                return Bucket::Key(ks);
            }
            // Check before incrementing: under a flood of new keys the cap is
            // reached, and a plain load keeps the shared counter's line uncontended.
            let max = self.max_keys.load(Ordering::Relaxed);
            if self.tracked.load(Ordering::Relaxed) >= max {
                return Bucket::Overflow;
            }
            if self.tracked.fetch_add(1, Ordering::AcqRel) >= max {
                self.tracked.fetch_sub(1, Ordering::AcqRel);
                return Bucket::Overflow;
            }
            match self.keys.try_insert(*key, KeyState::new(), guard) {
                Ok(ks) => return Bucket::Key(ks),
                Err(_) => {
                    self.tracked.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
    }

    /// Removes `key` if it is dead; counts it once, whoever removes it.
    pub fn remove_dead(&self, key: &KeyDigest, guard: &impl Guard) -> bool {
        let removed = matches!(
            self.keys.remove_if(key, |_, v| v.is_dead(), guard),
            Ok(Some(_))
        );
        if removed {
            self.tracked.fetch_sub(1, Ordering::AcqRel);
            self.counters.expired.fetch_add(1, Ordering::Relaxed);
        }
        removed
    }

    /// A guard for [`Self::bucket`] (pins the map's memory while in use).
    pub fn guard(&self) -> papaya::LocalGuard<'_> {
        self.keys.guard()
    }

    /// The shared overflow bucket's windows.
    pub fn overflow_cells(&self) -> &[AtomicU64; MAX_WINDOWS] {
        &self.overflow.cells
    }

    /// The configured windows' GCRA parameters.
    pub fn gcra_windows(&self) -> &[Gcra] {
        &self.gcra[..self.windows]
    }

    /// Gives unused leased tokens back (local backend). `key` is `None` for the overflow bucket.
    pub fn give_back(&self, key: Option<&KeyDigest>, unused: u64, tat_after: &[u64], now: u64) {
        let gcra = self.gcra_windows();
        // Nothing to give when every slot has already passed: skip the lookup.
        if !tat_after.iter().any(|t| *t > now) {
            return;
        }
        let guard = self.keys.guard();
        let cells = match key {
            None => &self.overflow.cells,
            Some(k) => match self.keys.get(k, &guard) {
                Some(ks) => &ks.cells,
                // Swept: its buckets were full, so nothing is owed.
                None => return,
            },
        };
        for (i, g) in gcra.iter().enumerate() {
            gcra::give_back(&cells[i], g, unused, tat_after[i], now);
        }
    }

    /// Registers `key` (Redis backend) so that it counts against `max_keys`, and
    /// keeps it for as long as its Redis buckets may be non-full. Returns whether
    /// it overflowed.
    pub fn touch_redis(&self, key: &KeyDigest, now: u64, busy_for: u64) -> bool {
        let guard = self.keys.guard();
        loop {
            match self.bucket(key, &guard) {
                Bucket::Overflow => return true,
                Bucket::Key(ks) => {
                    if ks.cells[0].fetch_max(now + busy_for, Ordering::AcqRel) == gcra::DEAD {
                        self.remove_dead(key, &guard);
                        continue;
                    }
                    return false;
                }
            }
        }
    }

    /// Deletes keys idle for the grace period; returns how many.
    fn sweep(&self, now: u64) -> usize {
        let guard = self.keys.guard();
        let cells = match self.spec.backend {
            RateBackend::Local => self.windows,
            RateBackend::Redis => 1,
        };
        let mut removed = 0;
        for (key, ks) in self.keys.iter(&guard) {
            if gcra::try_kill(&ks.cells[..cells], now, IDLE_GRACE_NS)
                && self.remove_dead(key, &guard)
            {
                removed += 1;
            }
        }
        removed
    }
}

/// Rate-limit messages are logged at most this often (per kind), with a count of the rest.
pub(crate) struct LogEvery {
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl LogEvery {
    const PERIOD_NS: u64 = 10_000_000_000;

    pub const fn new() -> LogEvery {
        LogEvery {
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(suppressed since the last line)` when a line may be logged now.
    pub fn allow(&self, now: u64) -> Option<u64> {
        let last = self.last.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= Self::PERIOD_NS)
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

struct InstallState {
    counters: HashMap<Arc<str>, Arc<PolicyCounters>>,
    stop_sweeper: Option<crossbeam_channel::Sender<()>>,
    next_id: u64,
}

/// Process-wide state (Send + Sync), created once at start, surviving reloads:
/// state is keyed by (policy name, key), so an unchanged policy keeps its buckets.
#[allow(
    clippy::disallowed_types,
    reason = "the lock guards install and a shard's first use of a policy, never a request"
)]
pub struct RateLimiter {
    registry: ArcSwap<HashMap<Arc<str>, Arc<PolicyState>>>,
    install: Mutex<InstallState>,
    shards: AtomicUsize,
    pub(crate) redis: ArcSwapOption<RedisHandle>,
    pub(crate) redis_stats: Arc<RedisStats>,
    redis_configured: AtomicBool,
    pub(crate) log_failures: LogEvery,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("policies", &self.registry.load().len())
            .finish()
    }
}

impl RateLimiter {
    /// Creates the (empty) process-wide state.
    #[allow(
        clippy::disallowed_types,
        reason = "the lock guards install and a shard's first use of a policy, never a request"
    )]
    pub fn new() -> Arc<RateLimiter> {
        Arc::new(RateLimiter {
            registry: ArcSwap::from_pointee(HashMap::new()),
            install: Mutex::new(InstallState {
                counters: HashMap::new(),
                stop_sweeper: None,
                next_id: 1,
            }),
            shards: AtomicUsize::new(0),
            redis: ArcSwapOption::empty(),
            redis_stats: Arc::new(RedisStats::default()),
            redis_configured: AtomicBool::new(false),
            log_failures: LogEvery::new(),
        })
    }

    /// Installs the policies of a (re)loaded config; starts or stops the Redis
    /// worker and the idle-key sweeper as needed. Policies whose buckets are
    /// defined as before (same name, key, backend and windows) keep their state;
    /// others start with full buckets; policies not given are dropped.
    pub fn install(
        self: &Arc<Self>,
        policies: &[Arc<RateLimitPolicy>],
        redis: Option<&RedisConfig>,
    ) {
        let mut st = self.install.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.registry.load_full();
        let mut next = HashMap::new();
        for p in policies {
            let state = self.state_for(&mut st, &old, p);
            next.insert(p.name.clone(), state);
        }
        self.registry.store(Arc::new(next));

        let wants_redis = policies.iter().any(|p| p.backend == RateBackend::Redis);
        match (wants_redis, redis) {
            (true, Some(cfg)) => {
                let current = self.redis.load();
                if current.as_ref().is_none_or(|h| h.config() != cfg) {
                    // The old worker (if any) exits once its last sender is dropped.
                    self.redis.store(Some(Arc::new(RedisHandle::start(
                        cfg.clone(),
                        self.redis_stats.clone(),
                    ))));
                }
            }
            _ => self.redis.store(None),
        }
        self.redis_configured.store(wants_redis, Ordering::Relaxed);

        if policies.is_empty() {
            st.stop_sweeper = None;
        } else if st.stop_sweeper.is_none() {
            st.stop_sweeper = Some(spawn_sweeper(Arc::downgrade(self)));
        }
    }

    /// Reuses or creates the state for `p`. Caller holds the install lock.
    fn state_for(
        &self,
        st: &mut InstallState,
        registry: &HashMap<Arc<str>, Arc<PolicyState>>,
        p: &RateLimitPolicy,
    ) -> Arc<PolicyState> {
        if let Some(s) = registry.get(&p.name).filter(|s| s.spec == p.bucket_spec()) {
            s.max_keys.store(p.max_keys, Ordering::Relaxed);
            return s.clone();
        }
        let counters = st
            .counters
            .entry(p.name.clone())
            .or_insert_with(|| Arc::new(PolicyCounters::new()))
            .clone();
        st.next_id += 1;
        Arc::new(PolicyState::new(st.next_id, p, counters))
    }

    /// The state of `p`: from the registry, or registered now if `p` was never
    /// installed (first use of a policy object; not the steady-state path).
    pub(crate) fn resolve(&self, p: &RateLimitPolicy) -> Arc<PolicyState> {
        if let Some(s) = self.registry.load().get(&p.name) {
            if s.spec == p.bucket_spec() {
                return s.clone();
            }
        }
        let mut st = self.install.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.registry.load_full();
        let state = self.state_for(&mut st, &current, p);
        let mut next = (*current).clone();
        next.insert(p.name.clone(), state.clone());
        self.registry.store(Arc::new(next));
        state
    }

    /// Whether `state` is still the installed state of its policy.
    pub(crate) fn is_current(&self, state: &Arc<PolicyState>) -> bool {
        self.registry
            .load()
            .get(&state.name)
            .is_some_and(|s| Arc::ptr_eq(s, state))
    }

    pub(crate) fn register_shard(&self) {
        self.shards.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn unregister_shard(&self) {
        self.shards.fetch_sub(1, Ordering::Relaxed);
    }

    /// Shards currently running a [`super::ShardLimiter`].
    pub(crate) fn shards(&self) -> usize {
        self.shards.load(Ordering::Relaxed).max(1)
    }

    /// Runs one sweep now (the sweeper thread does this every second).
    pub(crate) fn sweep(&self, now: u64) -> usize {
        self.registry.load().values().map(|s| s.sweep(now)).sum()
    }

    /// Prometheus text families (appended to `out`): decisions by policy, keys
    /// tracked, keys expired, overflow, leases, Redis calls and errors.
    pub fn prometheus(&self, out: &mut String) {
        let registry = self.registry.load();
        let mut counters: Vec<(Arc<str>, Arc<PolicyCounters>)> = {
            let st = self.install.lock().unwrap_or_else(|e| e.into_inner());
            st.counters
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        counters.sort_by(|a, b| a.0.cmp(&b.0));
        let mut states: Vec<&Arc<PolicyState>> = registry.values().collect();
        states.sort_by(|a, b| a.name.cmp(&b.name));

        let families: [(&str, &str, CounterField); 4] = [
            (
                "hypergate_ratelimit_admitted_total",
                "Requests admitted by rate-limit policy (failing open included).",
                |s| &s.admitted,
            ),
            (
                "hypergate_ratelimit_limited_total",
                "Requests refused with 429 by rate-limit policy.",
                |s| &s.limited,
            ),
            (
                "hypergate_ratelimit_overflow_total",
                "Requests whose key was not tracked (max_keys reached) and used the policy's shared overflow bucket.",
                |s| &s.overflow,
            ),
            (
                "hypergate_ratelimit_leases_total",
                "Token leases taken from the shared budget (process table or Redis).",
                |s| &s.leases,
            ),
        ];
        for (name, help, field) in families {
            header(out, name, "counter", help);
            for (policy, c) in &counters {
                let _ = writeln!(out, "{name}{{policy=\"{policy}\"}} {}", c.sum(field));
            }
        }
        let name = "hypergate_ratelimit_backend_failures_total";
        header(
            out,
            name,
            "counter",
            "Decisions taken without the rate-limit backend (Redis unreachable), by policy and failure mode.",
        );
        for (policy, c) in &counters {
            for (decision, n) in [
                ("open", c.sum(|s| &s.failed_open)),
                ("closed", c.sum(|s| &s.failed_closed)),
            ] {
                let _ = writeln!(
                    out,
                    "{name}{{policy=\"{policy}\",decision=\"{decision}\"}} {n}"
                );
            }
        }
        let name = "hypergate_ratelimit_keys_expired_total";
        header(
            out,
            name,
            "counter",
            "Idle keys deleted by the sweeper, by policy.",
        );
        for (policy, c) in &counters {
            let _ = writeln!(
                out,
                "{name}{{policy=\"{policy}\"}} {}",
                c.expired.load(Ordering::Relaxed)
            );
        }
        let name = "hypergate_ratelimit_keys";
        header(
            out,
            name,
            "gauge",
            "Keys tracked now, by policy (at most max_keys).",
        );
        for s in &states {
            let _ = writeln!(out, "{name}{{policy=\"{}\"}} {}", s.name, s.tracked());
        }
        let name = "hypergate_ratelimit_max_keys";
        header(out, name, "gauge", "Configured max_keys, by policy.");
        for s in &states {
            let _ = writeln!(
                out,
                "{name}{{policy=\"{}\"}} {}",
                s.name,
                s.max_keys.load(Ordering::Relaxed)
            );
        }
        if self.redis_configured.load(Ordering::Relaxed) || self.redis_stats.calls() > 0 {
            let up = self.redis.load().as_ref().is_some_and(|h| h.is_up());
            self.redis_stats.prometheus(out, up);
        }
    }
}

pub(crate) fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn spawn_sweeper(limiter: Weak<RateLimiter>) -> crossbeam_channel::Sender<()> {
    let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
    let spawned = std::thread::Builder::new()
        .name("hypergate-ratelimit-sweep".into())
        .spawn(move || loop {
            match stopped.recv_timeout(SWEEP_INTERVAL) {
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            let Some(limiter) = limiter.upgrade() else {
                return;
            };
            limiter.sweep(gcra::now_ns());
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the rate-limit sweeper; idle keys will not expire");
    }
    stop
}
