//! All of the relay's SQL, one file per concern: `accounts` (accounts, link
//! tokens, linked nodes), `handles` (look-alike checks, aliases switch) and
//! `spool` (mail waiting for nodes), `outbound` (mail nodes send), `mta_sts`
//! (recipient domains' MTA-STS policies).
//! One code path for SQLite (the embedded default) and PostgreSQL (shared state
//! for several relay instances), through sqlx's `Any` driver and one set of
//! migrations.

use omb_shared::types::QueueId;
use sha2::{Digest, Sha256};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

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
    #[error(
        "{handle:?} looks too much like the existing account {existing:?}: choose another handle"
    )]
    LookAlike { handle: String, existing: String },
    #[error("the domain {0:?} is already linked to an account; remove it there first")]
    DomainTaken(String),
    #[error("no domain {0:?} on this relay")]
    NoDomain(String),
    #[error("queue write failed: {0}")]
    Batch(String),
    #[error("the queue writer has stopped")]
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

mod accounts;
mod dns;
mod domains;
mod handles;
mod mta_sts;
mod outbound;
mod spool;
mod writer;

pub use accounts::{ImportedAccount, ImportedNode};
pub use dns::{AccountDns, RecordKind};
pub use domains::{Domain, DomainState, OPERATOR_LOCAL_PARTS};
pub use mta_sts::StoredPolicy;
pub use outbound::{DueRcpt, NewOutbound, Standing};

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    writer: mpsc::Sender<(
        writer::WriteOp,
        oneshot::Sender<Result<writer::Written, String>>,
    )>,
    /// Handles whose DNS data changed (see [`Store::dns_changes`]).
    dns_changes: tokio::sync::broadcast::Sender<String>,
    /// Handles whose senders changed (see [`Store::account_changes`]).
    account_changes: tokio::sync::broadcast::Sender<String>,
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
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

/// Rows per multi-row statement (PostgreSQL takes 65,535 bound values,
/// SQLite 32,766).
const MAX_ROWS: usize = 256;

/// `($first, …)` groups of `width` placeholders for `rows` rows,
/// comma-separated: only placeholders go into the text, every value is bound.
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
            // An embedded SQLite connection does not go stale: no ping (a round
            // trip to its thread) before every query. PostgreSQL's may drop.
            .test_before_acquire(!is_sqlite)
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
        let writer = writer::start(&pool, is_sqlite);
        let (dns_changes, _) = tokio::sync::broadcast::channel(1024);
        let (account_changes, _) = tokio::sync::broadcast::channel(256);
        let store = Store {
            pool,
            writer,
            dns_changes,
            account_changes,
        };
        store.fill_skeletons().await?;
        Ok(store)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn recipient_from(row: &AnyRow) -> Result<Recipient, StoreError> {
    Ok(Recipient {
        handle: row.try_get(0)?,
        cert: row.try_get(1)?,
        quota_bytes: row.try_get(2)?,
        spooled_bytes: row.try_get(3)?,
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
