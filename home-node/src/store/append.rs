//! Appending messages to a folder (APPEND, copies kept in Sent): one or
//! several in one transaction, with consecutive UIDs and mod-sequences.

use super::delivery::{placeholders, MAX_ROWS as ROWS};
use super::WRITE_TX;
use super::{MailStore, StoreError};
use sqlx::Row;

/// A message to append (see [`MailStore::append_many`]): already sealed.
pub struct NewAppend<'a> {
    pub internaldate: i64,
    pub size: i64,
    pub data: &'a [u8],
    /// Space-separated flags, e.g. `\Seen`.
    pub flags: &'a str,
    /// Its metadata for the cache, when the caller has it (it saw the
    /// plaintext), so the cache filler need not decrypt it again.
    pub meta: Option<super::MetaBytes<'a>>,
}

/// `(?1, ?2, ...), (...)`: `n` rows of `width` numbered parameters.
fn rows(n: usize, width: usize) -> String {
    (0..n)
        .map(|r| format!("({})", placeholders(width, 1 + r * width)))
        .collect::<Vec<_>>()
        .join(", ")
}

impl MailStore {
    /// Adds a message (already encrypted) to a folder; gives its UID and the
    /// folder's UIDVALIDITY (APPENDUID, RFC 4315).
    pub async fn append(
        &self,
        mailbox_id: i64,
        internaldate: i64,
        size: i64,
        data: &[u8],
        flags: &str,
        meta: Option<&super::MetaBytes<'_>>,
    ) -> Result<(u32, u32), StoreError> {
        let item = NewAppend {
            internaldate,
            size,
            data,
            flags,
            meta: meta.copied(),
        };
        let mut placed = self
            .append_many(mailbox_id, std::slice::from_ref(&item))
            .await?;
        Ok(placed.pop().unwrap_or_default())
    }

    /// Appends several messages to one folder in one transaction (one fsync
    /// for the lot), with consecutive UIDs and mod-sequences; returns each
    /// one's `(uid, uidvalidity)`, in order.
    pub async fn append_many(
        &self,
        mailbox_id: i64,
        items: &[NewAppend<'_>],
    ) -> Result<Vec<(u32, u32)>, StoreError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let sealed: Vec<_> = items
            .iter()
            .map(|i| i.meta.as_ref().and_then(|m| self.seal_metas(m)))
            .collect();
        let data: Vec<std::borrow::Cow<[u8]>> = items
            .iter()
            .map(|i| super::packed::for_storage(i.data))
            .collect();
        let n = items.len() as i64;
        // In turn with deliveries and relaxed writes (see `write_gate`).
        let _gate = self.write_gate.lock().await;
        let mut tx = self.pool.begin_with(WRITE_TX).await?;
        let r = sqlx::query("UPDATE mailboxes SET uidnext = uidnext + ?2, highestmodseq = highestmodseq + ?2 WHERE id = ?1 AND noselect = 0 RETURNING uidnext - ?2, uidvalidity, highestmodseq - ?2")
            .bind(mailbox_id)
            .bind(n)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::Refused("that folder cannot hold messages"))?;
        let (first_uid, uidvalidity, first_modseq): (i64, i64, i64) =
            (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
        // Multi-row inserts: three statements for the batch, not three per
        // message (each statement is a round trip to SQLite's thread).
        // The data as stored: packed where it can be (see `packed`).
        for (c, (chunk, data)) in items.chunks(ROWS).zip(data.chunks(ROWS)).enumerate() {
            let at = (c * ROWS) as i64;
            let sql = format!(
                "INSERT INTO messages (mailbox_id, uid, internaldate, size, flags, modseq, data) VALUES {}",
                rows(chunk.len(), 7)
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (i, (item, data)) in chunk.iter().zip(data).enumerate() {
                let i = at + i as i64;
                q = q
                    .bind(mailbox_id)
                    .bind(first_uid + i)
                    .bind(item.internaldate)
                    .bind(item.size)
                    .bind(item.flags)
                    .bind(first_modseq + 1 + i)
                    .bind(data.as_ref());
            }
            q.execute(&mut *tx).await?;
        }
        let metas: Vec<(i64, _)> = sealed
            .into_iter()
            .enumerate()
            .filter_map(|(i, s)| s.map(|s| (first_uid + i as i64, s)))
            .collect();
        // Each table takes its half of the sealed pair.
        type Part = fn(&(Vec<u8>, Vec<u8>)) -> &[u8];
        let tables: [(&str, Part); 2] = [
            ("message_meta (mailbox_id, uid, meta)", |s| &s.0),
            ("message_envelope (mailbox_id, uid, envelope)", |s| &s.1),
        ];
        for chunk in metas.chunks(ROWS) {
            for (table, part) in tables {
                let sql = format!("INSERT INTO {table} VALUES {}", rows(chunk.len(), 3));
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for (uid, sealed) in chunk {
                    q = q.bind(mailbox_id).bind(*uid).bind(part(sealed));
                }
                q.execute(&mut *tx).await?;
            }
        }
        let placed = (0..items.len() as i64)
            .map(|i| ((first_uid + i) as u32, uidvalidity as u32))
            .collect();
        tx.commit().await?;
        self.notify(mailbox_id);
        Ok(placed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MetaBytes;

    /// A batch gets consecutive UIDs and mod-sequences, each message its own
    /// data and flags, and metadata exactly where it was given.
    #[tokio::test]
    async fn a_batch_lands_in_order_with_its_metadata() {
        let (store, dir) = crate::store::temp_store("append").await;
        let sent = store.mailbox("Sent").await.unwrap().unwrap();
        store
            .append(sent.id, 1, 4, b"zero", "", None)
            .await
            .unwrap();
        let meta = MetaBytes {
            meta: b"meta",
            envelope: b"envelope",
        };
        let items: Vec<NewAppend<'_>> = (0..300)
            .map(|i| NewAppend {
                internaldate: i,
                size: 1,
                data: if i % 2 == 0 { b"even" } else { b"odd" },
                flags: "\\Seen",
                meta: (i != 1).then_some(meta),
            })
            .collect();
        let placed = store.append_many(sent.id, &items).await.unwrap();
        let uids: Vec<u32> = placed.iter().map(|(uid, _)| *uid).collect();
        assert_eq!(uids, (2..302).collect::<Vec<u32>>());
        assert!(placed.iter().all(|(_, v)| *v == sent.uidvalidity));
        assert_eq!(store.data(sent.id, 2).await.unwrap().unwrap(), b"even");
        assert_eq!(store.data(sent.id, 301).await.unwrap().unwrap(), b"odd");
        let rows = store.snapshot(sent.id).await.unwrap();
        assert_eq!(rows.len(), 301);
        assert!(rows.iter().skip(1).all(|r| &*r.flags == "\\Seen"));
        let metas = store.metas(sent.id, &[1, 2, 3, 301]).await.unwrap();
        let have: Vec<u32> = metas
            .iter()
            .filter(|(_, m)| m.as_deref() == Some(b"meta"))
            .map(|(uid, _)| *uid)
            .collect();
        assert_eq!(have, [2, 301], "{metas:?}");
        store.close().await;
        std::fs::remove_dir_all(dir).unwrap();
    }
}
