//! Per-device token buckets: each device may burst to `burst` assets, refilled at `rate`/s.
//!
//! A request costs a token per asset it names, so a batch counts what it licenses and batching
//! does not widen a device's rate. A request is admitted while the bucket holds at least one
//! token, and what it costs beyond that is carried as debt (the bucket goes negative): a batch
//! larger than the burst is never starved, and the device then waits for the debt to refill —
//! on average the same `rate` assets per second as single requests. A refusal says how long
//! until the bucket is positive again (HTTP `Retry-After`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    /// Tokens added per second.
    pub rate: f64,
    /// Bucket capacity.
    pub burst: f64,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Self {
        RateLimiter {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key`; false when the bucket is empty.
    pub fn allow(&self, key: &str) -> bool {
        self.admit_at(key, 1.0, Instant::now()).is_ok()
    }

    /// Admits a request of `cost` tokens for `key` if the bucket holds one token at least,
    /// carrying the rest as debt; else how long until it does.
    pub fn admit(&self, key: &str, cost: f64) -> Result<(), Duration> {
        self.admit_at(key, cost, Instant::now())
    }

    fn admit_at(&self, key: &str, cost: f64, now: Instant) -> Result<(), Duration> {
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let b = map.entry(key.to_string()).or_insert(Bucket {
            tokens: self.limit.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.limit.rate).min(self.limit.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= cost.max(1.0);
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - b.tokens) / self.limit.rate.max(f64::MIN_POSITIVE),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_drains_and_refills_per_key() {
        let rl = RateLimiter::new(RateLimit {
            rate: 2.0,
            burst: 3.0,
        });
        let t0 = Instant::now();
        assert!(rl.admit_at("a", 1.0, t0).is_ok());
        assert!(rl.admit_at("a", 1.0, t0).is_ok());
        assert!(rl.admit_at("a", 1.0, t0).is_ok());
        assert!(rl.admit_at("a", 1.0, t0).is_err());
        // Another device has its own bucket.
        assert!(rl.admit_at("b", 1.0, t0).is_ok());
        // Half a second refills one token at 2/s.
        assert!(rl
            .admit_at("a", 1.0, t0 + Duration::from_millis(500))
            .is_ok());
        assert!(rl
            .admit_at("a", 1.0, t0 + Duration::from_millis(500))
            .is_err());
    }

    #[test]
    fn a_batch_costs_a_token_per_asset_and_carries_its_debt() {
        let rl = RateLimiter::new(RateLimit {
            rate: 100.0,
            burst: 10.0,
        });
        let t0 = Instant::now();
        // Larger than the burst, still admitted (never starved) ...
        assert!(rl.admit_at("a", 50.0, t0).is_ok());
        // ... and the 40-token debt is paid before the next request: 0.41 s at 100/s.
        let wait = rl.admit_at("a", 1.0, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.41).abs() < 1e-9, "{wait:?}");
        assert!(rl
            .admit_at("a", 1.0, t0 + Duration::from_millis(400))
            .is_err());
        assert!(rl.admit_at("a", 1.0, t0 + wait).is_ok());
    }
}
