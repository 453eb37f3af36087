//! What the store tests share: running each test once on SQLite (in a scratch
//! folder) and once on PostgreSQL (in a fresh database on the server that
//! `OMB_TEST_POSTGRES_URL` points to), through the same code and migrations, and
//! small helpers. Without `OMB_TEST_POSTGRES_URL` the PostgreSQL runs are
//! skipped, except in CI (`CI` set), where they fail.
#![allow(dead_code)] // each test file uses its own part of this

pub mod web;

use omb_relay::store::{with_database, LinkRefusal, SpoolEntry, Store};
use omb_shared::types::{NodeKey, QueueId};
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;

pub const DOMAIN: &str = "sandbox.test";

/// Runs `test` on its own task (so a failed assertion comes back as a panic we
/// can re-raise after cleaning up), and returns that panic, if any.
pub async fn run_isolated<F, Fut>(test: F, url: String) -> Result<(), Box<dyn std::any::Any + Send>>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    match tokio::spawn(test(url)).await {
        Ok(()) => Ok(()),
        Err(e) => Err(e
            .try_into_panic()
            .unwrap_or_else(|e| Box::new(format!("test task failed: {e}")))),
    }
}

/// Runs `test` against a new SQLite database in a scratch folder.
pub async fn on_sqlite<F, Fut>(test: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let dir: PathBuf = std::env::temp_dir().join(format!(
        "omb-store-test-{}",
        hex::encode(rand::random::<[u8; 6]>())
    ));
    std::fs::create_dir_all(&dir).expect("create a scratch folder");
    let url = format!("sqlite://{}?mode=rwc", dir.join("relay.db").display());
    let outcome = run_isolated(test, url).await;
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Runs `test` against a fresh PostgreSQL database, created for it on the server
/// of `OMB_TEST_POSTGRES_URL` and dropped afterwards, so tests run in parallel.
pub async fn on_postgres<F, Fut>(test: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(admin_url) = std::env::var("OMB_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must set OMB_TEST_POSTGRES_URL"
        );
        eprintln!("SKIPPED: PostgreSQL tests need OMB_TEST_POSTGRES_URL");
        return;
    };
    let name = format!("omb_test_{}", hex::encode(rand::random::<[u8; 8]>()));
    let mut admin = PgConnection::connect(&admin_url)
        .await
        .expect("connect to OMB_TEST_POSTGRES_URL");
    // `name` is ours: `omb_test_` and hex digits.
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create a test database");
    let outcome = run_isolated(test, with_database(&admin_url, &name)).await;
    // FORCE: a failed test may have left its pool's connections open.
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .expect("drop the test database");
    let _ = admin.close().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Declares each listed `async fn(url: String)` as a test on SQLite and on PostgreSQL.
#[macro_export]
macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                $crate::common::on_sqlite($crate::$test).await;
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                $crate::common::on_postgres($crate::$test).await;
            })*
        }
    };
}

pub fn key(n: u8) -> NodeKey {
    NodeKey([n; 32])
}

pub async fn open(url: &str) -> Store {
    match Store::open(url).await {
        Ok(store) => store,
        Err(e) => panic!("Store::open({url}): {e}"),
    }
}

/// A store with the accounts `handles` (quota 1 MB each).
pub async fn store_with(url: &str, handles: &[&str]) -> Store {
    let store = open(url).await;
    for h in handles {
        store
            .create_account(h, DOMAIN, 1_000_000)
            .await
            .expect("create account");
    }
    store
}

/// Links `node_key` to `handle` with a fresh token; returns the link's outcome.
pub async fn link(
    store: &Store,
    handle: &str,
    node_key: &NodeKey,
    cert: &[u8],
) -> Result<String, LinkRefusal> {
    let token = store.create_link_token(handle).await.expect("link token");
    store
        .link_node(&token, node_key, cert, &format!("fp-{handle}"))
        .await
        .expect("link_node")
}

pub fn entry(id: &str, handle: &str, data: &[u8]) -> SpoolEntry {
    SpoolEntry {
        id: QueueId(id.to_string()),
        handle: handle.to_string(),
        mail_from: "sender@example.org".to_string(),
        rcpt_to: vec![format!("{handle}@{DOMAIN}")],
        received_at: 1_700_000_000,
        relay_encrypted: true,
        plain_size: data.len() as i64,
        data: data.to_vec(),
    }
}

pub fn ids(entries: &[SpoolEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.id.as_str()).collect()
}

pub fn skip(ids: &[&str]) -> HashSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}
