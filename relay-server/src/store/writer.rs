//! The one writer of the mail queues: spool inserts and deletes, and the
//! outbound queue's inserts, claims and outcomes. Whatever is waiting is
//! committed in one transaction (group commit), so concurrent sessions share
//! one fsync instead of each holding SQLite's write lock through its own
//! statements and fsync in turn. Each caller hears back only after the commit
//! that holds its write. The SQL of each write stays with its concern
//! (`spool`, `outbound`); this file only batches and answers.

use super::outbound::{self, DueRcpt, NewOutbound};
use super::{spool, SpoolEntry, Store, StoreError};
use sqlx::{AnyConnection, AnyPool};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Mutex, Notify};

/// Writes taken per transaction at most.
const BATCH: usize = 256;

/// A write waiting for the writer task.
pub(super) enum WriteOp {
    SpoolInsert(Vec<Arc<SpoolEntry>>),
    /// `handle`'s delivered messages, by id.
    SpoolDelete(String, Vec<String>),
    OutboundInsert(Box<NewOutbound>),
    /// Up to `limit` due recipients, leased for `lease` seconds.
    OutboundClaim {
        limit: i64,
        lease: i64,
    },
    /// Recipients done with: `(queue id, recipient)`.
    OutboundDone(Vec<(String, String)>),
    /// Claimed recipients handed back, due now: `(queue id, recipient)`.
    OutboundRelease(Vec<(String, String)>),
    /// A temporary failure: `(queue id, recipient, next attempt, error)`.
    OutboundDefer(String, String, i64, String),
}

/// What a write did, once committed.
pub(super) enum Written {
    Nothing,
    /// Rows the delete removed.
    Deleted(usize),
    /// The queue id of an outbound message (new, or the one its submission
    /// id had already).
    Queued(String),
    Claimed(Vec<DueRcpt>),
}

type Reply = oneshot::Sender<Result<Written, String>>;

impl Store {
    /// Hands `op` to the writer; returns once the transaction holding it has
    /// committed (or failed: then nothing of it was written).
    pub(super) async fn write(&self, op: WriteOp) -> Result<Written, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send((op, tx))
            .await
            .map_err(|_| StoreError::WriterGone)?;
        rx.await
            .map_err(|_| StoreError::WriterGone)?
            .map_err(StoreError::Batch)
    }
}

pub(super) fn start(pool: &AnyPool, is_sqlite: bool) -> mpsc::Sender<(WriteOp, Reply)> {
    let (writer, rx) = mpsc::channel(1024);
    let committed = Arc::new(Notify::new());
    // The writer and the checkpoints take turns (see `checkpoint_loop`).
    let turn = Arc::new(Mutex::new(()));
    tokio::spawn(write_loop(
        pool.clone(),
        rx,
        committed.clone(),
        turn.clone(),
    ));
    if is_sqlite {
        tokio::spawn(checkpoint_loop(pool.clone(), committed, turn));
    }
    writer
}

async fn write_loop(
    pool: AnyPool,
    mut rx: mpsc::Receiver<(WriteOp, Reply)>,
    committed: Arc<Notify>,
    turn: Arc<Mutex<()>>,
) {
    // The writer's own connection, taken out of the pool: sqlx pings a
    // connection on every return to its pool (for SQLite, a round trip to
    // the connection's thread), which was one per batch. It is dropped after
    // a failed batch and a new one taken, so no failure's state lingers.
    let mut conn: Option<AnyConnection> = None;
    while let Some(first) = rx.recv().await {
        let mut ops = vec![first];
        while ops.len() < BATCH {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let all: Vec<&WriteOp> = ops.iter().map(|(op, _)| op).collect();
        let _turn = turn.lock().await;
        match write_batch(&pool, &mut conn, &all).await {
            Ok(results) => {
                committed.notify_one();
                for ((_, reply), result) in ops.into_iter().zip(results) {
                    let _ = reply.send(Ok(result));
                }
            }
            Err(e) if ops.len() == 1 => {
                for (_, reply) in ops {
                    let _ = reply.send(Err(e.to_string()));
                }
            }
            // One bad write must not fail the others that shared its
            // transaction: each is tried again alone.
            Err(_) => {
                for (op, reply) in ops {
                    let result = write_batch(&pool, &mut conn, &[&op]).await;
                    if result.is_ok() {
                        committed.notify_one();
                    }
                    let result = result
                        .map(|mut r| r.pop().unwrap_or(Written::Nothing))
                        .map_err(|e| e.to_string());
                    let _ = reply.send(result);
                }
            }
        }
    }
    if let Some(conn) = conn {
        let _ = sqlx::Connection::close(conn).await;
    }
}

/// One batch on the writer's connection (taken from `pool` when there is
/// none; dropped when the batch fails, and the batch tried once more on a
/// new one when it was the connection that failed).
async fn write_batch(
    pool: &AnyPool,
    conn: &mut Option<AnyConnection>,
    ops: &[&WriteOp],
) -> Result<Vec<Written>, sqlx::Error> {
    if let Some(c) = conn {
        match write_transaction(c, ops).await {
            Ok(written) => return Ok(written),
            // The connection itself failed (the database server restarted,
            // say): once more on a new one.
            Err(sqlx::Error::Io(_) | sqlx::Error::Protocol(_)) => *conn = None,
            Err(e) => {
                *conn = None;
                return Err(e);
            }
        }
    }
    let c = conn.insert(pool.acquire().await?.detach());
    let result = write_transaction(c, ops).await;
    if result.is_err() {
        *conn = None;
    }
    result
}

/// One transaction for a batch; the results are in the order of `ops`.
async fn write_transaction(
    conn: &mut AnyConnection,
    ops: &[&WriteOp],
) -> Result<Vec<Written>, sqlx::Error> {
    let now = super::now();
    let mut tx = sqlx::Connection::begin(conn).await?;
    // The outbound inserts of the batch go together, in a few statements.
    let submitted: Vec<&NewOutbound> = ops
        .iter()
        .filter_map(|op| match op {
            WriteOp::OutboundInsert(m) => Some(&**m),
            _ => None,
        })
        .collect();
    let mut queued = match submitted.is_empty() {
        true => Vec::new(),
        false => outbound::insert(&mut tx, &submitted, now).await?,
    }
    .into_iter();
    // So do the spool's inserts and deletes.
    let mut inserts = Vec::new();
    let mut deletes = Vec::new();
    for op in ops {
        match op {
            WriteOp::SpoolInsert(entries) => inserts.extend(entries),
            WriteOp::SpoolDelete(handle, ids) => deletes.push((handle.as_str(), &ids[..])),
            _ => {}
        }
    }
    let mut deleted = match inserts.is_empty() && deletes.is_empty() {
        true => Vec::new(),
        false => spool::write(&mut tx, &inserts, &deletes).await?,
    }
    .into_iter();
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        let written = match op {
            WriteOp::SpoolInsert(_) => Written::Nothing,
            WriteOp::SpoolDelete(..) => Written::Deleted(deleted.next().unwrap_or(0)),
            WriteOp::OutboundInsert(_) => Written::Queued(queued.next().unwrap_or_default()),
            WriteOp::OutboundClaim { limit, lease } => {
                Written::Claimed(outbound::claim(&mut tx, *limit, *lease, now).await?)
            }
            WriteOp::OutboundDone(done) => {
                outbound::done(&mut tx, done).await?;
                Written::Nothing
            }
            WriteOp::OutboundRelease(rcpts) => {
                outbound::release(&mut tx, rcpts, now).await?;
                Written::Nothing
            }
            WriteOp::OutboundDefer(id, rcpt, next_at, error) => {
                outbound::defer(&mut tx, id, rcpt, *next_at, error).await?;
                Written::Nothing
            }
        };
        out.push(written);
    }
    tx.commit().await?;
    Ok(out)
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
async fn checkpoint_loop(pool: AnyPool, committed: Arc<Notify>, turn: Arc<Mutex<()>>) {
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
