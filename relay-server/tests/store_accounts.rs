//! The relay's store, accounts side: accounts, recipients, link tokens and
//! linked nodes, on SQLite and on PostgreSQL (see `common/mod.rs`).

mod common;

use common::*;
use omb_relay::store::{LinkRefusal, StoreError};

on_both_backends!(
    accounts_are_created_once,
    recipients_are_found_in_any_case,
    link_tokens_are_single_use,
    a_node_key_belongs_to_one_account,
    relinking_replaces_the_node,
    racing_links_with_one_token_have_one_winner,
    concurrent_signups_are_all_created,
);

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

/// Signups at the same moment, some for the same handle: each handle created once,
/// none refused for a lock. (On SQLite a signup that read before writing failed at
/// once with "database is locked" while another wrote.)
async fn concurrent_signups_are_all_created(url: String) {
    use omb_relay::accounts::Handle;
    use omb_relay::store::StoreError;
    let store = store_with(&url, &[]).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        let store = store.clone();
        tasks.spawn(async move {
            let name = format!("signup{}", i % 20);
            let created = if i % 2 == 0 {
                let handle = Handle::parse(&name).expect("valid");
                store
                    .create_account_checked(&handle, "sandbox.test", 1, true)
                    .await
            } else {
                store.create_account(&name, "sandbox.test", 1).await
            };
            (name, created)
        });
    }
    let mut created = std::collections::HashSet::new();
    while let Some(done) = tasks.join_next().await {
        let (name, result) = done.expect("task");
        match result {
            Ok(()) => assert!(created.insert(name.clone()), "{name} created twice"),
            Err(StoreError::AccountExists(_)) => {}
            Err(e) => panic!("{name}: {e}"),
        }
    }
    assert_eq!(created.len(), 20);
    for i in 0..20 {
        let handle = format!("signup{i}");
        assert_eq!(
            store.addresses(&handle).await.expect("addresses"),
            vec![format!("{handle}@sandbox.test")]
        );
    }
    store.close().await;
}
