//! The relay's store, spool side: spooled messages, their order, deletion,
//! usage, atomic inserts, and reopening, on SQLite and on PostgreSQL (see
//! `common/mod.rs`).

mod common;

use common::*;
use omb_relay::store::{LinkRefusal, SpoolEntry, StoreError};
use omb_shared::types::QueueId;
use std::collections::HashSet;

on_both_backends!(
    spool_round_trips_every_field,
    spool_pending_is_ordered_skips_and_limits,
    spool_delete_only_by_the_owner,
    spool_usage_and_count,
    spool_insert_is_all_or_nothing,
    reopening_keeps_the_data,
    two_stores_share_one_database,
);

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
