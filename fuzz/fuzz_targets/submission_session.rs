//! Drives the node's sans-IO submission session
//! (`omb_node::submission::session::Session`) the way `submission/server.rs`
//! does, with the client's bytes and the driver's answers both taken from the
//! fuzz input.
//!
//! Input layout:
//! - byte 0: the largest read (`READ_SIZES[byte % 16]`);
//! - byte 1: the connection. Bit 0: STARTTLS available; bit 1: a loopback
//!   client (AUTH allowed before TLS); bit 2: implicit TLS;
//! - byte 2: `n = byte % 32`, how many bytes at the end are answers: one per
//!   `Login` / `Submit` action (even: success); then every answer succeeds;
//! - everything in between: what the client sends.
//!
//! So `\x00\x03\x00` followed by an SMTP dialogue is a valid seed.
//!
//! Invariants checked:
//! - the output never holds a bare CR or LF;
//! - a login is asked for only over TLS or from loopback;
//! - a message is submitted only after a successful login, from one of the
//!   account's addresses, to at most `max_recipients`, within the size limit;
//! - a closed session stays silent; no panics.

#![no_main]

use libfuzzer_sys::fuzz_target;
use omb_node::submission::session::{
    Action, LoginVerdict, Senders, Session, SessionConfig, SubmitVerdict,
};

const READ_SIZES: [usize; 16] = [usize::MAX, 1, 2, 3, 5, 8, 13, 64, 100, 256, 512, 1024, 7, 17, 31, usize::MAX];
const MAX_SIZE: usize = 2048;
const MAX_RCPTS: usize = 3;

fn check_output(out: &[u8]) {
    for (i, &b) in out.iter().enumerate() {
        if b == b'\n' {
            assert!(i > 0 && out[i - 1] == b'\r', "bare LF in {:?}", String::from_utf8_lossy(out));
        }
        if b == b'\r' {
            assert!(out.get(i + 1) == Some(&b'\n'), "bare CR in {:?}", String::from_utf8_lossy(out));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [cut, conn, n, rest @ ..] = data else { return };
    let n = (*n as usize % 32).min(rest.len());
    let (client, answers) = rest.split_at(rest.len() - n);
    let mut answers = answers.iter();
    let implicit = conn & 4 != 0;
    let loopback = conn & 2 != 0;
    let config = SessionConfig {
        hostname: "alice.sandbox.test".into(),
        max_message_size: MAX_SIZE,
        max_recipients: MAX_RCPTS,
        tls_available: conn & 1 != 0 && !implicit,
        plaintext_auth: loopback,
        max_errors: 20,
        senders: Senders {
            addresses: vec!["alice@sandbox.test".into()],
            domains: vec!["alice.example".into()],
        },
    };
    let mut tls = implicit;
    let mut logged_in = false;
    let mut session = Session::new(config, implicit);
    let max = READ_SIZES[*cut as usize % 16];
    let mut closed = false;
    for chunk in client.chunks(max.min(client.len().max(1))) {
        let mut input = chunk;
        while let Some(action) = session.feed(&mut input) {
            let ok = answers.next().is_none_or(|b| b % 2 == 0);
            match action {
                Action::Login { .. } => {
                    assert!(tls || loopback, "login asked for in the clear");
                    let verdict = if ok { LoginVerdict::Ok } else { LoginVerdict::Failed };
                    logged_in |= ok;
                    session.login_done(verdict);
                }
                Action::Submit(tx) => {
                    assert!(logged_in, "submitted without a login");
                    assert_eq!(tx.mail_from.to_lowercase(), "alice@sandbox.test");
                    assert!(!tx.rcpt_to.is_empty() && tx.rcpt_to.len() <= MAX_RCPTS);
                    assert!(tx.data.len() <= MAX_SIZE);
                    session.submitted(if ok {
                        SubmitVerdict::Queued("q".into())
                    } else {
                        SubmitVerdict::Temporary("4.7.1 slow\r\ndown".into())
                    });
                }
                Action::StartTls => {
                    assert!(!tls);
                    tls = true;
                    session.tls_started();
                }
                Action::Close => closed = true,
            }
        }
        let out = session.take_output();
        check_output(&out);
        if closed {
            let mut more: &[u8] = b"NOOP\r\n";
            assert!(session.feed(&mut more).is_none());
            assert!(session.take_output().is_empty(), "a closed session spoke");
            return;
        }
    }
});
