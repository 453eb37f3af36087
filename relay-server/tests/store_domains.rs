//! The relay's store, routing side: aliases under `HANDLE.DOMAIN`, custom
//! domains by state, `postmaster@`/`abuse@` to the operator, API tokens, and
//! the DNS data and zone version the DNS server follows; on SQLite and on
//! PostgreSQL (see `common/mod.rs`).

mod common;

use common::*;
use omb_relay::store::{DomainState, RecordKind, Store, StoreError};

on_both_backends!(
    aliases_reach_the_account_unless_turned_off,
    custom_domains_route_only_while_verified,
    postmaster_and_abuse_reach_the_operator,
    api_tokens_name_their_account,
    dns_data_and_zone_version_follow_changes,
);

async fn routed(store: &Store, address: &str, operator: Option<&str>) -> Option<String> {
    store
        .route(address, DOMAIN, operator)
        .await
        .expect("route")
        .map(|r| r.handle)
}

async fn aliases_reach_the_account_unless_turned_off(url: String) {
    let store = store_with(&url, &["alice", "bob"]).await;
    assert_eq!(
        routed(&store, "alice@sandbox.test", None).await.as_deref(),
        Some("alice")
    );
    assert_eq!(
        routed(&store, "Shop-42@Alice.Sandbox.Test", None)
            .await
            .as_deref(),
        Some("alice")
    );
    for nobody in [
        "x@carol.sandbox.test",
        "x@a.alice.sandbox.test",
        "carol@sandbox.test",
        "x@alicesandbox.test",
    ] {
        assert_eq!(routed(&store, nobody, None).await, None, "{nobody}");
    }
    store
        .set_aliases("alice", false)
        .await
        .expect("aliases off");
    assert_eq!(routed(&store, "shop@alice.sandbox.test", None).await, None);
    // The account's own address is not an alias.
    assert_eq!(
        routed(&store, "alice@sandbox.test", None).await.as_deref(),
        Some("alice")
    );
    assert!(matches!(
        store.set_aliases("nobody", true).await,
        Err(StoreError::NoAccount(_))
    ));
    store.close().await;
}

async fn custom_domains_route_only_while_verified(url: String) {
    let store = store_with(&url, &["alice", "bob"]).await;
    let added = store
        .add_domain("alice", "Example.ORG.")
        .await
        .expect("add");
    assert_eq!(
        (added.domain.as_str(), added.state),
        ("example.org", DomainState::Pending)
    );
    assert_eq!(added.verify_token.len(), 32);
    assert!(matches!(
        store.add_domain("bob", "example.org").await,
        Err(StoreError::DomainTaken(_))
    ));
    assert_eq!(routed(&store, "x@example.org", None).await, None, "pending");

    store
        .set_domain_checked("example.org", DomainState::Verified, "{}")
        .await
        .expect("verified");
    assert_eq!(
        routed(&store, "Anyone@EXAMPLE.org", None).await.as_deref(),
        Some("alice")
    );
    let d = store
        .domain("example.org")
        .await
        .expect("get")
        .expect("exists");
    assert!(d.verified_at.is_some() && d.checked_at.is_some());
    assert_eq!(d.report.as_deref(), Some("{}"));

    store
        .set_domain_checked("example.org", DomainState::Suspended, "{\"gone\":1}")
        .await
        .expect("suspended");
    assert_eq!(
        routed(&store, "x@example.org", None).await,
        None,
        "suspended"
    );
    assert_eq!(store.domains(Some("alice")).await.expect("list").len(), 1);

    // Only the owner removes it, and then it is gone at once.
    assert!(!store
        .remove_domain("bob", "example.org")
        .await
        .expect("remove"));
    assert!(store
        .remove_domain("alice", "example.org")
        .await
        .expect("remove"));
    assert!(store.domain("example.org").await.expect("get").is_none());
    assert!(store.domains(None).await.expect("list").is_empty());
    store.close().await;
}

async fn postmaster_and_abuse_reach_the_operator(url: String) {
    let store = store_with(&url, &["alice", "ops"]).await;
    store.add_domain("alice", "example.org").await.expect("add");
    // Without an operator they are refused.
    assert_eq!(routed(&store, "postmaster@sandbox.test", None).await, None);
    for hosted in [
        "postmaster@sandbox.test",
        "Abuse@sandbox.test",
        "postmaster@alice.sandbox.test",
    ] {
        assert_eq!(
            routed(&store, hosted, Some("ops")).await.as_deref(),
            Some("ops"),
            "{hosted}"
        );
    }
    // Not hosted (yet): an unknown handle, a pending domain.
    for foreign in ["postmaster@carol.sandbox.test", "postmaster@example.org"] {
        assert_eq!(
            routed(&store, foreign, Some("ops")).await,
            None,
            "{foreign}"
        );
    }
    store
        .set_domain_checked("example.org", DomainState::Verified, "{}")
        .await
        .expect("verified");
    assert_eq!(
        routed(&store, "abuse@example.org", Some("ops"))
            .await
            .as_deref(),
        Some("ops")
    );
    store.close().await;
}

async fn api_tokens_name_their_account(url: String) {
    let store = store_with(&url, &["alice"]).await;
    let token = store.create_api_token("alice").await.expect("token");
    assert!(token.starts_with("omb-api-"));
    assert_eq!(
        store
            .api_token_account(&token)
            .await
            .expect("look up")
            .as_deref(),
        Some("alice")
    );
    assert_eq!(
        store
            .api_token_account("omb-api-nope")
            .await
            .expect("look up"),
        None
    );
    assert!(matches!(
        store.create_api_token("nobody").await,
        Err(StoreError::NoAccount(_))
    ));
    store.close().await;
}

async fn dns_data_and_zone_version_follow_changes(url: String) {
    let store = open(&url).await;
    let mut changes = store.dns_changes();
    let v0 = store.zone_version().await.expect("version");
    store
        .create_account("alice", DOMAIN, 1)
        .await
        .expect("create");
    assert_eq!(changes.recv().await.expect("a change"), "alice");
    let v1 = store.zone_version().await.expect("version");
    assert!(v1 > v0);

    store
        .set_account_records("alice", RecordKind::Acme, &["tok-1".into(), "tok-2".into()])
        .await
        .expect("acme");
    assert_eq!(changes.recv().await.expect("a change"), "alice");
    assert!(store.zone_version().await.expect("version") > v1);
    let alice = store
        .dns_account("alice")
        .await
        .expect("dns")
        .expect("alice");
    assert_eq!(alice.addresses, vec!["alice@sandbox.test"]);
    assert_eq!(alice.acme, vec!["tok-1", "tok-2"]);
    assert!(alice.cert.is_none() && alice.dkim.is_empty());

    link(&store, "alice", &key(1), b"cert")
        .await
        .expect("linked");
    assert_eq!(changes.recv().await.expect("a change"), "alice");
    let alice = store
        .dns_account("alice")
        .await
        .expect("dns")
        .expect("alice");
    assert!(alice.cert.is_some(), "the linked node's certificate");

    store
        .set_account_records("alice", RecordKind::Acme, &[])
        .await
        .expect("clear");
    assert_eq!(
        store.dns_accounts().await.expect("all")[0].acme,
        Vec::<String>::new()
    );
    assert!(store.dns_account("nobody").await.expect("dns").is_none());
    store.close().await;
}
