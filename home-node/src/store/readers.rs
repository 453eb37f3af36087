//! Connections of their own for the reads a mail app makes most (a message's
//! body, metadata spans), run in place on the calling task.
//!
//! sqlx runs every SQLite connection on a worker thread of its own: each
//! query is a hand-off to that thread and its rows a hand-off back, and sqlx
//! 0.9 pings a connection on its way back to the pool, a third. With ten apps
//! opening messages those hand-offs between threads (futex wake-ups, context
//! switches) were a quarter of the node's CPU, more than SQLite's own work
//! (bench/imap, perf). The reads here are a primary-key lookup or a range of
//! one index, tens of microseconds from the page cache, less than what the
//! caller does next with the result (decrypting it), so they are run on the
//! caller's thread with rusqlite, over the same bundled SQLite library.
//!
//! These connections only read (`SQLITE_OPEN_READ_ONLY`): the writers stay on
//! sqlx's pool, with its transactions and migrations. In WAL mode a reader
//! sees the last committed state and never blocks a writer.

use rusqlite::{Connection, OpenFlags};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Idle readers kept at most: one per core is enough for reads that take tens
/// of microseconds, and each holds its own page cache. More are opened when
/// more tasks read at once, and closed after their read.
const KEPT: usize = 2;

pub(crate) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    closed: AtomicBool,
}

impl Readers {
    pub(crate) fn new(path: PathBuf) -> Self {
        Readers {
            path,
            idle: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        }
    }

    /// Runs `read` on a reader, opened when none is idle. A reader whose read
    /// failed is closed rather than kept.
    pub(crate) fn read<T>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let idle = self.idle.lock().ok().and_then(|mut v| v.pop());
        let conn = match idle {
            Some(c) => c,
            None => self.open()?,
        };
        let out = read(&conn)?;
        if !self.closed.load(Ordering::Acquire) {
            if let Ok(mut idle) = self.idle.lock() {
                if idle.len() < KEPT {
                    idle.push(conn);
                }
            }
        }
        Ok(out)
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // As the pool's connections (store::MailStore::open): 1 MiB of page
        // cache, and a writer's checkpoint is waited for, not failed on.
        conn.pragma_update(None, "cache_size", -1024)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(conn)
    }

    /// Closes the idle readers (the store is closing).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }
}
