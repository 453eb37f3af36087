use super::*;

fn config(plaintext_auth: bool) -> SessionConfig {
    SessionConfig {
        hostname: "alice.sandbox.test".into(),
        max_message_size: 1000,
        max_recipients: 2,
        tls_available: true,
        plaintext_auth,
        max_errors: 5,
        senders: Senders {
            addresses: vec!["alice@sandbox.test".into()],
            domains: vec!["alice.example".into()],
        },
    }
}

/// Feeds `input` one byte at a time, answering actions with the given verdicts.
fn run(session: &mut Session, input: &[u8], login: LoginVerdict) -> (String, Vec<Action>) {
    let mut actions = Vec::new();
    for b in input {
        let mut slice: &[u8] = std::slice::from_ref(b);
        while let Some(action) = session.feed(&mut slice) {
            match &action {
                Action::Login { .. } => session.login_done(login),
                Action::Submit(_) => session.submitted(SubmitVerdict::Queued("Q1".into())),
                Action::StartTls => session.tls_started(),
                Action::Close => {}
            }
            actions.push(action);
        }
    }
    (
        String::from_utf8_lossy(&session.take_output()).into_owned(),
        actions,
    )
}

#[test]
fn no_auth_without_tls_except_when_allowed() {
    let mut s = Session::new(config(false), false);
    let (out, _) = run(
        &mut s,
        b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nMAIL FROM:<alice@sandbox.test>\r\n",
        LoginVerdict::Ok,
    );
    assert!(out.contains("250 STARTTLS"), "{out}");
    assert!(!out.contains("AUTH PLAIN LOGIN"), "{out}");
    assert!(out.contains("538 5.7.11"), "{out}");
    assert!(out.contains("530 5.7.0"), "{out}");

    let (out, actions) = run(
        &mut s,
        b"STARTTLS\r\nEHLO c\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
        LoginVerdict::Ok,
    );
    assert!(out.contains("250 AUTH PLAIN LOGIN"), "{out}");
    assert!(out.contains("235 2.7.0"), "{out}");
    assert_eq!(actions[0], Action::StartTls);
    assert_eq!(
        actions[1],
        Action::Login {
            user: "alice".into(),
            password: "secret".into()
        }
    );
}

#[test]
fn login_mechanism_in_steps_and_a_whole_transaction() {
    let mut s = Session::new(config(true), false);
    let input = b"EHLO c\r\nAUTH LOGIN\r\nYWxpY2U=\r\nc2VjcmV0\r\n\
        MAIL FROM:<Alice@Sandbox.test> SIZE=100\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n\
        From: alice@sandbox.test\r\n\r\n..dot\r\n.\r\nQUIT\r\n";
    let (out, actions) = run(&mut s, input, LoginVerdict::Ok);
    assert!(
        out.contains("334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235"),
        "{out}"
    );
    assert!(out.contains("250 2.0.0 Ok: queued as Q1"), "{out}");
    assert!(out.ends_with("221 2.0.0 Bye\r\n"), "{out}");
    let Action::Submit(tx) = &actions[1] else {
        panic!("{actions:?}")
    };
    assert_eq!(tx.mail_from, "Alice@Sandbox.test");
    assert_eq!(tx.rcpt_to, vec!["bob@example.org".to_string()]);
    assert_eq!(tx.data, b"From: alice@sandbox.test\r\n\r\n.dot\r\n");
}

#[test]
fn foreign_sender_limits_and_failed_login() {
    let mut s = Session::new(config(true), false);
    let (out, _) = run(
        &mut s,
        b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHdyb25n\r\n",
        LoginVerdict::Failed,
    );
    assert!(out.contains("535 5.7.8"), "{out}");
    let (out, _) = run(
        &mut s,
        b"AUTH PLAIN\r\nAGFsaWNlAHNlY3JldA==\r\nMAIL FROM:<bob@sandbox.test>\r\n\
          MAIL FROM:<alice@sandbox.test> SIZE=5000\r\nMAIL FROM:<alice@sandbox.test>\r\n\
          RCPT TO:<a@x.org>\r\nRCPT TO:<b@x.org>\r\nRCPT TO:<c@x.org>\r\nRCPT TO:<d@[127.0.0.1]>\r\n",
        LoginVerdict::Ok,
    );
    assert!(out.contains("334 \r\n235"), "{out}");
    assert!(out.contains("553 5.7.1"), "{out}");
    assert!(out.contains("552 5.3.4"), "{out}");
    assert!(out.contains("452 4.5.3"), "{out}");
    let (out, _) = run(
        &mut s,
        b"RSET\r\nMAIL FROM:<alice@sandbox.test>\r\nRCPT TO:<d@[127.0.0.1]>\r\n",
        LoginVerdict::Ok,
    );
    assert!(out.contains("501 5.1.3"), "{out}");
}

#[test]
fn oversized_message_is_refused_after_the_dot() {
    let mut s = Session::new(config(true), false);
    let mut input = b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nMAIL FROM:<alice@sandbox.test>\r\nRCPT TO:<a@x.org>\r\nDATA\r\n".to_vec();
    input.extend(std::iter::repeat_n(b'x', 3000));
    input.extend_from_slice(b"\r\n.\r\nNOOP\r\n");
    let (out, actions) = run(&mut s, &input, LoginVerdict::Ok);
    assert!(out.contains("552 5.3.4"), "{out}");
    assert!(out.ends_with("250 2.0.0 OK\r\n"), "{out}");
    assert!(!actions.iter().any(|a| matches!(a, Action::Submit(_))));
}

#[test]
fn relay_verdicts_become_replies() {
    let mut s = Session::new(config(true), false);
    let mut slice: &[u8] = b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n";
    let Some(Action::Login { .. }) = s.feed(&mut slice) else {
        panic!()
    };
    s.login_done(LoginVerdict::Ok);
    let mut slice: &[u8] =
        b"MAIL FROM:<alice@sandbox.test>\r\nRCPT TO:<a@x.org>\r\nDATA\r\nhi\r\n.\r\n";
    assert!(matches!(s.feed(&mut slice), Some(Action::Submit(_))));
    s.submitted(SubmitVerdict::Temporary(
        "4.7.1 rate limit\r\nreached".into(),
    ));
    let out = String::from_utf8_lossy(&s.take_output()).into_owned();
    assert!(out.ends_with("451 4.7.1 rate limit  reached\r\n"), "{out}");
}

#[test]
fn garbage_and_cancel_keep_the_session_sane() {
    let mut s = Session::new(config(true), false);
    let mut input = b"EHLO c\r\nAUTH LOGIN\r\n*\r\nAUTH CRAM-MD5\r\n".to_vec();
    input.extend(std::iter::repeat_n(b'A', 20_000));
    input.extend_from_slice(b"\r\nNOOP\r\n");
    let (out, _) = run(&mut s, &input, LoginVerdict::Ok);
    assert!(out.contains("501 5.7.0"), "{out}");
    assert!(out.contains("504 5.5.4"), "{out}");
    assert!(out.ends_with("250 2.0.0 OK\r\n"), "{out}");
    assert!(!s.is_closed());
}
