//! Limits on simultaneous connections, per client address and in all, for the
//! TCP servers of both programs (the relay's MX and SNI passthrough, the
//! node's IMAP, POP3 and submission), and the accept loop that applies them.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

/// The pause after a failed `accept`, so a persistent error (no more file
/// descriptors) does not spin a core.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// How long a refused client gets to take its refusal line.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(10);

/// A TCP server's front door: what it is called in logs, and the line that
/// tells a client over the limits why it is closed.
#[derive(Debug, Clone, Copy)]
pub struct Door {
    /// `imap`, `pop3`, `submission`…: the `service` field of each
    /// connection's span.
    pub service: &'static str,
    /// Whether the port speaks TLS from the first byte: such a client gets no
    /// plaintext refusal line (it would read it as a broken handshake).
    pub implicit_tls: bool,
    /// The protocol's "too busy" reply, CRLF included.
    pub refusal: &'static [u8],
}

/// Accepts connections until the task is dropped. A connection over `limits`
/// gets the door's refusal line and is closed; each admitted one runs
/// `handle` on a task of its own, inside a span naming the service and the
/// peer, and holds its place in the limits until `handle` returns.
pub async fn serve_admitted<F, Fut>(
    listener: TcpListener,
    limits: Arc<ConnectionLimits>,
    door: Door,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handle = Arc::new(handle);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, service = door.service, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let span =
            tracing::info_span!("conn", service = door.service, %peer, tls = door.implicit_tls);
        let Some(admitted) = limits.admit(peer.ip()) else {
            let _enter = span.enter();
            tracing::warn!("too many connections from this address; refused");
            if !door.implicit_tls {
                tokio::spawn(async move {
                    let mut stream = stream;
                    let _ =
                        tokio::time::timeout(REFUSAL_TIMEOUT, stream.write_all(door.refusal)).await;
                });
            }
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(
            async move {
                handle(stream, peer).await;
                drop(admitted);
                tracing::debug!("closed");
            }
            .instrument(span),
        );
    }
}

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
