//! Fills the metadata cache in the background as mail arrives, so that the
//! first FETCH ENVELOPE over a big folder does not have to decrypt it all.

use super::mime::Meta;
use crate::access::view::MailView;
use crate::access::AccessContext;
use crate::store::{MailStore, MetaBytes, StoreError};
use omb_shared::pgp::MessageKey;
use std::time::Duration;

const BATCH: i64 = 64;
/// Filling waits for this long a pause in deliveries: it decrypts every new
/// message and writes to the store, and the deliveries it would slow down
/// are waiting for their ack (FETCH fills what it misses itself).
const DELIVERY_PAUSE: Duration = Duration::from_millis(100);

/// Runs for ever: after start and whenever messages were added, caches what
/// is missing. Flag changes (ten apps opening messages make hundreds a
/// second) do not send it looking: the search for uncached messages walks
/// the whole store.
pub async fn fill(ctx: AccessContext) {
    use tokio::sync::broadcast::error::{RecvError, TryRecvError};
    let mut changes = ctx.store.subscribe_changes();
    let mut filled_at = None;
    loop {
        // Every message added anywhere moves some folder's UIDNEXT.
        let mark = ctx.store.uid_mark().await.ok();
        if mark.is_none() || mark != filled_at {
            fill_missing(&ctx).await;
            filled_at = mark;
        }
        match changes.recv().await {
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
        // Let a burst of deliveries settle, and take every change announced
        // meanwhile as one.
        tokio::time::sleep(Duration::from_millis(50)).await;
        ctx.store.deliveries_paused(DELIVERY_PAUSE).await;
        while let Ok(_) | Err(TryRecvError::Lagged(_)) = changes.try_recv() {}
    }
}

async fn fill_missing(ctx: &AccessContext) {
    let ciphertext = ctx.view.ciphertext_to_apps();
    loop {
        let missing = match ctx.store.missing_metas(BATCH).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list messages to cache");
                return;
            }
        };
        if missing.is_empty() {
            return;
        }
        let mut done = 0;
        for (mailbox_id, uid) in missing {
            ctx.store.deliveries_paused(DELIVERY_PAUSE).await;
            let Ok(Some(stored)) = ctx.store.data(mailbox_id, uid).await else {
                continue;
            };
            let view = ctx.view.clone();
            let Some((_, Some(meta))) = ctx
                .view
                .blocking(move || render(&view, &stored, None, true, ciphertext))
                .await
            else {
                continue;
            };
            if keep(&ctx.store, mailbox_id, uid, &meta).await.is_ok() {
                done += 1;
            }
        }
        if done == 0 {
            return;
        }
    }
}

/// A stored message as apps see it, decrypted with its session key from the
/// cache when `known` has it; with `need_meta`, its metadata too (holding the
/// session key for next time).
pub fn render(
    view: &MailView,
    stored: &[u8],
    known: Option<&MessageKey>,
    need_meta: bool,
    ciphertext: bool,
) -> (Vec<u8>, Option<Meta>) {
    let (rendered, key) = view.render_with(stored, known);
    let meta = need_meta.then(|| Meta::build(&rendered, ciphertext, key.as_ref()));
    (rendered, meta)
}

/// Caches a message's metadata: all of it, and its envelope apart.
pub async fn keep(
    store: &MailStore,
    mailbox_id: i64,
    uid: u32,
    meta: &Meta,
) -> Result<(), StoreError> {
    let (all, envelope) = (meta.to_bytes(), meta.envelope_bytes());
    let bytes = MetaBytes {
        meta: &all,
        envelope: &envelope,
    };
    store.set_meta(mailbox_id, uid, &bytes).await
}
