//! The MX's tokio driver: accepts TCP connections, enforces connection limits
//! and timeouts, runs STARTTLS, and feeds bytes through [`Session`].

use super::accept::Acceptor;
use super::session::{Action, Session, SessionConfig};
use crate::config::SmtpConfig;
use omb_shared::limits::ConnectionLimits;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info_span, warn, Instrument};

pub struct MxServer {
    pub acceptor: Arc<Acceptor>,
    pub config: SmtpConfig,
    pub hostname: String,
    pub tls: Option<TlsAcceptor>,
    limits: Arc<ConnectionLimits>,
}

impl MxServer {
    pub fn new(
        acceptor: Arc<Acceptor>,
        config: SmtpConfig,
        hostname: String,
        tls: Option<TlsAcceptor>,
    ) -> Arc<Self> {
        let limits = ConnectionLimits::new(config.max_connections_per_ip, config.max_connections);
        Arc::new(MxServer {
            acceptor,
            config,
            hostname,
            tls,
            limits,
        })
    }
}

/// Accepts connections until the listener fails.
pub async fn serve(listener: TcpListener, server: Arc<MxServer>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let server = server.clone();
        tokio::spawn(async move {
            let Some(_admitted) = server.limits.admit(peer.ip()) else {
                let mut stream = stream;
                let _ = stream
                    .write_all(
                        b"421 4.7.0 Too many connections from your address, try again later\r\n",
                    )
                    .await;
                return;
            };
            let span = info_span!("smtp", peer = %peer);
            handle(stream, peer, &server).instrument(span).await;
        });
    }
}

enum Outcome {
    Closed,
    StartTls,
}

async fn handle(stream: TcpStream, peer: SocketAddr, server: &MxServer) {
    let _ = stream.set_nodelay(true);
    let config = SessionConfig {
        hostname: server.hostname.clone(),
        max_message_size: server.config.max_message_size,
        max_recipients: server.config.max_recipients,
        tls_available: server.tls.is_some(),
        max_errors: 10,
    };
    let mut session = Session::new(config, peer.ip(), false);
    let mut stream = stream;
    match drive(&mut stream, &mut session, peer, server).await {
        Outcome::Closed => {
            let _ = stream.shutdown().await;
        }
        Outcome::StartTls => {
            let Some(tls) = server.tls.clone() else {
                return;
            };
            let handshake = tokio::time::timeout(Duration::from_secs(30), tls.accept(stream)).await;
            let mut tls_stream = match handshake {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    debug!(error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            session.tls_started();
            if let Outcome::Closed = drive(&mut tls_stream, &mut session, peer, server).await {
                let _ = tls_stream.shutdown().await;
            }
        }
    }
}

async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    session: &mut Session,
    peer: SocketAddr,
    server: &MxServer,
) -> Outcome {
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    let mut data_started: Option<std::time::Instant> = None;
    // The accounts accepted at RCPT in this transaction, by handle, for the
    // end of DATA. Every accepted recipient's account is written here at its
    // RCPT, so an entry left by an abandoned transaction (RSET) is never used:
    // the next transaction's recipients overwrite the ones they use.
    let mut checked: std::collections::HashMap<String, crate::store::Recipient> =
        std::collections::HashMap::new();
    let command_timeout = Duration::from_secs(server.config.command_timeout_secs);
    let data_timeout = Duration::from_secs(server.config.data_timeout_secs);
    loop {
        let mut input = &pending[..];
        loop {
            match session.feed(&mut input) {
                None => break,
                Some(Action::CheckRecipient(addr)) => {
                    let (verdict, account) = server.acceptor.check_recipient_keep(&addr).await;
                    if let Some(account) = account {
                        checked.insert(account.handle.clone(), account);
                    }
                    session.recipient_checked(addr, verdict);
                }
                Some(Action::Store(tx)) => {
                    // Say what we have so far before the (slower) store.
                    if write(stream, session).await.is_err() {
                        return Outcome::Closed;
                    }
                    let verdict = server.acceptor.store_checked(tx, peer.ip(), &checked).await;
                    checked.clear();
                    session.message_stored(verdict);
                }
                Some(Action::StartTls) => {
                    // Anything pipelined after STARTTLS is dropped (RFC 3207 section 4.2).
                    return match write(stream, session).await {
                        Ok(()) => Outcome::StartTls,
                        Err(_) => Outcome::Closed,
                    };
                }
                Some(Action::Close) => {
                    let _ = write(stream, session).await;
                    return Outcome::Closed;
                }
            }
        }
        pending.clear();
        if write(stream, session).await.is_err() || session.is_closed() {
            return Outcome::Closed;
        }
        // A command must come within the command timeout; a whole DATA transfer
        // within the data timeout, however the client trickles it.
        let limit = if session.in_data() {
            let start = *data_started.get_or_insert_with(std::time::Instant::now);
            data_timeout.saturating_sub(start.elapsed())
        } else {
            data_started = None;
            command_timeout
        };
        match tokio::time::timeout(limit, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Outcome::Closed,
            Ok(Ok(n)) => pending.extend_from_slice(&buf[..n]),
            Err(_) => {
                session.timed_out();
                let _ = write(stream, session).await;
                return Outcome::Closed;
            }
        }
    }
}

async fn write<S: AsyncWrite + Unpin>(
    stream: &mut S,
    session: &mut Session,
) -> std::io::Result<()> {
    let out = session.take_output();
    if !out.is_empty() {
        tokio::time::timeout(Duration::from_secs(60), async {
            stream.write_all(&out).await?;
            stream.flush().await
        })
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out"))??;
    }
    Ok(())
}
