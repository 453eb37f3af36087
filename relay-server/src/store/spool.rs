//! The spool: mail waiting for nodes. Its writes go through the group-
//! committing writer (`writer`).

use super::writer::{WriteOp, Written};
use super::{value_rows, SpoolEntry, Store, StoreError, MAX_ROWS};
use omb_shared::types::QueueId;
use sqlx::any::AnyRow;
use sqlx::Row;
use std::collections::BTreeMap;
use std::sync::Arc;

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
        self.write(WriteOp::SpoolInsert(entries.to_vec())).await?;
        Ok(())
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
        match self
            .write(WriteOp::SpoolDelete(handle.to_string(), ids))
            .await?
        {
            Written::Deleted(n) => Ok(n),
            _ => Ok(0),
        }
    }

    pub async fn spool_count(&self, handle: &str) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) FROM spool WHERE handle = $1")
            .bind(handle)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }
}

/// Writes a batch's spool inserts and deletes in the writer's transaction
/// `tx` (see `writer`), in a few statements for the lot, not two per message:
/// each statement is a round trip to the database (to SQLite's connection
/// thread). Returns, in order, how many rows each delete removed.
pub(super) async fn write(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    inserts: &[&Arc<SpoolEntry>],
    deletes: &[(&str, &[String])],
) -> Result<Vec<usize>, sqlx::Error> {
    // Bytes added (inserts) and removed (deletes) per account, applied once.
    let mut bytes: BTreeMap<&str, i64> = BTreeMap::new();
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
        query.execute(&mut **tx).await?;
    }
    let mut deleted = Vec::with_capacity(deletes.len());
    for (handle, ids) in deletes {
        let mut n = 0;
        for chunk in ids.chunks(MAX_ROWS) {
            let sql = format!(
                "DELETE FROM spool WHERE handle = $1 AND id IN ({}) RETURNING size",
                (0..chunk.len())
                    .map(|i| format!("${}", i + 2))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(*handle);
            for id in chunk {
                query = query.bind(id);
            }
            for row in query.fetch_all(&mut **tx).await? {
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
            .execute(&mut **tx)
            .await?;
    }
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
