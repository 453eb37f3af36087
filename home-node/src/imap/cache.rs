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
    use futures_util::StreamExt;
    let ciphertext = ctx.view.ciphertext_to_apps();
    // One message per crypto thread at a time: a batch of big messages is not
    // all held in memory at once.
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
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
        // Deliveries first: fill only once they pause.
        ctx.store.deliveries_paused(DELIVERY_PAUSE).await;
        let made: Vec<(i64, u32, Meta)> = futures_util::stream::iter(missing)
            .map(|(mailbox_id, uid)| async move {
                let stored = ctx.store.data(mailbox_id, uid).await.ok()??;
                let view = ctx.view.clone();
                let (_, meta) = ctx
                    .view
                    .blocking(move || render(&view, &stored, None, true, ciphertext))
                    .await?;
                Some((mailbox_id, uid, meta?))
            })
            .buffer_unordered(threads)
            .filter_map(std::future::ready)
            .collect()
            .await;
        if made.is_empty() || keep_all(&ctx.store, &made).await.is_err() {
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

/// A message sealed for the store, with its metadata for the cache made at
/// the same time from the plaintext at hand (as apps will see it), so the
/// cache filler need not decrypt it again.
pub struct Sealed {
    pub data: Vec<u8>,
    meta: Vec<u8>,
    envelope: Vec<u8>,
}

impl Sealed {
    /// Seals `message` (run it on the blocking pool: it encrypts). The
    /// metadata holds the session key, so the first reading skips the
    /// public-key step, as for any message read before.
    pub fn seal(view: &MailView, message: &[u8]) -> Option<Sealed> {
        let (data, key) = view.seal_keyed(message).ok()?;
        let meta = if view.ciphertext_to_apps() {
            Meta::build(&crate::store::packed::unpack(&data), true, None)
        } else {
            Meta::build(message, false, Some(&key))
        };
        Some(Sealed {
            meta: meta.to_bytes(),
            envelope: meta.envelope_bytes(),
            data,
        })
    }

    pub fn meta(&self) -> MetaBytes<'_> {
        MetaBytes {
            meta: &self.meta,
            envelope: &self.envelope,
        }
    }
}

/// Caches the metadata of several messages (of any folders) in one commit.
pub async fn keep_all(store: &MailStore, metas: &[(i64, u32, Meta)]) -> Result<(), StoreError> {
    let bytes: Vec<(Vec<u8>, Vec<u8>)> = metas
        .iter()
        .map(|(_, _, m)| (m.to_bytes(), m.envelope_bytes()))
        .collect();
    let rows: Vec<(i64, u32, MetaBytes)> = metas
        .iter()
        .zip(&bytes)
        .map(|((mailbox_id, uid, _), (all, envelope))| {
            (
                *mailbox_id,
                *uid,
                MetaBytes {
                    meta: all,
                    envelope,
                },
            )
        })
        .collect();
    store.set_metas(&rows).await
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
