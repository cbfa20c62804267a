//! "N per minute" as a token bucket per key, shared by the API's per-user request
//! limit and by `auth`'s per-address limit on failed logins.
//!
//! A leaf: it knows no HTTP and no store, and answers "seconds to wait" rather than an
//! error, so each caller words its own refusal (429 with `Retry-After` in the API).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A key starts with N requests and earns one back every 60/N seconds. Bursts are at
/// most N, the long-run rate is exactly N a minute, and a refused caller is told to
/// the second when its next request will pass, instead of waiting for a window to end.
#[derive(Debug)]
pub struct RateLimiter<K = String> {
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K> Default for RateLimiter<K> {
    fn default() -> Self {
        RateLimiter { buckets: Mutex::new(HashMap::new()) }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// The key's own limit as of its last request: pruning refills each bucket at its
    /// own rate, never at the rate of whoever happens to trigger the pruning.
    limit: u32,
}

const WINDOW: Duration = Duration::from_secs(60);
/// Keys tracked before full buckets (the same as absent ones) are dropped: bounds the
/// memory a stream of distinct callers can take (~100 bytes a key).
const MAX_KEYS: usize = 100_000;

impl Bucket {
    /// The bucket's tokens at `now`, refilled at `limit` per minute up to `limit`.
    fn refill(&mut self, limit: u32, now: Instant) {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * f64::from(limit) / WINDOW.as_secs_f64();
        self.tokens = (self.tokens + earned).min(f64::from(limit));
        self.at = now;
    }

    /// Whole seconds until one token is there (at least 1).
    fn wait_secs(&self, limit: u32) -> u64 {
        let missing = (1.0 - self.tokens).max(0.0);
        // Less a hair, so float rounding cannot add a second: 20.000000001 is 20.
        ((missing * WINDOW.as_secs_f64() / f64::from(limit) - 1e-6).ceil() as u64).max(1)
    }
}

impl<K: std::hash::Hash + Eq + Clone> RateLimiter<K> {
    /// Takes one token of `key`; `limit` 0 means unlimited. `Some(seconds to wait)`
    /// when there is none (the request is refused and not counted).
    pub fn take(&self, key: &K, limit: u32, now: Instant) -> Option<u64> {
        if limit == 0 {
            return None;
        }
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if b.len() >= MAX_KEYS {
            b.retain(|_, bucket| {
                bucket.refill(bucket.limit, now);
                bucket.tokens < f64::from(bucket.limit)
            });
        }
        let bucket = b.entry(key.clone()).or_insert(Bucket { tokens: f64::from(limit), at: now, limit });
        bucket.limit = limit;
        bucket.refill(limit, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            None
        } else {
            Some(bucket.wait_secs(limit))
        }
    }

    /// Counts one event without refusing it (failed logins are counted, then judged
    /// by [`RateLimiter::retry_after`] on the next attempt).
    pub fn consume(&self, key: K, limit: u32, now: Instant) {
        let _ = self.take(&key, limit, now);
    }

    /// `Some(seconds)` while `key` has used up its budget; does not count.
    pub fn retry_after(&self, key: &K, limit: u32, now: Instant) -> Option<u64> {
        if limit == 0 {
            return None;
        }
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = b.get_mut(key)?;
        bucket.refill(limit, now);
        (bucket.tokens < 1.0).then(|| bucket.wait_secs(limit))
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    #[test]
    fn rate_limit_bucket() {
        let r = RateLimiter::default();
        let t0 = Instant::now();
        let a = "a".to_owned();
        assert_eq!(r.take(&a, 2, t0), None);
        assert_eq!(r.take(&a, 2, t0), None);
        // One request back every 30 s; 10 s of it are gone.
        assert_eq!(r.take(&a, 2, t0 + Duration::from_secs(10)), Some(20));
        assert_eq!(r.take(&"b".to_owned(), 2, t0), None, "limits are per key");
        assert_eq!(r.take(&a, 2, t0 + Duration::from_secs(30)), None, "one earned back");
        assert!(r.take(&a, 2, t0 + Duration::from_secs(31)).is_some());
        assert_eq!(r.take(&a, 2, t0 + Duration::from_secs(600)), None, "refilled");
        assert_eq!(r.take(&a, 2, t0 + Duration::from_secs(600)), None, "up to the limit");
        assert!(r.take(&a, 2, t0 + Duration::from_secs(600)).is_some(), "and no further");
        assert_eq!(r.take(&a, 0, t0), None, "0 = unlimited");
    }

    #[test]
    fn pruning_a_full_map_refills_each_key_at_its_own_limit() {
        let r = RateLimiter::default();
        let t0 = Instant::now();
        let slow = "slow".to_owned();
        assert_eq!(r.take(&slow, 1, t0), None);
        assert!(r.take(&slow, 1, t0).is_some(), "one a minute");
        for i in 0..MAX_KEYS {
            r.consume(format!("k{i}"), 1, t0);
        }
        // A caller with a high limit fills the map and triggers pruning a second later.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(r.take(&"fast".to_owned(), 100_000, t1), None);
        assert!(r.take(&slow, 1, t1).is_some(), "pruning refilled a 1/min key at another caller's limit");
    }

    #[test]
    fn failures_block_until_earned_back() {
        let r: RateLimiter<IpAddr> = RateLimiter::default();
        let ip: IpAddr = [10, 0, 0, 1].into();
        let t0 = Instant::now();
        assert_eq!(r.retry_after(&ip, 3, t0), None, "unknown addresses are not blocked");
        for _ in 0..3 {
            r.consume(ip, 3, t0);
        }
        assert_eq!(r.retry_after(&ip, 3, t0), Some(20));
        assert_eq!(r.retry_after(&ip, 3, t0 + Duration::from_secs(20)), None);
        assert_eq!(r.retry_after(&ip, 0, t0), None, "0 = unlimited");
    }
}
