//! Unit tests of the SMTP session state machine, fed bytes directly.

use super::*;

fn session(tls_available: bool) -> Session {
    let config = SessionConfig {
        hostname: "mx.test".into(),
        max_message_size: 1000,
        max_recipients: 2,
        tls_available,
        max_errors: 5,
    };
    let mut s = Session::new(config, IpAddr::from([192, 0, 2, 1]), false);
    assert!(String::from_utf8(s.take_output())
        .unwrap()
        .starts_with("220 mx.test"));
    s
}

/// Feeds everything, answering look-ups with `verdict` and stores with `Stored`.
fn run(s: &mut Session, input: &[u8], stored: &mut Vec<Transaction>) -> String {
    let mut input = input;
    while let Some(action) = s.feed(&mut input) {
        match action {
            Action::CheckRecipient(a) => {
                let v = if a.local_part() == "alice" {
                    RcptVerdict::Accept("alice".into())
                } else {
                    RcptVerdict::Unknown
                };
                s.recipient_checked(a, v);
            }
            Action::Store(tx) => {
                stored.push(tx);
                s.message_stored(StoreVerdict::Stored("Q1".into()));
            }
            Action::StartTls => s.tls_started(),
            Action::Close => break,
        }
    }
    String::from_utf8(s.take_output()).unwrap()
}

#[test]
fn pipelined_transaction_in_one_packet() {
    let mut s = session(false);
    let mut stored = Vec::new();
    let out = run(
        &mut s,
        b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<alice@x.test>\r\nRCPT TO:<bob@x.test>\r\nDATA\r\nSubject: hi\r\n\r\n..dot\r\nline\r\n.\r\nQUIT\r\n",
        &mut stored,
    );
    let codes: Vec<&str> = out
        .lines()
        .filter(|l| !l.starts_with("250-"))
        .map(|l| &l[..3])
        .collect();
    assert_eq!(
        codes,
        vec!["250", "250", "250", "550", "354", "250", "221"],
        "{out}"
    );
    assert!(out.contains("queued as Q1"));
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].data, b"Subject: hi\r\n\r\n.dot\r\nline\r\n");
    assert_eq!(stored[0].recipients.len(), 1);
    assert_eq!(stored[0].protocol, "ESMTP");
    assert!(s.is_closed());
}

#[test]
fn byte_at_a_time_gives_the_same_result() {
    let mut s = session(false);
    let mut stored = Vec::new();
    let mut out = String::new();
    for b in b"HELO c.test\r\nMAIL FROM:<>\r\nRCPT TO:<alice@x.test>\r\nDATA\r\nx\r\n.\r\n" {
        out.push_str(&run(&mut s, &[*b], &mut stored));
    }
    assert!(out.ends_with("250 2.0.0 Ok: queued as Q1\r\n"), "{out}");
    assert_eq!(stored[0].mail_from, "");
    assert_eq!(stored[0].data, b"x\r\n");
}

#[test]
fn oversized_data_is_refused_after_the_dot_and_not_kept() {
    let mut s = session(false);
    let mut stored = Vec::new();
    run(
        &mut s,
        b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<alice@x.test>\r\nDATA\r\n",
        &mut stored,
    );
    let big = vec![b'a'; 5000];
    let out = run(&mut s, &big, &mut stored);
    assert!(out.is_empty());
    let out = run(&mut s, b"\r\n.\r\nNOOP\r\n", &mut stored);
    assert!(out.starts_with("552 5.3.4"), "{out}");
    assert!(out.contains("250 2.0.0 OK"));
    assert!(stored.is_empty());
}

#[test]
fn starttls_resets_the_session_and_hides_itself_afterwards() {
    let mut s = session(true);
    let mut stored = Vec::new();
    let out = run(&mut s, b"EHLO c\r\n", &mut stored);
    assert!(out.contains("250 STARTTLS") || out.contains("250-STARTTLS"));
    let mut input: &[u8] = b"STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n";
    assert!(matches!(s.feed(&mut input), Some(Action::StartTls)));
    assert!(String::from_utf8(s.take_output())
        .unwrap()
        .starts_with("220 2.0.0"));
    // The driver drops what was pipelined after STARTTLS (RFC 3207 section 4.2).
    s.tls_started();
    let out = run(&mut s, b"MAIL FROM:<a@b.test>\r\n", &mut stored);
    assert!(out.starts_with("503"), "EHLO needed again after TLS: {out}");
    let out = run(&mut s, b"EHLO c\r\n", &mut stored);
    assert!(!out.contains("STARTTLS"));
    let out = run(&mut s, b"STARTTLS\r\n", &mut stored);
    assert!(out.starts_with("503"));
    let out = run(
        &mut s,
        b"MAIL FROM:<a@b.test>\r\nRCPT TO:<alice@x.test>\r\nDATA\r\nx\r\n.\r\n",
        &mut stored,
    );
    assert!(out.contains("queued"));
    assert_eq!(stored[0].protocol, "ESMTPS");
}

#[test]
fn too_many_recipients_and_errors() {
    let mut s = session(false);
    let mut stored = Vec::new();
    let out = run(&mut s, b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<alice@x.test>\r\nRCPT TO:<alice@y.test>\r\nRCPT TO:<alice@z.test>\r\n", &mut stored);
    assert!(out.contains("452 4.5.3"), "{out}");
    let out = run(&mut s, b"X\r\nX\r\nX\r\nX\r\nX\r\nX\r\n", &mut stored);
    assert!(out.contains("421 4.7.0"), "{out}");
    assert!(s.is_closed());
}

#[test]
fn limit_crossed_in_the_read_with_the_final_dot_is_refused() {
    let mut s = session(false);
    let mut stored = Vec::new();
    let input = [
        b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<alice@x.test>\r\nDATA\r\n".to_vec(),
        vec![b'x'; 1500],
        b"\r\n.\r\nNOOP\r\n".to_vec(),
    ]
    .concat();
    let out = run(&mut s, &input, &mut stored);
    assert!(out.contains("552 5.3.4"), "{out}");
    assert!(out.ends_with("250 2.0.0 OK\r\n"), "{out}");
    assert!(stored.is_empty());
}

#[test]
fn empty_message_and_leading_dot_on_the_first_line() {
    let mut s = session(false);
    let mut stored = Vec::new();
    let out = run(&mut s, b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<alice@x.test>\r\nDATA\r\n.\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<alice@x.test>\r\nDATA\r\n..leading\r\n.\r\nQUIT\r\n", &mut stored);
    assert_eq!(stored.len(), 2, "{out}");
    assert_eq!(stored[0].data, b"");
    assert_eq!(stored[1].data, b".leading\r\n");
    assert!(
        out.ends_with("221 2.0.0 mx.test closing connection\r\n"),
        "{out}"
    );
}
