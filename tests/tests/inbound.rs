//! The inbound path end to end, with the real binaries and swaks: from an MTA to
//! the relay's MX, encrypted to the node's key, through the QUIC tunnel, into the
//! node's store.

use omb_tests::harness::{files_containing, have_tool, relay_with_alice, swaks, token, wait_until};
use std::time::{Duration, Instant};

/// The body of a decrypted message: everything after the first empty line.
fn body(message: &[u8]) -> &[u8] {
    let pos = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header/body separator");
    &message[pos + 4..]
}

fn header_block(message: &[u8]) -> String {
    let pos = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header/body separator");
    String::from_utf8_lossy(&message[..pos]).into_owned()
}

#[test]
fn swaks_mail_reaches_the_node_encrypted_and_byte_identical() {
    if !have_tool("swaks") {
        return;
    }
    let (dir, relay, node) = relay_with_alice("basic", "");
    let tok = token();
    // Non-ASCII (8BITMIME), a leading dot (dot-stuffing) and trailing spaces must
    // come through byte for byte.
    let body_text =
        format!("Hello Alice,\n.a line that starts with a dot\nsecret {tok}  \nÜnïcødé ✓\n");
    let started = Instant::now();
    let transcript = swaks(relay.smtp, "alice@sandbox.test", &body_text, &["--tls"]);
    let sent = Instant::now();
    assert!(
        transcript.contains("250 2.0.0 Ok: queued as"),
        "{transcript}"
    );
    assert!(transcript.contains("STARTTLS"), "{transcript}");
    wait_until(
        Duration::from_secs(10),
        "the message in alice's store",
        || !node.uids().is_empty(),
    );
    let latency = sent.elapsed();
    eprintln!(
        "end of DATA to node store: {latency:?} (whole SMTP session {:?})",
        sent - started
    );
    assert!(
        latency < Duration::from_secs(1),
        "delivery took {latency:?}, over a second"
    );

    let uids = node.uids();
    assert_eq!(uids, vec![1]);
    let message = node.show(1);
    let expected_body = body_text.replace('\n', "\r\n");
    // swaks ends the body it sends with one more empty line.
    assert_eq!(
        String::from_utf8_lossy(body(&message)),
        format!("{expected_body}\r\n\r\n"),
        "the body must be byte-identical"
    );
    let headers = header_block(&message);
    assert!(
        headers.starts_with("Authentication-Results: mx.sandbox.test;"),
        "{headers}"
    );
    assert!(headers.contains("spf="), "{headers}");
    assert!(headers.contains("dkim="), "{headers}");
    assert!(headers.contains("dmarc="), "{headers}");
    assert!(
        headers.contains("Received: from client.example.org ([127.0.0.1])"),
        "{headers}"
    );
    assert!(headers.contains("with ESMTPS id"), "{headers}");

    // At rest on the node the message is ciphertext, and the relay holds no
    // trace of the plaintext anywhere in its data folder.
    let raw = node.show_raw(1);
    assert!(String::from_utf8_lossy(&raw).contains("-----BEGIN PGP MESSAGE-----"));
    assert!(
        files_containing(&node.dir, tok.as_bytes()).is_empty(),
        "plaintext on the node's disk"
    );
    assert!(
        files_containing(&relay.dir, tok.as_bytes()).is_empty(),
        "plaintext on the relay's disk"
    );
    drop(dir);
}

#[test]
fn mail_waits_encrypted_while_the_node_is_offline() {
    if !have_tool("swaks") {
        return;
    }
    let (_dir, relay, mut node) = relay_with_alice("offline", "");
    node.kill9();
    let tok = token();
    let subject_tok = token();
    swaks(
        relay.smtp,
        "alice@sandbox.test",
        &format!("while away {tok}"),
        &["--header", &format!("Subject: {subject_tok}")],
    );
    // Spooled, but neither the body nor the headers are readable on the relay.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        files_containing(&relay.dir, tok.as_bytes()).is_empty(),
        "body in clear on the relay"
    );
    assert!(
        files_containing(&relay.dir, subject_tok.as_bytes()).is_empty(),
        "subject in clear on the relay"
    );
    assert!(node.uids().is_empty());

    node.start();
    wait_until(
        Duration::from_secs(20),
        "the queued message after the node came back",
        || node.uids().len() == 1,
    );
    assert!(String::from_utf8_lossy(&node.show(1)).contains(&tok));
    assert!(files_containing(&relay.dir, tok.as_bytes()).is_empty());
}

#[test]
fn relay_killed_after_250_still_delivers() {
    if !have_tool("swaks") {
        return;
    }
    let (_dir, mut relay, mut node) = relay_with_alice("relay-kill", "");
    node.kill9();
    let tok = token();
    let transcript = swaks(
        relay.smtp,
        "alice@sandbox.test",
        &format!("survives {tok}"),
        &[],
    );
    assert!(transcript.contains("250 2.0.0 Ok: queued"), "{transcript}");
    relay.kill9();
    relay.start();
    node.start();
    wait_until(
        Duration::from_secs(30),
        "the message accepted before the relay's kill -9",
        || node.uids().len() == 1,
    );
    assert!(String::from_utf8_lossy(&node.show(1)).contains(&tok));
}

#[test]
fn node_killed_before_its_ack_gets_the_message_once() {
    if !have_tool("swaks") {
        return;
    }
    let (_dir, relay, mut node) = relay_with_alice("node-kill", "");
    node.kill9();
    // This run of the node dies right after its durable store, before the ack.
    node.start_with_env(&[("OMB_TEST_CRASH_BEFORE_ACK", "1")]);
    node.wait_tunnel_ups(2, Duration::from_secs(30));
    let tok = token();
    swaks(
        relay.smtp,
        "alice@sandbox.test",
        &format!("once {tok}"),
        &[],
    );
    assert!(
        node.wait_exit(Duration::from_secs(20)),
        "the node should have died before acking"
    );
    assert_eq!(node.uids().len(), 1, "stored before the crash");

    // Back up: the relay sends it again (no ack came), the node drops the duplicate.
    node.start();
    node.wait_tunnel_ups(3, Duration::from_secs(30));
    wait_until(
        Duration::from_secs(20),
        "the relay to see the ack of the redelivery",
        || relay.log_text().contains("delivered to node"),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(node.uids(), vec![1], "delivered exactly once");
    assert!(
        node.log_text().contains("Duplicate"),
        "the node should have recognised the redelivery"
    );

    // And the spool is empty now: a new message is the next one, not a repeat.
    swaks(relay.smtp, "alice@sandbox.test", "second", &[]);
    wait_until(Duration::from_secs(10), "the second message", || {
        node.uids().len() == 2
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(node.uids(), vec![1, 2]);
}

#[test]
fn many_messages_arrive_in_order_exactly_once() {
    if !have_tool("swaks") {
        return;
    }
    let (_dir, relay, node) = relay_with_alice("many", "");
    // 10 concurrent senders (under the relay's per-IP limit of 20), 3 each.
    let n = 30;
    let handles: Vec<_> = (0..10)
        .map(|t| {
            let smtp = relay.smtp;
            std::thread::spawn(move || {
                for k in 0..3 {
                    swaks(
                        smtp,
                        "alice@sandbox.test",
                        &format!("message number {}", t * 3 + k),
                        &[],
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("swaks thread");
    }
    wait_until(Duration::from_secs(30), "all messages", || {
        node.uids().len() >= n
    });
    std::thread::sleep(Duration::from_millis(500));
    let uids = node.uids();
    assert_eq!(uids, (1..=n as u32).collect::<Vec<_>>());
    let mut seen: Vec<usize> = uids
        .iter()
        .map(|&u| {
            let m = String::from_utf8_lossy(&node.show(u)).into_owned();
            let i = m
                .split("message number ")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .and_then(|s| s.parse().ok());
            i.expect("numbered message")
        })
        .collect();
    seen.sort();
    assert_eq!(seen, (0..n).collect::<Vec<_>>());
}

#[test]
fn already_encrypted_mail_is_kept_as_it_is() {
    if !have_tool("swaks") {
        return;
    }
    let (_dir, relay, node) = relay_with_alice("pre-encrypted", "");
    let armored = "\n-----BEGIN PGP MESSAGE-----\n\nhQEMA0pretendciphertext\n=abcd\n-----END PGP MESSAGE-----";
    swaks(
        relay.smtp,
        "alice@sandbox.test",
        armored,
        &["--header", "Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=\"b\"", "--header", "Subject: keep-me"],
    );
    wait_until(Duration::from_secs(10), "the message", || {
        node.uids().len() == 1
    });
    // The relay did not wrap it again: what the node decrypts from its own
    // at-rest wrapping is the sender's message, headers and all.
    let message = String::from_utf8_lossy(&node.show(1)).into_owned();
    assert!(message.contains("Subject: keep-me"), "{message}");
    assert!(message.contains("hQEMA0pretendciphertext"), "{message}");
    assert!(relay.log_text().contains("encrypted_here=false"));
}
