//! The IMAP server (RFC 9051, RFC 3501).

use crate::access::AccessContext;
use crate::config::AccessConfig;
use tokio::task::JoinSet;

/// Starts the configured IMAP listeners (`imap` with STARTTLS, `imaps`).
pub async fn spawn(
    _ctx: &AccessContext,
    _config: &AccessConfig,
    _tasks: &mut JoinSet<()>,
) -> anyhow::Result<()> {
    Ok(())
}
