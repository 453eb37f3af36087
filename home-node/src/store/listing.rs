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
    /// The store's change generation at which `rows` were known to be the
    /// folder's latest state: while the generation stays there, sessions
    /// catch up from them instead of asking the database.
    current_at: Option<u64>,
}

impl Listings {
    fn get(&self, id: i64) -> Option<Listing> {
        self.0.lock().ok()?.get(&id).cloned()
    }

    fn put(&self, id: i64, listing: Listing) {
        let Ok(mut map) = self.0.lock() else {
            return;
        };
        match map.get_mut(&id) {
            Some(old) if old.uidvalidity == listing.uidvalidity && old.modseq == listing.modseq => {
                // The same state, seen again: it may now be known current.
                old.current_at = listing.current_at.or(old.current_at);
            }
            Some(old) if old.uidvalidity == listing.uidvalidity && old.modseq > listing.modseq => {}
            _ => {
                map.insert(id, listing);
            }
        }
    }

    /// A flag change was committed as `modseq` in folder `id`: the listing
    /// follows it when it held exactly the state before (`modseq - 1`).
    /// True when it did.
    pub(super) fn advance(
        &self,
        id: i64,
        uidvalidity: u32,
        modseq: u64,
        changed: &[MsgRow],
    ) -> bool {
        let Ok(mut map) = self.0.lock() else {
            return false;
        };
        let Some(l) = map.get_mut(&id) else {
            return false;
        };
        l.current_at = None;
        if l.uidvalidity != uidvalidity || l.modseq.checked_add(1) != Some(modseq) {
            return false;
        }
        apply(Arc::make_mut(&mut l.rows), changed.to_vec(), &[]);
        l.modseq = modseq;
        true
    }

    /// Notes that folder `id`'s listing at `modseq` is its latest state as of
    /// the store's change generation `generation`.
    pub(super) fn mark_current(&self, id: i64, modseq: u64, generation: u64) {
        if let Ok(mut map) = self.0.lock() {
            if let Some(l) = map.get_mut(&id).filter(|l| l.modseq == modseq) {
                l.current_at = Some(generation);
            }
        }
    }
}

impl MailStore {
    /// The listing of folder `id` and its HIGHESTMODSEQ, when it is known to
    /// be the folder's latest state at the store's change generation
    /// `generation` (read by the caller before): what changed since a
    /// session's last look can then be found without the database.
    pub fn current_listing(&self, id: i64, generation: u64) -> Option<(Arc<Vec<MsgRow>>, u64)> {
        let l = self.listings.get(id)?;
        (l.current_at == Some(generation)).then_some((l.rows, l.modseq))
    }

    /// Every message of the folder `mb` (as just read from the database), by
    /// UID; shared, so a session copies it only when it changes its view.
    /// `generation` is the store's change generation read before `mb` was.
    pub async fn listing(
        &self,
        mb: &MailboxInfo,
        generation: u64,
    ) -> Result<Arc<Vec<MsgRow>>, StoreError> {
        let cached = self
            .listings
            .get(mb.id)
            .filter(|c| c.uidvalidity == mb.uidvalidity && c.modseq <= mb.highestmodseq);
        let rows = match cached {
            Some(c) if c.modseq == mb.highestmodseq => {
                self.listings
                    .mark_current(mb.id, mb.highestmodseq, generation);
                return Ok(c.rows);
            }
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
                current_at: Some(generation),
            },
        );
        Ok(rows)
    }
}

/// What `changes_since(modseq)` would give, from the folder's current
/// listing `now` and a session's view `seen` (both by UID): the rows changed
/// or added after `modseq`, and the UIDs of `seen` no longer there.
pub fn changes_between(seen: &[MsgRow], now: &[MsgRow], modseq: u64) -> (Vec<MsgRow>, Vec<u32>) {
    let changed = now.iter().filter(|r| r.modseq > modseq).cloned().collect();
    let mut gone = Vec::new();
    let mut j = 0;
    for r in seen {
        while j < now.len() && now[j].uid < r.uid {
            j += 1;
        }
        if now.get(j).is_none_or(|n| n.uid != r.uid) {
            gone.push(r.uid);
        }
    }
    (changed, gone)
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
        let (store, dir) = crate::store::temp_store("listing").await;
        let inbox = || async { store.mailbox("INBOX").await.unwrap().unwrap() };
        for i in 0..5 {
            store
                .append(inbox().await.id, i, 1, b"x", "", None)
                .await
                .unwrap();
        }
        let first = store.listing(&inbox().await, 0).await.unwrap();
        assert_eq!(first.len(), 5);
        // Unchanged: the same rows, not read again.
        assert!(Arc::ptr_eq(
            &first,
            &store.listing(&inbox().await, 0).await.unwrap()
        ));
        let id = inbox().await.id;
        let seen = ["\\Seen".to_string(), "\\Deleted".to_string()];
        store
            .set_flags(id, &[2, 4], FlagOp::Add, &seen, None)
            .await
            .unwrap();
        store.expunge(id, Some(&[4])).await.unwrap();
        store.append(id, 9, 1, b"y", "", None).await.unwrap();
        let now = store.listing(&inbox().await, 0).await.unwrap();
        assert_eq!(*now, store.snapshot(id).await.unwrap());
        assert_eq!(
            now.iter().map(|m| m.uid).collect::<Vec<_>>(),
            vec![1, 2, 3, 5, 6]
        );
        assert_eq!(first.len(), 5, "a session's rows stay as they were");
        // A flag change made here keeps the listing current: sessions catch
        // up from it, and find what the database would tell them.
        let now = store
            .listing(&inbox().await, store.generation())
            .await
            .unwrap();
        let modseq = inbox().await.highestmodseq;
        let flag = ["\\Flagged".to_string()];
        store
            .set_flags(id, &[1, 6], FlagOp::Add, &flag, None)
            .await
            .unwrap();
        let (rows, highest) = store.current_listing(id, store.generation()).unwrap();
        assert_eq!(*rows, store.snapshot(id).await.unwrap());
        assert_eq!(highest, inbox().await.highestmodseq);
        let (changed, gone) = changes_between(&now, &rows, modseq);
        let (db_changed, db_gone) = store.changes_since(id, modseq).await.unwrap();
        assert_eq!((changed, gone), (db_changed, db_gone));
        // A change that does not go through the listing (a delivery) ends that.
        store.deliver("d1", 1, 1, b"w").await.unwrap();
        assert!(store.current_listing(id, store.generation()).is_none());
        let (old, _) = (first.clone(), 0);
        let (changed, gone) = changes_between(&old, &store.snapshot(id).await.unwrap(), 0);
        assert_eq!(gone, vec![4]);
        assert_eq!(changed.len(), 6);
        // A folder deleted and made again under the same id starts afresh.
        store.create_mailbox("f").await.unwrap();
        let f = store.mailbox("f").await.unwrap().unwrap();
        store.append(f.id, 1, 1, b"z", "", None).await.unwrap();
        let f = store.mailbox("f").await.unwrap().unwrap();
        assert_eq!(store.listing(&f, 0).await.unwrap().len(), 1);
        store.delete_mailbox("f").await.unwrap();
        store.create_mailbox("f").await.unwrap();
        let again = store.mailbox("f").await.unwrap().unwrap();
        assert!(store.listing(&again, 0).await.unwrap().is_empty());
        store.close().await;
        std::fs::remove_dir_all(dir).unwrap();
    }
}
