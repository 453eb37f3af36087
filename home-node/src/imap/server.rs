//! The thin tokio driver: listeners, TLS (implicit, and STARTTLS per RFC 3501
//! 6.2.1), timeouts, a per-address connection cap, and the loop that moves
//! bytes between the socket and the session machine.

use super::commands::{Flow, Handler};
use super::session::{status, Limits, Session, State};
use crate::access::AccessContext;
use imap_codec::imap_types::response::{Code, Response, Status, StatusKind};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast::error::RecvError;
use tracing::Instrument;

/// RFC 9051 5.4: at least 30 minutes once logged in.
const AUTHENTICATED_TIMEOUT: Duration = Duration::from_secs(31 * 60);
/// Before login a client has little reason to wait.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(60);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections from one address at once.
const MAX_PER_ADDRESS: usize = 50;

#[derive(Clone)]
pub struct Server {
    ctx: AccessContext,
    limits: Limits,
    per_address: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// Holds one slot of an address's connection count.
struct Slot {
    ip: IpAddr,
    map: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

enum End {
    Closed,
    StartTls,
}

impl Server {
    pub fn new(ctx: AccessContext) -> Self {
        Server {
            ctx,
            limits: Limits::default(),
            per_address: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn slot(&self, ip: IpAddr) -> Option<Slot> {
        let mut map = self.per_address.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= MAX_PER_ADDRESS {
            return None;
        }
        *n += 1;
        Some(Slot {
            ip,
            map: self.per_address.clone(),
        })
    }

    /// Accepts connections for ever.
    pub async fn run(self, listener: TcpListener, implicit_tls: bool) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "IMAP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let server = self.clone();
            let span = tracing::info_span!("imap", %peer, tls = implicit_tls);
            tokio::spawn(
                async move {
                    let Some(slot) = server.slot(peer.ip()) else {
                        tracing::warn!("too many connections from this address");
                        let mut stream = stream;
                        let _ = stream
                            .write_all(
                                b"* BYE [UNAVAILABLE] too many connections from your address\r\n",
                            )
                            .await;
                        return;
                    };
                    server.connection(stream, peer, implicit_tls).await;
                    drop(slot);
                }
                .instrument(span),
            );
        }
    }

    async fn connection(&self, stream: TcpStream, peer: SocketAddr, implicit_tls: bool) {
        let _ = stream.set_nodelay(true);
        let acceptor = tokio_rustls::TlsAcceptor::from(self.ctx.tls.clone());
        let mut session = Session::new(self.limits);
        let mut handler = Handler::new(self.ctx.clone(), peer.ip(), implicit_tls);
        let caps = handler.capabilities(State::NotAuthenticated);
        session.greet(Some(Code::Capability(caps)), "Own-Mailbox IMAP ready");
        if implicit_tls {
            let Ok(Ok(tls)) =
                tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
            else {
                tracing::debug!("TLS handshake failed");
                return;
            };
            self.serve(tls, &mut session, &mut handler).await;
            return;
        }
        let mut stream = stream;
        match self.serve(&mut stream, &mut session, &mut handler).await {
            End::Closed => {}
            End::StartTls => {
                let Ok(Ok(tls)) =
                    tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                else {
                    tracing::debug!("STARTTLS handshake failed");
                    return;
                };
                handler.set_tls();
                self.serve(tls, &mut session, &mut handler).await;
            }
        }
    }

    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut stream: S,
        session: &mut Session,
        handler: &mut Handler,
    ) -> End {
        let mut changes = self.ctx.store.subscribe_changes();
        let mut changes_open = true;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if session.has_output() && stream.write_all(&session.take_output()).await.is_err() {
                return End::Closed;
            }
            if session.closing() {
                let _ = stream.flush().await;
                let _ = stream.shutdown().await;
                return End::Closed;
            }
            if let Some(event) = session.next_event() {
                let mut flow = handler.event(session, event).await;
                while flow == Flow::More {
                    if stream.write_all(&session.take_output()).await.is_err() {
                        return End::Closed;
                    }
                    flow = handler.resume(session).await;
                }
                if flow == Flow::StartTls {
                    if stream.write_all(&session.take_output()).await.is_err()
                        || stream.flush().await.is_err()
                    {
                        return End::Closed;
                    }
                    // RFC 3501 6.2.1: nothing sent before the handshake counts.
                    session.discard_input();
                    return End::StartTls;
                }
                continue;
            }
            if stream.flush().await.is_err() {
                return End::Closed;
            }
            let limit = if session.state() == State::NotAuthenticated {
                LOGIN_TIMEOUT
            } else {
                AUTHENTICATED_TIMEOUT
            };
            tokio::select! {
                read = tokio::time::timeout(limit, stream.read(&mut buf)) => match read {
                    Err(_) => {
                        session.send(&Response::Status(Status::bye(None, "autologout; idle for too long").unwrap_or_else(|_| bye())));
                        session.close();
                    }
                    Ok(Ok(0)) | Ok(Err(_)) => return End::Closed,
                    Ok(Ok(n)) => session.feed(&buf[..n]),
                },
                change = changes.recv(), if changes_open && session.idling() => match change {
                    Ok(c) if Some(c.mailbox_id) == handler.selected_mailbox() => handler.idle_update(session).await,
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => handler.idle_update(session).await,
                    Err(RecvError::Closed) => changes_open = false,
                },
            }
        }
    }
}

fn bye() -> Status<'static> {
    match status(None, StatusKind::Bad, None, "bye") {
        Response::Status(s) => s,
        _ => Status::Bye(imap_codec::imap_types::response::Bye {
            code: None,
            text: imap_codec::imap_types::core::Text::unvalidated("bye"),
        }),
    }
}
