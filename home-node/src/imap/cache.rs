//! Fills the metadata cache in the background as mail arrives, so that the
//! first FETCH ENVELOPE over a big folder does not have to decrypt it all.

use super::mime::Meta;
use crate::access::AccessContext;
use std::time::Duration;

const BATCH: i64 = 64;

/// Runs for ever: after start and after every change, caches what is missing.
pub async fn fill(ctx: AccessContext) {
    let mut changes = ctx.store.subscribe_changes();
    loop {
        fill_missing(&ctx).await;
        match changes.recv().await {
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
        // Let a burst of deliveries settle.
        tokio::time::sleep(Duration::from_millis(50)).await;
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
            let Ok(Some(stored)) = ctx.store.data(mailbox_id, uid).await else {
                continue;
            };
            let view = ctx.view.clone();
            let Some(meta) = ctx
                .view
                .blocking(move || Meta::build(&view.render(&stored), ciphertext))
                .await
            else {
                continue;
            };
            if ctx
                .store
                .set_meta(mailbox_id, uid, &meta.to_bytes())
                .await
                .is_ok()
            {
                done += 1;
            }
        }
        if done == 0 {
            return;
        }
    }
}
