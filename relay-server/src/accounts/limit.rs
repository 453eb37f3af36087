//! Signups per client: at most N in any window of W seconds, in memory.
//!
//! A client is an IPv4 address or an IPv6 /64 (one home or server usually
//! holds a whole /64, RFC 6177 section 2, so counting single IPv6 addresses
//! would limit nothing). IPv4-mapped IPv6 addresses count as IPv4.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many clients are remembered before old entries are swept.
const SWEEP_AT: usize = 10_000;

pub struct SignupLimiter {
    max: usize,
    window: Duration,
    hits: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl SignupLimiter {
    /// `max` attempts per `window`; `max` 0 turns the limit off.
    pub fn new(max: u32, window: Duration) -> Self {
        SignupLimiter {
            max: usize::try_from(max).unwrap_or(usize::MAX),
            window,
            hits: Mutex::new(HashMap::new()),
        }
    }

    /// Counts an attempt by `ip` at `now`; refused with the time to wait until
    /// the oldest counted attempt leaves the window.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.max == 0 {
            return Ok(());
        }
        let key = client_key(ip);
        let mut hits = self.hits.lock().unwrap_or_else(|e| e.into_inner());
        if hits.len() >= SWEEP_AT {
            let window = self.window;
            hits.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < window)
            });
        }
        let times = hits.entry(key).or_default();
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            times.pop_front();
        }
        if times.len() >= self.max {
            let oldest = times.front().copied().unwrap_or(now);
            return Err(self.window.saturating_sub(now.duration_since(oldest)));
        }
        times.push_back(now);
        Ok(())
    }
}

/// The address a limit counts against: IPv4 as is, IPv6 by its /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut s = v6.segments();
                s[4..].fill(0);
                IpAddr::from(s)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn the_window_slides() {
        let limiter = SignupLimiter::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        assert!(limiter.check(a, t0).is_ok());
        assert!(limiter.check(a, t0 + Duration::from_secs(10)).is_ok());
        assert_eq!(
            limiter.check(a, t0 + Duration::from_secs(20)),
            Err(Duration::from_secs(40))
        );
        // Another client is not affected.
        assert!(limiter.check(ip("192.0.2.2"), t0).is_ok());
        // Once the first attempt is a minute old, one more is allowed.
        assert!(limiter.check(a, t0 + Duration::from_secs(60)).is_ok());
        assert_eq!(
            limiter.check(a, t0 + Duration::from_secs(61)),
            Err(Duration::from_secs(9))
        );
    }

    #[test]
    fn ipv6_counts_by_slash_64() {
        let limiter = SignupLimiter::new(1, Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(limiter.check(ip("2001:db8:1:2::1"), t0).is_ok());
        assert!(limiter.check(ip("2001:db8:1:2:ffff::9"), t0).is_err());
        assert!(limiter.check(ip("2001:db8:1:3::1"), t0).is_ok());
        assert!(limiter.check(ip("198.51.100.7"), t0).is_ok());
        assert!(limiter.check(ip("::ffff:198.51.100.7"), t0).is_err());
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let limiter = SignupLimiter::new(0, Duration::from_secs(60));
        let t0 = Instant::now();
        for _ in 0..100 {
            assert!(limiter.check(ip("192.0.2.1"), t0).is_ok());
        }
    }
}
