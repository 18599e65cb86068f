//! Exact-match response cache, one per shard (no locks, no cross-core traffic).
//!
//! A key is the xxh3 hash of the alias and the canonical request without its
//! streaming options, so a streamed and a non-streamed call of the same request
//! share an entry. Values are complete answers in the canonical (OpenAI) format;
//! a streamed request that hits is replayed as a stream. Memory is bounded by
//! the bytes of the stored answers (the configured total divided by the number
//! of shards); the oldest entries go first, and entries expire after the TTL.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A cached answer.
pub struct Cached {
    /// The canonical response (`chat.completion` JSON).
    pub response: Rc<serde_json::Value>,
    /// Its serialized size, charged to the budget.
    bytes: usize,
    stored: Instant,
}

/// One shard's cache.
pub struct ResponseCache {
    entries: HashMap<u64, Cached>,
    order: VecDeque<(u64, Instant)>,
    bytes: usize,
    max_bytes: usize,
    ttl: Duration,
}

impl ResponseCache {
    /// An empty cache holding at most `max_bytes` of answers for `ttl`.
    pub fn new(max_bytes: usize, ttl: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            max_bytes,
            ttl,
        }
    }

    /// Changes the bounds (on reload), evicting what no longer fits.
    pub fn resize(&mut self, max_bytes: usize, ttl: Duration) {
        self.max_bytes = max_bytes;
        self.ttl = ttl;
        self.evict(0, Instant::now());
    }

    /// The key of a canonical request under an alias.
    pub fn key(alias: &str, request: &serde_json::Value) -> u64 {
        let mut r = request.clone();
        if let Some(o) = r.as_object_mut() {
            for k in ["stream", "stream_options", "user", "model"] {
                o.remove(k);
            }
        }
        let mut text = alias.as_bytes().to_vec();
        text.push(0);
        text.extend_from_slice(r.to_string().as_bytes());
        xxhash_rust::xxh3::xxh3_64(&text)
    }

    /// A fresh answer for `key`, if any.
    pub fn get(&mut self, key: u64) -> Option<Rc<serde_json::Value>> {
        let now = Instant::now();
        let fresh = self
            .entries
            .get(&key)
            .map(|c| now.duration_since(c.stored) < self.ttl)?;
        if fresh {
            return self.entries.get(&key).map(|c| c.response.clone());
        }
        if let Some(c) = self.entries.remove(&key) {
            self.bytes -= c.bytes;
        }
        None
    }

    /// Stores an answer (not when it alone exceeds the cache).
    pub fn put(&mut self, key: u64, response: serde_json::Value) {
        let bytes = response.to_string().len() + 64;
        if bytes > self.max_bytes {
            return;
        }
        let now = Instant::now();
        if let Some(old) = self.entries.remove(&key) {
            self.bytes -= old.bytes;
        }
        self.evict(bytes, now);
        self.entries.insert(
            key,
            Cached {
                response: Rc::new(response),
                bytes,
                stored: now,
            },
        );
        self.order.push_back((key, now));
        self.bytes += bytes;
    }

    /// Drops expired entries and then the oldest until `room` more bytes fit.
    fn evict(&mut self, room: usize, now: Instant) {
        while let Some(&(key, stored)) = self.order.front() {
            let expired = now.duration_since(stored) >= self.ttl;
            if !expired && self.bytes + room <= self.max_bytes {
                break;
            }
            self.order.pop_front();
            // The entry may have been replaced since; only remove the one stored then.
            if self.entries.get(&key).is_some_and(|c| c.stored == stored) {
                let c = self.entries.remove(&key).expect("checked above");
                self.bytes -= c.bytes;
            }
        }
    }

    /// Entries and bytes held.
    pub fn usage(&self) -> (usize, usize) {
        (self.entries.len(), self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn streaming_flags_do_not_change_the_key() {
        let a = json!({"model": "x", "messages": [{"role": "user", "content": "hi"}], "temperature": 0});
        let mut b = a.clone();
        b["stream"] = true.into();
        b["stream_options"] = json!({"include_usage": true});
        assert_eq!(
            ResponseCache::key("demo", &a),
            ResponseCache::key("demo", &b)
        );
        assert_ne!(
            ResponseCache::key("demo", &a),
            ResponseCache::key("other", &a)
        );
        let mut c = a.clone();
        c["messages"][0]["content"] = "hello".into();
        assert_ne!(
            ResponseCache::key("demo", &a),
            ResponseCache::key("demo", &c)
        );
    }

    #[test]
    fn bounded_by_bytes_oldest_first() {
        let answer = |i: u64| json!({"id": i, "text": "x".repeat(100)});
        let size = answer(0).to_string().len() + 64;
        let mut cache = ResponseCache::new(size * 3, Duration::from_secs(60));
        for i in 0..5 {
            cache.put(i, answer(i));
        }
        assert_eq!(cache.usage().0, 3);
        assert!(cache.usage().1 <= size * 3);
        assert!(cache.get(0).is_none() && cache.get(1).is_none());
        assert_eq!(cache.get(4).unwrap()["id"], 4);
    }

    #[test]
    #[allow(clippy::disallowed_methods, reason = "a unit test waits for a TTL")]
    fn entries_expire() {
        let mut cache = ResponseCache::new(1 << 20, Duration::from_millis(20));
        cache.put(1, json!({"a": 1}));
        assert!(cache.get(1).is_some());
        std::thread::sleep(Duration::from_millis(30));
        assert!(cache.get(1).is_none());
        assert_eq!(cache.usage(), (0, 0));
    }
}
