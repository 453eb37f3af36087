//! Folder listings (UID, flags, mod-sequence, date and size of every message)
//! kept in memory once a session has opened the folder, and shared by every
//! session that selects it, as Dovecot keeps its index file mapped. At each
//! SELECT the listing is checked against the folder's HIGHESTMODSEQ and brought
//! up to date from the changes since (RFC 7162 mod-sequences, with the
//! `expunged` table), so a SELECT of a big folder reads one row instead of all.
//! Only what SELECT reads from the database anyway is held: no message content.

use super::{MailStore, MailboxInfo, MsgRow, StoreError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The listings of the folders selected since the node started, by folder id.
#[derive(Default)]
pub(crate) struct Listings(Mutex<HashMap<i64, Listing>>);

#[derive(Clone)]
struct Listing {
    /// A folder id can be used again after a DELETE; its UIDVALIDITY cannot.
    uidvalidity: u32,
    /// Every change up to this mod-sequence is in `rows` (later ones may be
    /// too: applying them again changes nothing).
    modseq: u64,
    rows: Arc<Vec<MsgRow>>,
}

impl Listings {
    fn get(&self, id: i64) -> Option<Listing> {
        self.0.lock().ok()?.get(&id).cloned()
    }

    fn put(&self, id: i64, listing: Listing) {
        let Ok(mut map) = self.0.lock() else {
            return;
        };
        let newer = map.get(&id).is_none_or(|old| {
            old.uidvalidity != listing.uidvalidity || old.modseq < listing.modseq
        });
        if newer {
            map.insert(id, listing);
        }
    }
}

impl MailStore {
    /// Every message of the folder `mb` (as just read from the database), by
    /// UID; shared, so a session copies it only when it changes its view.
    pub async fn listing(&self, mb: &MailboxInfo) -> Result<Arc<Vec<MsgRow>>, StoreError> {
        let cached = self
            .listings
            .get(mb.id)
            .filter(|c| c.uidvalidity == mb.uidvalidity && c.modseq <= mb.highestmodseq);
        let rows = match cached {
            Some(c) if c.modseq == mb.highestmodseq => return Ok(c.rows),
            Some(c) => {
                let (changed, gone) = self.changes_since(mb.id, c.modseq).await?;
                let mut rows = Arc::unwrap_or_clone(c.rows);
                apply(&mut rows, changed, &gone);
                rows
            }
            // HIGHESTMODSEQ was read before the rows: changes in between are
            // in them already, and come again (idempotent) at the next update.
            None => self.snapshot(mb.id).await?,
        };
        let rows = Arc::new(rows);
        self.listings.put(
            mb.id,
            Listing {
                uidvalidity: mb.uidvalidity,
                modseq: mb.highestmodseq,
                rows: rows.clone(),
            },
        );
        Ok(rows)
    }
}

/// Brings `rows` (by UID) up to date: `changed` replaces or adds rows,
/// `gone` (sorted UIDs) removes them.
fn apply(rows: &mut Vec<MsgRow>, changed: Vec<MsgRow>, gone: &[u32]) {
    if !gone.is_empty() {
        rows.retain(|r| gone.binary_search(&r.uid).is_err());
    }
    for row in changed {
        match rows.binary_search_by_key(&row.uid, |r| r.uid) {
            Ok(i) => rows[i] = row,
            Err(i) => rows.insert(i, row),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::FlagOp;
    use super::*;

    #[tokio::test]
    async fn listing_follows_every_change() {
        let dir = std::env::temp_dir().join(format!("omb-listing-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = MailStore::open(&dir).await.unwrap();
        let inbox = || async { store.mailbox("INBOX").await.unwrap().unwrap() };
        for i in 0..5 {
            store
                .append(inbox().await.id, i, 1, b"x", "", None)
                .await
                .unwrap();
        }
        let first = store.listing(&inbox().await).await.unwrap();
        assert_eq!(first.len(), 5);
        // Unchanged: the same rows, not read again.
        assert!(Arc::ptr_eq(
            &first,
            &store.listing(&inbox().await).await.unwrap()
        ));
        let id = inbox().await.id;
        let seen = ["\\Seen".to_string(), "\\Deleted".to_string()];
        store
            .set_flags(id, &[2, 4], FlagOp::Add, &seen, None)
            .await
            .unwrap();
        store.expunge(id, Some(&[4])).await.unwrap();
        store.append(id, 9, 1, b"y", "", None).await.unwrap();
        let now = store.listing(&inbox().await).await.unwrap();
        assert_eq!(*now, store.snapshot(id).await.unwrap());
        assert_eq!(
            now.iter().map(|m| m.uid).collect::<Vec<_>>(),
            vec![1, 2, 3, 5, 6]
        );
        assert_eq!(first.len(), 5, "a session's rows stay as they were");
        // A folder deleted and made again under the same id starts afresh.
        store.create_mailbox("f").await.unwrap();
        let f = store.mailbox("f").await.unwrap().unwrap();
        store.append(f.id, 1, 1, b"z", "", None).await.unwrap();
        let f = store.mailbox("f").await.unwrap().unwrap();
        assert_eq!(store.listing(&f).await.unwrap().len(), 1);
        store.delete_mailbox("f").await.unwrap();
        store.create_mailbox("f").await.unwrap();
        let again = store.mailbox("f").await.unwrap().unwrap();
        assert!(store.listing(&again).await.unwrap().is_empty());
        store.close().await;
        std::fs::remove_dir_all(dir).unwrap();
    }
}
