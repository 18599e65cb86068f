//! The shard side of rate limiting: leases of tokens taken from the shared
//! budget, in plain single-threaded maps.
//!
//! Per policy the shard keeps a `HashMap` from key to [`Lease`] (at most
//! [`SHARD_KEYS`] keys) and one lease for the overflow bucket. A lease holds up
//! to two grants (the current one and, with Redis, a prefetched next one); each
//! grant records where its tokens' slots end in the shared bucket so that unused
//! tokens can be given back when it expires. Every 50 ms (checked on the
//! request path, no timer) the shard settles expired grants and drops leases
//! idle for two TTLs.

use super::gcra::{self, now_ns, Dead, Taken, MAX_WINDOWS};
use super::global::{Bucket, CounterSlot, PolicyState, RateLimiter};
use super::policy::{FailureMode, RateBackend, RateLimitPolicy, LOCAL_LEASE_TTL, MAX_LEASE};
use super::redis::{Failure, Job, Op, RedisHandle, Reply};
use super::{headers_for, headers_unknown, key_digest, KeyDigest, RateDecision, RateHeaders};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Instant;

/// Keys with leases per policy and shard, at most.
pub const SHARD_KEYS: usize = 4096;

/// Tokens taken together from the shared bucket.
#[derive(Debug, Clone, Copy)]
struct Grant {
    left: u64,
    granted: u64,
    taken_at: u64,
    expires_at: u64,
    /// Per window, TAT - now when taken (ns).
    debt: [u64; MAX_WINDOWS],
    /// Per window, where the grant's slots end: process ns (local) or server µs (Redis).
    tat_after: [i64; MAX_WINDOWS],
}

impl Grant {
    fn used(&self) -> u64 {
        self.granted - self.left
    }

    /// Per-window debt now, estimated from the debt when taken.
    fn debt_now(&self, now: u64) -> [u64; MAX_WINDOWS] {
        let elapsed = now.saturating_sub(self.taken_at);
        self.debt.map(|d| d.saturating_sub(elapsed))
    }
}

/// A shard's tokens for one key.
#[derive(Default)]
struct Lease {
    cur: Option<Grant>,
    /// Prefetched (Redis), used when `cur` runs out or expires.
    next: Option<Grant>,
    /// Size of the next grant to ask for (adapts to demand; 0 means 1).
    next_k: u64,
    last_used: u64,
    /// Redis said no until then (ns); saves calls for a key that is over its limit.
    blocked_until: u64,
    blocked_debt: [u64; MAX_WINDOWS],
    /// A Redis take in flight.
    pending: Option<async_channel::Receiver<Result<Reply, Failure>>>,
}

impl Lease {
    /// Retires expired grants (returned for give-back when they hold tokens) and promotes `next`.
    fn settle(&mut self, now: u64) -> [Option<Grant>; 2] {
        let mut out = [None, None];
        if let Some(g) = self.cur.filter(|g| now >= g.expires_at) {
            self.next_k = g.used().max(1);
            self.cur = None;
            out[0] = Some(g).filter(|g| g.left > 0);
        }
        if let Some(g) = self.next.filter(|g| now >= g.expires_at) {
            self.next = None;
            out[1] = Some(g).filter(|g| g.left > 0);
        }
        if self.cur.is_none() {
            self.cur = self.next.take();
        }
        out
    }

    /// Takes one token from a live grant: the grant (after the take) and the tokens still leased.
    fn consume(&mut self, now: u64) -> Option<(Grant, u64)> {
        let g = self
            .cur
            .as_mut()
            .filter(|g| g.left > 0 && now < g.expires_at)?;
        g.left -= 1;
        let snapshot = *g;
        if g.left == 0 {
            // Ran out within its TTL: demand is at least this much, ask for more next time.
            self.next_k = (g.granted * 2).min(MAX_LEASE);
            self.cur = self.next.take();
        }
        self.last_used = now;
        let leased = self.cur.map_or(0, |g| g.left) + self.next.map_or(0, |g| g.left);
        Some((snapshot, leased))
    }

    /// Adds a fresh grant: current if there is none, otherwise next. Returns a
    /// grant that had no place (to give back).
    fn add(&mut self, g: Grant) -> Option<Grant> {
        if self.cur.is_none_or(|c| c.left == 0) {
            self.cur = Some(g);
            None
        } else if self.next.is_none() {
            self.next = Some(g);
            None
        } else {
            Some(g)
        }
    }

    fn idle(&self, now: u64, ttl: u64) -> bool {
        self.cur.is_none()
            && self.next.is_none()
            && self.pending.is_none()
            && self.blocked_until <= now
            && self.last_used + 2 * ttl <= now
    }
}

/// One policy's leases on this shard.
struct Slot {
    state: Arc<PolicyState>,
    /// The policy name for headers (a shard-local `Rc`: no shared refcount per request).
    name: Rc<str>,
    backend: RateBackend,
    /// Lease TTL, ns.
    ttl: u64,
    leases: HashMap<KeyDigest, Lease>,
    overflow: Lease,
    cap: usize,
}

/// A policy object this shard has seen, and its slot.
struct Bound {
    ptr: usize,
    policy: Weak<RateLimitPolicy>,
    slot: usize,
}

struct Inner {
    bound: Vec<Bound>,
    slots: Vec<Slot>,
    next_sweep: u64,
}

/// Where a waiting request's tokens go.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    Key,
    Overflow,
    /// No room in the shard's map: use the reply directly.
    Nowhere,
}

enum Step {
    Done(RateDecision),
    Wait {
        rx: async_channel::Receiver<Result<Reply, Failure>>,
        place: Place,
    },
}

/// Per shard (`!Sync`): local leases; what the request path touches.
pub struct ShardLimiter {
    global: Arc<RateLimiter>,
    shard: usize,
    inner: RefCell<Inner>,
}

impl std::fmt::Debug for ShardLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardLimiter")
            .field("shard", &self.shard)
            .finish()
    }
}

impl ShardLimiter {
    /// The limiter of shard `shard` (used to pick its counter slot).
    pub fn new(global: Arc<RateLimiter>, shard: usize) -> ShardLimiter {
        global.register_shard();
        ShardLimiter {
            global,
            shard,
            inner: RefCell::new(Inner {
                bound: Vec::new(),
                slots: Vec::new(),
                next_sweep: 0,
            }),
        }
    }

    /// Checks (and on success consumes) one request for `key` under `policy`.
    /// The key is whatever the client chose (a header value, say); only its
    /// fixed-size digest is kept, so memory per key does not depend on it.
    ///
    /// Local policies never wait. Redis policies wait for Redis only when this
    /// shard holds no token for the key (at most about `2 × redis.timeout`).
    pub async fn check(&self, policy: &Arc<RateLimitPolicy>, key: &[u8]) -> RateDecision {
        let key = key_digest(key);
        match policy.backend {
            RateBackend::Local => self.check_local(policy, &key, now_ns()),
            RateBackend::Redis => self.check_redis(policy, &key).await,
        }
    }

    /// Settles expired leases now (giving their unused tokens back). The request
    /// path does this every 50 ms by itself; a shard may also call it from a timer
    /// so that an idle shard does not sit on leased tokens.
    pub fn expire_leases(&self) {
        let now = now_ns();
        let mut inner = self.inner.borrow_mut();
        inner.next_sweep = now + LOCAL_LEASE_TTL.as_nanos() as u64;
        let redis = self.global.redis.load_full();
        for slot in &mut inner.slots {
            sweep_slot(slot, now, redis.as_deref());
        }
    }

    /// Keys with leases on this shard, over all policies (for tests and stats).
    pub fn leased_keys(&self) -> usize {
        self.inner
            .borrow()
            .slots
            .iter()
            .map(|s| s.leases.len())
            .sum()
    }

    /// [`Self::check`] for a local policy at time `now` (ns on the process clock).
    pub(crate) fn check_local(
        &self,
        policy: &Arc<RateLimitPolicy>,
        key: &KeyDigest,
        now: u64,
    ) -> RateDecision {
        let mut inner = self.inner.borrow_mut();
        let Slot {
            state,
            name,
            leases,
            overflow,
            cap,
            ..
        } = inner.slot(policy, &self.global, now);
        let state: &PolicyState = state;
        let counters = state.counters.slot(self.shard);

        // 1. A token this shard already holds: no shared memory touched.
        if let Some(lease) = leases.get_mut(key) {
            for g in lease.settle(now).into_iter().flatten() {
                give_back_local(state, Some(key), &g, now);
            }
            if let Some((g, leased)) = lease.consume(now) {
                return allowed(
                    counters,
                    headers_for(policy, name, &g.debt_now(now), leased),
                );
            }
        }

        // 2. The shared bucket (or the overflow bucket, through this shard's overflow lease).
        let max_lease = policy.max_lease(self.global.shards());
        let guard = state.guard();
        loop {
            let bucket = state.bucket(key, &guard);
            let (lease, cells) = match bucket {
                Bucket::Overflow => {
                    counters.overflow.fetch_add(1, Ordering::Relaxed);
                    for g in overflow.settle(now).into_iter().flatten() {
                        give_back_local(state, None, &g, now);
                    }
                    if let Some((g, leased)) = overflow.consume(now) {
                        return allowed(
                            counters,
                            headers_for(policy, name, &g.debt_now(now), leased),
                        );
                    }
                    (Some(&mut *overflow), state.overflow_cells())
                }
                Bucket::Key(ks) => {
                    if max_lease > 1 && !leases.contains_key(key) && leases.len() < *cap {
                        leases.insert(*key, Lease::default());
                    }
                    let lease = if max_lease > 1 {
                        leases.get_mut(key)
                    } else {
                        None
                    };
                    (lease, &ks.cells)
                }
            };
            let want = lease.as_ref().map_or(1, |l| l.next_k).clamp(1, max_lease);
            let taken = match gcra::take(&cells[..state.windows], state.gcra_windows(), want, now) {
                Ok(t) => t,
                Err(Dead) => {
                    state.remove_dead(key, &guard);
                    continue;
                }
            };
            counters.leases.fetch_add(1, Ordering::Relaxed);
            return self.decide_local(policy, name, counters, lease, taken, now);
        }
    }

    fn decide_local(
        &self,
        policy: &RateLimitPolicy,
        name: &Rc<str>,
        counters: &CounterSlot,
        lease: Option<&mut Lease>,
        taken: Taken,
        now: u64,
    ) -> RateDecision {
        let mut debt = [0; MAX_WINDOWS];
        for (d, t) in debt.iter_mut().zip(taken.tat) {
            *d = t.saturating_sub(now);
        }
        if taken.granted == 0 {
            return limited(counters, headers_for(policy, name, &debt, 0), taken.wait);
        }
        let grant = Grant {
            left: taken.granted - 1,
            granted: taken.granted,
            taken_at: now,
            expires_at: now + policy.lease_ttl_ns(),
            debt,
            tat_after: taken.tat.map(|t| t as i64),
        };
        let leased = grant.left;
        match lease {
            Some(lease) => {
                lease.last_used = now;
                if grant.left == 0 {
                    lease.next_k = (grant.granted * 2).min(MAX_LEASE);
                    lease.cur = None;
                } else {
                    lease.cur = Some(grant);
                }
            }
            None => debug_assert_eq!(grant.left, 0, "grants above 1 need a lease to hold them"),
        }
        allowed(counters, headers_for(policy, name, &debt, leased))
    }

    async fn check_redis(&self, policy: &Arc<RateLimitPolicy>, key: &KeyDigest) -> RateDecision {
        loop {
            let (rx, place) = match self.redis_step(policy, key, now_ns()) {
                Step::Done(decision) => return decision,
                Step::Wait { rx, place } => (rx, place),
            };
            match rx.recv().await {
                Ok(Ok(reply)) => {
                    if let Some(d) = self.redis_apply(policy, key, place, reply, now_ns(), true) {
                        return d;
                    }
                }
                Ok(Err(failure)) => {
                    let name = self
                        .inner
                        .borrow_mut()
                        .slot(policy, &self.global, now_ns())
                        .name
                        .clone();
                    return self.backend_failure(policy, name, failure);
                }
                // Another request on this shard picked the reply up; its tokens are in the lease.
                Err(_) => {}
            }
        }
    }

    /// Everything a Redis check can do without waiting.
    fn redis_step(&self, policy: &Arc<RateLimitPolicy>, key: &KeyDigest, now: u64) -> Step {
        let redis = self.global.redis.load();
        let mut inner = self.inner.borrow_mut();
        let Slot {
            state,
            name,
            leases,
            overflow,
            cap,
            ..
        } = inner.slot(policy, &self.global, now);
        let state: &PolicyState = state;
        let counters = state.counters.slot(self.shard);
        let ttl = policy.lease_ttl_ns();
        let busy_for = state.longest_fill_ns + ttl;

        let mut temp = Lease::default();
        let known = leases.contains_key(key);
        let (lease, place) = if known {
            (leases.get_mut(key), Place::Key)
        } else if state.touch_redis(key, now, busy_for) {
            counters.overflow.fetch_add(1, Ordering::Relaxed);
            (Some(overflow), Place::Overflow)
        } else if leases.len() < *cap {
            (Some(leases.entry(*key).or_default()), Place::Key)
        } else {
            (None, Place::Nowhere)
        };
        let lease = lease.unwrap_or(&mut temp);
        let rkey = |place| redis_key(state, key, place);

        // A reply that arrived for this lease (a prefetch, or for a request that has not run yet).
        if let Some(rx) = &lease.pending {
            match rx.try_recv() {
                Ok(Ok(reply)) => {
                    lease.pending = None;
                    let g = grant_from_reply(&reply, now, ttl);
                    if reply.granted == 0 {
                        block(lease, &reply, now, policy, self.global.shards());
                    } else if let Some(extra) = lease.add(g) {
                        send_give(redis.as_deref(), state, rkey(place), &extra, now);
                    }
                }
                Ok(Err(_)) | Err(async_channel::TryRecvError::Closed) => lease.pending = None,
                Err(async_channel::TryRecvError::Empty) => {}
            }
        }
        for g in lease.settle(now).into_iter().flatten() {
            send_give(redis.as_deref(), state, rkey(place), &g, now);
        }
        if let Some((g, leased)) = lease.consume(now) {
            self.prefetch(policy, state, lease, key, place, now);
            return Step::Done(allowed(
                counters,
                headers_for(policy, name, &g.debt_now(now), leased),
            ));
        }
        if lease.blocked_until > now {
            let debt = lease.blocked_debt.map(|d| d.saturating_sub(now));
            return Step::Done(limited(
                counters,
                headers_for(policy, name, &debt, 0),
                lease.blocked_until - now,
            ));
        }
        if let Some(rx) = &lease.pending {
            return Step::Wait {
                rx: rx.clone(),
                place,
            };
        }
        // Ask Redis.
        if known {
            // Keep the key registered while its Redis buckets may be non-full.
            state.touch_redis(key, now, busy_for);
        }
        let max_lease = policy.max_lease(self.global.shards());
        let want = lease.next_k.clamp(1, max_lease);
        let rx = match take_job(redis.as_deref(), state, rkey(place), want) {
            Ok(rx) => rx,
            Err(f) => return Step::Done(self.backend_failure(policy, name.clone(), f)),
        };
        counters.leases.fetch_add(1, Ordering::Relaxed);
        if place != Place::Nowhere {
            lease.pending = Some(rx.clone());
        }
        Step::Wait { rx, place }
    }

    /// Asks for the next grant ahead of time when the current one is half used
    /// or three-quarters through its TTL (only for keys busy enough to lease more than 1).
    fn prefetch(
        &self,
        policy: &RateLimitPolicy,
        state: &PolicyState,
        lease: &mut Lease,
        key: &KeyDigest,
        place: Place,
        now: u64,
    ) {
        let ttl = policy.lease_ttl_ns();
        let max_lease = policy.max_lease(self.global.shards());
        if max_lease <= 1 || lease.pending.is_some() || lease.next.is_some() {
            return;
        }
        let low = match lease.cur {
            None => lease.next_k > 1,
            Some(g) => {
                g.granted > 1
                    && (g.left * 2 <= g.granted || g.expires_at.saturating_sub(now) < ttl / 4)
            }
        };
        if !low {
            return;
        }
        let want = lease
            .cur
            .map_or(lease.next_k, |g| g.granted * 2)
            .clamp(1, max_lease);
        let redis = self.global.redis.load();
        if let Ok(rx) = take_job(redis.as_deref(), state, redis_key(state, key, place), want) {
            state
                .counters
                .slot(self.shard)
                .leases
                .fetch_add(1, Ordering::Relaxed);
            lease.pending = Some(rx);
        }
    }

    /// Applies a reply received by a waiting request; with `consume`, decides for it.
    fn redis_apply(
        &self,
        policy: &Arc<RateLimitPolicy>,
        key: &KeyDigest,
        place: Place,
        reply: Reply,
        now: u64,
        consume: bool,
    ) -> Option<RateDecision> {
        let redis = self.global.redis.load();
        let mut inner = self.inner.borrow_mut();
        let Slot {
            state,
            name,
            leases,
            overflow,
            ..
        } = inner.slot(policy, &self.global, now);
        let state: &PolicyState = state;
        let counters = state.counters.slot(self.shard);
        let ttl = policy.lease_ttl_ns();
        let mut temp = Lease::default();
        let lease = match place {
            Place::Key => leases.get_mut(key),
            Place::Overflow => Some(overflow),
            Place::Nowhere => None,
        };
        let stored = lease.is_some();
        let lease = lease.unwrap_or(&mut temp);
        lease.pending = None;
        let grant = grant_from_reply(&reply, now, ttl);
        if reply.granted == 0 {
            block(lease, &reply, now, policy, self.global.shards());
            return consume.then(|| {
                let debt = grant.debt;
                limited(
                    counters,
                    headers_for(policy, name, &debt, 0),
                    reply.wait_us * 1000,
                )
            });
        }
        if let Some(extra) = lease.add(grant) {
            send_give(
                redis.as_deref(),
                state,
                redis_key(state, key, place),
                &extra,
                now,
            );
        }
        let decision = if consume {
            lease.consume(now).map(|(g, leased)| {
                allowed(
                    counters,
                    headers_for(policy, name, &g.debt_now(now), leased),
                )
            })
        } else {
            None
        };
        if !stored {
            for g in [lease.cur.take(), lease.next.take()].into_iter().flatten() {
                send_give(
                    redis.as_deref(),
                    state,
                    redis_key(state, key, place),
                    &g,
                    now,
                );
            }
        }
        decision
    }

    fn backend_failure(
        &self,
        policy: &Arc<RateLimitPolicy>,
        name: Rc<str>,
        failure: Failure,
    ) -> RateDecision {
        let state = self.global.resolve(policy);
        let counters = state.counters.slot(self.shard);
        let mode = match policy.failure_mode {
            FailureMode::Open => "open",
            FailureMode::Closed => "closed",
        };
        if let Some(suppressed) = self.global.log_failures.allow(now_ns()) {
            tracing::warn!(
                policy = %policy.name,
                reason = failure.label(),
                failure_mode = mode,
                suppressed,
                "rate-limit backend unavailable; failing {mode}"
            );
        }
        match policy.failure_mode {
            FailureMode::Open => {
                counters.failed_open.fetch_add(1, Ordering::Relaxed);
                counters.admitted.fetch_add(1, Ordering::Relaxed);
                RateDecision::Allowed(headers_unknown(policy, name))
            }
            FailureMode::Closed => {
                counters.failed_closed.fetch_add(1, Ordering::Relaxed);
                RateDecision::Unavailable
            }
        }
    }
}

impl Drop for ShardLimiter {
    fn drop(&mut self) {
        // Hand back what this shard still holds, so a stopped shard strands nothing.
        let now = now_ns();
        let redis = self.global.redis.load_full();
        for slot in &mut self.inner.get_mut().slots {
            expire_all(slot, now, redis.as_deref());
        }
        self.global.unregister_shard();
    }
}

impl Inner {
    /// The slot for `policy`: found by the policy object's address (a `Weak`
    /// keeps the address from being reused), or resolved and bound on first use.
    /// Also runs the periodic lease sweep.
    fn slot(&mut self, policy: &Arc<RateLimitPolicy>, global: &RateLimiter, now: u64) -> &mut Slot {
        if now >= self.next_sweep {
            self.next_sweep = now + LOCAL_LEASE_TTL.as_nanos() as u64;
            let redis = global.redis.load_full();
            for slot in &mut self.slots {
                sweep_slot(slot, now, redis.as_deref());
            }
        }
        let ptr = Arc::as_ptr(policy) as usize;
        let index = match self.bound.iter().find(|b| b.ptr == ptr) {
            Some(b) => b.slot,
            None => self.bind(policy, global, now),
        };
        &mut self.slots[index]
    }

    #[cold]
    fn bind(&mut self, policy: &Arc<RateLimitPolicy>, global: &RateLimiter, now: u64) -> usize {
        let redis = global.redis.load_full();
        // Forget policy objects that are gone (replaced by a reload), and the
        // slots of states no longer installed, handing their tokens back.
        self.bound.retain(|b| b.policy.strong_count() > 0);
        let state = global.resolve(policy);
        let mut i = 0;
        while i < self.slots.len() {
            let used = self.bound.iter().any(|b| b.slot == i);
            if !used
                && !global.is_current(&self.slots[i].state)
                && self.slots[i].state.id != state.id
            {
                let mut slot = self.slots.swap_remove(i);
                expire_all(&mut slot, now, redis.as_deref());
                let moved = self.slots.len();
                for b in &mut self.bound {
                    if b.slot == moved {
                        b.slot = i;
                    }
                }
            } else {
                i += 1;
            }
        }
        let index = match self.slots.iter().position(|s| s.state.id == state.id) {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    cap: SHARD_KEYS.min(policy.max_keys),
                    name: Rc::from(&*policy.name),
                    state,
                    backend: policy.backend,
                    ttl: policy.lease_ttl_ns(),
                    leases: HashMap::new(),
                    overflow: Lease::default(),
                });
                self.slots.len() - 1
            }
        };
        self.bound.push(Bound {
            ptr: Arc::as_ptr(policy) as usize,
            policy: Arc::downgrade(policy),
            slot: index,
        });
        index
    }
}

/// Gives back every grant of a slot that is going away.
fn expire_all(slot: &mut Slot, now: u64, redis: Option<&RedisHandle>) {
    for lease in slot.leases.values_mut().chain([&mut slot.overflow]) {
        for g in [&mut lease.cur, &mut lease.next].into_iter().flatten() {
            g.expires_at = 0;
        }
    }
    sweep_slot(slot, now, redis);
}

/// Settles expired grants (giving unused tokens back) and drops idle leases.
fn sweep_slot(slot: &mut Slot, now: u64, redis: Option<&RedisHandle>) {
    let (ttl, backend, state) = (slot.ttl, slot.backend, &slot.state);
    let give = |key: Option<&KeyDigest>, g: &Grant| match backend {
        RateBackend::Local => give_back_local(state, key, g, now),
        RateBackend::Redis => {
            let place = if key.is_some() {
                Place::Key
            } else {
                Place::Overflow
            };
            send_give(
                redis,
                state,
                redis_key(state, key.unwrap_or(&[0; 16]), place),
                g,
                now,
            )
        }
    };
    slot.leases.retain(|key, lease| {
        for g in lease.settle(now).into_iter().flatten() {
            give(Some(key), &g);
        }
        !lease.idle(now, ttl)
    });
    for g in slot.overflow.settle(now).into_iter().flatten() {
        give(None, &g);
    }
}

fn allowed(counters: &CounterSlot, headers: RateHeaders) -> RateDecision {
    counters.admitted.fetch_add(1, Ordering::Relaxed);
    RateDecision::Allowed(headers)
}

fn limited(counters: &CounterSlot, headers: RateHeaders, wait_ns: u64) -> RateDecision {
    counters.limited.fetch_add(1, Ordering::Relaxed);
    RateDecision::Limited {
        headers,
        retry_after_secs: wait_ns.div_ceil(1_000_000_000).max(1),
    }
}

fn give_back_local(state: &PolicyState, key: Option<&KeyDigest>, g: &Grant, now: u64) {
    let tat = g.tat_after.map(|t| t as u64);
    state.give_back(key, g.left, &tat[..state.windows], now);
}

fn redis_key(state: &PolicyState, key: &KeyDigest, place: Place) -> Vec<u8> {
    let mut k = Vec::with_capacity(state.redis_prefix.len() + 2 + key.len());
    k.extend_from_slice(&state.redis_prefix);
    match place {
        Place::Overflow => k.push(b'o'),
        Place::Key | Place::Nowhere => {
            k.extend_from_slice(b"k:");
            k.extend_from_slice(key);
        }
    }
    k
}

fn grant_from_reply(reply: &Reply, now: u64, ttl: u64) -> Grant {
    let mut debt = [0; MAX_WINDOWS];
    let mut tat_after = [0; MAX_WINDOWS];
    for i in 0..MAX_WINDOWS {
        debt[i] = reply.debt_us[i].max(0) as u64 * 1000;
        tat_after[i] = reply.now_us + reply.debt_us[i];
    }
    Grant {
        left: reply.granted,
        granted: reply.granted,
        taken_at: now,
        expires_at: now + ttl,
        debt,
        tat_after,
    }
}

/// Redis said no: stop asking for this key on this shard until the bucket has
/// refilled a full lease (`max_lease` tokens), not just one token. This bounds
/// the calls a key over its limit causes to one per lease time per shard, and
/// loses nothing: the bucket keeps the tokens (a lease is at most half the burst
/// per shard).
fn block(lease: &mut Lease, reply: &Reply, now: u64, policy: &RateLimitPolicy, shards: usize) {
    let slowest = policy.gcra().iter().map(|g| g.t).max().unwrap_or(0);
    let refill = (policy.max_lease(shards) - 1) * slowest;
    lease.blocked_until = now + reply.wait_us.max(1) * 1000 + refill;
    for (b, d) in lease.blocked_debt.iter_mut().zip(reply.debt_us) {
        *b = now + d.max(0) as u64 * 1000;
    }
}

fn take_job(
    redis: Option<&RedisHandle>,
    state: &PolicyState,
    key: Vec<u8>,
    want: u64,
) -> Result<async_channel::Receiver<Result<Reply, Failure>>, Failure> {
    let redis = redis.ok_or(Failure::Down)?;
    if !redis.is_up() {
        return Err(Failure::Down);
    }
    let (tx, rx) = async_channel::bounded(1);
    redis.send(Job {
        key,
        op: Op::Take { want },
        gcra: state.gcra,
        windows: state.windows,
        deadline: Instant::now() + redis.timeout(),
        reply: Some(tx),
    })?;
    Ok(rx)
}

/// Gives a grant's unused tokens back to Redis (fire and forget), unless all
/// their slots have passed.
fn send_give(redis: Option<&RedisHandle>, state: &PolicyState, key: Vec<u8>, g: &Grant, now: u64) {
    let Some(redis) = redis.filter(|r| r.is_up()) else {
        return;
    };
    if g.left == 0 || g.debt_now(now)[..state.windows].iter().all(|d| *d == 0) {
        return;
    }
    let _ = redis.send(Job {
        key,
        op: Op::Give {
            unused: g.left,
            tat_after_us: g.tat_after,
        },
        gcra: state.gcra,
        windows: state.windows,
        deadline: Instant::now() + redis.timeout(),
        reply: None,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::edge::{RateLimitConfig, RateWindowConfig};
    use std::time::Duration;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;
    /// Synthetic clock start, far from the real process clock.
    const T0: u64 = 1_000 * S;

    fn policy(
        name: &str,
        limits: &[(u64, u64, Option<u64>)],
        max_keys: usize,
    ) -> Arc<RateLimitPolicy> {
        let raw = RateLimitConfig {
            name: name.into(),
            key: "client_ip".into(),
            limits: limits
                .iter()
                .map(|&(requests, per_ms, burst)| RateWindowConfig {
                    requests,
                    per: Duration::from_millis(per_ms),
                    burst,
                })
                .collect(),
            max_keys,
            backend: "local".into(),
            failure_mode: "open".into(),
        };
        let mut issues = Vec::new();
        let p = RateLimitPolicy::from_raw(&raw, "rate_limits[0]", None, &mut issues);
        assert!(issues.is_empty(), "{issues:?}");
        Arc::new(p.unwrap())
    }

    fn allowed(d: &RateDecision) -> bool {
        matches!(d, RateDecision::Allowed(_))
    }

    fn metric(limiter: &RateLimiter, series: &str) -> u64 {
        let mut out = String::new();
        limiter.prometheus(&mut out);
        out.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{series} not in\n{out}"))
    }

    #[test]
    fn small_limits_are_exact_across_shards() {
        let global = RateLimiter::new();
        let p = policy("per-ip", &[(10, 1000, None)], 100);
        let (a, b) = (
            ShardLimiter::new(global.clone(), 0),
            ShardLimiter::new(global.clone(), 1),
        );
        // The burst of 10, split however the requests land.
        for i in 0..10 {
            let shard = if i % 3 == 0 { &a } else { &b };
            assert!(
                allowed(&shard.check_local(&p, &key_digest(b"1.2.3.4"), T0)),
                "request {i}"
            );
        }
        let RateDecision::Limited {
            headers,
            retry_after_secs,
        } = b.check_local(&p, &key_digest(b"1.2.3.4"), T0)
        else {
            panic!("the 11th request must be limited");
        };
        assert_eq!(retry_after_secs, 1, "100 ms, rounded up");
        assert_eq!(
            (headers.remaining, headers.quota, headers.window_secs),
            (Some(0), 10, 1)
        );
        assert!(!allowed(&a.check_local(&p, &key_digest(b"1.2.3.4"), T0)));
        // Other keys have their own bucket.
        assert!(allowed(&a.check_local(&p, &key_digest(b"5.6.7.8"), T0)));
        // Refill: one token per 100 ms, on whichever shard asks.
        assert!(!allowed(&a.check_local(
            &p,
            &key_digest(b"1.2.3.4"),
            T0 + 99 * MS
        )));
        assert!(allowed(&a.check_local(
            &p,
            &key_digest(b"1.2.3.4"),
            T0 + 100 * MS
        )));
        assert!(!allowed(&b.check_local(
            &p,
            &key_digest(b"1.2.3.4"),
            T0 + 150 * MS
        )));
        assert!(allowed(&b.check_local(
            &p,
            &key_digest(b"1.2.3.4"),
            T0 + 200 * MS
        )));
        assert_eq!(
            metric(
                &global,
                "hypergate_ratelimit_admitted_total{policy=\"per-ip\"}"
            ),
            13
        );
        assert_eq!(
            metric(
                &global,
                "hypergate_ratelimit_limited_total{policy=\"per-ip\"}"
            ),
            4
        );
        // No leases above one token for a limit this small: nothing held on the shards.
        assert_eq!(a.leased_keys() + b.leased_keys(), 0);
    }

    #[test]
    fn headers_count_down_and_reset() {
        let global = RateLimiter::new();
        let p = policy("api", &[(5, 1000, None), (100, 60_000, None)], 100);
        let a = ShardLimiter::new(global, 0);
        let RateDecision::Allowed(h) = a.check_local(&p, &key_digest(b"k"), T0) else {
            panic!()
        };
        // The per-second window is the tighter one: 4 left, full again in 200 ms -> 1 s.
        assert_eq!(
            (h.quota, h.window_secs, h.remaining, h.reset_secs),
            (5, 1, Some(4), 1)
        );
        let mut out = Vec::new();
        h.write(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "RateLimit-Policy: \"api\";q=5;w=1\r\nRateLimit: \"api\";r=4;t=1\r\n"
        );
        for _ in 0..4 {
            a.check_local(&p, &key_digest(b"k"), T0);
        }
        let RateDecision::Limited { headers, .. } = a.check_local(&p, &key_digest(b"k"), T0) else {
            panic!()
        };
        assert_eq!(headers.remaining, Some(0));
    }

    #[test]
    fn a_request_must_fit_every_window() {
        let global = RateLimiter::new();
        // 100 per second, but 5 per minute.
        let p = policy("two", &[(100, 1000, None), (5, 60_000, None)], 100);
        let a = ShardLimiter::new(global.clone(), 0);
        let admitted = (0..50)
            .filter(|_| allowed(&a.check_local(&p, &key_digest(b"k"), T0)))
            .count();
        assert_eq!(admitted, 5);
        let RateDecision::Limited {
            headers,
            retry_after_secs,
        } = a.check_local(&p, &key_digest(b"k"), T0 + S)
        else {
            panic!()
        };
        assert_eq!(retry_after_secs, 11, "a minute-window token every 12 s");
        assert_eq!(
            (headers.quota, headers.window_secs),
            (5, 60),
            "the tightest window"
        );
        // The per-second window was rolled back for every refused request: after
        // 12 s exactly one more fits, not zero.
        assert!(allowed(&a.check_local(&p, &key_digest(b"k"), T0 + 12 * S)));
        assert!(!allowed(&a.check_local(&p, &key_digest(b"k"), T0 + 12 * S)));
    }

    #[test]
    fn leases_grow_with_demand_and_unused_tokens_come_back() {
        let global = RateLimiter::new();
        // 100 000/s: leases up to 625 tokens; burst 1000.
        let p = policy("fast", &[(100_000, 1000, Some(1000))], 100);
        let (a, b) = (
            ShardLimiter::new(global.clone(), 0),
            ShardLimiter::new(global.clone(), 1),
        );
        assert_eq!(p.max_lease(2), 250, "burst / (2 × shards) caps it");
        // Shard A is busy: its leases double 1, 2, 4, ... up to 250.
        for _ in 0..600 {
            assert!(allowed(&a.check_local(&p, &key_digest(b"k"), T0)));
        }
        let leases = metric(&global, "hypergate_ratelimit_leases_total{policy=\"fast\"}");
        assert!(leases < 12, "600 requests in {leases} leases");
        // A holds leased tokens; B gets what is left of the burst, never more in total.
        let b_admitted = (0..2000)
            .filter(|_| allowed(&b.check_local(&p, &key_digest(b"k"), T0)))
            .count();
        let held = {
            let inner = a.inner.borrow();
            inner.slots[0].leases[&key_digest(b"k")]
                .cur
                .map_or(0, |g| g.left)
        };
        assert_eq!(
            600 + b_admitted as u64 + held,
            1000,
            "A used 600, holds {held}"
        );
        assert!(!allowed(&b.check_local(&p, &key_digest(b"k"), T0)));
        // A's lease expires (50 ms): its unused tokens go back when A next sweeps.
        // 1 ms later B finds them (plus the 100 tokens refilled in 1 ms).
        a.check_local(&p, &key_digest(b"other"), T0 + 50 * MS);
        let b_after = (0..2000)
            .filter(|_| allowed(&b.check_local(&p, &key_digest(b"k"), T0 + 51 * MS)))
            .count() as u64;
        // 5 100 refilled by 51 ms, capped at the 1 000 burst; minus what B's
        // own live lease still holds, and A's one request on another key.
        assert!(
            b_after >= held && b_after <= 1000,
            "{b_after} (held {held})"
        );
    }

    #[test]
    fn over_admission_is_bounded_by_rate_times_ttl() {
        let global = RateLimiter::new();
        let rate = 10_000;
        let p = policy("bound", &[(rate, 1000, Some(500))], 100);
        let shards: Vec<ShardLimiter> = (0..2)
            .map(|i| ShardLimiter::new(global.clone(), i))
            .collect();
        // Both shards hammer the key, one request each every 20 µs, for 10 s.
        let mut admitted = 0u64;
        let step = 20_000;
        let mut now = T0;
        while now < T0 + 10 * S {
            for s in &shards {
                admitted += u64::from(allowed(&s.check_local(&p, &key_digest(b"k"), now)));
            }
            now += step;
        }
        let exact = rate * 10 + 500;
        // Over: at most rate × ttl (500); under: at most the tokens stranded in leases.
        assert!(
            admitted <= exact + rate * 50 / 1000,
            "{admitted} > {exact} + rate × ttl"
        );
        assert!(
            admitted as f64 >= exact as f64 * 0.98,
            "{admitted} < 98% of {exact}"
        );
    }

    #[test]
    fn keys_beyond_max_keys_share_the_overflow_bucket_and_idle_keys_expire() {
        let global = RateLimiter::new();
        let p = policy("capped", &[(2, 1000, None)], 3);
        let a = ShardLimiter::new(global.clone(), 0);
        // 1000 distinct keys, two requests each: only three get their own bucket.
        let mut admitted = 0;
        for i in 0..1000u32 {
            for _ in 0..2 {
                admitted += usize::from(allowed(&a.check_local(
                    &p,
                    &key_digest(&i.to_be_bytes()),
                    T0,
                )));
            }
        }
        // 3 tracked keys × 2 + the overflow bucket's burst of 2.
        assert_eq!(admitted, 8);
        assert_eq!(
            metric(&global, "hypergate_ratelimit_keys{policy=\"capped\"}"),
            3
        );
        assert_eq!(
            metric(
                &global,
                "hypergate_ratelimit_overflow_total{policy=\"capped\"}"
            ),
            1994
        );
        // Still refusing later keys, and memory did not grow.
        assert!(!allowed(&a.check_local(&p, &key_digest(b"late"), T0)));
        assert_eq!(
            metric(&global, "hypergate_ratelimit_keys{policy=\"capped\"}"),
            3
        );
        // Buckets full again after 1 s, deleted after 1 s more of grace.
        assert_eq!(global.sweep(T0 + 1500 * MS), 0);
        assert_eq!(global.sweep(T0 + 2 * S), 3);
        assert_eq!(
            metric(&global, "hypergate_ratelimit_keys{policy=\"capped\"}"),
            0
        );
        assert_eq!(
            metric(
                &global,
                "hypergate_ratelimit_keys_expired_total{policy=\"capped\"}"
            ),
            3
        );
        // A new key is tracked again, with a fresh bucket.
        assert!(allowed(&a.check_local(
            &p,
            &key_digest(b"late"),
            T0 + 2 * S
        )));
        assert_eq!(
            metric(&global, "hypergate_ratelimit_keys{policy=\"capped\"}"),
            1
        );
    }

    #[test]
    fn reload_keeps_buckets_of_unchanged_policies() {
        let global = RateLimiter::new();
        let p1 = policy("keep", &[(3, 60_000, None)], 100);
        let q1 = policy("change", &[(3, 60_000, None)], 100);
        global.install(&[p1.clone(), q1.clone()], None);
        let a = ShardLimiter::new(global.clone(), 0);
        for p in [&p1, &q1] {
            for _ in 0..3 {
                assert!(allowed(&a.check_local(p, &key_digest(b"k"), T0)));
            }
            assert!(!allowed(&a.check_local(p, &key_digest(b"k"), T0)));
        }
        // Reload: "keep" is the same policy (a new object), "change" has a new limit.
        let p2 = policy("keep", &[(3, 60_000, None)], 100);
        let q2 = policy("change", &[(4, 60_000, None)], 100);
        drop((p1, q1));
        global.install(&[p2.clone(), q2.clone()], None);
        assert!(
            !allowed(&a.check_local(&p2, &key_digest(b"k"), T0)),
            "same buckets"
        );
        assert!(
            allowed(&a.check_local(&q2, &key_digest(b"k"), T0)),
            "new buckets"
        );
        // Counters survive the change.
        assert_eq!(
            metric(
                &global,
                "hypergate_ratelimit_admitted_total{policy=\"change\"}"
            ),
            4
        );
    }
}
