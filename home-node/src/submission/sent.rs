//! The copies of sent messages kept in `Sent`: each is sealed (with its
//! metadata for the IMAP cache, from the plaintext at hand) on the blocking
//! pool, then one task appends whatever copies are waiting in one transaction,
//! so twenty sessions sending at once share one fsync instead of queueing for
//! SQLite's write lock one by one.

use crate::access::AccessContext;
use crate::imap::cache::Sealed;
use crate::store::NewAppend;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

/// Copies appended per transaction at most.
const BATCH: usize = 64;

/// How long the Sent folder's id is used without looking it up again.
const SENT_TTL: Duration = Duration::from_secs(5);

/// A sealed copy, its size and date, and who waits for it.
struct Copy {
    sealed: Sealed,
    size: i64,
    internaldate: i64,
    kept: oneshot::Sender<()>,
}

/// Keeps sent messages in `Sent`.
pub struct SentKeeper {
    ctx: AccessContext,
    copies: mpsc::Sender<Copy>,
}

impl SentKeeper {
    /// Starts the writing task (in the current tokio runtime).
    pub fn start(ctx: AccessContext) -> Self {
        let (copies, rx) = mpsc::channel(256);
        tokio::spawn(write_loop(ctx.clone(), rx));
        SentKeeper { ctx, copies }
    }

    /// Keeps `message` in `Sent`, flagged `\Seen`, encrypted like everything
    /// else; returns once it is committed. A failure is logged: the message
    /// is out already.
    pub async fn keep(&self, message: Vec<u8>) {
        let size = message.len() as i64;
        let view = self.ctx.view.clone();
        let sealed = self
            .ctx
            .view
            .blocking(move || Sealed::seal(&view, &message))
            .await
            .flatten();
        let Some(sealed) = sealed else {
            warn!("cannot encrypt the sent message for the store; it is not kept in Sent");
            return;
        };
        let (kept, done) = oneshot::channel();
        let copy = Copy {
            sealed,
            size,
            internaldate: chrono::Utc::now().timestamp(),
            kept,
        };
        if self.copies.send(copy).await.is_ok() {
            let _ = done.await;
        }
    }
}

async fn write_loop(ctx: AccessContext, mut rx: mpsc::Receiver<Copy>) {
    // The Sent folder's id, looked up again after `SENT_TTL` (the folder may
    // be renamed) or when an append fails (it may be gone).
    let mut sent = None;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        write(&ctx, &batch, &mut sent).await;
        for c in batch {
            let _ = c.kept.send(());
        }
    }
}

async fn write(ctx: &AccessContext, batch: &[Copy], sent: &mut Option<(i64, Instant)>) {
    let items: Vec<NewAppend<'_>> = batch
        .iter()
        .map(|c| NewAppend {
            internaldate: c.internaldate,
            size: c.size,
            data: &c.sealed.data,
            flags: "\\Seen",
            meta: Some(c.sealed.meta()),
        })
        .collect();
    for fresh in [false, true] {
        let id = match *sent {
            Some((id, at)) if !fresh && at.elapsed() < SENT_TTL => id,
            _ => match ctx.store.mailbox("Sent").await {
                Ok(Some(mb)) => sent.insert((mb.id, Instant::now())).0,
                Ok(None) => {
                    warn!("no Sent folder; sent messages are not kept");
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "cannot open Sent; sent messages are not kept");
                    return;
                }
            },
        };
        match ctx.store.append_many(id, &items).await {
            Ok(_) => return,
            Err(e) if fresh => {
                warn!(error = %e, count = items.len(), "cannot keep sent messages in Sent");
            }
            Err(_) => *sent = None,
        }
    }
}
