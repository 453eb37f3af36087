//! Per-account sending rate, judged twice: by a token bucket per account in
//! this relay's memory, exact however many submissions arrive at once; and
//! by the rate kept in the store with the account (the generic cell rate
//! algorithm, the same limit), which holds across restarts and for every
//! relay instance sharing the database. The daily cap is counted in the
//! store too.

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

/// Milliseconds each message moves an account's stored rate on: 0 (no
/// limit) or 60 000 / `per_minute`.
pub fn interval_ms(per_minute: u32) -> i64 {
    match per_minute {
        0 => 0,
        n => 60_000 / i64::from(n),
    }
}

/// How long to wait before the stored rate allows one more message, if it
/// does not now: `tat_ms` may lie at most a minute's burst (`per_minute`
/// messages) minus one interval ahead of `now_ms`.
pub fn over_stored_rate(tat_ms: i64, now_ms: i64, per_minute: u32) -> Option<Duration> {
    let interval = interval_ms(per_minute);
    if interval == 0 {
        return None;
    }
    let ahead = tat_ms.max(now_ms) + interval - now_ms;
    (ahead > 60_000).then(|| Duration::from_millis((ahead - 60_000) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_rate_allows_a_burst_then_one_per_interval() {
        let t0 = 1_700_000_000_000;
        let (mut tat, mut accepted) = (0, 0);
        for _ in 0..5 {
            if over_stored_rate(tat, t0, 3).is_none() {
                tat = tat.max(t0) + interval_ms(3);
                accepted += 1;
            }
        }
        assert_eq!(accepted, 3, "a burst of per_minute");
        assert_eq!(
            over_stored_rate(tat, t0 + 1_000, 3),
            Some(Duration::from_secs(19))
        );
        assert_eq!(
            over_stored_rate(tat, t0 + 20_000, 3),
            None,
            "one every 20 s"
        );
        assert_eq!(over_stored_rate(i64::MAX / 2, t0, 0), None, "no limit");
    }

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
