//! The accounts API as a client sees it, over real HTTP on loopback, on
//! SQLite and on PostgreSQL (see `common/mod.rs`): handle rules, proof of work,
//! the per-client limit (direct and behind a trusted proxy), and the store
//! calls the operator CLI uses.

mod common;

use common::web::*;
use common::*;
use omb_relay::accounts::pow::{self, Challenge, Solution};
use omb_relay::config::AccountsConfig;

on_both_backends!(
    an_account_is_created_and_can_be_linked,
    taken_handles_are_refused_and_keep_the_proof_of_work,
    reserved_and_invalid_handles_are_refused,
    look_alikes_of_existing_handles_are_refused,
    bad_proofs_of_work_are_refused,
    signups_are_limited_per_client,
    behind_a_trusted_proxy_signups_count_per_forwarded_client,
    operator_rules_and_aliases_switch,
);

// ---- the accounts API -----------------------------------------------------------

async fn an_account_is_created_and_can_be_linked(url: String) {
    let t = relay(&url, easy()).await;
    let c = t.challenge().await;
    assert_eq!(c.difficulty, 8);
    assert_eq!(c.algorithm, "sha256-leading-zero-bits");
    let reply = t.post("Carol", &pow::solve(&c)).await;
    let body = reply.json();
    assert_eq!(reply.status, 201, "{body}");
    assert_eq!(body["handle"], "carol");
    assert_eq!(body["address"], "carol@sandbox.test");
    assert_eq!(body["aliases"], "*@carol.sandbox.test");
    assert_eq!(body["tunnel_pin"], t.relay.tunnel_pin.as_str());
    assert_eq!(
        body["tunnel"],
        format!("mx.sandbox.test:{}", t.relay.tunnel.port())
    );
    let store = &t.relay.store;
    let carol = store
        .recipient("carol@sandbox.test")
        .await
        .expect("recipient")
        .expect("carol's address exists");
    assert_eq!(carol.handle, "carol");
    let token = body["link_token"].as_str().expect("link_token");
    let linked = store
        .link_node(token, &key(3), b"cert", "fp")
        .await
        .expect("link_node");
    assert_eq!(linked, Ok("carol".to_string()), "the token links carol");
    let api_token = body["api_token"].as_str().expect("api_token");
    assert_eq!(
        store.api_token_account(api_token).await.expect("api token"),
        Some("carol".to_string()),
        "the API token is carol's"
    );
}

async fn taken_handles_are_refused_and_keep_the_proof_of_work(url: String) {
    let t = relay(&url, easy()).await;
    assert_eq!(t.signup("carol").await.status, 201);
    let solution = t.solved().await;
    for handle in ["carol", "CAROL", " carol "] {
        let msg = assert_error(&t.post(handle, &solution).await, 409, "handle_taken");
        assert!(msg.contains("choose another handle"), "{msg}");
    }
    // The refused attempts did not spend the proof of work.
    assert_eq!(t.post("dave", &solution).await.status, 201);
    assert_error(&t.post("erin", &solution).await, 400, "pow_replayed");
}

async fn reserved_and_invalid_handles_are_refused(url: String) {
    let t = relay(&url, easy()).await;
    let solution = t.solved().await;
    for handle in ["postmaster", "Abuse", "p0stmaster", "adm1n", "mta-sts"] {
        let msg = assert_error(&t.post(handle, &solution).await, 422, "handle_reserved");
        assert!(msg.contains("reserved"), "{msg}");
    }
    for (handle, says) in [
        ("ab", "3 to 32"),
        ("al.ice", "letters"),
        ("-alice", "hyphen"),
        ("12345", "letter"),
        ("", "3 to 32"),
    ] {
        let msg = assert_error(&t.post(handle, &solution).await, 422, "handle_invalid");
        assert!(msg.contains(says), "{handle:?}: {msg}");
    }
    let none = t
        .relay
        .store
        .recipient("postmaster@sandbox.test")
        .await
        .expect("recipient");
    assert!(none.is_none(), "no account was made");
}

async fn look_alikes_of_existing_handles_are_refused(url: String) {
    let t = relay(&url, easy()).await;
    assert_eq!(t.signup("alice").await.status, 201);
    assert_eq!(t.signup("william").await.status, 201);
    let solution = t.solved().await;
    for (handle, existing) in [
        ("a1ice", "alice"),
        ("aiice", "alice"),
        ("al-ice", "alice"),
        ("vvilliam", "william"),
        ("wi11iam", "william"),
    ] {
        let msg = assert_error(&t.post(handle, &solution).await, 409, "handle_look_alike");
        assert!(msg.contains(existing), "{handle}: {msg}");
    }
    // Different enough.
    assert_eq!(t.post("alicia", &solution).await.status, 201);
}

async fn bad_proofs_of_work_are_refused(url: String) {
    let t = relay(&url, easy()).await;
    let c = t.challenge().await;
    // A nonce that does not reach the difficulty.
    let unsolved = (0u64..)
        .map(|n| n.to_string())
        .find(|n| pow::leading_zero_bits(&pow::work(&c.challenge, n)) < 8)
        .expect("some nonce fails");
    let bad = Solution {
        challenge: c.challenge.clone(),
        nonce: unsolved,
    };
    let msg = assert_error(&t.post("carol", &bad).await, 400, "pow_unsolved");
    assert!(msg.contains("8 zero bits"), "{msg}");

    // A challenge signed by someone else, one with its difficulty lowered.
    let forged = pow::solve(&pow::Pow::new([1; 32], 8, 600).issue(now()));
    assert_error(&t.post("carol", &forged).await, 400, "pow_forged");
    let f: Vec<&str> = c.challenge.split('.').collect();
    let easier = pow::solve(&Challenge {
        challenge: format!("{}.{}.0.{}", f[0], f[1], f[3]),
        difficulty: 0,
        ..c.clone()
    });
    assert_error(&t.post("carol", &easier).await, 400, "pow_forged");

    // Spent once, refused after.
    let good = pow::solve(&c);
    assert_eq!(t.post("carol", &good).await.status, 201);
    assert_error(&t.post("dave", &good).await, 400, "pow_replayed");

    // Not JSON, or no proof of work at all.
    let reply = request(t.http, "POST", DOMAIN, "/api/v1/accounts", Some("{nope")).await;
    assert_error(&reply, 400, "bad_request");
    let reply = request(
        t.http,
        "POST",
        DOMAIN,
        "/api/v1/accounts",
        Some(r#"{"handle": "frank"}"#),
    )
    .await;
    assert_error(&reply, 400, "bad_request");
}

async fn signups_are_limited_per_client(url: String) {
    let t = relay(
        &url,
        AccountsConfig {
            pow_difficulty: 4,
            signups_per_ip: 3,
            signup_window_secs: 600,
            ..AccountsConfig::default()
        },
    )
    .await;
    assert_eq!(t.signup("carol").await.status, 201);
    // Refused attempts count too.
    assert_eq!(t.signup("carol").await.status, 409);
    assert_eq!(t.signup("dave").await.status, 201);
    let reply = t.signup("erin").await;
    let msg = assert_error(&reply, 429, "rate_limited");
    let retry: u64 = reply
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After in seconds: {:?}", reply.headers));
    assert!((590..=600).contains(&retry), "Retry-After {retry}");
    assert!(msg.contains("try again in"), "{msg}");
    assert!(t
        .relay
        .store
        .recipient("erin@sandbox.test")
        .await
        .expect("recipient")
        .is_none());
}

async fn behind_a_trusted_proxy_signups_count_per_forwarded_client(url: String) {
    let mut accounts = easy();
    accounts.signups_per_ip = 1;
    let t = relay_with(&url, accounts, vec!["127.0.0.1".parse().expect("ip")]).await;
    assert_eq!(
        t.signup_via_proxy("carol", "198.51.100.1").await.status,
        201
    );
    assert_eq!(t.signup_via_proxy("dave", "198.51.100.2").await.status, 201);
    // What the client claims before the proxy's entry does not help.
    let again = t
        .signup_via_proxy("erin", "203.0.113.5, 198.51.100.1")
        .await;
    assert_error(&again, 429, "rate_limited");
    // Without the header, the proxy is the client.
    assert_eq!(t.signup("frank").await.status, 201);
    assert_error(&t.signup("grace").await, 429, "rate_limited");
}

// ---- what the operator CLI uses ------------------------------------------------

async fn operator_rules_and_aliases_switch(url: String) {
    use omb_relay::accounts::Handle;
    use omb_relay::store::StoreError;
    let t = relay(&url, easy()).await;
    let store = &t.relay.store;
    let h = |s: &str| Handle::parse(s).expect("valid syntax");
    store
        .create_account_checked(&h("alice"), DOMAIN, 1, false)
        .await
        .expect("alice");
    match store
        .create_account_checked(&h("a1ice"), DOMAIN, 1, false)
        .await
    {
        Err(StoreError::LookAlike { existing, .. }) => assert_eq!(existing, "alice"),
        other => panic!("a1ice: {other:?}"),
    }
    // --force: a look-alike and a reserved name.
    store
        .create_account_checked(&h("a1ice"), DOMAIN, 1, true)
        .await
        .expect("forced a1ice");
    store
        .create_account_checked(&h("postmaster"), DOMAIN, 1, true)
        .await
        .expect("forced postmaster");
    assert!(matches!(
        store
            .create_account_checked(&h("alice"), DOMAIN, 1, true)
            .await,
        Err(StoreError::AccountExists(_))
    ));
    // Accounts made without the rules (the sandbox's) have skeletons too.
    store.create_account("bob", DOMAIN, 1).await.expect("bob");
    assert_eq!(
        store.look_alike(&h("b0b")).await.expect("look_alike"),
        Some("bob".to_string())
    );

    assert_eq!(store.aliases("alice").await.expect("aliases"), Some(true));
    store.set_aliases("alice", false).await.expect("off");
    assert_eq!(store.aliases("alice").await.expect("aliases"), Some(false));
    store.set_aliases("alice", true).await.expect("on");
    assert_eq!(store.aliases("alice").await.expect("aliases"), Some(true));
    assert!(matches!(
        store.set_aliases("nobody", true).await,
        Err(StoreError::NoAccount(_))
    ));
    assert_eq!(store.aliases("nobody").await.expect("aliases"), None);
}

fn now() -> i64 {
    omb_relay::store::now()
}
