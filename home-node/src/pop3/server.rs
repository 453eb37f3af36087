//! The POP3 server's tokio driver: accepts connections (with a cap per client
//! address), runs TLS (STLS or implicit), feeds bytes through [`Session`] and
//! answers its requests from the store, the login and the decrypted view.

use super::message;
use super::session::{Action, Loaded, LoginVerdict, MaildropEntry, Session, SessionConfig};
use crate::access::login::LoginError;
use crate::access::AccessContext;
use omb_shared::limits::{serve_admitted, ConnectionLimits, Door};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedMutexGuard;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

/// Limits of the POP3 server.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The autologout timer: RFC 1939 section 3 asks for at least 10 minutes.
    pub idle: Duration,
    /// Connections at once from one client address.
    pub per_ip: usize,
    /// Connections at once in all.
    pub total: usize,
    /// Bad commands tolerated in one session.
    pub max_errors: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            idle: Duration::from_secs(10 * 60),
            per_ip: 10,
            total: 200,
            max_errors: 10,
        }
    }
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Sizes worked out at login are written to the store in batches of this many.
const SIZE_BATCH: usize = 200;

pub struct Pop3Server {
    ctx: AccessContext,
    tls: TlsAcceptor,
    limits: Limits,
    /// The exclusive-access lock on the maildrop (RFC 1939 section 8): one node
    /// serves one account, so one lock.
    maildrop: Arc<tokio::sync::Mutex<()>>,
    connections: Arc<ConnectionLimits>,
}

impl Pop3Server {
    pub fn new(ctx: AccessContext, limits: Limits) -> Arc<Self> {
        let connections = ConnectionLimits::new(limits.per_ip, limits.total);
        Arc::new(Pop3Server {
            connections,
            tls: TlsAcceptor::from(ctx.tls.clone()),
            ctx,
            limits,
            maildrop: Arc::new(tokio::sync::Mutex::new(())),
        })
    }
}

/// Accepts connections until the task is dropped. `implicit_tls`: the POP3S
/// port (TLS from the first byte); otherwise plain POP3 with STLS.
pub async fn serve(listener: TcpListener, server: Arc<Pop3Server>, implicit_tls: bool) {
    let door = Door {
        service: "pop3",
        implicit_tls,
        refusal: b"-ERR [SYS/TEMP] too many connections from your address; try again later\r\n",
    };
    let limits = server.connections.clone();
    serve_admitted(listener, limits, door, move |stream, peer| {
        let server = server.clone();
        async move { connection(stream, peer, &server, implicit_tls).await }
    })
    .await;
}

/// What one connection holds besides its session.
struct Conn<'a> {
    server: &'a Pop3Server,
    peer: SocketAddr,
    /// Held from a successful login to the end of the connection.
    lock: Option<OwnedMutexGuard<()>>,
}

#[derive(PartialEq, Eq)]
enum Outcome {
    Closed,
    StartTls,
}

async fn connection(stream: TcpStream, peer: SocketAddr, server: &Pop3Server, implicit_tls: bool) {
    let _ = stream.set_nodelay(true);
    debug!("connected");
    let config = SessionConfig {
        tls_available: !implicit_tls,
        plaintext_auth: peer.ip().to_canonical().is_loopback(),
        max_errors: server.limits.max_errors,
    };
    let mut conn = Conn {
        server,
        peer,
        lock: None,
    };
    if implicit_tls {
        let Some(mut tls) = handshake(server, stream).await else {
            return;
        };
        let mut session = Session::new(config, true);
        drive(&mut tls, &mut session, &mut conn).await;
        close(&mut tls).await;
        return;
    }
    let mut session = Session::new(config, false);
    let mut stream = stream;
    if drive(&mut stream, &mut session, &mut conn).await == Outcome::Closed {
        close(&mut stream).await;
        return;
    }
    // STLS: what the client sent after it in the clear was dropped by `drive`.
    let Some(mut tls) = handshake(server, stream).await else {
        return;
    };
    session.tls_started();
    drive(&mut tls, &mut session, &mut conn).await;
    close(&mut tls).await;
}

async fn handshake(
    server: &Pop3Server,
    stream: TcpStream,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, server.tls.accept(stream)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            debug!("TLS handshake timed out");
            None
        }
    }
}

async fn close<S: AsyncWrite + Unpin>(stream: &mut S) {
    let _ = tokio::time::timeout(WRITE_TIMEOUT, stream.shutdown()).await;
}

async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    session: &mut Session,
    conn: &mut Conn<'_>,
) -> Outcome {
    let mut buf = vec![0u8; 16 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let mut input = &pending[..];
        while let Some(action) = session.feed(&mut input) {
            match action {
                Action::StartTls => {
                    let _ = write(stream, session).await;
                    return Outcome::StartTls;
                }
                Action::Close => {
                    let _ = write(stream, session).await;
                    return Outcome::Closed;
                }
                Action::Login { user, password } => {
                    let verdict = conn.login(&user, &password).await;
                    session.login_done(verdict);
                }
                Action::Load { uid } => {
                    let loaded = conn.load(uid).await;
                    session.message_loaded(loaded);
                }
                Action::Update { delete } => {
                    let applied = conn.update(&delete).await;
                    session.updated(applied);
                }
            }
            // Pipelined RETRs go out one by one, not piled up in memory.
            if write(stream, session).await.is_err() {
                return Outcome::Closed;
            }
        }
        pending.clear();
        if write(stream, session).await.is_err() || session.is_closed() {
            return Outcome::Closed;
        }
        match tokio::time::timeout(conn.server.limits.idle, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Outcome::Closed,
            Ok(Ok(n)) => pending.extend_from_slice(&buf[..n]),
            Err(_) => {
                debug!("idle too long; autologout");
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
    if out.is_empty() {
        return Ok(());
    }
    tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&out).await?;
        stream.flush().await
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out"))?
}

impl Conn<'_> {
    async fn login(&mut self, user: &str, password: &str) -> LoginVerdict {
        let ctx = &self.server.ctx;
        match ctx.login.check(self.peer.ip(), user, password).await {
            Ok(()) => {}
            Err(LoginError::Failed) => return LoginVerdict::Failed,
            Err(LoginError::Throttled) => return LoginVerdict::Throttled,
            Err(LoginError::NoPassword) => {
                warn!("POP3 login, but no password is set (run `omb-node password`)");
                return LoginVerdict::NoPassword;
            }
        }
        let Ok(guard) = self.server.maildrop.clone().try_lock_owned() else {
            info!("maildrop in use by another POP3 session");
            return LoginVerdict::InUse;
        };
        match open_maildrop(ctx).await {
            Ok(entries) => {
                info!(messages = entries.len(), "logged in");
                self.lock = Some(guard);
                LoginVerdict::Ok(entries)
            }
            Err(e) => {
                warn!(error = %e, "cannot open the maildrop");
                LoginVerdict::TempFail
            }
        }
    }

    async fn load(&self, uid: u32) -> Loaded {
        match self.server.ctx.store.pop3_message(uid).await {
            Ok(Some(stored)) => {
                let view = self.server.ctx.view.clone();
                match tokio::task::spawn_blocking(move || view.render(&stored)).await {
                    Ok(rendered) => Loaded::Message(rendered),
                    Err(e) => {
                        warn!(uid, error = %e, "rendering a message failed");
                        Loaded::Failed
                    }
                }
            }
            Ok(None) => Loaded::Gone,
            Err(e) => {
                warn!(uid, error = %e, "cannot read a message");
                Loaded::Failed
            }
        }
    }

    async fn update(&self, delete: &[u32]) -> bool {
        match self.server.ctx.store.pop3_delete(delete).await {
            Ok(removed) => {
                info!(asked = delete.len(), removed, "deleted on QUIT");
                true
            }
            Err(e) => {
                warn!(error = %e, "cannot delete on QUIT; nothing was deleted");
                false
            }
        }
    }
}

/// Lists INBOX as a maildrop. A message's POP3 size needs its rendered form
/// (decrypted, CRLF): worked out here the first time, then kept in the store.
async fn open_maildrop(ctx: &AccessContext) -> anyhow::Result<Vec<MaildropEntry>> {
    let ciphertext = ctx.view.ciphertext_to_apps();
    let listing = ctx.store.pop3_list(ciphertext).await?;
    let mut entries = Vec::with_capacity(listing.messages.len());
    let mut new_sizes = Vec::new();
    for m in listing.messages {
        let size = match m.size {
            Some(size) => size,
            None => {
                let Some(stored) = ctx.store.pop3_message(m.uid).await? else {
                    continue; // expunged meanwhile
                };
                let view = ctx.view.clone();
                let size =
                    tokio::task::spawn_blocking(move || message::pop3_size(&view.render(&stored)))
                        .await?;
                new_sizes.push((m.uid, size));
                if new_sizes.len() >= SIZE_BATCH {
                    keep_sizes(ctx, ciphertext, &mut new_sizes).await;
                }
                size
            }
        };
        entries.push(MaildropEntry {
            uid: m.uid,
            unique_id: message::unique_id(m.delivery_id.as_deref(), listing.uidvalidity, m.uid),
            size,
        });
    }
    keep_sizes(ctx, ciphertext, &mut new_sizes).await;
    Ok(entries)
}

/// Stores worked-out sizes; failing only costs the work again next time.
async fn keep_sizes(ctx: &AccessContext, ciphertext: bool, sizes: &mut Vec<(u32, u64)>) {
    if let Err(e) = ctx.store.pop3_set_sizes(ciphertext, sizes).await {
        warn!(error = %e, "cannot keep POP3 sizes");
    }
    sizes.clear();
}
