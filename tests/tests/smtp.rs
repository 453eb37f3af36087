//! The relay's MX against a hostile or broken client: RFC 5321 replies for bad
//! sequences and syntax, size and connection limits, open-relay attempts, and
//! garbage — after all of which it still serves everyone else, and nothing
//! already accepted is lost.

use omb_tests::harness::{have_tool, relay_with_alice, swaks, token, wait_until, RawSmtp};
use std::io::Write;
use std::time::Duration;

fn code(reply: &str) -> &str {
    reply.get(..3).unwrap_or(reply)
}

#[test]
fn replies_follow_rfc_5321() {
    let (_dir, relay, _node) = relay_with_alice("smtp-replies", "");
    let mut c = RawSmtp::connect(relay.smtp);
    assert_eq!(
        code(&c.cmd("MAIL FROM:<a@example.org>")),
        "503",
        "MAIL before EHLO"
    );
    let ehlo = c.cmd("EHLO client.example.org");
    for ext in [
        "PIPELINING",
        "SIZE 52428800",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "STARTTLS",
    ] {
        assert!(ehlo.contains(ext), "EHLO lacks {ext}: {ehlo}");
    }
    assert_eq!(
        code(&c.cmd("RCPT TO:<alice@sandbox.test>")),
        "503",
        "RCPT before MAIL"
    );
    assert_eq!(code(&c.cmd("DATA")), "503", "DATA before MAIL");
    assert_eq!(
        code(&c.cmd("MAIL FROM:<a@example.org> SIZE=999999999")),
        "552"
    );
    assert!(c.cmd("MAIL FROM:<a@example.org>").starts_with("250 2.1.0"));
    assert!(c
        .cmd("RCPT TO:<nobody@sandbox.test>")
        .starts_with("550 5.1.1"));
    assert!(c
        .cmd("RCPT TO:<someone@elsewhere.example>")
        .starts_with("550 5.1.1"));
    assert_eq!(code(&c.cmd("DATA")), "554", "DATA with no valid recipient");
    assert!(
        c.cmd("RCPT TO:<ALICE@Sandbox.Test>")
            .starts_with("250 2.1.5"),
        "recipients are case-insensitive"
    );
    assert_eq!(code(&c.cmd("FOO bar")), "500");
    assert_eq!(
        code(&c.cmd("MAIL FROM:<b@example.org>")),
        "503",
        "nested MAIL"
    );
    assert!(c.cmd("VRFY alice").starts_with("252"));
    assert!(c.cmd("RSET").starts_with("250"));
    assert!(c.cmd("NOOP").starts_with("250"));
    assert!(c.cmd("QUIT").starts_with("221"));
}

#[test]
fn open_relay_tricks_are_refused() {
    if !have_tool("swaks") {
        return;
    }
    let (_dir, relay, _node) = relay_with_alice("smtp-open-relay", "");
    for rcpt in [
        "victim@elsewhere.example",
        "victim%elsewhere.example@sandbox.test",
        "elsewhere.example!victim@sandbox.test",
        "@sandbox.test:victim@elsewhere.example",
        "\"victim@elsewhere.example\"@sandbox.test",
        "victim@[127.0.0.1]",
        "alice@sandbox.test@elsewhere.example",
    ] {
        let mut c = RawSmtp::connect(relay.smtp);
        c.cmd("EHLO client.example.org");
        assert!(c.cmd("MAIL FROM:<spammer@example.org>").starts_with("250"));
        let reply = c.cmd(&format!("RCPT TO:<{rcpt}>"));
        assert!(
            reply.starts_with('5'),
            "RCPT TO:<{rcpt}> must be refused, got {reply}"
        );
    }
}

#[test]
fn garbage_and_huge_input_leave_the_relay_serving_and_lose_nothing() {
    if !have_tool("swaks") {
        return;
    }
    let (_dir, relay, mut node) = relay_with_alice("smtp-garbage", "");
    // Something accepted first, while the node is away.
    node.kill9();
    let tok = token();
    swaks(
        relay.smtp,
        "alice@sandbox.test",
        &format!("accepted before the storm {tok}"),
        &[],
    );

    // Binary garbage.
    let mut c = RawSmtp::connect(relay.smtp);
    let garbage: Vec<u8> = (0..20_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    c.send(&garbage);
    c.send(b"\r\n");
    let reply = c.reply();
    assert!(
        reply.starts_with('5') || reply.starts_with("421"),
        "garbage got {reply}"
    );

    // An overlong line, then a good command on the same connection.
    let mut c = RawSmtp::connect(relay.smtp);
    c.send(format!("EHLO {}\r\n", "x".repeat(100_000)).as_bytes());
    assert!(c.reply().starts_with("500 5.5.2"), "overlong line");
    assert!(
        c.cmd("NOOP").starts_with("250"),
        "the session goes on after an overlong line"
    );

    // Too many errors end the session.
    let mut c = RawSmtp::connect(relay.smtp);
    let mut last = String::new();
    for _ in 0..12 {
        last = c.cmd("WHATEVER");
        if last.contains("421") {
            break;
        }
    }
    assert!(last.contains("421"), "too many errors should close: {last}");

    // A 100 MB DATA: refused with 552 once it ends, memory stays bounded, and the
    // same connection still works.
    let mut c = RawSmtp::connect(relay.smtp);
    c.cmd("EHLO client.example.org");
    assert!(c.cmd("MAIL FROM:<big@example.org>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@sandbox.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    let line = [b"y".repeat(998), b"\r\n".to_vec()].concat();
    let chunk = line.repeat(1024); // ~1 MB
    for _ in 0..100 {
        c.stream.write_all(&chunk).expect("write 1 MB");
    }
    c.send(b".\r\n");
    let reply = c.reply();
    assert!(reply.starts_with("552 5.3.4"), "100 MB DATA got {reply}");
    assert!(c.cmd("RSET").starts_with("250"));
    assert!(c.cmd("QUIT").starts_with("221"));

    // Other clients were served all along, and the first message is delivered.
    swaks(relay.smtp, "alice@sandbox.test", "after the storm", &[]);
    node.start();
    wait_until(Duration::from_secs(20), "both messages", || {
        node.uids().len() == 2
    });
    assert!(String::from_utf8_lossy(&node.show(1)).contains(&tok));
}

#[test]
fn per_ip_connection_limit_and_idle_timeout() {
    let (_dir, relay, _node) = relay_with_alice("smtp-limits", "");
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(RawSmtp::connect(relay.smtp));
    }
    // The 21st from the same address is turned away with 421.
    let mut s = std::net::TcpStream::connect(relay.smtp).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 256];
    let n = std::io::Read::read(&mut s, &mut buf).unwrap_or(0);
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("421"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    let mut c = RawSmtp::connect(relay.smtp);
    assert!(
        c.cmd("NOOP").starts_with("250"),
        "served again once the others left"
    );
}

#[test]
fn idle_clients_time_out() {
    let (_dir, relay, _node) = relay_with_alice("smtp-timeout", "");
    // Rewrite the timeout: a relay with a 2 s command timeout.
    let text = std::fs::read_to_string(&relay.config).expect("config");
    std::fs::write(
        &relay.config,
        text.replace("[smtp]\n", "[smtp]\ncommand_timeout_secs = 2\n"),
    )
    .expect("config");
    let mut relay = relay;
    relay.kill9();
    relay.start();
    let mut c = RawSmtp::connect(relay.smtp);
    std::thread::sleep(Duration::from_secs(3));
    let reply = c.reply();
    assert!(reply.starts_with("421 4.4.2"), "idle client got {reply:?}");
}
