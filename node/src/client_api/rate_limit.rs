//! Token buckets per key: per client address for the endpoints worth guessing at (login,
//! register, password checks), answered with `M_LIMIT_EXCEEDED` and a retry delay; per server
//! (or room) for what other servers send (`crate::limits`).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::RateLimit;

/// Past this many tracked keys, full buckets (keys that went quiet) are dropped.
const MAX_TRACKED: usize = 10_000;

/// A longer wait is reported as this (a misconfigured, near-zero rate must not overflow).
const MAX_WAIT: Duration = Duration::from_secs(3600);

pub(crate) struct RateLimiter<K = IpAddr> {
    limit: RateLimit,
    buckets: Mutex<HashMap<K, Bucket>>,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl<K: Hash + Eq> RateLimiter<K> {
    pub(crate) fn new(limit: RateLimit) -> RateLimiter<K> {
        RateLimiter {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request's worth from `key`'s bucket, or says how long until there is one.
    pub(crate) fn check(&self, key: K) -> Result<(), Duration> {
        let burst = f64::from(self.limit.burst.max(1));
        let rate = if self.limit.per_second.is_finite() {
            self.limit.per_second.max(1e-9)
        } else {
            1e-9
        };
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_TRACKED {
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() * rate < burst
            });
            // Every tracked key is still busy (many Sybil servers at once): a new one waits
            // rather than growing the map without bound.
            if buckets.len() >= MAX_TRACKED && !buckets.contains_key(&key) {
                return Err(Duration::from_secs(1));
            }
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        let refill = now.duration_since(bucket.updated).as_secs_f64() * rate;
        bucket.tokens = (bucket.tokens + refill).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait =
                Duration::try_from_secs_f64((1.0 - bucket.tokens) / rate).unwrap_or(MAX_WAIT);
            Err(wait.min(MAX_WAIT))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_refused_then_refilled() {
        let limiter = RateLimiter::new(RateLimit {
            burst: 3,
            per_second: 20.0,
        });
        let ip: IpAddr = [127, 0, 0, 1].into();
        for _ in 0..3 {
            assert!(limiter.check(ip).is_ok());
        }
        let wait = limiter.check(ip).unwrap_err();
        assert!(wait <= Duration::from_millis(50), "{wait:?}");
        let stingy = RateLimiter::new(RateLimit {
            burst: 1,
            per_second: 0.0,
        });
        assert!(stingy.check(ip).is_ok());
        assert_eq!(stingy.check(ip), Err(MAX_WAIT), "no panic on a zero rate");
        // Another address has its own bucket.
        assert!(limiter.check([127, 0, 0, 2].into()).is_ok());
        std::thread::sleep(wait + Duration::from_millis(5));
        assert!(limiter.check(ip).is_ok());
    }
}
