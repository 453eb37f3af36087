//! What the POP3 server needs of the store: the maildrop is INBOX (RFC 1939).
//! Deletions made over POP3 are IMAP expunges: the rows go, and INBOX's
//! HIGHESTMODSEQ moves on (RFC 7162 section 3.1.2.1), so IMAP clients see them.

use super::WRITE_TX;
use super::{MailStore, StoreError};
use sqlx::Row;

/// One INBOX message as a POP3 session lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pop3Message {
    pub uid: u32,
    pub delivery_id: Option<String>,
    /// Octets RETR sends in the asked view, when worked out before.
    pub size: Option<u64>,
}

/// INBOX as a POP3 maildrop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pop3Listing {
    pub uidvalidity: u32,
    pub messages: Vec<Pop3Message>,
}

impl MailStore {
    /// INBOX's messages in UID order, with their cached POP3 sizes for the
    /// decrypted view (`ciphertext = false`) or the ciphertext view.
    pub async fn pop3_list(&self, ciphertext: bool) -> Result<Pop3Listing, StoreError> {
        let row = sqlx::query("SELECT id, uidvalidity FROM mailboxes WHERE name = 'INBOX'")
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NoMailbox("INBOX".to_string()))?;
        let (id, uidvalidity): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
        let rows = sqlx::query(
            "SELECT m.uid, m.delivery_id, s.size FROM messages m \
             LEFT JOIN pop3_sizes s ON s.mailbox_id = m.mailbox_id AND s.uid = m.uid AND s.ciphertext = ?2 \
             WHERE m.mailbox_id = ?1 ORDER BY m.uid",
        )
        .bind(id)
        .bind(ciphertext)
        .fetch_all(&self.pool)
        .await?;
        let messages = rows
            .iter()
            .map(|r| {
                Ok(Pop3Message {
                    uid: r.try_get::<i64, _>(0)? as u32,
                    delivery_id: r.try_get(1)?,
                    size: r.try_get::<Option<i64>, _>(2)?.map(|s| s.max(0) as u64),
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Pop3Listing {
            uidvalidity: uidvalidity as u32,
            messages,
        })
    }

    /// The stored (encrypted) form of an INBOX message, as kept (for
    /// `MailView::render`); `None` once it is gone.
    pub async fn pop3_message(&self, uid: u32) -> Result<Option<Vec<u8>>, StoreError> {
        self.stored("INBOX", uid).await
    }

    /// Keeps the POP3 sizes of INBOX messages (`(uid, octets)`) in one
    /// transaction; a message removed meanwhile is skipped.
    pub async fn pop3_set_sizes(
        &self,
        ciphertext: bool,
        sizes: &[(u32, u64)],
    ) -> Result<(), StoreError> {
        if sizes.is_empty() {
            return Ok(());
        }
        let id = self.mailbox_id("INBOX").await?;
        let mut tx = self.pool.begin_with(WRITE_TX).await?;
        for &(uid, size) in sizes {
            sqlx::query(
                "INSERT OR REPLACE INTO pop3_sizes (mailbox_id, uid, ciphertext, size) \
                 SELECT mailbox_id, uid, ?3, ?4 FROM messages WHERE mailbox_id = ?1 AND uid = ?2",
            )
            .bind(id)
            .bind(i64::from(uid))
            .bind(ciphertext)
            .bind(i64::try_from(size).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Removes these INBOX messages, all or none (RFC 1939 section 6, the UPDATE
    /// state), and moves INBOX's HIGHESTMODSEQ on when anything went. Returns
    /// how many were removed: fewer than asked when IMAP expunged some first.
    pub async fn pop3_delete(&self, uids: &[u32]) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin_with(WRITE_TX).await?;
        let id: i64 = sqlx::query("SELECT id FROM mailboxes WHERE name = 'INBOX'")
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NoMailbox("INBOX".to_string()))?
            .try_get(0)?;
        let present: Vec<u32> = {
            let mut present = Vec::new();
            for &uid in uids {
                let row = sqlx::query("SELECT 1 FROM messages WHERE mailbox_id = ?1 AND uid = ?2")
                    .bind(id)
                    .bind(i64::from(uid))
                    .fetch_optional(&mut *tx)
                    .await?;
                if row.is_some() {
                    present.push(uid);
                }
            }
            present
        };
        let removed = present.len() as u64;
        if removed > 0 {
            // The same expunge as IMAP's: one mod-sequence, and the UIDs kept
            // for QRESYNC clients (VANISHED).
            let modseq = super::messages::bump(&mut tx, id).await?;
            for uid in present {
                super::messages::remove(&mut tx, id, uid, modseq).await?;
            }
        }
        tx.commit().await?;
        if removed > 0 {
            // IMAP sessions on INBOX (IDLE included) hear of it at once.
            self.notify(id);
        }
        Ok(removed)
    }

    /// INBOX's HIGHESTMODSEQ (RFC 7162).
    pub async fn pop3_highestmodseq(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query("SELECT highestmodseq FROM mailboxes WHERE name = 'INBOX'")
                .fetch_one(&self.pool)
                .await?
                .try_get(0)?,
        )
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn list_cache_sizes_and_delete_atomically_with_a_modseq_bump() {
        let (store, dir) = crate::store::temp_store("store-pop3").await;
        for (id, data) in [("aa01", b"one"), ("aa02", b"two"), ("aa03", b"six")] {
            store.deliver(id, 1, 3, data).await.unwrap();
        }
        let listing = store.pop3_list(false).await.unwrap();
        assert!(listing.uidvalidity > 0);
        assert_eq!(
            listing.messages.iter().map(|m| m.uid).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(listing.messages[0].delivery_id.as_deref(), Some("aa01"));
        assert!(listing.messages.iter().all(|m| m.size.is_none()));

        // Sizes are kept per view; one for a message that is gone is skipped.
        store
            .pop3_set_sizes(false, &[(1, 11), (2, 22), (9, 99)])
            .await
            .unwrap();
        let sizes: Vec<_> = store
            .pop3_list(false)
            .await
            .unwrap()
            .messages
            .iter()
            .map(|m| m.size)
            .collect();
        assert_eq!(sizes, vec![Some(11), Some(22), None]);
        assert!(store
            .pop3_list(true)
            .await
            .unwrap()
            .messages
            .iter()
            .all(|m| m.size.is_none()));

        let before = store.pop3_highestmodseq().await.unwrap();
        assert_eq!(store.pop3_delete(&[1, 3, 7]).await.unwrap(), 2);
        assert!(store.pop3_highestmodseq().await.unwrap() > before);
        let left = store.pop3_list(false).await.unwrap().messages;
        assert_eq!(left.len(), 1);
        assert_eq!((left[0].uid, left[0].size), (2, Some(22)));
        assert_eq!(store.count("INBOX").await.unwrap(), 1);
        assert!(store.pop3_message(1).await.unwrap().is_none());
        assert_eq!(store.pop3_message(2).await.unwrap().unwrap(), b"two");

        // Nothing to remove: HIGHESTMODSEQ stays.
        let before = store.pop3_highestmodseq().await.unwrap();
        assert_eq!(store.pop3_delete(&[1]).await.unwrap(), 0);
        assert_eq!(store.pop3_highestmodseq().await.unwrap(), before);
        store.close().await;
        std::fs::remove_dir_all(dir).unwrap();
    }
}
