//! The operator's `omb-relay account` commands, as the real binary runs them:
//! `add` applies the signup rules unless `--force`, `aliases` switches
//! ANYTHING@HANDLE.DOMAIN, and each refusal says what to do.

use omb_tests::harness::{bin, Relay, TestDir};
use std::process::Command;

/// Runs `omb-relay -c CONFIG ARGS`; (success, stdout + stderr).
fn omb_relay(relay: &Relay, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin("omb-relay"))
        .arg("-c")
        .arg(&relay.config)
        .args(args)
        .output()
        .expect("run omb-relay");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn account_add_applies_the_handle_rules_and_force_skips_them() {
    let dir = TestDir::new("accounts-cli");
    let relay = Relay::new(dir.path(), "sqlite", "");
    let ok = |args: &[&str]| {
        let (success, text) = omb_relay(&relay, args);
        assert!(success, "omb-relay {args:?}: {text}");
        text
    };
    let refused = |args: &[&str], says: &str| {
        let (success, text) = omb_relay(&relay, args);
        assert!(!success, "omb-relay {args:?} succeeded: {text}");
        assert!(text.contains(says), "omb-relay {args:?}: {text}");
    };

    let out = ok(&["account", "add", "Alice"]);
    assert!(out.contains("account: alice@sandbox.test"), "{out}");
    assert!(out.contains("link_token: omb-link-"), "{out}");
    refused(&["account", "add", "alice"], "exists already");
    refused(
        &["account", "add", "a1ice"],
        "looks too much like the existing account \"alice\"",
    );
    refused(
        &["account", "add", "postmaster"],
        "\"postmaster\" is reserved",
    );
    refused(&["account", "add", "ab"], "3 to 32 characters");
    refused(&["account", "add", "x--y"], "two hyphens");
    // The operator may take a reserved name or a look-alike, not bad syntax.
    ok(&["account", "add", "--force", "postmaster"]);
    ok(&["account", "add", "a1ice", "--force"]);
    refused(&["account", "add", "--force", "ab"], "3 to 32 characters");

    let out = ok(&["account", "aliases", "alice", "off"]);
    assert!(out.contains("ANYTHING@alice.sandbox.test off"), "{out}");
    refused(
        &["account", "aliases", "nobody", "on"],
        "no account called \"nobody\"",
    );
    refused(&["account", "aliases", "alice", "maybe"], "invalid value");

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let url = format!("sqlite://{}?mode=rwc", relay.dir.join("relay.db").display());
        let store = omb_relay::store::Store::open(&url)
            .await
            .expect("open the store");
        assert_eq!(store.aliases("alice").await.expect("aliases"), Some(false));
        assert_eq!(
            store.aliases("postmaster").await.expect("aliases"),
            Some(true)
        );
        assert!(store
            .recipient("a1ice@sandbox.test")
            .await
            .expect("recipient")
            .is_some());
        store.close().await;
    });
    ok(&["account", "aliases", "alice", "on"]);
}
