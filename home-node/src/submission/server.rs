//! The submission server's tokio driver: accepts connections (with a cap per
//! client address), runs TLS (STARTTLS or implicit), feeds bytes through
//! [`Session`], checks logins, and for each message checks the From, signs it,
//! hands it to the relay through the tunnel and keeps a copy in `Sent`.

use super::sent::SentKeeper;
use super::session::{Action, LoginVerdict, Session, SessionConfig, SubmitVerdict, Transaction};
use super::sign;
use crate::access::login::LoginError;
use crate::access::AccessContext;
use crate::keys::Keys;
use crate::tunnel::{AccountFacts, SubmitRequest};
use omb_shared::limits::{serve_admitted, ConnectionLimits, Door};
use omb_shared::protocol::{Submission, SubmitOutcome};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

/// Limits of the submission server.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_message_size: usize,
    pub max_recipients: usize,
    /// RFC 5321 §4.5.3.2: 5 minutes for a command.
    pub command_timeout: Duration,
    /// A whole DATA transfer.
    pub data_timeout: Duration,
    /// How long a message waits for the relay's answer (the tunnel may be
    /// reconnecting) before the client is told to try again.
    pub relay_wait: Duration,
    pub per_ip: usize,
    pub total: usize,
    pub max_errors: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            relay_wait: Duration::from_secs(60),
            per_ip: 10,
            total: 100,
            max_errors: 10,
        }
    }
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

pub struct SubmissionServer {
    pub ctx: AccessContext,
    pub keys: Arc<Keys>,
    /// The account's address from the configuration, used until the relay
    /// has described the account.
    pub address: String,
    pub account: watch::Receiver<Option<AccountFacts>>,
    pub submits: mpsc::Sender<SubmitRequest>,
    pub limits: Limits,
    tls: TlsAcceptor,
    connections: Arc<ConnectionLimits>,
    sent: SentKeeper,
    /// None when the DKIM key cannot be encoded (logged at start): every
    /// submission then gets a temporary failure.
    signers: Option<Arc<sign::Signers>>,
}

impl SubmissionServer {
    pub fn new(
        ctx: AccessContext,
        keys: Arc<Keys>,
        address: String,
        account: watch::Receiver<Option<AccountFacts>>,
        submits: mpsc::Sender<SubmitRequest>,
        limits: Limits,
    ) -> Arc<Self> {
        let signers = match keys.dkim.pkcs1_der() {
            Ok(der) => Some(Arc::new(sign::Signers::new(der))),
            Err(e) => {
                warn!(error = %e, "the DKIM key is unusable: submissions will be refused for now");
                None
            }
        };
        Arc::new(SubmissionServer {
            signers,
            tls: TlsAcceptor::from(ctx.tls.clone()),
            connections: ConnectionLimits::new(limits.per_ip, limits.total),
            sent: SentKeeper::start(ctx.clone()),
            ctx,
            keys,
            address: address.to_lowercase(),
            account,
            submits,
            limits,
        })
    }

    /// The account's handle and addresses as the relay last told them.
    fn facts(&self) -> AccountFacts {
        self.account
            .borrow()
            .clone()
            .unwrap_or_else(|| AccountFacts {
                handle: self
                    .address
                    .split_once('@')
                    .map(|(l, _)| l.to_string())
                    .unwrap_or_default(),
                senders: super::session::Senders {
                    addresses: vec![self.address.clone()],
                    domains: Vec::new(),
                },
            })
    }

    fn relay_domain(&self) -> &str {
        self.address
            .rsplit_once('@')
            .map(|(_, d)| d)
            .unwrap_or_default()
    }
}

/// Accepts connections until the task is dropped.
pub async fn serve(listener: TcpListener, server: Arc<SubmissionServer>, implicit_tls: bool) {
    let door = Door {
        service: "submission",
        implicit_tls,
        refusal: b"421 4.7.0 Too many connections from your address\r\n",
    };
    let limits = server.connections.clone();
    serve_admitted(listener, limits, door, move |stream, peer| {
        let server = server.clone();
        async move { connection(stream, peer, &server, implicit_tls).await }
    })
    .await;
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    server: &SubmissionServer,
    implicit_tls: bool,
) {
    let _ = stream.set_nodelay(true);
    let facts = server.facts();
    let config = SessionConfig {
        hostname: format!("{}.{}", facts.handle, server.relay_domain()),
        max_message_size: server.limits.max_message_size,
        max_recipients: server.limits.max_recipients,
        tls_available: !implicit_tls,
        plaintext_auth: peer.ip().to_canonical().is_loopback(),
        max_errors: server.limits.max_errors,
        senders: facts.senders,
    };
    if implicit_tls {
        let Some(mut tls) = handshake(server, stream).await else {
            return;
        };
        let mut session = Session::new(config, true);
        drive(&mut tls, &mut session, server, peer).await;
        let _ = tokio::time::timeout(WRITE_TIMEOUT, tls.shutdown()).await;
        return;
    }
    let mut session = Session::new(config, false);
    let mut stream = stream;
    if !drive(&mut stream, &mut session, server, peer).await {
        let _ = tokio::time::timeout(WRITE_TIMEOUT, stream.shutdown()).await;
        return;
    }
    // STARTTLS: what the client sent after it in the clear was dropped.
    let Some(mut tls) = handshake(server, stream).await else {
        return;
    };
    session.tls_started();
    drive(&mut tls, &mut session, server, peer).await;
    let _ = tokio::time::timeout(WRITE_TIMEOUT, tls.shutdown()).await;
}

async fn handshake(
    server: &SubmissionServer,
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

/// Runs the session until it closes (`false`) or asks for TLS (`true`).
async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    session: &mut Session,
    server: &SubmissionServer,
    peer: SocketAddr,
) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let mut input = &pending[..];
        while let Some(action) = session.feed(&mut input) {
            match action {
                Action::StartTls => {
                    let _ = write(stream, session).await;
                    return true;
                }
                Action::Close => {
                    let _ = write(stream, session).await;
                    return false;
                }
                Action::Login { user, password } => {
                    let verdict = match server.ctx.login.check(peer.ip(), &user, &password).await {
                        Ok(()) => {
                            info!("logged in");
                            LoginVerdict::Ok
                        }
                        Err(LoginError::Failed) => LoginVerdict::Failed,
                        Err(LoginError::Throttled) => LoginVerdict::Throttled,
                        Err(LoginError::NoPassword) => {
                            warn!("submission login, but no password is set (run `omb-node password`)");
                            LoginVerdict::TempFail
                        }
                    };
                    session.login_done(verdict);
                }
                Action::Submit(tx) => {
                    // Replies already due (pipelined MAIL/RCPT) go out first.
                    if write(stream, session).await.is_err() {
                        return false;
                    }
                    let verdict = submit(server, tx).await;
                    session.submitted(verdict);
                }
            }
        }
        pending.clear();
        if write(stream, session).await.is_err() || session.is_closed() {
            return false;
        }
        let limit = if session.in_data() {
            server.limits.data_timeout
        } else {
            server.limits.command_timeout
        };
        match tokio::time::timeout(limit, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return false,
            Ok(Ok(n)) => pending.extend_from_slice(&buf[..n]),
            Err(_) => {
                session.timed_out();
                let _ = write(stream, session).await;
                return false;
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

/// Checks, signs and hands one message to the relay; keeps a copy in `Sent`
/// once the relay has it.
async fn submit(server: &SubmissionServer, tx: Transaction) -> SubmitVerdict {
    let facts = server.facts();
    let domain = match sign::check_from(&tx.data, &facts.senders) {
        Ok(d) => d,
        Err(e) => return SubmitVerdict::Permanent(e.to_string()),
    };
    let selector = sign::selector(&domain, server.relay_domain(), &facts.handle);
    let Some(signers) = server.signers.clone() else {
        return SubmitVerdict::Temporary("4.3.0 Cannot sign the message".into());
    };
    let mut message = sign::missing_fields(&tx.data, &domain).into_bytes();
    message.extend_from_slice(&tx.data);
    let signed =
        tokio::task::spawn_blocking(move || signers.sign(&domain, &selector, &message)).await;
    let signed = match signed {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return SubmitVerdict::Temporary(e.to_string()),
        Err(_) => return SubmitVerdict::Temporary("4.3.0 Cannot sign the message".into()),
    };
    let id = hex::encode(rand::random::<[u8; 12]>());
    let (reply, answer) = tokio::sync::oneshot::channel();
    let request = SubmitRequest {
        submission: Submission {
            id: id.clone(),
            mail_from: tx.mail_from,
            rcpt_to: tx.rcpt_to,
            data: signed.clone(),
        },
        reply,
    };
    let outcome = tokio::time::timeout(server.limits.relay_wait, async {
        server.submits.send(request).await.ok()?;
        answer.await.ok()
    })
    .await;
    match outcome {
        Ok(Some(SubmitOutcome::Queued)) => {
            info!(submission = %id, size = signed.len(), "submitted to the relay");
            server.sent.keep(signed).await;
            SubmitVerdict::Queued(id)
        }
        Ok(Some(SubmitOutcome::Temporary(text))) => SubmitVerdict::Temporary(text),
        Ok(Some(SubmitOutcome::Permanent(text))) => SubmitVerdict::Permanent(text),
        Ok(None) | Err(_) => {
            warn!(submission = %id, "no answer from the relay in time");
            SubmitVerdict::Temporary(
                "4.4.1 The relay cannot be reached now; try again later".into(),
            )
        }
    }
}
