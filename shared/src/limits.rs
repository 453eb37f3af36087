//! Limits on simultaneous connections, per client address and in all, for the
//! TCP servers of both programs (the relay's MX and SNI passthrough, the
//! node's IMAP and POP3).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

pub struct ConnectionLimits {
    per_ip: usize,
    total: usize,
    state: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    per_ip: HashMap<IpAddr, usize>,
    total: usize,
}

/// One admitted connection; dropping it makes room for the next.
pub struct Admitted {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl ConnectionLimits {
    pub fn new(per_ip: usize, total: usize) -> Arc<Self> {
        Arc::new(ConnectionLimits {
            per_ip,
            total,
            state: Mutex::new(Counts::default()),
        })
    }

    /// Counts a new connection from `ip`; `None` when the address or the
    /// server is at its limit.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admitted> {
        let mut state = self.state.lock().ok()?;
        let state = &mut *state;
        let n = state.per_ip.entry(ip).or_insert(0);
        if *n >= self.per_ip || state.total >= self.total {
            if *n == 0 {
                state.per_ip.remove(&ip);
            }
            return None;
        }
        *n += 1;
        state.total += 1;
        Some(Admitted {
            limits: self.clone(),
            ip,
        })
    }

    /// Connections open now (for tests and logs).
    pub fn open(&self) -> usize {
        self.state.lock().map(|s| s.total).unwrap_or(0)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Ok(mut state) = self.limits.state.lock() {
            if let Some(n) = state.per_ip.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    state.per_ip.remove(&self.ip);
                }
            }
            state.total = state.total.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_address_and_total_limits_hold_and_free_on_drop() {
        let limits = ConnectionLimits::new(2, 3);
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        let a1 = limits.admit(a).unwrap();
        let _a2 = limits.admit(a).unwrap();
        assert!(limits.admit(a).is_none(), "per address");
        let _b1 = limits.admit(b).unwrap();
        assert!(limits.admit(b).is_none(), "in all");
        assert_eq!(limits.open(), 3);
        drop(a1);
        assert!(limits.admit(b).is_some());
        assert_eq!(limits.state.lock().unwrap().per_ip.len(), 2);
    }
}
