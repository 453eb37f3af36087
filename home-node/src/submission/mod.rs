//! Message submission for the account's mail apps (RFC 6409): SMTP with
//! STARTTLS (RFC 3207) on 587 and implicit TLS on 465 (RFC 8314 §3.3), AUTH
//! PLAIN and LOGIN (RFC 4954) over TLS. Each message is checked (the From is
//! the account's), DKIM-signed with the node's key, handed to the relay
//! through the tunnel, and kept in `Sent`.
//!
//! - `session`: the protocol as a state machine with no I/O;
//! - `sign`: From check, missing fields, DKIM signature;
//! - `server`: the tokio driver (listeners, TLS, timeouts, the tunnel).

mod sent;
pub mod server;
pub mod session;
pub mod sign;

use crate::access::AccessContext;
use crate::config::AccessConfig;
use anyhow::Context;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// Binds the configured submission listeners (`submission` with STARTTLS,
/// `submissions` with implicit TLS) before returning, then serves them in `tasks`.
pub async fn spawn(
    server: Arc<server::SubmissionServer>,
    config: &AccessConfig,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<[Option<std::net::SocketAddr>; 2]> {
    let mut bound = [None, None];
    for (i, (addr, implicit_tls)) in [(config.submission, false), (config.submissions, true)]
        .into_iter()
        .enumerate()
    {
        let Some(addr) = addr else { continue };
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for submission on {addr}"))?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, implicit_tls, "submission listening");
        bound[i] = Some(addr);
        tasks.spawn(server::serve(listener, server.clone(), implicit_tls));
    }
    Ok(bound)
}

/// The server's limits from the configuration.
pub fn limits(config: &AccessConfig) -> server::Limits {
    let d = server::Limits::default();
    server::Limits {
        max_message_size: config.submission_max_size.unwrap_or(d.max_message_size),
        max_recipients: config
            .submission_max_recipients
            .unwrap_or(d.max_recipients)
            .max(1),
        per_ip: config
            .submission_connections_per_address
            .unwrap_or(d.per_ip)
            .max(1),
        ..d
    }
}

/// Everything a submission server needs besides its configuration.
pub fn server(
    ctx: &AccessContext,
    keys: Arc<crate::keys::Keys>,
    address: &str,
    account: tokio::sync::watch::Receiver<Option<crate::tunnel::AccountFacts>>,
    submits: tokio::sync::mpsc::Sender<crate::tunnel::SubmitRequest>,
    config: &AccessConfig,
) -> Arc<server::SubmissionServer> {
    server::SubmissionServer::new(
        ctx.clone(),
        keys,
        address.to_string(),
        account,
        submits,
        limits(config),
    )
}
