//! The one writer of the mail queues: spool inserts and deletes, and the
//! outbound queue's inserts, claims and outcomes. Whatever is waiting is
//! committed in one transaction (group commit), so concurrent sessions share
//! one fsync instead of each holding SQLite's write lock through its own
//! statements and fsync in turn. Each caller hears back only after the commit
//! that holds its write. The SQL of each write stays with its concern
//! (`spool`, `outbound`); this file only batches and answers.

use super::outbound::{self, DueRcpt, NewOutbound};
use super::{spool, SpoolEntry, Store, StoreError};
use sqlx::AnyPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify};

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
    tokio::spawn(write_loop(pool.clone(), rx, committed.clone()));
    if is_sqlite {
        tokio::spawn(checkpoint_loop(pool.clone(), committed));
    }
    writer
}

async fn write_loop(
    pool: AnyPool,
    mut rx: mpsc::Receiver<(WriteOp, Reply)>,
    committed: Arc<Notify>,
) {
    while let Some(first) = rx.recv().await {
        let mut ops = vec![first];
        while ops.len() < BATCH {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let all: Vec<&WriteOp> = ops.iter().map(|(op, _)| op).collect();
        match write_batch(&pool, &all).await {
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
                    let result = write_batch(&pool, &[&op]).await;
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
}

/// One transaction for a batch; the results are in the order of `ops`.
async fn write_batch(pool: &AnyPool, ops: &[&WriteOp]) -> Result<Vec<Written>, sqlx::Error> {
    let now = super::now();
    let mut tx = pool.begin().await?;
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
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        let written = match op {
            WriteOp::SpoolInsert(entries) => {
                spool::insert(&mut tx, entries).await?;
                Written::Nothing
            }
            WriteOp::SpoolDelete(handle, ids) => {
                Written::Deleted(spool::delete(&mut tx, handle, ids).await?)
            }
            WriteOp::OutboundInsert(_) => Written::Queued(queued.next().unwrap_or_default()),
            WriteOp::OutboundClaim { limit, lease } => {
                Written::Claimed(outbound::claim(&mut tx, *limit, *lease, now).await?)
            }
            WriteOp::OutboundDone(done) => {
                outbound::done(&mut tx, done).await?;
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
/// after commits, on its own connection. A PASSIVE checkpoint never blocks the
/// writer, so a sender's `250` does not wait for a checkpoint's copying and
/// fsync, as it would with SQLite's automatic checkpoint at commit time.
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
