//! Connection reuse between delivery passes: an SMTP connection that ended a
//! pass cleanly waits, idle, for the next pass to the same host, instead of
//! a QUIT and a new connection, greeting, EHLO and STARTTLS each time (as
//! Postfix's connection cache does, `smtp_connection_cache_time_limit`).
//!
//! A connection is kept for its host name, address and TLS requirement
//! together, so a pass under a stricter policy (MTA-STS `enforce`, DANE)
//! never takes one opened under a looser one. Before reuse it is checked
//! with `RSET` (RFC 5321 §4.1.1.5): a server that closed it meanwhile costs
//! a fresh connection, never a failed delivery. Idle connections are closed
//! with `QUIT` after `idle`, and none is reused past `LIFETIME`.

use super::smtp::{Connection, TlsRequirement};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::debug;

/// No connection is reused once this old (Postfix's
/// `smtp_connection_reuse_time_limit`).
const LIFETIME: Duration = Duration::from_secs(300);

/// Idle connections kept per host, and in all.
const PER_HOST: usize = 8;
const TOTAL: usize = 256;

/// One host of a destination to try, and what its connection needs of TLS;
/// a kept connection serves only the same host, address and TLS needs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub name: String,
    pub addr: SocketAddr,
    pub tls: TlsRequirement,
}

struct Idle {
    conn: Connection,
    since: Instant,
}

pub struct Pool {
    /// How long a connection may wait idle; 0 turns reuse off.
    idle: Duration,
    kept: Mutex<HashMap<Target, Vec<Idle>>>,
}

impl Pool {
    pub fn new(idle: Duration) -> Self {
        Pool {
            idle,
            kept: Mutex::new(HashMap::new()),
        }
    }

    /// An idle connection for `key` that still answers, if there is one.
    pub async fn take(&self, key: &Target) -> Option<Connection> {
        loop {
            let idle = {
                let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
                let list = kept.get_mut(key)?;
                let idle = list.pop();
                if list.is_empty() {
                    kept.remove(key);
                }
                idle?
            };
            if self.expired(&idle, Instant::now()) {
                close(idle.conn);
                continue;
            }
            let mut conn = idle.conn;
            match conn.reset().await {
                Ok(()) => {
                    debug!(host = %key.name, addr = %key.addr, "reusing a connection");
                    return Some(conn);
                }
                Err(e) => debug!(host = %key.name, error = %e, "a kept connection is gone"),
            }
        }
    }

    /// Keeps `conn` for the next pass to `key`, or closes it when reuse is
    /// off, the connection too old or the pool full.
    pub fn put(&self, key: Target, conn: Connection) {
        let now = Instant::now();
        let refused = {
            let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
            let total: usize = kept.values().map(Vec::len).sum();
            let list = kept.entry(key).or_default();
            let idle = Idle { conn, since: now };
            if self.idle.is_zero()
                || self.expired(&idle, now)
                || list.len() >= PER_HOST
                || total >= TOTAL
            {
                Some(idle.conn)
            } else {
                list.push(idle);
                None
            }
        };
        if let Some(conn) = refused {
            close(conn);
        }
    }

    /// Closes, with `QUIT`, the connections idle too long; run every second
    /// or so.
    pub fn reap(&self) {
        let now = Instant::now();
        let old: Vec<Idle> = {
            let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
            let mut old = Vec::new();
            kept.retain(|_, list| {
                let (stale, fresh): (Vec<Idle>, Vec<Idle>) =
                    list.drain(..).partition(|i| self.expired(i, now));
                old.extend(stale);
                *list = fresh;
                !list.is_empty()
            });
            old
        };
        for idle in old {
            close(idle.conn);
        }
    }

    /// Connections kept now.
    #[cfg(test)]
    fn len(&self) -> usize {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.values().map(Vec::len).sum()
    }

    fn expired(&self, idle: &Idle, now: Instant) -> bool {
        now.duration_since(idle.since) >= self.idle
            || now.duration_since(idle.conn.opened) >= LIFETIME
    }
}

/// Says QUIT on a task of its own: a server slow to answer holds up neither
/// a delivery pass nor the reaping of the other connections.
fn close(conn: Connection) {
    tokio::spawn(conn.quit());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::tls::Trust;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    /// A small SMTP server that counts its connections, takes every message,
    /// and closes a connection after `close_after` replies when set.
    async fn server(close_after: Option<usize>) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                seen.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (r, mut w) = sock.into_split();
                    let mut r = BufReader::new(r);
                    let _ = w.write_all(b"220 sink\r\n").await;
                    let (mut in_data, mut replies) = (false, 0);
                    let mut line = String::new();
                    while r.read_line(&mut line).await.unwrap_or(0) > 0 {
                        let reply: &[u8] = if in_data {
                            in_data = line != ".\r\n";
                            if in_data {
                                b""
                            } else {
                                b"250 ok\r\n"
                            }
                        } else {
                            let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
                            match verb.as_str() {
                                "EHLO" => b"250-sink\r\n250 PIPELINING\r\n",
                                "DATA" => {
                                    in_data = true;
                                    b"354 go on\r\n"
                                }
                                "QUIT" => b"221 bye\r\n",
                                _ => b"250 ok\r\n",
                            }
                        };
                        line.clear();
                        if reply.is_empty() {
                            continue;
                        }
                        if w.write_all(reply).await.is_err() {
                            return;
                        }
                        replies += 1;
                        if close_after.is_some_and(|n| replies >= n) {
                            return;
                        }
                    }
                });
            }
        });
        (addr, count)
    }

    async fn open(addr: SocketAddr) -> Connection {
        let trust = Trust::new(None).expect("trust");
        let tls = TlsRequirement::Opportunistic;
        Connection::open(
            addr,
            "sink",
            "relay.test",
            &trust,
            &tls,
            Duration::from_secs(5),
        )
        .await
        .expect("connect")
    }

    fn target(addr: SocketAddr) -> Target {
        Target {
            name: "sink".into(),
            addr,
            tls: TlsRequirement::Opportunistic,
        }
    }

    async fn deliver(conn: &mut Connection) {
        let rcpts = vec!["b@example.org".to_string()];
        let outcomes = conn
            .send("a@example.net", &rcpts, b"Subject: x\r\n\r\nhi\r\n")
            .await
            .expect("send");
        assert_eq!(outcomes, vec![super::super::smtp::Outcome::Delivered]);
    }

    #[tokio::test]
    async fn a_second_pass_reuses_the_first_connection() {
        let (addr, connections) = server(None).await;
        let pool = Pool::new(Duration::from_secs(5));
        let mut conn = open(addr).await;
        deliver(&mut conn).await;
        pool.put(target(addr), conn);
        assert_eq!(pool.len(), 1);
        let mut conn = pool.take(&target(addr)).await.expect("kept");
        deliver(&mut conn).await;
        assert_eq!(connections.load(Ordering::SeqCst), 1, "one connection");
        let stricter = Target {
            tls: TlsRequirement::Verified,
            ..target(addr)
        };
        pool.put(target(addr), conn);
        assert!(pool.take(&stricter).await.is_none(), "not for MTA-STS");
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_not_handed_out() {
        // Greeting aside, EHLO, MAIL, RCPT, DATA and the message's 250: the
        // server hangs up after the message.
        let (addr, _) = server(Some(5)).await;
        let pool = Pool::new(Duration::from_secs(5));
        let mut conn = open(addr).await;
        deliver(&mut conn).await;
        pool.put(target(addr), conn);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pool.take(&target(addr)).await.is_none());
        assert_eq!(pool.len(), 0);
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_idle_time() {
        let (addr, _) = server(None).await;
        let pool = Pool::new(Duration::from_millis(100));
        pool.put(target(addr), open(addr).await);
        pool.reap();
        assert_eq!(pool.len(), 1, "still fresh");
        tokio::time::sleep(Duration::from_millis(150)).await;
        pool.reap();
        assert_eq!(pool.len(), 0);
        let off = Pool::new(Duration::ZERO);
        off.put(target(addr), open(addr).await);
        assert_eq!(off.len(), 0, "reuse off");
    }
}
