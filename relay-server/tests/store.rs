//! The relay's store against both of its backends: every test below runs once on
//! SQLite (in a scratch folder) and once on PostgreSQL (in a fresh database on the
//! server that `OMB_TEST_POSTGRES_URL` points to), through the same code and
//! migrations.
//!
//! Without `OMB_TEST_POSTGRES_URL` the PostgreSQL runs are skipped, except in CI
//! (`CI` set), where they fail.

use omb_relay::store::{LinkRefusal, SpoolEntry, Store, StoreError};
use omb_shared::types::{NodeKey, QueueId};
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;

const DOMAIN: &str = "sandbox.test";

/// Runs `test` on its own task (so a failed assertion comes back as a panic we
/// can re-raise after cleaning up), and returns that panic, if any.
async fn run_isolated<F, Fut>(test: F, url: String) -> Result<(), Box<dyn std::any::Any + Send>>
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
async fn on_sqlite<F, Fut>(test: F)
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

/// `url` with its database name replaced by `database` (query string kept).
fn with_database(url: &str, database: &str) -> String {
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

/// Runs `test` against a fresh PostgreSQL database, created for it on the server
/// of `OMB_TEST_POSTGRES_URL` and dropped afterwards, so tests run in parallel.
async fn on_postgres<F, Fut>(test: F)
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
macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                crate::on_sqlite(crate::$test).await;
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                crate::on_postgres(crate::$test).await;
            })*
        }
    };
}

on_both_backends!(
    accounts_are_created_once,
    recipients_are_found_in_any_case,
    link_tokens_are_single_use,
    a_node_key_belongs_to_one_account,
    relinking_replaces_the_node,
    racing_links_with_one_token_have_one_winner,
    spool_round_trips_every_field,
    spool_pending_is_ordered_skips_and_limits,
    spool_delete_only_by_the_owner,
    spool_usage_and_count,
    spool_insert_is_all_or_nothing,
    reopening_keeps_the_data,
    two_stores_share_one_database,
);

fn key(n: u8) -> NodeKey {
    NodeKey([n; 32])
}

async fn open(url: &str) -> Store {
    match Store::open(url).await {
        Ok(store) => store,
        Err(e) => panic!("Store::open({url}): {e}"),
    }
}

/// A store with the accounts `handles` (quota 1 MB each).
async fn store_with(url: &str, handles: &[&str]) -> Store {
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
async fn link(
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

fn entry(id: &str, handle: &str, data: &[u8]) -> SpoolEntry {
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

fn ids(entries: &[SpoolEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.id.as_str()).collect()
}

fn skip(ids: &[&str]) -> HashSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

// ---- accounts and recipients --------------------------------------------------

async fn accounts_are_created_once(url: String) {
    let store = store_with(&url, &["alice"]).await;
    match store.create_account("alice", DOMAIN, 5).await {
        Err(StoreError::AccountExists(h)) => assert_eq!(h, "alice"),
        other => panic!("second create_account(alice): {other:?}"),
    }
    // The refused repeat changed nothing.
    let alice = store
        .recipient("alice@sandbox.test")
        .await
        .expect("recipient")
        .expect("alice exists");
    assert_eq!(alice.quota_bytes, 1_000_000);
    assert_eq!(
        store.addresses("alice").await.expect("addresses"),
        vec!["alice@sandbox.test"]
    );
    match store.create_link_token("nobody").await {
        Err(StoreError::NoAccount(h)) => assert_eq!(h, "nobody"),
        other => panic!("link token for a missing account: {other:?}"),
    }
    store.close().await;
}

async fn recipients_are_found_in_any_case(url: String) {
    let store = open(&url).await;
    store
        .create_account("alice", "Sandbox.TEST", 12_345)
        .await
        .expect("create alice");
    assert_eq!(
        store.addresses("alice").await.expect("addresses"),
        vec!["alice@sandbox.test"],
        "addresses are kept in lower case"
    );
    for address in [
        "alice@sandbox.test",
        "Alice@Sandbox.Test",
        "ALICE@SANDBOX.TEST",
    ] {
        let r = store
            .recipient(address)
            .await
            .expect("recipient")
            .unwrap_or_else(|| panic!("{address} not found"));
        assert_eq!(r.handle, "alice");
        assert_eq!(r.quota_bytes, 12_345);
        assert_eq!(r.cert, None, "no certificate before a node is linked");
    }
    assert!(store
        .recipient("bob@sandbox.test")
        .await
        .expect("recipient")
        .is_none());
    assert!(store
        .recipient("alice@other.test")
        .await
        .expect("recipient")
        .is_none());

    let cert = b"\x99\x00\x33binary cert \x00\xff".to_vec();
    assert_eq!(
        link(&store, "alice", &key(1), &cert).await,
        Ok("alice".to_string())
    );
    let r = store
        .recipient("ALICE@sandbox.test")
        .await
        .expect("recipient")
        .expect("alice");
    assert_eq!(
        r.cert.as_deref(),
        Some(&cert[..]),
        "the linked node's certificate, byte for byte"
    );
    store.close().await;
}

// ---- linking ------------------------------------------------------------------

async fn link_tokens_are_single_use(url: String) {
    let store = store_with(&url, &["alice"]).await;
    let token = store.create_link_token("alice").await.expect("token");
    assert!(token.starts_with("omb-link-"), "{token}");
    assert_eq!(
        store.node_account(&key(1)).await.expect("node_account"),
        None
    );

    assert_eq!(
        store
            .link_node(&token, &key(1), b"cert-1", "fp-1")
            .await
            .expect("link"),
        Ok("alice".to_string())
    );
    assert_eq!(
        store.node_account(&key(1)).await.expect("node_account"),
        Some("alice".to_string())
    );

    // The same token again, with the same key or another one: refused.
    assert_eq!(
        store
            .link_node(&token, &key(1), b"cert-1", "fp-1")
            .await
            .expect("link"),
        Err(LinkRefusal::BadToken)
    );
    assert_eq!(
        store
            .link_node(&token, &key(2), b"cert-2", "fp-2")
            .await
            .expect("link"),
        Err(LinkRefusal::BadToken)
    );
    assert_eq!(
        store.node_account(&key(2)).await.expect("node_account"),
        None
    );
    // A token that was never issued.
    assert_eq!(
        store
            .link_node("omb-link-00112233", &key(3), b"cert-3", "fp-3")
            .await
            .expect("link"),
        Err(LinkRefusal::BadToken)
    );
    assert_eq!(
        store
            .link_node("", &key(3), b"cert-3", "fp-3")
            .await
            .expect("link"),
        Err(LinkRefusal::BadToken)
    );

    // The refusals left alice's node as it was.
    let r = store
        .recipient("alice@sandbox.test")
        .await
        .expect("recipient")
        .expect("alice");
    assert_eq!(r.cert.as_deref(), Some(&b"cert-1"[..]));
    store.close().await;
}

async fn a_node_key_belongs_to_one_account(url: String) {
    let store = store_with(&url, &["alice", "bob"]).await;
    assert_eq!(
        link(&store, "alice", &key(1), b"alice-cert").await,
        Ok("alice".to_string())
    );

    let bob_token = store.create_link_token("bob").await.expect("token");
    assert_eq!(
        store
            .link_node(&bob_token, &key(1), b"bob-cert", "fp-bob")
            .await
            .expect("link"),
        Err(LinkRefusal::KeyTaken)
    );
    assert_eq!(
        store.node_account(&key(1)).await.expect("node_account"),
        Some("alice".to_string())
    );
    let alice = store
        .recipient("alice@sandbox.test")
        .await
        .expect("recipient")
        .expect("alice");
    assert_eq!(alice.cert.as_deref(), Some(&b"alice-cert"[..]));
    let bob = store
        .recipient("bob@sandbox.test")
        .await
        .expect("recipient")
        .expect("bob");
    assert_eq!(bob.cert, None, "bob's refused link left him without a node");

    // The refusal did not spend bob's token: with a key of his own it works.
    assert_eq!(
        store
            .link_node(&bob_token, &key(2), b"bob-cert", "fp-bob")
            .await
            .expect("link"),
        Ok("bob".to_string())
    );
    assert_eq!(
        store.node_account(&key(2)).await.expect("node_account"),
        Some("bob".to_string())
    );
    store.close().await;
}

async fn relinking_replaces_the_node(url: String) {
    let store = store_with(&url, &["alice", "bob"]).await;
    assert_eq!(
        link(&store, "alice", &key(1), b"cert-1").await,
        Ok("alice".to_string())
    );
    // A new node (new key) for alice replaces the old one.
    assert_eq!(
        link(&store, "alice", &key(2), b"cert-2").await,
        Ok("alice".to_string())
    );
    assert_eq!(
        store.node_account(&key(1)).await.expect("node_account"),
        None,
        "the old key is unlinked"
    );
    assert_eq!(
        store.node_account(&key(2)).await.expect("node_account"),
        Some("alice".to_string())
    );
    let r = store
        .recipient("alice@sandbox.test")
        .await
        .expect("recipient")
        .expect("alice");
    assert_eq!(r.cert.as_deref(), Some(&b"cert-2"[..]));

    // The same key again (e.g. a node that lost its token file) updates the certificate.
    assert_eq!(
        link(&store, "alice", &key(2), b"cert-2b").await,
        Ok("alice".to_string())
    );
    let r = store
        .recipient("alice@sandbox.test")
        .await
        .expect("recipient")
        .expect("alice");
    assert_eq!(r.cert.as_deref(), Some(&b"cert-2b"[..]));

    // alice's old key is free again, for another account.
    assert_eq!(
        link(&store, "bob", &key(1), b"cert-bob").await,
        Ok("bob".to_string())
    );
    assert_eq!(
        store.node_account(&key(1)).await.expect("node_account"),
        Some("bob".to_string())
    );
    assert_eq!(
        store.node_account(&key(2)).await.expect("node_account"),
        Some("alice".to_string())
    );
    store.close().await;
}

async fn racing_links_with_one_token_have_one_winner(url: String) {
    let store = store_with(&url, &["alice"]).await;
    let token = store.create_link_token("alice").await.expect("token");
    let mut tasks = Vec::new();
    for n in 1..=4u8 {
        let (store, token) = (store.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            store.link_node(&token, &key(n), &[n], "fp").await
        }));
    }
    let mut won = Vec::new();
    for (n, t) in (1..=4u8).zip(tasks) {
        match t.await.expect("link task") {
            Ok(Ok(handle)) => {
                assert_eq!(handle, "alice");
                won.push(n);
            }
            Ok(Err(refusal)) => assert_eq!(refusal, LinkRefusal::BadToken),
            Err(e) => {
                panic!("a racing link failed with a database error instead of a refusal: {e}")
            }
        }
    }
    assert_eq!(won.len(), 1, "exactly one link wins the token, not {won:?}");
    let r = store
        .recipient("alice@sandbox.test")
        .await
        .expect("recipient")
        .expect("alice");
    assert_eq!(r.cert, Some(vec![won[0]]));
    store.close().await;
}

// ---- spool --------------------------------------------------------------------

async fn spool_round_trips_every_field(url: String) {
    let store = store_with(&url, &["alice"]).await;
    // Every byte value, NULs included, and a message bigger than a page.
    let mut data: Vec<u8> = (0..=255u8).collect();
    data.extend(std::iter::repeat_n(0xA5u8, 1 << 20));
    let first = SpoolEntry {
        id: QueueId::generate(),
        handle: "alice".to_string(),
        mail_from: "Sender+tag@Example.org".to_string(),
        rcpt_to: vec![
            "alice@sandbox.test".to_string(),
            "Alice.Alias@sandbox.test".to_string(),
        ],
        received_at: 1_712_345_678,
        relay_encrypted: true,
        plain_size: 123_456,
        data: data.clone(),
    };
    // Null reverse-path (a bounce), the sender's own encryption.
    let second = SpoolEntry {
        id: QueueId::generate(),
        mail_from: String::new(),
        relay_encrypted: false,
        data: b"x".to_vec(),
        ..first.clone()
    };
    store
        .spool_insert(&[first.clone(), second.clone()])
        .await
        .expect("spool_insert");

    let got = store
        .spool_pending("alice", &HashSet::new(), 10)
        .await
        .expect("spool_pending");
    assert_eq!(got.len(), 2);
    let (a, b) = if got[0].id == first.id {
        (&got[0], &got[1])
    } else {
        (&got[1], &got[0])
    };
    assert_eq!(a.id, first.id);
    assert_eq!(a.handle, "alice");
    assert_eq!(a.mail_from, "Sender+tag@Example.org");
    assert_eq!(a.rcpt_to, first.rcpt_to);
    assert_eq!(a.received_at, 1_712_345_678);
    assert!(a.relay_encrypted);
    assert!(
        a.data == data,
        "data changed in the spool ({} bytes back, {} in)",
        a.data.len(),
        data.len()
    );
    assert_eq!(b.id, second.id);
    assert_eq!(b.mail_from, "");
    assert!(!b.relay_encrypted);
    assert_eq!(b.data, b"x");
    store.close().await;
}

async fn spool_pending_is_ordered_skips_and_limits(url: String) {
    let store = store_with(&url, &["alice", "bob"]).await;
    // Inserted out of order, in two transactions; read back in id order.
    store
        .spool_insert(&[
            entry("0003", "alice", b"three"),
            entry("0001", "alice", b"one"),
        ])
        .await
        .expect("insert");
    store
        .spool_insert(&[
            entry("0005", "alice", b"five"),
            entry("0002", "bob", b"bob's"),
            entry("0004", "alice", b"four"),
        ])
        .await
        .expect("insert");
    let none = HashSet::new();

    let all = store
        .spool_pending("alice", &none, 100)
        .await
        .expect("pending");
    assert_eq!(
        ids(&all),
        ["0001", "0003", "0004", "0005"],
        "only alice's, oldest id first"
    );
    assert_eq!(all[0].data, b"one");
    assert_eq!(
        ids(&store
            .spool_pending("bob", &none, 100)
            .await
            .expect("pending")),
        ["0002"]
    );
    assert!(store
        .spool_pending("nobody", &none, 100)
        .await
        .expect("pending")
        .is_empty());

    assert_eq!(
        ids(&store
            .spool_pending("alice", &none, 2)
            .await
            .expect("pending")),
        ["0001", "0003"]
    );
    assert_eq!(
        ids(&store
            .spool_pending("alice", &none, 1)
            .await
            .expect("pending")),
        ["0001"]
    );
    assert!(store
        .spool_pending("alice", &none, 0)
        .await
        .expect("pending")
        .is_empty());

    // Skipped ids (in flight to the node) don't count against the limit.
    assert_eq!(
        ids(&store
            .spool_pending("alice", &skip(&["0001"]), 2)
            .await
            .expect("pending")),
        ["0003", "0004"]
    );
    assert_eq!(
        ids(&store
            .spool_pending("alice", &skip(&["0001", "0004"]), 2)
            .await
            .expect("pending")),
        ["0003", "0005"]
    );
    assert_eq!(
        ids(&store
            .spool_pending("alice", &skip(&["0003", "0004", "0005"]), 10)
            .await
            .expect("pending")),
        ["0001"]
    );
    assert!(store
        .spool_pending("alice", &skip(&["0001", "0003", "0004", "0005"]), 10)
        .await
        .expect("pending")
        .is_empty());
    // Ids of another account or unknown ones in the skip set change nothing.
    assert_eq!(
        ids(&store
            .spool_pending("alice", &skip(&["0002", "9999"]), 2)
            .await
            .expect("pending")),
        ["0001", "0003"]
    );
    store.close().await;
}

async fn spool_delete_only_by_the_owner(url: String) {
    let store = store_with(&url, &["alice", "bob"]).await;
    store
        .spool_insert(&[
            entry("0001", "alice", b"for alice"),
            entry("0002", "bob", b"for bob"),
        ])
        .await
        .expect("insert");

    assert!(
        !store.spool_delete("bob", "0001").await.expect("delete"),
        "bob cannot delete alice's message"
    );
    assert!(!store.spool_delete("nobody", "0001").await.expect("delete"));
    assert_eq!(store.spool_count("alice").await.expect("count"), 1);

    assert!(store.spool_delete("alice", "0001").await.expect("delete"));
    assert!(
        !store.spool_delete("alice", "0001").await.expect("delete"),
        "a second delete finds nothing"
    );
    assert!(
        !store.spool_delete("alice", "0002").await.expect("delete"),
        "alice cannot delete bob's message"
    );
    assert!(!store.spool_delete("alice", "9999").await.expect("delete"));
    assert_eq!(store.spool_count("alice").await.expect("count"), 0);
    assert_eq!(
        ids(&store
            .spool_pending("bob", &HashSet::new(), 10)
            .await
            .expect("pending")),
        ["0002"]
    );
    store.close().await;
}

async fn spool_usage_and_count(url: String) {
    let store = store_with(&url, &["alice", "bob"]).await;
    let usage = |h: &'static str| {
        let store = store.clone();
        async move {
            match store.spool_usage(h).await {
                Ok(n) => n,
                Err(e) => panic!("spool_usage({h}): {e}"),
            }
        }
    };
    assert_eq!(usage("alice").await, 0, "empty spool");
    assert_eq!(usage("nobody").await, 0, "unknown account");
    assert_eq!(store.spool_count("alice").await.expect("count"), 0);

    let big = vec![7u8; 300_000];
    store
        .spool_insert(&[
            entry("0001", "alice", &big),
            entry("0002", "alice", b"12345"),
            entry("0003", "bob", b"123"),
        ])
        .await
        .expect("insert");
    assert_eq!(usage("alice").await, 300_005);
    assert_eq!(usage("bob").await, 3);
    assert_eq!(store.spool_count("alice").await.expect("count"), 2);
    assert_eq!(store.spool_count("bob").await.expect("count"), 1);
    assert_eq!(store.spool_count("nobody").await.expect("count"), 0);

    assert!(store.spool_delete("alice", "0001").await.expect("delete"));
    assert_eq!(usage("alice").await, 5);
    assert_eq!(store.spool_count("alice").await.expect("count"), 1);
    assert!(store.spool_delete("alice", "0002").await.expect("delete"));
    assert_eq!(usage("alice").await, 0);
    store.close().await;
}

async fn spool_insert_is_all_or_nothing(url: String) {
    let store = store_with(&url, &["alice"]).await;
    store
        .spool_insert(&[entry("0001", "alice", b"one")])
        .await
        .expect("insert");
    // The second entry repeats an id: the whole batch is refused, the first too.
    let refused = store
        .spool_insert(&[
            entry("0002", "alice", b"two"),
            entry("0001", "alice", b"again"),
        ])
        .await;
    assert!(refused.is_err(), "a duplicate queue id must be refused");
    let left = store
        .spool_pending("alice", &HashSet::new(), 10)
        .await
        .expect("pending");
    assert_eq!(ids(&left), ["0001"]);
    assert_eq!(left[0].data, b"one");
    // A spool entry for an account that does not exist is refused too.
    assert!(
        store
            .spool_insert(&[entry("0003", "nobody", b"x")])
            .await
            .is_err(),
        "spool entry for a missing account"
    );
    assert_eq!(store.spool_count("nobody").await.expect("count"), 0);
    store.close().await;
}

// ---- the database across restarts and instances ---------------------------------

async fn reopening_keeps_the_data(url: String) {
    let store = store_with(&url, &["alice"]).await;
    assert_eq!(
        link(&store, "alice", &key(1), b"cert-1").await,
        Ok("alice".to_string())
    );
    let unused = store.create_link_token("alice").await.expect("token");
    store
        .spool_insert(&[entry("0001", "alice", b"kept")])
        .await
        .expect("insert");
    store.close().await;

    // Opening again runs the migrations again: a no-op on an up-to-date schema.
    for round in 0..2 {
        let store = open(&url).await;
        assert_eq!(
            store.node_account(&key(1)).await.expect("node_account"),
            Some("alice".to_string()),
            "round {round}"
        );
        let r = store
            .recipient("Alice@sandbox.test")
            .await
            .expect("recipient")
            .expect("alice after reopening");
        assert_eq!(r.cert.as_deref(), Some(&b"cert-1"[..]));
        let pending = store
            .spool_pending("alice", &HashSet::new(), 10)
            .await
            .expect("pending");
        assert_eq!(ids(&pending), ["0001"]);
        assert_eq!(pending[0].data, b"kept");
        assert_eq!(store.spool_usage("alice").await.expect("usage"), 4);
        assert!(matches!(
            store.create_account("alice", DOMAIN, 1).await,
            Err(StoreError::AccountExists(_))
        ));
        store.close().await;
    }

    // A token issued before the restart still works once.
    let store = open(&url).await;
    assert_eq!(
        store
            .link_node(&unused, &key(2), b"cert-2", "fp")
            .await
            .expect("link"),
        Ok("alice".to_string())
    );
    assert_eq!(
        store
            .link_node(&unused, &key(3), b"cert-3", "fp")
            .await
            .expect("link"),
        Err(LinkRefusal::BadToken)
    );
    store.close().await;
}

async fn two_stores_share_one_database(url: String) {
    // Two relay instances on one database (PostgreSQL's reason to exist here).
    let (one, two) = (open(&url).await, open(&url).await);
    one.create_account("alice", DOMAIN, 100)
        .await
        .expect("create on one");
    assert!(matches!(
        two.create_account("alice", DOMAIN, 100).await,
        Err(StoreError::AccountExists(_))
    ));
    let token = two.create_link_token("alice").await.expect("token on two");
    assert_eq!(
        one.link_node(&token, &key(1), b"cert", "fp")
            .await
            .expect("link on one"),
        Ok("alice".to_string())
    );
    assert_eq!(
        two.node_account(&key(1))
            .await
            .expect("node_account on two"),
        Some("alice".to_string())
    );
    one.spool_insert(&[entry("0001", "alice", b"hello")])
        .await
        .expect("insert on one");
    assert!(two
        .spool_delete("alice", "0001")
        .await
        .expect("delete on two"));
    assert_eq!(one.spool_count("alice").await.expect("count on one"), 0);
    one.close().await;
    two.close().await;
}

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
