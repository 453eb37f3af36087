//! Per-account sending rate: a token bucket per account, in memory (the
//! daily cap, which must survive restarts, is counted in the store).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct RateLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// A burst of `per_minute` messages, then one every `60 / per_minute`
    /// seconds; 0 turns the limit off.
    pub fn new(per_minute: u32) -> Self {
        RateLimiter {
            per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one message's worth for `handle`, or says how long to wait.
    pub fn take(&self, handle: &str) -> Result<(), Duration> {
        self.take_at(handle, Instant::now())
    }

    fn take_at(&self, handle: &str, now: Instant) -> Result<(), Duration> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let capacity = f64::from(self.per_minute);
        let per_sec = capacity / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > 100_000 {
            // Full buckets are the same as no bucket.
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * per_sec < capacity
            });
        }
        let (tokens, at) = buckets.entry(handle.to_string()).or_insert((capacity, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * per_sec).min(capacity);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / per_sec))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let limiter = RateLimiter::new(3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.take_at("alice", t0).is_ok());
        }
        let wait = limiter.take_at("alice", t0).unwrap_err();
        assert!(wait <= Duration::from_secs(20) && wait > Duration::from_secs(19));
        assert!(limiter.take_at("bob", t0).is_ok(), "per account");
        assert!(limiter
            .take_at("alice", t0 + Duration::from_secs(20))
            .is_ok());
        assert!(limiter
            .take_at("alice", t0 + Duration::from_secs(21))
            .is_err());
        assert!(RateLimiter::new(0).take_at("x", t0).is_ok());
    }
}
