//! The POP3 server (RFC 1939, with CAPA and response codes from RFC 2449, STLS
//! from RFC 2595 and SASL PLAIN from RFC 5034). The maildrop is INBOX; what a
//! client deletes is removed at QUIT, all at once, as an IMAP expunge.
//!
//! - `session`: the protocol as a state machine with no I/O;
//! - `command`: command lines; `message`: how messages go over the wire;
//! - `server`: the tokio driver (listeners, TLS, timeouts, the store).

pub mod command;
pub mod message;
pub mod server;
pub mod session;

use crate::access::AccessContext;
use crate::config::AccessConfig;
use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// Binds the configured POP3 listeners (`pop3` with STLS, `pop3s` with
/// implicit TLS) before returning, then serves them in `tasks`.
pub async fn spawn(
    ctx: &AccessContext,
    config: &AccessConfig,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<[Option<std::net::SocketAddr>; 2]> {
    let server = server::Pop3Server::new(ctx.clone(), server::Limits::default());
    let mut bound = [None, None];
    for (i, (addr, implicit_tls)) in [(config.pop3, false), (config.pop3s, true)]
        .into_iter()
        .enumerate()
    {
        let Some(addr) = addr else { continue };
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for POP3 on {addr}"))?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, implicit_tls, "POP3 listening");
        bound[i] = Some(addr);
        tasks.spawn(server::serve(listener, server.clone(), implicit_tls));
    }
    Ok(bound)
}
