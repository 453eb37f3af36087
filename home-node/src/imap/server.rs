//! The thin tokio driver: listeners, TLS (implicit, and STARTTLS per RFC 3501
//! 6.2.1), timeouts, a per-address connection cap, and the loop that moves
//! bytes between the socket and the session machine.

use super::commands::{Flow, Handler};
use super::deflate::Deflate;
use super::session::{status, Limits, Session, State};
use crate::access::AccessContext;
use imap_codec::imap_types::response::{Code, Response, Status, StatusKind};
use omb_shared::limits::{serve_admitted, ConnectionLimits, Door};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast::error::RecvError;

/// RFC 9051 5.4: at least 30 minutes once logged in.
const AUTHENTICATED_TIMEOUT: Duration = Duration::from_secs(31 * 60);
/// Before login a client has little reason to wait.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(60);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections from one address at once.
const MAX_PER_ADDRESS: usize = 50;
/// Connections at once in all.
const MAX_CONNECTIONS: usize = 500;

#[derive(Clone)]
pub struct Server {
    ctx: AccessContext,
    limits: Limits,
    connections: Arc<ConnectionLimits>,
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
            connections: ConnectionLimits::new(MAX_PER_ADDRESS, MAX_CONNECTIONS),
        }
    }

    /// Accepts connections for ever.
    pub async fn run(self, listener: TcpListener, implicit_tls: bool) {
        let door = Door {
            service: "imap",
            implicit_tls,
            refusal: b"* BYE [UNAVAILABLE] too many connections from your address\r\n",
        };
        let limits = self.connections.clone();
        serve_admitted(listener, limits, door, move |stream, peer| {
            let server = self.clone();
            async move { server.connection(stream, peer, implicit_tls).await }
        })
        .await;
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
        let mut deflate: Option<Deflate> = None;
        loop {
            if write(&mut stream, &mut deflate, session).await.is_err() {
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
                    if write(&mut stream, &mut deflate, session).await.is_err() {
                        return End::Closed;
                    }
                    flow = handler.resume(session).await;
                }
                match flow {
                    Flow::StartTls => {
                        if write(&mut stream, &mut deflate, session).await.is_err()
                            || stream.flush().await.is_err()
                        {
                            return End::Closed;
                        }
                        // RFC 3501 6.2.1: nothing sent before the handshake counts.
                        session.discard_input();
                        return End::StartTls;
                    }
                    Flow::Compress => {
                        // RFC 4978 3: the tagged OK goes out uncompressed, then
                        // everything is compressed both ways.
                        if write(&mut stream, &mut deflate, session).await.is_err() {
                            return End::Closed;
                        }
                        deflate = Some(Deflate::default());
                    }
                    Flow::Continue | Flow::More => {}
                }
                continue;
            }
            // Continuation requests and framing errors may be queued.
            if write(&mut stream, &mut deflate, session).await.is_err()
                || stream.flush().await.is_err()
            {
                return End::Closed;
            }
            if session.closing() {
                continue;
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
                    Ok(Ok(n)) => match deflate.as_mut() {
                        None => session.feed(&buf[..n]),
                        Some(z) => match z.decompress(&buf[..n]) {
                            Some(plain) => session.feed(&plain),
                            None => return End::Closed,
                        },
                    },
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

/// Writes what the session queued (compressed once COMPRESS is on).
async fn write<S: AsyncWrite + Unpin>(
    stream: &mut S,
    deflate: &mut Option<Deflate>,
    session: &mut Session,
) -> std::io::Result<()> {
    if !session.has_output() {
        return Ok(());
    }
    let out = session.take_output();
    match deflate.as_mut() {
        None => stream.write_all(&out).await,
        Some(z) => stream.write_all(&z.compress(&out)).await,
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
