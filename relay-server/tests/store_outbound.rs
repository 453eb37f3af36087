//! The relay's store, outbound side: the queue of submitted mail, its
//! recipients' leases, retries and completion, the daily count, and the kept
//! MTA-STS policies; on SQLite and on PostgreSQL (see `common/mod.rs`).

mod common;

use common::*;
use omb_relay::outbound::limits::over_stored_rate;
use omb_relay::store::{now_ms, NewOutbound, StoredPolicy};

on_both_backends!(
    a_message_is_queued_once_and_leaves_with_its_last_recipient,
    claimed_recipients_are_leased_and_deferred_ones_wait,
    an_mta_sts_policy_is_kept_and_replaced,
    concurrent_submissions_are_all_queued,
    the_rate_and_the_day_count_outlive_the_store,
);

async fn an_mta_sts_policy_is_kept_and_replaced(url: String) {
    let store = store_with(&url, &[]).await;
    assert_eq!(
        store.mta_sts_policy("example.org").await.expect("read"),
        None
    );
    let first = StoredPolicy {
        policy_id: "1".into(),
        policy: "version: STSv1\nmode: enforce\nmx: mx.example.org\nmax_age: 86400\n".into(),
        fetched_at: 1000,
        expires_at: 87_400,
    };
    store
        .mta_sts_save("example.org", &first)
        .await
        .expect("save");
    assert_eq!(
        store.mta_sts_policy("example.org").await.expect("read"),
        Some(first.clone())
    );
    let second = StoredPolicy {
        policy_id: "2".into(),
        fetched_at: 2000,
        expires_at: 88_400,
        ..first
    };
    store
        .mta_sts_save("example.org", &second)
        .await
        .expect("replace");
    assert_eq!(
        store.mta_sts_policy("example.org").await.expect("read"),
        Some(second)
    );
    assert_eq!(
        store.mta_sts_policy("example.net").await.expect("read"),
        None
    );
}

fn message(submission_id: &str, rcpts: &[&str]) -> NewOutbound {
    NewOutbound {
        handle: "alice".into(),
        submission_id: submission_id.into(),
        mail_from: "alice@sandbox.test".into(),
        rcpt_to: rcpts.iter().map(|r| r.to_string()).collect(),
        data: b"From: alice@sandbox.test\r\n\r\nhello\r\n".to_vec(),
        // Three a minute.
        rate_interval_ms: 20_000,
    }
}

async fn a_message_is_queued_once_and_leaves_with_its_last_recipient(url: String) {
    let store = store_with(&url, &["alice"]).await;
    let rcpts = ["bob@example.org", "Bob@Example.ORG", "carol@example.net"];
    let id = store
        .outbound_insert(&message("s1", &rcpts))
        .await
        .expect("queue");
    // The node sends the same submission again after a broken tunnel.
    let again = store
        .outbound_insert(&message("s1", &rcpts))
        .await
        .expect("queue again");
    assert_eq!(again, id);
    assert_eq!(store.outbound_today("alice").await.expect("count"), 1);
    // One row per recipient, whatever its letter case.
    let pending = store.outbound_pending().await.expect("pending");
    assert_eq!(pending.len(), 2, "{pending:?}");

    store
        .outbound_done(&id, "bob@example.org")
        .await
        .expect("done");
    assert!(store.outbound_data(&id).await.expect("data").is_some());
    store
        .outbound_done(&id, "carol@example.net")
        .await
        .expect("done");
    assert!(store.outbound_data(&id).await.expect("data").is_none());
    assert!(store.outbound_pending().await.expect("pending").is_empty());
    store.close().await;
}

async fn claimed_recipients_are_leased_and_deferred_ones_wait(url: String) {
    let store = store_with(&url, &["alice"]).await;
    let id = store
        .outbound_insert(&message("s2", &["bob@example.org"]))
        .await
        .expect("queue");
    let due = store.outbound_claim(10, 60).await.expect("claim");
    assert_eq!(due.len(), 1);
    assert_eq!(
        (due[0].id.as_str(), due[0].domain.as_str(), due[0].attempts),
        (id.as_str(), "example.org", 0)
    );
    assert_eq!(due[0].handle, "alice");
    // Leased: nobody else takes it meanwhile.
    assert!(store
        .outbound_claim(10, 60)
        .await
        .expect("claim")
        .is_empty());

    // A temporary failure: counted, and due again only at the time given.
    let later = omb_relay::store::now() + 3600;
    store
        .outbound_defer(&id, "bob@example.org", later, "451 try later")
        .await
        .expect("defer");
    let pending = store.outbound_pending().await.expect("pending");
    assert_eq!(pending[0].2, 1);
    assert_eq!(pending[0].3.as_deref(), Some("451 try later"));
    assert!(store
        .outbound_claim(10, 60)
        .await
        .expect("claim")
        .is_empty());
    store
        .outbound_defer(&id, "bob@example.org", 0, "451 again")
        .await
        .expect("defer");
    let due = store.outbound_claim(10, 60).await.expect("claim");
    assert_eq!((due.len(), due[0].attempts), (1, 2));
    // A pass that ran out of its lease hands it back: due at once, with no
    // attempt counted.
    store
        .outbound_release(vec![(id.clone(), "bob@example.org".into())])
        .await
        .expect("release");
    let due = store.outbound_claim(10, 60).await.expect("claim");
    assert_eq!((due.len(), due[0].attempts), (1, 2));
    store.close().await;
}

/// Twenty nodes' sessions queueing at once, each also resending its submission: all
/// queued, once each. (On SQLite a transaction that read before writing failed at once
/// with "database is locked" while another wrote: a burst of 20 sessions lost half.)
async fn concurrent_submissions_are_all_queued(url: String) {
    let store = store_with(&url, &["alice"]).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        let store = store.clone();
        tasks.spawn(async move {
            let m = message(&format!("burst-{}", i % 20), &["bob@example.org"]);
            store.outbound_insert(&m).await
        });
    }
    let mut ids = std::collections::HashSet::new();
    while let Some(done) = tasks.join_next().await {
        ids.insert(done.expect("task").expect("queued"));
    }
    assert_eq!(ids.len(), 20, "one queue id per submission");
    assert_eq!(store.outbound_pending().await.expect("pending").len(), 20);
    // Counted once each, however the writer batched them.
    assert_eq!(store.outbound_today("alice").await.expect("count"), 20);
    store.close().await;
}

async fn the_rate_and_the_day_count_outlive_the_store(url: String) {
    let store = store_with(&url, &["alice"]).await;
    let before = now_ms();
    for i in 0..3 {
        let m = message(&format!("r{i}"), &["bob@example.org"]);
        store.outbound_insert(&m).await.expect("queue");
    }
    store.close().await;
    // A restarted relay, or another instance on the same database.
    let other = open(&url).await;
    let standing = other
        .outbound_standing("alice")
        .await
        .expect("standing")
        .expect("an account");
    assert_eq!(standing.today, 3);
    assert!(
        standing.tat_ms >= before + 60_000 && standing.tat_ms <= now_ms() + 60_000,
        "three messages at 20 s each: {} ms ahead",
        standing.tat_ms - before
    );
    assert!(over_stored_rate(standing.tat_ms, now_ms(), 3).is_some());
    assert!(over_stored_rate(standing.tat_ms, now_ms() + 20_000, 3).is_none());
    other.close().await;
}
