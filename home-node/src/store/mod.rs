//! The node's mail store (SQLite): folders, UIDs, flags and mod-sequences for
//! IMAP, with every message body kept as OpenPGP ciphertext to the node's key.

mod append;
mod delivery;
mod listing;
pub mod mailbox;
mod messages;
mod meta;
pub(crate) mod packed;
pub mod pop3;
mod readers;

pub use append::NewAppend;
pub use listing::changes_between;
pub use mailbox::MailboxInfo;
pub use messages::{FlagOp, FlagUpdate, MsgRow};
pub use meta::MetaBytes;

use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, Sqlite, SqlitePool};
use std::path::Path;
use std::str::FromStr;

/// How every write transaction starts. `BEGIN IMMEDIATE` takes SQLite's write
/// lock first (waiting up to the busy timeout): a deferred transaction that
/// reads and then writes fails at once with SQLITE_BUSY when another session
/// committed in between, which concurrent IMAP clients setting `\Seen` hit.
pub(crate) const WRITE_TX: &str = "BEGIN IMMEDIATE";

/// The folders every mailbox has from the start, with their special use (RFC 6154).
pub const DEFAULT_MAILBOXES: &[(&str, Option<&str>)] = &[
    ("INBOX", None),
    ("Sent", Some("\\Sent")),
    ("Drafts", Some("\\Drafts")),
    ("Trash", Some("\\Trash")),
    ("Junk", Some("\\Junk")),
    ("Archive", Some("\\Archive")),
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("mail store database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("mail store database, reading: {0}")]
    Read(#[from] rusqlite::Error),
    #[error("mail store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("no folder called {0:?}")]
    NoMailbox(String),
    #[error("a folder called {0:?} exists already")]
    MailboxExists(String),
    #[error("{0}")]
    Refused(&'static str),
    #[error("metadata key: {0}")]
    Key(String),
}

/// Something changed in a folder (new, changed or removed messages); sent to
/// every open session so IMAP IDLE and NOOP see it at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub mailbox_id: i64,
}

/// The outcome of storing a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// New, under this UID in INBOX.
    New { uid: u32 },
    /// Seen before (a redelivery); nothing was added.
    Duplicate,
}

/// A delivery ready for the store: `data` is ciphertext.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: String,
    pub internaldate: i64,
    pub size: i64,
    pub data: Vec<u8>,
}

/// One message's listing (no body).
#[derive(Debug, Clone)]
pub struct MessageInfo {
    pub uid: u32,
    pub delivery_id: Option<String>,
    pub internaldate: i64,
    pub size: i64,
    pub flags: String,
    pub modseq: i64,
}

#[derive(Clone)]
pub struct MailStore {
    pool: SqlitePool,
    meta_key: std::sync::Arc<meta::MetaKey>,
    changes: tokio::sync::broadcast::Sender<Change>,
    listings: std::sync::Arc<listing::Listings>,
    /// Counts the changes announced so far (see [`MailStore::generation`]).
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// When deliveries were last committed; wakes the checkpoint task.
    delivery: std::sync::Arc<delivery::DeliveryActivity>,
    /// Taken by deliveries and by relaxed writes (flags, the metadata cache)
    /// for their transaction: they queue here in turn instead of meeting on
    /// SQLite's write lock, whose busy handler sleeps (1, 2, 5, 10 ms, …) and
    /// retries; a delivery waiting for its ack paid those sleeps.
    write_gate: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Connections for the reads mail apps make most (see `readers`).
    readers: std::sync::Arc<readers::Readers>,
}

impl MailStore {
    /// Opens the store in `data_dir` (creating it and its default folders).
    /// WAL with `synchronous=FULL`: a message is on disk when `deliver` returns.
    pub async fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join("mail.db");
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(std::time::Duration::from_secs(10))
            // 1 MiB of page cache per connection instead of SQLite's 2 MiB: the
            // node's memory target is 50 MiB on a Pi, the hot data (folder
            // listings) is held by the store itself, and the kernel caches the
            // file anyway.
            .pragma("cache_size", "-1024")
            // Checkpoints run in their own task (`delivery::checkpoint_loop`),
            // not inside the delivery commit that crosses the WAL threshold.
            .pragma("wal_autocheckpoint", "0")
            .pragma("journal_size_limit", "67108864");
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            // An embedded connection does not go stale: no ping (a round trip
            // to its thread) before every query.
            .test_before_acquire(false)
            .connect_with(opts.clone())
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        let meta_key = std::sync::Arc::new(meta::MetaKey::load_or_create(data_dir)?);
        let (changes, _) = tokio::sync::broadcast::channel(256);
        let store = MailStore {
            pool,
            meta_key,
            changes,
            listings: Default::default(),
            generation: Default::default(),
            delivery: Default::default(),
            write_gate: Default::default(),
            readers: std::sync::Arc::new(readers::Readers::new(path)),
        };
        tokio::spawn(delivery::checkpoint_loop(
            store.pool.clone(),
            store.delivery.clone(),
            store.write_gate.clone(),
        ));
        store.create_default_mailboxes().await?;
        Ok(store)
    }

    pub async fn close(&self) {
        self.readers.close();
        self.pool.close().await;
    }

    async fn create_default_mailboxes(&self) -> Result<(), StoreError> {
        for (name, special) in DEFAULT_MAILBOXES {
            let exists = sqlx::query("SELECT 1 FROM mailboxes WHERE name = ?1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
            if exists.is_some() {
                continue;
            }
            let mut tx = self.pool.begin_with(WRITE_TX).await?;
            let uidvalidity = mailbox::next_uidvalidity(&mut tx).await?;
            sqlx::query(
                "INSERT INTO mailboxes (name, special_use, uidvalidity) VALUES (?1, ?2, ?3)",
            )
            .bind(name)
            .bind(special)
            .bind(uidvalidity)
            .execute(&mut *tx)
            .await?;
            sqlx::query("INSERT OR IGNORE INTO subscriptions (name) VALUES (?1)")
                .bind(name)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        Ok(())
    }

    /// Changes in any folder, as they are committed.
    pub fn subscribe_changes(&self) -> tokio::sync::broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// A number that grows with every change committed to any folder (this
    /// process is the store's only writer). A session that saw it before
    /// looking at a folder knows, while it has not moved, that nothing changed
    /// there, without asking the database.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Announces a committed change (call after the commit); gives the new
    /// generation.
    pub(crate) fn notify(&self, mailbox_id: i64) -> u64 {
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
            + 1;
        self.delivery.changed();
        // No receiver is fine: nobody is looking.
        let _ = self.changes.send(Change { mailbox_id });
        generation
    }

    /// A connection whose commits skip the fsync (`synchronous = NORMAL`;
    /// WAL keeps the database consistent, and the change is durable at the
    /// next checkpoint or durable commit), for what may be lost in a power
    /// cut: flags and the metadata cache, never a message. Hand it back with
    /// [`durable_again`].
    pub(crate) async fn relaxed(&self) -> Result<Relaxed, StoreError> {
        let gate = self.write_gate.clone().lock_owned().await;
        let mut conn = self.pool.acquire().await?;
        sqlx::query("PRAGMA synchronous = NORMAL")
            .execute(&mut *conn)
            .await?;
        Ok(Relaxed { conn, _gate: gate })
    }

    async fn mailbox_id(&self, name: &str) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT id FROM mailboxes WHERE name = ?1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .ok_or_else(|| StoreError::NoMailbox(name.to_string()))?
            .try_get(0)?)
    }

    pub async fn mailboxes(&self) -> Result<Vec<(String, Option<String>, i64)>, StoreError> {
        let rows = sqlx::query("SELECT name, special_use, (SELECT COUNT(*) FROM messages m WHERE m.mailbox_id = b.id) FROM mailboxes b ORDER BY id").fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }

    pub async fn list(&self, mailbox: &str) -> Result<Vec<MessageInfo>, StoreError> {
        let id = self.mailbox_id(mailbox).await?;
        let rows = sqlx::query("SELECT uid, delivery_id, internaldate, size, flags, modseq FROM messages WHERE mailbox_id = ?1 ORDER BY uid").bind(id).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(MessageInfo {
                    uid: r.try_get::<i64, _>(0)? as u32,
                    delivery_id: r.try_get(1)?,
                    internaldate: r.try_get(2)?,
                    size: r.try_get(3)?,
                    flags: r.try_get(4)?,
                    modseq: r.try_get(5)?,
                })
            })
            .collect()
    }

    /// One message as it was stored (encrypted): unpacked (see `packed`).
    pub async fn raw(&self, mailbox: &str, uid: u32) -> Result<Option<Vec<u8>>, StoreError> {
        let data = self.stored(mailbox, uid).await?;
        Ok(data.map(|d| packed::unpack(&d).into_owned()))
    }

    /// One message's row as it is kept, packed or not (`MailView` reads both).
    pub(crate) async fn stored(
        &self,
        mailbox: &str,
        uid: u32,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let id = self.mailbox_id(mailbox).await?;
        let row = sqlx::query("SELECT data FROM messages WHERE mailbox_id = ?1 AND uid = ?2")
            .bind(id)
            .bind(i64::from(uid))
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    pub async fn count(&self, mailbox: &str) -> Result<i64, StoreError> {
        let id = self.mailbox_id(mailbox).await?;
        Ok(
            sqlx::query("SELECT COUNT(*) FROM messages WHERE mailbox_id = ?1")
                .bind(id)
                .fetch_one(&self.pool)
                .await?
                .try_get(0)?,
        )
    }
}

/// A connection from [`MailStore::relaxed`], holding the store's write gate
/// (see `MailStore::write_gate`) until [`durable_again`] hands it back.
pub(crate) struct Relaxed {
    conn: PoolConnection<Sqlite>,
    _gate: tokio::sync::OwnedMutexGuard<()>,
}

impl std::ops::Deref for Relaxed {
    type Target = sqlx::SqliteConnection;
    fn deref(&self) -> &Self::Target {
        &self.conn
    }
}

impl std::ops::DerefMut for Relaxed {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.conn
    }
}

/// Makes a connection from [`MailStore::relaxed`] durable again before the
/// pool hands it to a delivery (or closes it when that fails), and opens the
/// write gate.
pub(crate) async fn durable_again(relaxed: Relaxed) {
    let Relaxed { mut conn, _gate } = relaxed;
    let restored = sqlx::query("PRAGMA synchronous = FULL")
        .execute(&mut *conn)
        .await;
    if restored.is_err() {
        conn.close_on_drop();
    }
}

/// A store in a new temporary folder, for tests: the store and its folder.
#[cfg(test)]
pub(crate) async fn temp_store(tag: &str) -> (MailStore, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("omb-{tag}-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    (MailStore::open(&dir).await.unwrap(), dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deliveries_get_uids_and_duplicates_are_dropped() {
        let (store, dir) = crate::store::temp_store("store").await;
        assert_eq!(
            store.mailboxes().await.unwrap().len(),
            DEFAULT_MAILBOXES.len()
        );
        assert_eq!(
            store.deliver("q1", 1, 10, b"x").await.unwrap(),
            Stored::New { uid: 1 }
        );
        assert_eq!(
            store.deliver("q2", 2, 10, b"y").await.unwrap(),
            Stored::New { uid: 2 }
        );
        assert_eq!(
            store.deliver("q1", 1, 10, b"x").await.unwrap(),
            Stored::Duplicate
        );
        let list = store.list("INBOX").await.unwrap();
        assert_eq!(list.iter().map(|m| m.uid).collect::<Vec<_>>(), vec![1, 2]);
        assert!(list[1].modseq > list[0].modseq);
        assert_eq!(store.raw("INBOX", 2).await.unwrap().unwrap(), b"y");
        store.close().await;
        // Reopening keeps everything, and UIDVALIDITY does not change.
        let again = MailStore::open(&dir).await.unwrap();
        assert_eq!(again.count("INBOX").await.unwrap(), 2);
        again.close().await;
        std::fs::remove_dir_all(dir).unwrap();
    }
}
