//! The spool: mail waiting for nodes, written by one group-committing task.

use super::{SpoolEntry, Store, StoreError, WriteOp};
use omb_shared::types::QueueId;
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Mutex, Notify};

impl Store {
    /// Bytes waiting in the spool for an account.
    pub async fn spool_usage(&self, handle: &str) -> Result<i64, StoreError> {
        // SUM(BIGINT) is NUMERIC on PostgreSQL, a type sqlx's Any driver refuses
        // to decode (the whole row fails); the cast makes it BIGINT on both.
        // Kept by the spool writer with every insert and delete (one row, not a
        // SUM over the backlog, which slows down exactly when the spool grows).
        let row = sqlx::query("SELECT bytes FROM spool_bytes WHERE handle = $1")
            .bind(handle)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?.unwrap_or(0))
    }

    /// Writes messages to the spool in one transaction; when this returns `Ok`
    /// they are durable.
    pub async fn spool_insert(&self, entries: &[SpoolEntry]) -> Result<(), StoreError> {
        let shared: Vec<Arc<SpoolEntry>> = entries.iter().cloned().map(Arc::new).collect();
        self.spool_insert_shared(&shared).await
    }

    /// [`Store::spool_insert`] for messages the caller keeps using after the
    /// commit (the MX hands them to the tunnel), without copying them.
    pub async fn spool_insert_shared(&self, entries: &[Arc<SpoolEntry>]) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(WriteOp::Insert(entries.to_vec(), tx))
            .await
            .map_err(|_| StoreError::WriterGone)?;
        rx.await
            .map_err(|_| StoreError::WriterGone)?
            .map_err(StoreError::Batch)
    }

    /// The oldest messages waiting for `handle`, with their data, skipping the
    /// ids in `skip` (for tools and tests; the tunnel uses [`Store::spool_queue`]
    /// and loads bodies one at a time).
    pub async fn spool_pending(
        &self,
        handle: &str,
        skip: &std::collections::HashSet<String>,
        limit: usize,
    ) -> Result<Vec<SpoolEntry>, StoreError> {
        let mut out = Vec::new();
        for (id, _size) in self.spool_queue(handle, skip, limit).await? {
            if let Some(entry) = self.spool_get(handle, &id).await? {
                out.push(entry);
            }
        }
        Ok(out)
    }

    /// The ids and sizes of the oldest messages waiting for `handle`, skipping the
    /// ids in `skip`: the tunnel loads bodies one at a time, so a node's backlog
    /// never has to fit in the relay's memory.
    pub async fn spool_queue(
        &self,
        handle: &str,
        skip: &std::collections::HashSet<String>,
        limit: usize,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT id, size FROM spool WHERE handle = $1 ORDER BY id LIMIT $2")
            .bind(handle)
            .bind((limit + skip.len()) as i64)
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::new();
        for row in rows {
            let id: String = row.try_get(0)?;
            if !skip.contains(&id) && out.len() < limit {
                out.push((id, row.try_get(1)?));
            }
        }
        Ok(out)
    }

    /// One spooled message of `handle`, with its data.
    pub async fn spool_get(
        &self,
        handle: &str,
        id: &str,
    ) -> Result<Option<SpoolEntry>, StoreError> {
        let row = sqlx::query("SELECT id, handle, mail_from, rcpt_to, received_at, relay_encrypted, data, plain_size FROM spool WHERE handle = $1 AND id = $2")
            .bind(handle)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| entry_from(&r, id.to_string())).transpose()
    }

    /// Removes a delivered message; only the owning account's node can do so.
    pub async fn spool_delete(&self, handle: &str, id: &str) -> Result<bool, StoreError> {
        Ok(self.spool_delete_many(handle, vec![id.to_string()]).await? == 1)
    }

    /// Removes several delivered messages of `handle` in one commit; returns how
    /// many were there.
    pub async fn spool_delete_many(
        &self,
        handle: &str,
        ids: Vec<String>,
    ) -> Result<usize, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(WriteOp::Delete(handle.to_string(), ids, tx))
            .await
            .map_err(|_| StoreError::WriterGone)?;
        rx.await
            .map_err(|_| StoreError::WriterGone)?
            .map_err(StoreError::Batch)
    }

    pub async fn spool_count(&self, handle: &str) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) FROM spool WHERE handle = $1")
            .bind(handle)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }
}

/// The one writer of the spool: it takes every insert and delete that is
/// waiting and commits them in one transaction (group commit), so concurrent
/// sessions share one fsync instead of queueing for one each. Each caller hears
/// back only after the commit that holds its write.
pub(super) async fn write_loop(
    pool: AnyPool,
    mut rx: mpsc::Receiver<WriteOp>,
    committed: Arc<Notify>,
    turn: Arc<Mutex<()>>,
) {
    while let Some(first) = rx.recv().await {
        let mut ops = vec![first];
        while ops.len() < 256 {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let written = {
            let _turn = turn.lock().await;
            write_batch(&pool, &ops).await
        };
        match written {
            Ok(deleted) => {
                committed.notify_one();
                let mut deleted = deleted.into_iter();
                for op in ops {
                    match op {
                        WriteOp::Insert(_, tx) => {
                            let _ = tx.send(Ok(()));
                        }
                        WriteOp::Delete(_, _, tx) => {
                            let _ = tx.send(Ok(deleted.next().unwrap_or(0)));
                        }
                    }
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for op in ops {
                    match op {
                        WriteOp::Insert(_, tx) => {
                            let _ = tx.send(Err(msg.clone()));
                        }
                        WriteOp::Delete(_, _, tx) => {
                            let _ = tx.send(Err(msg.clone()));
                        }
                    }
                }
            }
        }
    }
}

/// SQLite only: copies the write-ahead log back into the database shortly
/// after commits, on its own connection, not inside a commit that a sender's
/// `250` waits for (SQLite's automatic checkpoint).
///
/// It takes its `turn` between the writer's batches: with no commit running
/// meanwhile, the checkpoint can copy every frame, and the next commit then
/// starts the log again from its beginning. Under a steady load a checkpoint
/// beside the writer almost never caught up, so the log only grew (64 MiB
/// after 30 s of bench/inbound), and every commit's fsync then had to extend
/// the file, which costs a file-system journal commit: measured here with
/// 12 KiB writes, fsync after appending p90 12 ms / p99 24-36 ms, after
/// overwriting p90 4 ms / p99 8 ms, on a machine others were building on.
pub(super) async fn checkpoint_loop(pool: AnyPool, committed: Arc<Notify>, turn: Arc<Mutex<()>>) {
    loop {
        committed.notified().await;
        // Let a burst of commits pass, then checkpoint them together.
        tokio::time::sleep(Duration::from_millis(200)).await;
        if pool.is_closed() {
            return;
        }
        let _turn = turn.lock().await;
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            tracing::warn!(error = %e, "WAL checkpoint failed; retrying after the next commit");
        }
    }
}

/// Rows per statement (PostgreSQL allows 65,535 bound values, SQLite 32,766).
const MAX_ROWS: usize = 256;

/// `($first, …, $first+width-1)` for `rows` rows, comma-separated.
fn value_rows(rows: usize, width: usize, first: usize) -> String {
    (0..rows)
        .map(|r| {
            let cols: Vec<String> = (0..width)
                .map(|c| format!("${}", first + r * width + c))
                .collect();
            format!("({})", cols.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One transaction for a batch; returns, in order, how many rows each delete
/// removed. A few statements for the whole batch, not two per message: each
/// statement is a round trip to the database (to SQLite's connection thread).
async fn write_batch(pool: &AnyPool, ops: &[WriteOp]) -> Result<Vec<usize>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Bytes added (inserts) and removed (deletes) per account, applied once.
    let mut bytes: BTreeMap<&str, i64> = BTreeMap::new();
    let inserts: Vec<&Arc<SpoolEntry>> = ops
        .iter()
        .filter_map(|op| match op {
            WriteOp::Insert(entries, _) => Some(entries),
            WriteOp::Delete(..) => None,
        })
        .flatten()
        .collect();
    for chunk in inserts.chunks(MAX_ROWS) {
        let sql = format!(
            "INSERT INTO spool (id, handle, mail_from, rcpt_to, size, received_at, relay_encrypted, data, plain_size) VALUES {}",
            value_rows(chunk.len(), 9, 1)
        );
        // Only placeholders are built into the text; every value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for e in chunk {
            query = query
                .bind(e.id.as_str())
                .bind(&e.handle)
                .bind(&e.mail_from)
                .bind(e.rcpt_to.join(","))
                .bind(e.data.len() as i64)
                .bind(e.received_at)
                .bind(i64::from(e.relay_encrypted))
                .bind(&e.data[..])
                .bind(e.plain_size);
            *bytes.entry(&e.handle).or_default() += e.data.len() as i64;
        }
        query.execute(&mut *tx).await?;
    }
    let mut deleted = Vec::new();
    for op in ops {
        let WriteOp::Delete(handle, ids, _) = op else {
            continue;
        };
        let mut n = 0;
        for chunk in ids.chunks(MAX_ROWS) {
            let sql = format!(
                "DELETE FROM spool WHERE handle = $1 AND id IN ({}) RETURNING size",
                (0..chunk.len())
                    .map(|i| format!("${}", i + 2))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(handle);
            for id in chunk {
                query = query.bind(id);
            }
            for row in query.fetch_all(&mut *tx).await? {
                let size: i64 = row.try_get(0)?;
                *bytes.entry(handle).or_default() -= size;
                n += 1;
            }
        }
        deleted.push(n);
    }
    for (handle, change) in bytes {
        // A row exists once anything was spooled for the account.
        let sql = match change.signum() {
            1 => "INSERT INTO spool_bytes (handle, bytes) VALUES ($1, $2) ON CONFLICT (handle) DO UPDATE SET bytes = spool_bytes.bytes + excluded.bytes",
            -1 => "UPDATE spool_bytes SET bytes = bytes + $2 WHERE handle = $1",
            _ => continue,
        };
        sqlx::query(sql)
            .bind(handle)
            .bind(change)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(deleted)
}

fn entry_from(row: &AnyRow, id: String) -> Result<SpoolEntry, StoreError> {
    let rcpt: String = row.try_get(3)?;
    Ok(SpoolEntry {
        id: QueueId(id),
        handle: row.try_get(1)?,
        mail_from: row.try_get(2)?,
        rcpt_to: rcpt
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        received_at: row.try_get(4)?,
        relay_encrypted: row.try_get::<i64, _>(5)? != 0,
        data: row.try_get(6)?,
        plain_size: row.try_get(7)?,
    })
}
