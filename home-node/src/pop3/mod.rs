//! The POP3 server (RFC 1939, RFC 2449, RFC 5034).

use crate::access::AccessContext;
use crate::config::AccessConfig;
use tokio::task::JoinSet;

/// Starts the configured POP3 listeners (`pop3` with STLS, `pop3s`).
pub async fn spawn(
    _ctx: &AccessContext,
    _config: &AccessConfig,
    _tasks: &mut JoinSet<()>,
) -> anyhow::Result<()> {
    Ok(())
}
