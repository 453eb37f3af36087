//! All of the relay's SQL: accounts, link tokens, linked nodes and the spool.
//! One code path for SQLite (the embedded default) and PostgreSQL (shared state
//! for several relay instances), through sqlx's `Any` driver and one set of
//! migrations.

use omb_shared::types::{NodeKey, QueueId};
use sha2::{Digest, Sha256};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("no account called {0:?}")]
    NoAccount(String),
    #[error("an account called {0:?} exists already")]
    AccountExists(String),
    #[error("spool write failed: {0}")]
    Batch(String),
    #[error("the spool writer has stopped")]
    WriterGone,
}

/// Why a link attempt was refused (told to the node as the reason).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinkRefusal {
    #[error("unknown or already used link token")]
    BadToken,
    #[error("this node key is linked to another account")]
    KeyTaken,
}

/// What the MX needs to know of a recipient address.
#[derive(Debug, Clone)]
pub struct Recipient {
    pub handle: String,
    /// The node's OpenPGP certificate (binary); `None` until a node is linked.
    pub cert: Option<Vec<u8>>,
    pub quota_bytes: i64,
    /// Bytes of the account's mail waiting in the spool now.
    pub spooled_bytes: i64,
}

/// One message in the spool, for one account.
#[derive(Debug, Clone)]
pub struct SpoolEntry {
    pub id: QueueId,
    pub handle: String,
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub received_at: i64,
    pub relay_encrypted: bool,
    /// The size of the message as the node will read it (decrypted).
    pub plain_size: i64,
    pub data: Vec<u8>,
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    writer: mpsc::Sender<WriteOp>,
}

/// A spool write waiting for the writer task.
enum WriteOp {
    Insert(Vec<Arc<SpoolEntry>>, oneshot::Sender<Result<(), String>>),
    Delete(String, Vec<String>, oneshot::Sender<Result<usize, String>>),
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A PostgreSQL `url` with its database name replaced by `database` (query
/// string kept): for tools and tests that create a database and then open it.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let authority_end = base[scheme_end..]
        .find('/')
        .map(|i| scheme_end + i)
        .unwrap_or(base.len());
    format!("{}/{database}{query}", &base[..authority_end])
}

fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}

impl Store {
    /// Opens (creating if needed) the database at `url` and brings its schema up
    /// to date. SQLite runs in WAL mode with `synchronous=FULL`, so a committed
    /// spool write survives power loss.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let is_sqlite = url.starts_with("sqlite:");
        let pool = AnyPoolOptions::new()
            .max_connections(if is_sqlite { 4 } else { 16 })
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if is_sqlite {
                        // Checkpoints run in their own task (`checkpoint_loop`),
                        // not inside whichever commit crosses the WAL threshold.
                        sqlx::raw_sql("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=10000; PRAGMA foreign_keys=ON; PRAGMA wal_autocheckpoint=0; PRAGMA journal_size_limit=67108864;")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        let (writer, rx) = mpsc::channel(1024);
        let committed = Arc::new(Notify::new());
        tokio::spawn(write_loop(pool.clone(), rx, committed.clone()));
        if is_sqlite {
            tokio::spawn(checkpoint_loop(pool.clone(), committed));
        }
        Ok(Store { pool, writer })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    // ---- accounts -------------------------------------------------------------

    /// Creates an account with its primary address `handle@domain`.
    pub async fn create_account(
        &self,
        handle: &str,
        domain: &str,
        quota_bytes: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let exists = sqlx::query("SELECT handle FROM accounts WHERE handle = $1")
            .bind(handle)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_some() {
            return Err(StoreError::AccountExists(handle.to_string()));
        }
        sqlx::query("INSERT INTO accounts (handle, quota_bytes, created_at) VALUES ($1, $2, $3)")
            .bind(handle)
            .bind(quota_bytes)
            .bind(now())
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO addresses (address, handle) VALUES ($1, $2)")
            .bind(format!("{handle}@{domain}").to_lowercase())
            .bind(handle)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Issues a new one-time link token for an account. Only its hash is stored.
    pub async fn create_link_token(&self, handle: &str) -> Result<String, StoreError> {
        let exists = sqlx::query("SELECT handle FROM accounts WHERE handle = $1")
            .bind(handle)
            .fetch_optional(&self.pool)
            .await?;
        if exists.is_none() {
            return Err(StoreError::NoAccount(handle.to_string()));
        }
        let token = format!("omb-link-{}", hex::encode(rand::random::<[u8; 20]>()));
        sqlx::query("INSERT INTO link_tokens (token_hash, handle, created_at) VALUES ($1, $2, $3)")
            .bind(token_hash(&token))
            .bind(handle)
            .bind(now())
            .execute(&self.pool)
            .await?;
        Ok(token)
    }

    /// Spends a link token: binds `node_key` and its certificate to the token's
    /// account, replacing any node linked before. Refused when the token is
    /// unknown or used, or when the key already belongs to another account.
    pub async fn link_node(
        &self,
        token: &str,
        node_key: &NodeKey,
        cert: &[u8],
        fingerprint: &str,
    ) -> Result<Result<String, LinkRefusal>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Marking the token used first makes two racing links see one winner.
        let spent = sqlx::query(
            "UPDATE link_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL",
        )
        .bind(now())
        .bind(token_hash(token))
        .execute(&mut *tx)
        .await?;
        if spent.rows_affected() != 1 {
            return Ok(Err(LinkRefusal::BadToken));
        }
        let handle: String = sqlx::query("SELECT handle FROM link_tokens WHERE token_hash = $1")
            .bind(token_hash(token))
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        let owner = sqlx::query("SELECT handle FROM nodes WHERE node_key = $1")
            .bind(node_key.to_hex())
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(row) = owner {
            let owner: String = row.try_get(0)?;
            if owner != handle {
                return Ok(Err(LinkRefusal::KeyTaken));
            }
        }
        sqlx::query("DELETE FROM nodes WHERE handle = $1")
            .bind(&handle)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO nodes (node_key, handle, openpgp_cert, fingerprint, linked_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(node_key.to_hex())
            .bind(&handle)
            .bind(cert.to_vec())
            .bind(fingerprint)
            .bind(now())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Ok(handle))
    }

    /// The account a node key is linked to.
    pub async fn node_account(&self, node_key: &NodeKey) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT handle FROM nodes WHERE node_key = $1")
            .bind(node_key.to_hex())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// Whether an account with this handle exists.
    pub async fn account_exists(&self, handle: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 FROM accounts WHERE handle = $1")
            .bind(handle)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    pub async fn addresses(&self, handle: &str) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT address FROM addresses WHERE handle = $1 ORDER BY address")
            .bind(handle)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(StoreError::from))
            .collect()
    }

    /// Looks up a recipient address (any case), with its account's spool use.
    pub async fn recipient(&self, address: &str) -> Result<Option<Recipient>, StoreError> {
        let row = sqlx::query(
            "SELECT a.handle, n.openpgp_cert, c.quota_bytes, COALESCE(b.bytes, 0) FROM addresses a \
             JOIN accounts c ON c.handle = a.handle \
             LEFT JOIN nodes n ON n.handle = a.handle \
             LEFT JOIN spool_bytes b ON b.handle = a.handle WHERE a.address = $1",
        )
        .bind(address.to_lowercase())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(recipient_from).transpose()
    }

    /// The same for an account, by handle: one query for what the end of DATA
    /// needs (certificate, quota, spool use).
    pub async fn account_recipient(&self, handle: &str) -> Result<Option<Recipient>, StoreError> {
        let row = sqlx::query(
            "SELECT c.handle, n.openpgp_cert, c.quota_bytes, COALESCE(b.bytes, 0) FROM accounts c \
             LEFT JOIN nodes n ON n.handle = c.handle \
             LEFT JOIN spool_bytes b ON b.handle = c.handle WHERE c.handle = $1",
        )
        .bind(handle)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(recipient_from).transpose()
    }

    // ---- spool ----------------------------------------------------------------

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
async fn write_loop(pool: AnyPool, mut rx: mpsc::Receiver<WriteOp>, committed: Arc<Notify>) {
    while let Some(first) = rx.recv().await {
        let mut ops = vec![first];
        while ops.len() < 256 {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        match write_batch(&pool, &ops).await {
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
/// after commits, on its own connection. A PASSIVE checkpoint never blocks the
/// spool writer, so a sender's `250` does not wait for a checkpoint's copying
/// and fsync, as it would with SQLite's automatic checkpoint at commit time.
async fn checkpoint_loop(pool: AnyPool, committed: Arc<Notify>) {
    loop {
        committed.notified().await;
        // Let a burst of commits pass, then checkpoint them together.
        tokio::time::sleep(Duration::from_millis(200)).await;
        if pool.is_closed() {
            return;
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            tracing::warn!(error = %e, "WAL checkpoint failed; retrying after the next commit");
        }
    }
}

/// One transaction for a batch; returns, in order, how many rows each delete removed.
async fn write_batch(pool: &AnyPool, ops: &[WriteOp]) -> Result<Vec<usize>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut deleted = Vec::new();
    for op in ops {
        match op {
            WriteOp::Insert(entries, _) => {
                for e in entries {
                    sqlx::query("INSERT INTO spool (id, handle, mail_from, rcpt_to, size, received_at, relay_encrypted, data, plain_size) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
                        .bind(e.id.as_str())
                        .bind(&e.handle)
                        .bind(&e.mail_from)
                        .bind(e.rcpt_to.join(","))
                        .bind(e.data.len() as i64)
                        .bind(e.received_at)
                        .bind(i64::from(e.relay_encrypted))
                        .bind(&e.data[..])
                        .bind(e.plain_size)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("INSERT INTO spool_bytes (handle, bytes) VALUES ($1, $2) ON CONFLICT (handle) DO UPDATE SET bytes = spool_bytes.bytes + excluded.bytes")
                        .bind(&e.handle)
                        .bind(e.data.len() as i64)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            WriteOp::Delete(handle, ids, _) => {
                let mut n = 0;
                for id in ids {
                    let gone = sqlx::query(
                        "DELETE FROM spool WHERE id = $1 AND handle = $2 RETURNING size",
                    )
                    .bind(id)
                    .bind(handle)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if let Some(row) = gone {
                        let size: i64 = row.try_get(0)?;
                        sqlx::query("UPDATE spool_bytes SET bytes = bytes - $1 WHERE handle = $2")
                            .bind(size)
                            .bind(handle)
                            .execute(&mut *tx)
                            .await?;
                        n += 1;
                    }
                }
                deleted.push(n);
            }
        }
    }
    tx.commit().await?;
    Ok(deleted)
}

fn recipient_from(row: &AnyRow) -> Result<Recipient, StoreError> {
    Ok(Recipient {
        handle: row.try_get(0)?,
        cert: row.try_get(1)?,
        quota_bytes: row.try_get(2)?,
        spooled_bytes: row.try_get(3)?,
    })
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

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn with_database_replaces_only_the_name() {
        assert_eq!(
            with_database("postgres://u:p@127.0.0.1:5432/postgres", "x"),
            "postgres://u:p@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h/postgres?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://u:p@h:5432", "x"),
            "postgres://u:p@h:5432/x"
        );
        assert_eq!(
            with_database("postgresql://h/db?application_name=a/b", "x"),
            "postgresql://h/x?application_name=a/b"
        );
    }
}
