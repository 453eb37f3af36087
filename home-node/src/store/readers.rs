//! Connections of their own for the reads a mail app makes most (a message's
//! body, metadata spans), kept apart from the sqlx pool.
//!
//! A connection handed back to an sqlx pool is pinged first (sqlx 0.9 does it
//! on every release, whatever the pool's options): for SQLite that is one more
//! round trip to the connection's worker thread after every query, and a task
//! spawned to make it. With ten apps opening messages, those hand-offs between
//! threads were a fifth of the node's CPU (bench/imap, perf). A reader here
//! goes back to its list at once; one whose query did not run to its end (its
//! future dropped half-way) is closed instead, so no statement is left open.

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::ConnectOptions;
use std::sync::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Readers at most: one per core is enough for reads that take tens of
/// microseconds, and each holds its own page cache.
const READERS: usize = 2;

pub(crate) struct Readers {
    opts: SqliteConnectOptions,
    idle: Mutex<Vec<SqliteConnection>>,
    permits: std::sync::Arc<Semaphore>,
}

impl Readers {
    pub(crate) fn new(opts: SqliteConnectOptions) -> Self {
        Readers {
            opts,
            idle: Mutex::new(Vec::new()),
            permits: std::sync::Arc::new(Semaphore::new(READERS)),
        }
    }

    /// A reader, opened when none is idle. Hand it back with
    /// [`Readers::put`] once its query has run to the end; one dropped
    /// instead (an error, a future dropped half-way) is closed.
    pub(crate) async fn get(&self) -> Result<Reader, sqlx::Error> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        let idle = self.idle.lock().ok().and_then(|mut v| v.pop());
        let conn = match idle {
            Some(c) => c,
            None => self.opts.connect().await?,
        };
        Ok(Reader {
            conn,
            _permit: permit,
        })
    }

    /// Takes back a reader whose query ran to its end.
    pub(crate) fn put(&self, reader: Reader) {
        if self.permits.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(reader.conn);
        }
    }

    /// Closes the idle readers (the store is closing).
    pub(crate) async fn close(&self) {
        self.permits.close();
        let idle: Vec<SqliteConnection> = self
            .idle
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default();
        for conn in idle {
            let _ = sqlx::Connection::close(conn).await;
        }
    }
}

/// A connection from [`Readers::get`] (dropping it closes it).
pub(crate) struct Reader {
    pub(crate) conn: SqliteConnection,
    _permit: OwnedSemaphorePermit,
}
