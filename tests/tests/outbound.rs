//! Sending, end to end with real peers: Python's smtplib submits to alice's
//! node (STARTTLS, AUTH); the relay delivers to a real Postfix acting as
//! example.org's MX on a loopback port (a static route); dkimpy verifies the
//! DKIM signature with its key fetched from the relay's DNS. Postfix stopped:
//! deferred, and delivered once it is back, across a relay `kill -9`. A 550
//! from Postfix for two recipients: one DSN in alice's INBOX, read over IMAP. alice to bob on the
//! same relay: into bob's encrypted store, never through Postfix. Another
//! account's address as sender: refused. A burst over the rate: 451 4.7.1,
//! then accepted later. Two messages in two delivery passes: one connection.
//! One test, so the peers start once (about a minute).

use omb_tests::harness::{free_port, have_tool, is_root, wait_until, Relay, TestDir};
use omb_tests::sending::{client, node_with_access, send, send_implicit_tls, Postfix, PASSWORD};
use std::time::Duration;

#[test]
fn sending_through_the_relay_to_postfix_and_between_accounts() {
    if !is_root() || !have_tool("postfix") || !have_tool("python3") {
        eprintln!("skipped: needs root, postfix and python3 (scripts/install-peers)");
        return;
    }
    let dir = TestDir::new("outbound");
    let postfix_port = free_port();
    let extra = format!(
        "[outbound]\nroutes = {{ \"example.org\" = \"127.0.0.1:{postfix_port}\" }}\n\
         retry_secs = [1, 1, 2]\npoll_ms = 200\ntimeout_secs = 10\nper_minute = 6\n\
         connection_cache_secs = 120\n"
    );
    let mut relay = Relay::new(dir.path(), "sqlite", &extra);
    relay.start();
    let (mut alice, alice_access) = node_with_access(dir.path(), &relay, "alice");
    let (alice_sub, alice_imap) = (alice_access.submission, alice_access.imap);
    let (mut bob, _) = node_with_access(dir.path(), &relay, "bob");
    alice.start();
    bob.start();
    alice.wait_tunnel_ups(1, Duration::from_secs(60));
    bob.wait_tunnel_ups(1, Duration::from_secs(60));
    let postfix = Postfix::new(dir.path(), postfix_port, &["example.org"], None);
    postfix.postfix("start");
    let a = "alice@sandbox.test";

    // 1. smtplib -> alice's node -> relay -> Postfix; dkimpy verifies.
    let reply = send(alice_sub, a, a, a, &["bob@example.org"], "first message");
    assert!(reply.starts_with("250"), "{reply}");
    wait_until(
        Duration::from_secs(30),
        "Postfix receives the message",
        || postfix.with_subject("first message").is_some(),
    );
    let received = postfix.with_subject("first message").unwrap_or_default();
    let file = dir.path().join("first.eml");
    std::fs::write(&file, &received).expect("write");
    let (ok, out) = client(
        "dkim",
        &serde_json::json!({"file": file, "dns": relay.dns.to_string()}),
    );
    assert!(ok, "dkimpy: {out}");
    assert_eq!(
        out.trim(),
        "sandbox.test",
        "signed by (aligned with) the From domain"
    );
    // SPF for the address Postfix saw, and DMARC alignment, judged by pyspf and the
    // DMARC record as the recipient's side would.
    let (ok, out) = client(
        "auth",
        &serde_json::json!({"file": file, "dns": relay.dns.to_string()}),
    );
    assert!(ok, "auth check: {out}");
    let verdict: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(verdict["spf"], "pass", "{verdict}");
    assert_eq!(verdict["return_path"], a, "{verdict}");
    assert_eq!(verdict["spf_aligned"], true, "{verdict}");
    assert_eq!(verdict["dkim_aligned"], true, "{verdict}");
    assert_eq!(verdict["dmarc"], "pass", "{verdict}");
    let text = String::from_utf8_lossy(&received);
    assert!(text.contains("s=alice;"), "selector is the handle: {text}");
    assert!(!text.contains("..leading dot line") && text.contains(".leading dot line"));

    // 1b. The same on 465, TLS from the first byte (RFC 8314 §3.3).
    let reply = send_implicit_tls(
        alice_access.submissions,
        a,
        a,
        &["bob@example.org"],
        "over implicit tls",
    );
    assert!(reply.starts_with("250"), "{reply}");
    wait_until(
        Duration::from_secs(30),
        "Postfix receives the message sent on 465",
        || postfix.with_subject("over implicit tls").is_some(),
    );
    // Both went down one connection, kept between the two delivery passes.
    let log = postfix.log_text();
    assert_eq!(
        log.matches(": connect from ").count(),
        1,
        "one SMTP connection for both messages: {log}"
    );

    // 2. Postfix down: deferred; the relay killed and restarted meanwhile;
    //    delivered once Postfix is back.
    postfix.postfix("stop");
    let reply = send(alice_sub, a, a, a, &["carol@example.org"], "second message");
    assert!(
        reply.starts_with("250"),
        "queued while Postfix is down: {reply}"
    );
    wait_until(Duration::from_secs(20), "a deferral", || {
        relay.log_text().contains("deferred")
    });
    relay.kill9();
    relay.start();
    postfix.postfix("start");
    wait_until(
        Duration::from_secs(60),
        "delivery after Postfix is back",
        || postfix.with_subject("second message").is_some(),
    );

    // 3. 550 from Postfix for two recipients of one message: one DSN naming
    //    both (RFC 3464 §2.3) in alice's INBOX, over IMAP.
    let reply = send(
        alice_sub,
        a,
        a,
        a,
        &["reject@example.org", "reject2@example.org"],
        "doomed message",
    );
    assert!(reply.starts_with("250"), "{reply}");
    let imap = |subject: &str| {
        serde_json::json!({"imap": alice_imap.to_string(), "user": a,
            "password": PASSWORD, "subject": subject})
    };
    let subject = "Undelivered mail to 2 recipients";
    wait_until(Duration::from_secs(60), "the DSN over IMAP", || {
        client("imap", &imap(subject)).0
    });
    let (_, dsn) = client("imap", &imap(subject));
    assert!(dsn.contains("report-type=delivery-status"), "{dsn}");
    assert!(dsn.contains("Subject: doomed message"), "{dsn}");
    for rcpt in ["reject@example.org", "reject2@example.org"] {
        assert!(
            dsn.contains(&format!(
                "Final-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: 5.1.1"
            )),
            "{dsn}"
        );
    }
    let (apart, other) = client("imap", &imap("Undelivered mail to reject"));
    assert!(!apart, "a DSN per recipient as well: {other}");

    // 4. alice -> bob on the same relay: into bob's store, encrypted, never
    //    through Postfix.
    let before = postfix.messages().len();
    let reply = send(alice_sub, a, a, a, &["bob@sandbox.test"], "hello bob");
    assert!(reply.starts_with("250"), "{reply}");
    wait_until(Duration::from_secs(60), "bob's node stores it", || {
        bob.uids()
            .iter()
            .any(|u| String::from_utf8_lossy(&bob.show(*u)).contains("hello bob"))
    });
    let uid = *bob.uids().last().expect("a message");
    let raw = String::from_utf8_lossy(&bob.show_raw(uid)).into_owned();
    assert!(
        raw.contains("BEGIN PGP MESSAGE") && !raw.contains("hello bob"),
        "stored encrypted"
    );
    assert_eq!(postfix.messages().len(), before, "nothing left the relay");

    // 5. Another account's address, as envelope sender or as From: refused.
    let b = "bob@sandbox.test";
    let reply = send(alice_sub, a, b, b, &["x@example.org"], "forged 1");
    assert!(reply.starts_with("553"), "{reply}");
    let reply = send(alice_sub, a, a, b, &["x@example.org"], "forged 2");
    assert!(reply.starts_with("550 5.7.1"), "{reply}");

    // 6. A burst over the rate (6 a minute; the relay's memory counts two
    //    since its restart, the rate it keeps in its database all five, so
    //    at most four more): 451 4.7.1 as the app sees it, and accepted once
    //    the rate allows (one every 10 s). That the kept rate outlives a
    //    restart is checked in `postgres.rs`.
    // Sent all at once, so that the rate's refill (one every 10 s) does not
    // blur the count.
    let replies: Vec<String> = std::thread::scope(|scope| {
        let sends: Vec<_> = (0..10)
            .map(|i| {
                scope.spawn(move || {
                    send(
                        alice_sub,
                        a,
                        a,
                        a,
                        &["bob@example.org"],
                        &format!("burst {i}"),
                    )
                })
            })
            .collect();
        sends
            .into_iter()
            .map(|s| s.join().expect("a send"))
            .collect()
    });
    let mut limited = 0;
    for reply in &replies {
        if reply.starts_with("451 4.7.1") {
            limited += 1;
        } else {
            assert!(reply.starts_with("250"), "{reply}");
        }
    }
    assert!(limited >= 5, "{limited} of 10 limited: {replies:?}");
    wait_until(Duration::from_secs(60), "accepted after the burst", || {
        std::thread::sleep(Duration::from_secs(4));
        send(alice_sub, a, a, a, &["bob@example.org"], "after the burst").starts_with("250")
    });
    drop(alice);
    drop(bob);
}
