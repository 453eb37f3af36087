//! The per-message metadata cache (size, ENVELOPE, BODYSTRUCTURE, headers of the
//! message as apps see it) is as private as the message, so it is encrypted at
//! rest with a symmetric key kept in `DATA_DIR/meta.key` (mode 0600, made at
//! first start): XChaCha20-Poly1305, a random 24-byte nonce per value.

use super::{MailStore, StoreError, WRITE_TX};
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use rusqlite::OptionalExtension;
use sqlx::Row;
use std::path::Path;

const FILE: &str = "meta.key";

/// A message's metadata for the cache, serialised by its user (the IMAP
/// server): all of it, and the short part a message list reads.
#[derive(Clone, Copy)]
pub struct MetaBytes<'a> {
    pub meta: &'a [u8],
    pub envelope: &'a [u8],
}

#[derive(Clone, Copy)]
enum Cached {
    Meta,
    Envelope,
}
const NONCE: usize = 24;

pub(crate) struct MetaKey(XChaCha20Poly1305);

impl MetaKey {
    pub(crate) fn load_or_create(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join(FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key: [u8; 32] = rand::random();
                omb_shared::pgp::write_private_file(&path, &key).map_err(|e| {
                    StoreError::Key(format!("cannot write {}: {e}", path.display()))
                })?;
                key.to_vec()
            }
            Err(e) => {
                return Err(StoreError::Key(format!(
                    "cannot read {}: {e}",
                    path.display()
                )))
            }
        };
        if bytes.len() != 32 {
            return Err(StoreError::Key(format!(
                "{} must hold 32 bytes; delete it to have it made again (the cache is rebuilt)",
                path.display()
            )));
        }
        Ok(MetaKey(XChaCha20Poly1305::new(Key::from_slice(&bytes))))
    }

    fn seal(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let nonce: [u8; NONCE] = rand::random();
        let mut out = nonce.to_vec();
        out.extend(self.0.encrypt(XNonce::from_slice(&nonce), plain).ok()?);
        Some(out)
    }

    /// None for a value that does not open (another key, damage): the cache
    /// entry is then made again.
    fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE {
            return None;
        }
        let (nonce, data) = sealed.split_at(NONCE);
        self.0.decrypt(XNonce::from_slice(nonce), data).ok()
    }
}

impl MailStore {
    /// The cached metadata of the messages with these UIDs (None where there
    /// is none yet), in UID order.
    pub async fn metas(
        &self,
        mailbox_id: i64,
        uids: &[u32],
    ) -> Result<Vec<(u32, Option<Vec<u8>>)>, StoreError> {
        self.sealed(Cached::Meta, mailbox_id, uids).await
    }

    /// The cached envelopes (the short part of the metadata: what a message
    /// list needs) of the messages with these UIDs, in UID order.
    pub async fn envelopes(
        &self,
        mailbox_id: i64,
        uids: &[u32],
    ) -> Result<Vec<(u32, Option<Vec<u8>>)>, StoreError> {
        self.sealed(Cached::Envelope, mailbox_id, uids).await
    }

    async fn sealed(
        &self,
        what: Cached,
        mailbox_id: i64,
        uids: &[u32],
    ) -> Result<Vec<(u32, Option<Vec<u8>>)>, StoreError> {
        let sql = match what {
            Cached::Meta => "SELECT uid, meta FROM message_meta WHERE mailbox_id = ?1 AND uid BETWEEN ?2 AND ?3",
            Cached::Envelope => "SELECT uid, envelope FROM message_envelope WHERE mailbox_id = ?1 AND uid BETWEEN ?2 AND ?3",
        };
        let mut out = Vec::with_capacity(uids.len());
        // Contiguous runs are read as ranges, so 1:* costs one query.
        for run in runs(uids) {
            self.readers.read(|c| {
                let mut stmt = c.prepare_cached(sql)?;
                let mut rows = stmt.query((mailbox_id, i64::from(run.0), i64::from(run.1)))?;
                while let Some(row) = rows.next()? {
                    let uid: u32 = row.get(0)?;
                    if uids.binary_search(&uid).is_err() {
                        continue;
                    }
                    let sealed = row.get_ref(1)?.as_blob()?;
                    out.push((uid, self.meta_key.open(sealed)));
                }
                Ok(())
            })?;
        }
        out.sort_unstable_by_key(|m| m.0);
        Ok(out)
    }

    /// The stored (encrypted) form of one message with its cached metadata
    /// (None where there is none yet), in one query.
    pub async fn message(
        &self,
        mailbox_id: i64,
        uid: u32,
    ) -> Result<Option<(Vec<u8>, Option<Vec<u8>>)>, StoreError> {
        let row = self.readers.read(|c| {
            c.prepare_cached(
                "SELECT m.data, x.meta FROM messages m LEFT JOIN message_meta x ON x.mailbox_id = m.mailbox_id AND x.uid = m.uid WHERE m.mailbox_id = ?1 AND m.uid = ?2",
            )?
            .query_row((mailbox_id, i64::from(uid)), |r| {
                let data: Vec<u8> = r.get(0)?;
                let meta = match r.get_ref(1)? {
                    rusqlite::types::ValueRef::Blob(sealed) => self.meta_key.open(sealed),
                    _ => None,
                };
                Ok((data, meta))
            })
            .optional()
        })?;
        let Some((data, meta)) = row else {
            return Ok(None);
        };
        Ok(Some((data, meta)))
    }

    /// Caches a message's metadata and its envelope (both encrypted).
    pub async fn set_meta(
        &self,
        mailbox_id: i64,
        uid: u32,
        meta: &MetaBytes<'_>,
    ) -> Result<(), StoreError> {
        let (Some(sealed), Some(envelope)) = (
            self.meta_key.seal(meta.meta),
            self.meta_key.seal(meta.envelope),
        ) else {
            return Ok(());
        };
        // A cache entry lost in a power cut is made again: no fsync for it.
        let mut conn = self.relaxed().await?;
        let done = Self::insert_meta(&mut conn, mailbox_id, uid, sealed, envelope).await;
        super::durable_again(conn).await;
        done
    }

    /// Caches the metadata of several messages in one transaction (one
    /// commit instead of one each: the metadata of a folder's new mail is
    /// made in batches).
    pub async fn set_metas(&self, metas: &[(i64, u32, MetaBytes<'_>)]) -> Result<(), StoreError> {
        let sealed: Vec<(i64, u32, Vec<u8>, Vec<u8>)> = metas
            .iter()
            .filter_map(|(mailbox_id, uid, m)| {
                let (meta, envelope) = self.seal_metas(m)?;
                Some((*mailbox_id, *uid, meta, envelope))
            })
            .collect();
        if sealed.is_empty() {
            return Ok(());
        }
        let mut conn = self.relaxed().await?;
        let done = Self::insert_metas(&mut conn, sealed).await;
        super::durable_again(conn).await;
        done
    }

    async fn insert_meta(
        conn: &mut sqlx::SqliteConnection,
        mailbox_id: i64,
        uid: u32,
        sealed: Vec<u8>,
        envelope: Vec<u8>,
    ) -> Result<(), StoreError> {
        Self::insert_metas(conn, vec![(mailbox_id, uid, sealed, envelope)]).await
    }

    async fn insert_metas(
        conn: &mut sqlx::SqliteConnection,
        metas: Vec<(i64, u32, Vec<u8>, Vec<u8>)>,
    ) -> Result<(), StoreError> {
        let mut tx = sqlx::Connection::begin_with(&mut *conn, WRITE_TX).await?;
        for (mailbox_id, uid, sealed, envelope) in metas {
            // Only while the message exists (it may have been expunged meanwhile).
            sqlx::query("INSERT OR REPLACE INTO message_meta (mailbox_id, uid, meta) SELECT ?1, ?2, ?3 WHERE EXISTS (SELECT 1 FROM messages WHERE mailbox_id = ?1 AND uid = ?2)")
                .bind(mailbox_id)
                .bind(i64::from(uid))
                .bind(sealed)
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT OR REPLACE INTO message_envelope (mailbox_id, uid, envelope) SELECT ?1, ?2, ?3 WHERE EXISTS (SELECT 1 FROM messages WHERE mailbox_id = ?1 AND uid = ?2)")
                .bind(mailbox_id)
                .bind(i64::from(uid))
                .bind(envelope)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Seals a message's metadata and envelope for the cache.
    pub(crate) fn seal_metas(&self, meta: &MetaBytes<'_>) -> Option<(Vec<u8>, Vec<u8>)> {
        Some((
            self.meta_key.seal(meta.meta)?,
            self.meta_key.seal(meta.envelope)?,
        ))
    }

    /// Messages that have no cached metadata yet (at most `limit`).
    pub async fn missing_metas(&self, limit: i64) -> Result<Vec<(i64, u32)>, StoreError> {
        let rows = sqlx::query(
            "SELECT m.mailbox_id, m.uid FROM messages m WHERE NOT EXISTS (SELECT 1 FROM message_meta x WHERE x.mailbox_id = m.mailbox_id AND x.uid = m.uid) ORDER BY m.mailbox_id, m.uid DESC LIMIT ?1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get::<i64, _>(1)? as u32)))
            .collect()
    }
}

/// Sorted UIDs as inclusive spans, small gaps (expunged UIDs) bridged so a
/// mailbox is read in a few range queries.
fn runs(uids: &[u32]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &u in uids {
        match out.last_mut() {
            Some(last) if u <= last.1.saturating_add(256) => last.1 = u,
            _ => out.push((u, u)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn runs_bridge_small_gaps() {
        assert_eq!(
            super::runs(&[1, 2, 3, 7, 900, 901]),
            vec![(1, 7), (900, 901)]
        );
    }
}
