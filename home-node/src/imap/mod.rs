//! The IMAP server (RFC 9051, RFC 3501 and the extensions apps use: IDLE,
//! UIDPLUS, MOVE, CONDSTORE, LITERAL+, SASL-IR, SPECIAL-USE, BINARY, …).
//!
//! - `session`: the sans-I/O session machine (framing, parsing, states),
//! - `commands`: runs commands against the store,
//! - `mime`, `section`, `convert`: message structure, sections, wire values,
//! - `wire`: the common FETCH responses written straight to bytes,
//! - `server`: the tokio driver (listeners, TLS, timeouts).

pub mod cache;
pub mod commands;
pub mod convert;
pub mod deflate;
pub mod mime;
pub mod section;
pub mod server;
pub mod session;
pub mod wire;

use crate::access::AccessContext;
use crate::config::AccessConfig;
use anyhow::Context;
use tokio::task::JoinSet;

/// Starts the configured IMAP listeners (`imap` with STARTTLS, `imaps`); they
/// are bound when this returns.
pub async fn spawn(
    ctx: &AccessContext,
    config: &AccessConfig,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<[Option<std::net::SocketAddr>; 2]> {
    let server = server::Server::new(ctx.clone());
    if config.imap.is_some() || config.imaps.is_some() {
        tasks.spawn(cache::fill(ctx.clone()));
    }
    let mut bound = [None, None];
    for (i, (addr, implicit_tls)) in [(config.imap, false), (config.imaps, true)]
        .into_iter()
        .enumerate()
    {
        let Some(addr) = addr else { continue };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for IMAP on {addr}"))?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, implicit_tls, "IMAP listening");
        bound[i] = Some(addr);
        tasks.spawn(server.clone().run(listener, implicit_tls));
    }
    Ok(bound)
}
