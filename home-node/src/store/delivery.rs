//! The delivery side of the store: mail from the relay goes into INBOX, a
//! burst in one transaction (one fsync), each message once; WAL checkpoints
//! run in their own task, off the commit that acknowledges a delivery; and
//! the time of the last delivery tells background work (the IMAP metadata
//! cache) to wait for a pause.

use super::{MailStore, NewDelivery, StoreError, Stored, WRITE_TX};
use sqlx::{Row, SqlitePool};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// After a commit, let the commits of a burst pass before checkpointing them
/// together.
const CHECKPOINT_DELAY: Duration = Duration::from_millis(200);
/// Checkpoint at least this often while anything is written (writes that do
/// not announce a change, such as the metadata cache, included).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);

/// When deliveries were last committed, and the checkpoint task's wake-up.
pub(crate) struct DeliveryActivity {
    origin: Instant,
    /// Milliseconds since `origin` of the last delivery commit, plus one; 0:
    /// none yet.
    last: AtomicU64,
    committed: Notify,
}

impl Default for DeliveryActivity {
    fn default() -> Self {
        DeliveryActivity {
            origin: Instant::now(),
            last: AtomicU64::new(0),
            committed: Notify::new(),
        }
    }
}

impl DeliveryActivity {
    fn delivered(&self) {
        let ms = self.origin.elapsed().as_millis() as u64 + 1;
        self.last.store(ms, Ordering::Release);
        self.committed.notify_one();
    }

    /// How long ago the last delivery was committed (`None`: never).
    fn since_last(&self) -> Option<Duration> {
        match self.last.load(Ordering::Acquire) {
            0 => None,
            ms => Some(
                self.origin
                    .elapsed()
                    .saturating_sub(Duration::from_millis(ms - 1)),
            ),
        }
    }

    /// Something was committed: a checkpoint is due soon.
    pub(crate) fn changed(&self) {
        self.committed.notify_one();
    }
}

impl MailStore {
    /// Stores a delivery in INBOX unless its id was stored before. `data` must
    /// already be ciphertext.
    pub async fn deliver(
        &self,
        delivery_id: &str,
        internaldate: i64,
        size: i64,
        data: &[u8],
    ) -> Result<Stored, StoreError> {
        let item = NewDelivery {
            id: delivery_id.to_string(),
            internaldate,
            size,
            data: data.to_vec(),
        };
        let stored = self.deliver_batch(std::slice::from_ref(&item)).await?;
        Ok(stored.first().copied().unwrap_or(Stored::Duplicate))
    }

    /// Stores several deliveries in one transaction (one fsync for the lot),
    /// dropping those seen before; results are in the order given. Three
    /// statements for the whole batch (which ids exist, the UIDs and
    /// mod-sequences taken at once, one multi-row insert): each statement is
    /// a round trip to SQLite's connection thread.
    pub async fn deliver_batch(&self, items: &[NewDelivery]) -> Result<Vec<Stored>, StoreError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let _gate = self.write_gate.lock().await;
        // Packed before the write lock is taken (see `packed`).
        let data: Vec<std::borrow::Cow<[u8]>> = items
            .iter()
            .map(|i| super::packed::for_storage(&i.data))
            .collect();
        let mut tx = self.pool.begin_with(WRITE_TX).await?;
        let mut seen: HashSet<String> = HashSet::new();
        for chunk in items.chunks(MAX_ROWS) {
            let sql = format!(
                "SELECT delivery_id FROM messages WHERE delivery_id IN ({})",
                placeholders(chunk.len(), 1)
            );
            // Only placeholders are built into the text; the ids are bound.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for item in chunk {
                query = query.bind(&item.id);
            }
            for row in query.fetch_all(&mut *tx).await? {
                seen.insert(row.try_get(0)?);
            }
        }
        // New ones, in order; a second copy of an id within the batch is a
        // duplicate too.
        let mut out = Vec::with_capacity(items.len());
        let mut new = Vec::new();
        for (item, data) in items.iter().zip(&data) {
            if seen.insert(item.id.clone()) {
                out.push(None);
                new.push((item, data.as_ref()));
            } else {
                out.push(Some(Stored::Duplicate));
            }
        }
        if new.is_empty() {
            tx.commit().await?;
            return Ok(out
                .into_iter()
                .map(|s| s.unwrap_or(Stored::Duplicate))
                .collect());
        }
        // RFC 3501 §2.3.1.1: UIDs strictly ascending; RFC 7162 §3.1.4: each
        // new message gets a mod-sequence of its own.
        let n = new.len() as i64;
        let row = sqlx::query("UPDATE mailboxes SET uidnext = uidnext + ?1, highestmodseq = highestmodseq + ?1 WHERE name = 'INBOX' RETURNING id, uidnext - ?1, highestmodseq - ?1 + 1")
            .bind(n)
            .fetch_one(&mut *tx)
            .await?;
        let (mailbox_id, first_uid, first_modseq): (i64, i64, i64) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        for (c, chunk) in new.chunks(MAX_ROWS).enumerate() {
            let rows: Vec<String> = (0..chunk.len())
                .map(|i| format!("(?1, {}, '')", placeholders(6, 2 + 6 * i)))
                .collect();
            let sql = format!(
                "INSERT INTO messages (mailbox_id, uid, delivery_id, internaldate, size, modseq, data, flags) VALUES {}",
                rows.join(", ")
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(mailbox_id);
            for (i, (item, data)) in chunk.iter().enumerate() {
                let k = (c * MAX_ROWS + i) as i64;
                query = query
                    .bind(first_uid + k)
                    .bind(&item.id)
                    .bind(item.internaldate)
                    .bind(item.size)
                    .bind(first_modseq + k)
                    .bind(*data);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        self.delivery.delivered();
        self.notify(mailbox_id);
        let mut uids = (first_uid..).map(|uid| Stored::New { uid: uid as u32 });
        Ok(out
            .into_iter()
            .map(|s| s.or_else(|| uids.next()).unwrap_or(Stored::Duplicate))
            .collect())
    }

    /// Waits until no delivery has been committed for `pause`: work that
    /// can wait (filling the metadata cache) must not hold SQLite's write
    /// lock, or the CPU, while mail is arriving.
    pub async fn deliveries_paused(&self, pause: Duration) {
        while let Some(since) = self.delivery.since_last() {
            if since >= pause {
                return;
            }
            tokio::time::sleep(pause - since).await;
        }
    }
}

/// Rows per statement: SQLite allows 32,766 bound values, and a delivery
/// batch is far smaller than this anyway.
pub(super) const MAX_ROWS: usize = 256;

/// `?{first}, ?{first+1}, …` (`n` of them).
pub(super) fn placeholders(n: usize, first: usize) -> String {
    (first..first + n)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Copies the write-ahead log back into the database shortly after commits,
/// on its own connection, instead of inside whichever commit crosses SQLite's
/// automatic threshold: that commit is a delivery waiting for its ack, and
/// the checkpoint's copying and fsync would be added to it.
///
/// It holds the write gate while it runs: with no commit meanwhile it can copy
/// every frame, and the next commit starts the log again from its beginning.
/// Beside a steady stream of deliveries it almost never caught up, the log
/// only grew (59 MiB after 30 s of bench/inbound), and every commit's fsync
/// had to extend the file, which costs a file-system journal commit (see the
/// relay's `spool::checkpoint_loop` for the figures).
pub(super) async fn checkpoint_loop(
    pool: SqlitePool,
    activity: std::sync::Arc<DeliveryActivity>,
    gate: std::sync::Arc<tokio::sync::Mutex<()>>,
) {
    loop {
        let _ = tokio::time::timeout(CHECKPOINT_EVERY, activity.committed.notified()).await;
        tokio::time::sleep(CHECKPOINT_DELAY).await;
        if pool.is_closed() {
            return;
        }
        let _gate = gate.lock().await;
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            if pool.is_closed() {
                return;
            }
            tracing::warn!(error = %e, "WAL checkpoint failed; retrying after the next commit");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, data: &[u8]) -> NewDelivery {
        NewDelivery {
            id: id.to_string(),
            internaldate: 1,
            size: data.len() as i64,
            data: data.to_vec(),
        }
    }

    #[tokio::test]
    async fn a_batch_keeps_its_order_and_drops_every_duplicate() {
        let (store, dir) = crate::store::temp_store("delivery").await;
        assert_eq!(
            store.deliver("q1", 1, 1, b"a").await.unwrap(),
            Stored::New { uid: 1 }
        );
        let batch = [
            item("q2", b"b"),
            item("q1", b"a"),
            item("q3", b"c"),
            item("q2", b"b"),
            item("q4", b"d"),
        ];
        let stored = store.deliver_batch(&batch).await.unwrap();
        assert_eq!(
            stored,
            vec![
                Stored::New { uid: 2 },
                Stored::Duplicate,
                Stored::New { uid: 3 },
                Stored::Duplicate,
                Stored::New { uid: 4 },
            ]
        );
        let list = store.list("INBOX").await.unwrap();
        let ids: Vec<_> = list
            .iter()
            .map(|m| m.delivery_id.clone().unwrap())
            .collect();
        assert_eq!(ids, ["q1", "q2", "q3", "q4"]);
        // Each new message has a mod-sequence of its own, ascending with its UID.
        assert!(list.windows(2).all(|w| w[1].modseq == w[0].modseq + 1));
        assert_eq!(store.raw("INBOX", 3).await.unwrap().unwrap(), b"c");
        let inbox = store.mailbox("INBOX").await.unwrap().unwrap();
        assert_eq!(inbox.uidnext, 5);
        // All seen before: nothing changes.
        let again = store.deliver_batch(&batch[..2]).await.unwrap();
        assert_eq!(again, vec![Stored::Duplicate, Stored::Duplicate]);
        assert_eq!(store.count("INBOX").await.unwrap(), 4);
        store.close().await;
        std::fs::remove_dir_all(dir).unwrap();
    }
}
