//! WKD and the MTA-STS policy as clients see them, over real HTTP on
//! loopback, on SQLite and on PostgreSQL (see `common/mod.rs`).

mod common;

use common::web::*;
use common::*;
use omb_relay::web::wkd::wkd_hash;

on_both_backends!(
    wkd_serves_certificates_holding_the_address,
    mta_sts_policy_is_served_for_the_relay_domain,
);

async fn wkd_serves_certificates_holding_the_address(url: String) {
    let t = relay(&url, easy()).await;
    let store = &t.relay.store;
    let alice_cert = omb_shared::pgp::generate_cert(&["<alice@sandbox.test>".to_string()])
        .expect("a certificate");
    let alice_bytes = omb_shared::pgp::public_bytes(&alice_cert).expect("serialise");
    // bob's node publishes a certificate without bob's address.
    let other = omb_shared::pgp::generate_cert(&["<someone@else.test>".to_string()])
        .expect("a certificate");
    let other_bytes = omb_shared::pgp::public_bytes(&other).expect("serialise");
    for (handle, n, cert) in [("alice", 1, &alice_bytes), ("bob", 2, &other_bytes)] {
        store
            .create_account(handle, DOMAIN, 1_000_000)
            .await
            .expect("account");
        assert_eq!(link(store, handle, &key(n), cert).await, Ok(handle.into()));
    }
    store
        .create_account("carol", DOMAIN, 1_000_000)
        .await
        .expect("carol");

    let hash = wkd_hash("alice");
    let direct = format!("/.well-known/openpgpkey/hu/{hash}?l=alice");
    let advanced = format!("/.well-known/openpgpkey/sandbox.test/hu/{hash}?l=alice");
    for (host, path) in [
        ("sandbox.test", direct.as_str()),
        ("Sandbox.Test:8080", direct.as_str()),
        ("openpgpkey.sandbox.test", advanced.as_str()),
    ] {
        let reply = t.get(host, path).await;
        assert_eq!(reply.status, 200, "{host}{path}: {}", reply.text());
        assert_eq!(
            reply.header("content-type"),
            Some("application/octet-stream")
        );
        let served = omb_shared::pgp::parse_cert(&reply.body).expect("a certificate");
        assert_eq!(served.fingerprint(), alice_cert.fingerprint());
        assert!(!served.is_tsk(), "no secret key material");
    }
    // The local part in any case (the hash is of the lower-cased one).
    let reply = t
        .get(
            "sandbox.test",
            &format!("/.well-known/openpgpkey/hu/{hash}?l=Alice"),
        )
        .await;
    assert_eq!(reply.status, 200);

    let bob = wkd_hash("bob");
    let carol = wkd_hash("carol");
    for (host, path, why) in [
        (
            "sandbox.test",
            format!("/.well-known/openpgpkey/hu/{bob}?l=bob"),
            "no User ID",
        ),
        (
            "sandbox.test",
            format!("/.well-known/openpgpkey/hu/{carol}?l=carol"),
            "no node linked",
        ),
        (
            "sandbox.test",
            format!("/.well-known/openpgpkey/hu/{hash}?l=bob"),
            "hash of another",
        ),
        (
            "sandbox.test",
            format!("/.well-known/openpgpkey/hu/{hash}"),
            "no l=",
        ),
        ("other.test", direct.clone(), "domain not hosted"),
        (
            "openpgpkey.other.test",
            format!("/.well-known/openpgpkey/other.test/hu/{hash}?l=alice"),
            "domain not hosted",
        ),
    ] {
        let reply = t.get(host, &path).await;
        assert_eq!(reply.status, 404, "{why}: {host}{path}: {}", reply.text());
    }

    for (host, path) in [
        ("sandbox.test", "/.well-known/openpgpkey/policy"),
        (
            "openpgpkey.sandbox.test",
            "/.well-known/openpgpkey/sandbox.test/policy",
        ),
    ] {
        let reply = t.get(host, path).await;
        assert_eq!(reply.status, 200, "{host}{path}");
    }
    let reply = t.get("other.test", "/.well-known/openpgpkey/policy").await;
    assert_eq!(reply.status, 404);
}

async fn mta_sts_policy_is_served_for_the_relay_domain(url: String) {
    let t = relay(&url, easy()).await;
    let reply = t
        .get("mta-sts.sandbox.test", "/.well-known/mta-sts.txt")
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("text/plain"));
    assert_eq!(
        reply.text(),
        "version: STSv1\nmode: testing\nmx: mx.sandbox.test\nmax_age: 604800\n"
    );
    for host in [
        "sandbox.test",
        "mta-sts.other.test",
        "mta-sts.alice.sandbox.test",
    ] {
        let reply = t.get(host, "/.well-known/mta-sts.txt").await;
        assert_eq!(reply.status, 404, "{host}");
    }
}
