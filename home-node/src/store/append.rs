//! Appending messages to a folder (APPEND, copies kept in Sent): one or
//! several in one transaction, with consecutive UIDs and mod-sequences.

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
        let mut placed = Vec::with_capacity(items.len());
        for (i, ((item, sealed), data)) in items.iter().zip(sealed).zip(&data).enumerate() {
            let uid = first_uid + i as i64;
            sqlx::query("INSERT INTO messages (mailbox_id, uid, internaldate, size, flags, modseq, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")
                .bind(mailbox_id)
                .bind(uid)
                .bind(item.internaldate)
                .bind(item.size)
                .bind(item.flags)
                .bind(first_modseq + 1 + i as i64)
                .bind(data.as_ref())
                .execute(&mut *tx)
                .await?;
            if let Some((meta, envelope)) = sealed {
                sqlx::query("INSERT INTO message_meta (mailbox_id, uid, meta) VALUES (?1, ?2, ?3)")
                    .bind(mailbox_id)
                    .bind(uid)
                    .bind(meta)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO message_envelope (mailbox_id, uid, envelope) VALUES (?1, ?2, ?3)",
                )
                .bind(mailbox_id)
                .bind(uid)
                .bind(envelope)
                .execute(&mut *tx)
                .await?;
            }
            placed.push((uid as u32, uidvalidity as u32));
        }
        tx.commit().await?;
        self.notify(mailbox_id);
        Ok(placed)
    }
}
