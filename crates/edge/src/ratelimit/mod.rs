//! Rate limiting: GCRA buckets with bursts and several windows, lock-free on the
//! request path, accurate for the whole process (or, with Redis, the whole cluster).
//!
//! Key components:
//! - [`RateLimitPolicy`]: a validated `[[rate_limits]]` entry (built during config validation).
//! - [`RateLimiter`]: process-wide state, created once, surviving reloads: per
//!   policy a lock-free `papaya` map from key to bucket (one `AtomicU64` TAT per
//!   window), the overflow bucket, counters, the idle-key sweeper thread and the
//!   Redis worker thread.
//! - [`ShardLimiter`]: one per shard, what the request path touches: a plain
//!   `HashMap` of *leases* (tokens this shard already took from the shared budget).
//!
//! How a request is checked ([`ShardLimiter::check`]):
//! 1. The shard looks for a live lease for `(policy, key)`; if it holds a token,
//!    the request is admitted with no shared memory touched at all.
//! 2. Otherwise it takes a batch of `k` tokens from the shared bucket: for each
//!    window, one compare-and-swap that advances the window's TAT by `k × t` (or
//!    fewer, "take up to k"). A request must fit every window: when a window grants
//!    fewer tokens than the ones before it, the excess is given back to them at once.
//!    No token left: `429` with the time until the limiting window has one.
//! 3. `k` adapts per key and shard: it starts at 1, doubles while leases run out
//!    within their TTL, shrinks to what was used when they expire, and never
//!    exceeds `max(1, min(rate × ttl / 8, burst / (2 × shards), 4096))` for the
//!    slowest window. Limits below 320 requests per second (80 with Redis) therefore
//!    always lease exactly 1 token: the shard takes it for the request in hand, and
//!    the result is plain GCRA, exact.
//! 4. A lease lives `ttl` (50 ms local, 200 ms Redis). When it expires, the tokens
//!    it did not use go back to the bucket, but only the part of their slots that
//!    is still in the future (a give-back never creates capacity GCRA would not have had).
//! 5. Memory: a key is stored as a 16-byte digest (SHA-256 of what the client
//!    sent, truncated: collision-resistant, the same in every process sharing a
//!    Redis), so a 16 KB header value costs what a 4-byte IP address does. At most
//!    `max_keys` keys per policy; new keys beyond that share one
//!    overflow bucket (counted). A sweeper thread deletes keys whose buckets have
//!    been full for 1 s (a full bucket is the same as a fresh one) every second.
//!    Shard lease maps hold at most 4096 keys per policy and drop leases idle for
//!    two TTLs. A flood of spoofed keys therefore costs at most `max_keys` entries.
//! 6. Redis (`backend = "redis"`): the same GCRA runs in a Lua script (take up to
//!    `k` in every window atomically, with the server's clock, `PEXPIRE` when full).
//!    Shards send lease requests to one worker thread over a channel and await the
//!    reply; they prefetch the next lease when half the current one is used or its
//!    TTL is three-quarters gone, so Redis sees about one call per lease, not per
//!    request. The worker pipelines queued calls, bounds each by `redis.timeout`,
//!    and reconnects in the background. On failure, `failure_mode` decides:
//!    `open` admits, `closed` answers [`RateDecision::Unavailable`]; both counted
//!    and logged at most every 10 s.
//!
//!    A key Redis refused is not asked about again on that shard until a full
//!    lease has refilled (the bucket keeps those tokens), so a client far over its
//!    limit costs about one call per lease time per shard, not one per request.
//!
//! Worst-case error (details in `docs/ratelimit.md`). For one key and window
//! (rate `r`, burst `b`), with `S` shards (for Redis: in all processes) and `L` the
//! longest a token can be held before it is spent (50 ms local; 200 ms plus the
//! reply time, at most `2 × redis.timeout`, with Redis):
//! - tokens are taken from the shared bucket *before* they are spent and spent
//!   within `L`, so admissions over any interval `D` are at most `b + r × (D + L)`;
//!   the excess over exact GCRA (`b + r × D`) is at most
//!   `min(r × L, S × (k_max - 1))` locally and `min(r × L, 2 × S × k_max)` with
//!   Redis (a current and a prefetched lease);
//! - under-admission is bounded by the same count of tokens parked in leases;
//! - with `k_max = 1` (under 320 requests/s local, 80/s Redis) the result is exact GCRA;
//! - time is in integer nanoseconds with the emission interval rounded up, so the
//!   long-run rate is never above the configured one (at most 0.1% below, at 1M/s).

mod gcra;
mod global;
mod policy;
mod redis;
mod shard;

pub use gcra::MAX_WINDOWS;
pub use global::RateLimiter;
pub use policy::redis_connection_info;
pub use policy::{
    validate_redis, FailureMode, RateBackend, RateKey, RateLimitPolicy, RateWindow,
    LOCAL_LEASE_TTL, REDIS_LEASE_TTL,
};
pub use shard::ShardLimiter;

use std::rc::Rc;

/// A rate-limit key as stored: the first 16 bytes of the SHA-256 of the
/// client-chosen key. Fixed size whatever the client sends, and no client can
/// make two keys share a bucket (finding a collision is infeasible).
pub type KeyDigest = [u8; 16];

/// The stored form of a key. SHA-256 rather than a fast hash: Redis keys must
/// agree across processes (so no per-process random seed), and a keyless fast
/// hash would let a client craft collisions into someone else's bucket.
pub fn key_digest(key: &[u8]) -> KeyDigest {
    use sha2::Digest;
    let full = sha2::Sha256::digest(key);
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

/// The outcome of [`ShardLimiter::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateDecision {
    /// Go on; add the headers to the response.
    Allowed(RateHeaders),
    /// Answer 429 with these headers and `Retry-After: retry_after_secs`.
    Limited {
        /// `RateLimit-Policy` and `RateLimit` values.
        headers: RateHeaders,
        /// Seconds until a request can succeed (at least 1).
        retry_after_secs: u64,
    },
    /// Backend unreachable in fail-closed mode (the proxy answers 503).
    Unavailable,
}

/// Values for the IETF headers (draft-ietf-httpapi-ratelimit-headers), for the
/// tightest window: `RateLimit-Policy: "<name>";q=<requests>;w=<window secs>` and
/// `RateLimit: "<name>";r=<remaining>;t=<secs until the bucket is full again>`.
///
/// `r` counts this shard's unused leased tokens plus what the shared bucket
/// held when this shard last touched it (at most one lease TTL ago), so with
/// leases above one token it is an estimate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateHeaders {
    /// Policy name (a shard-local copy: cloning it costs no shared atomic).
    pub policy: Rc<str>,
    /// Requests per window (`q`).
    pub quota: u64,
    /// Window length in seconds (`w`, at least 1).
    pub window_secs: u64,
    /// Requests left (`r`); `None` when unknown (Redis unreachable, failing open):
    /// then only `RateLimit-Policy` is written.
    pub remaining: Option<u64>,
    /// Seconds until the bucket is full again (`t`).
    pub reset_secs: u64,
}

impl RateHeaders {
    /// Appends `RateLimit-Policy: ...\r\n` and `RateLimit: ...\r\n`.
    pub fn write(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        let _ = write!(
            out,
            "RateLimit-Policy: \"{}\";q={};w={}\r\n",
            self.policy, self.quota, self.window_secs
        );
        if let Some(r) = self.remaining {
            let _ = write!(
                out,
                "RateLimit: \"{}\";r={};t={}\r\n",
                self.policy, r, self.reset_secs
            );
        }
    }
}

/// Builds headers for the tightest window: the one with the fewest requests
/// left (the first on ties). `debt[i]` is window `i`'s debt in ns (TAT - now) as
/// the shared bucket last showed it; `leased` tokens are held by this shard.
pub(crate) fn headers_for(
    policy: &RateLimitPolicy,
    name: &Rc<str>,
    debt: &[u64],
    leased: u64,
) -> RateHeaders {
    let mut best: Option<(u64, usize)> = None;
    for (i, g) in policy.gcra().iter().enumerate() {
        let left = g.cap.saturating_sub(debt[i]) / g.t + leased;
        if best.is_none_or(|(b, _)| left < b) {
            best = Some((left, i));
        }
    }
    let (remaining, i) = best.unwrap_or((0, 0));
    let w = &policy.windows[i];
    RateHeaders {
        policy: name.clone(),
        quota: w.requests,
        window_secs: ((w.per.as_millis() + 500) / 1000).max(1) as u64,
        remaining: Some(remaining),
        reset_secs: debt[i].div_ceil(1_000_000_000),
    }
}

/// Headers when the bucket state is unknown (failing open).
pub(crate) fn headers_unknown(policy: &RateLimitPolicy, name: Rc<str>) -> RateHeaders {
    let w = &policy.windows[0];
    RateHeaders {
        policy: name,
        quota: w.requests,
        window_secs: ((w.per.as_millis() + 500) / 1000).max(1) as u64,
        remaining: None,
        reset_secs: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_written_in_draft_syntax() {
        let h = RateHeaders {
            policy: "per-ip".into(),
            quota: 10,
            window_secs: 1,
            remaining: Some(3),
            reset_secs: 1,
        };
        let mut out = Vec::new();
        h.write(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "RateLimit-Policy: \"per-ip\";q=10;w=1\r\nRateLimit: \"per-ip\";r=3;t=1\r\n"
        );
        let mut out = Vec::new();
        RateHeaders {
            remaining: None,
            ..h
        }
        .write(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "RateLimit-Policy: \"per-ip\";q=10;w=1\r\n"
        );
    }
}
