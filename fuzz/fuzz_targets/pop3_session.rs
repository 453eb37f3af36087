//! Drives the node's sans-IO POP3 session (`omb_node::pop3::session::Session`)
//! the way `pop3/server.rs` does, with the client's bytes and the driver's
//! answers both taken from the fuzz input.
//!
//! Input layout:
//! - byte 0: how the stream is cut into reads (as in `smtp_session`). Low nibble
//!   picks the largest read (0 and 15: the whole stream at once); a non-zero
//!   high nibble makes the read sizes vary between 1 and that largest size.
//! - byte 1: the connection. Bit 0: STLS available; bit 1: a loopback client
//!   (plaintext login allowed); bit 2: implicit TLS.
//! - byte 2: `n = byte % 32`, how many bytes at the end of the input are answers.
//! - the last `n` bytes: one answer per `Login` / `Load` / `Update` action, in
//!   order; once they run out every login succeeds, every message loads and
//!   every update applies.
//! - everything in between: what the client sends.
//!
//! So a text file that starts with `0\x03 ` (whole stream, STLS, loopback, no
//! answers) followed by a POP3 dialogue is a valid seed.
//!
//! Invariants checked:
//! - the output never holds a bare CR or LF, and ends each burst in CRLF;
//! - a login is asked for only over TLS or from loopback;
//! - STLS starts only on a plain connection that offers it;
//! - a message is loaded only from the maildrop; a RETR answer announces
//!   exactly the octets it sends before dot-stuffing, and unstuffs to the
//!   normalized message; every multi-line answer ends in `.` CRLF;
//! - an update deletes only maildrop messages, each once, and the session closes
//!   after it;
//! - a closed session stays silent; no panics.

#![no_main]

use libfuzzer_sys::fuzz_target;
use omb_node::pop3::message;
use omb_node::pop3::session::{
    Action, Loaded, LoginVerdict, MaildropEntry, Session, SessionConfig,
};

const READ_SIZES: [usize; 16] = [usize::MAX, 1, 2, 3, 5, 8, 13, 64, 100, 256, 512, 1024, 7, 17, 31, usize::MAX];

/// The maildrop: awkward messages (bare CR and LF, dots, no header end, empty).
const MESSAGES: [(u32, &[u8]); 5] = [
    (2, b"Subject: a\r\n\r\nbody\r\n.\r\n..x\r\n"),
    (3, b"Subject: b\n\nbare\nLF\rCR\n.dot"),
    (7, b"no header end"),
    (8, b""),
    (40, b"A: 1\r\n\r\n\r\n\r\nl1\r\nl2\r\nl3\r\nl4\r\n"),
];

struct Answers<'a> {
    bytes: &'a [u8],
}

impl Answers<'_> {
    fn next(&mut self) -> Option<u8> {
        let (&b, rest) = self.bytes.split_first()?;
        self.bytes = rest;
        Some(b)
    }

    fn login(&mut self) -> LoginVerdict {
        match self.next().map(|b| b % 8) {
            None | Some(0..=2) => LoginVerdict::Ok(entries()),
            Some(3) => LoginVerdict::Failed,
            Some(4) => LoginVerdict::Throttled,
            Some(5) => LoginVerdict::NoPassword,
            Some(6) => LoginVerdict::InUse,
            _ => LoginVerdict::TempFail,
        }
    }

    fn load(&mut self, uid: u32) -> Loaded {
        let message = MESSAGES.iter().find(|(u, _)| *u == uid).map(|(_, m)| m.to_vec());
        match (self.next().map(|b| b % 4), message) {
            (None | Some(0..=1), Some(m)) => Loaded::Message(m),
            (Some(2), _) => Loaded::Gone,
            _ => Loaded::Failed,
        }
    }

    fn update(&mut self) -> bool {
        self.next().is_none_or(|b| b % 2 == 0)
    }
}

fn entries() -> Vec<MaildropEntry> {
    MESSAGES
        .iter()
        .map(|(uid, m)| MaildropEntry { uid: *uid, unique_id: format!("u1.{uid}"), size: message::pop3_size(m) })
        .collect()
}

struct Reads {
    max: usize,
    vary: bool,
    state: u32,
}

impl Reads {
    fn new(mode: u8) -> Self {
        Reads { max: READ_SIZES[usize::from(mode & 0x0f)], vary: mode >> 4 != 0 && mode & 0x0f != 0, state: u32::from(mode) }
    }

    fn next(&mut self) -> usize {
        if !self.vary {
            return self.max;
        }
        self.state = self.state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        1 + (self.state >> 16) as usize % self.max
    }
}

/// Takes the session's output and checks its line endings.
fn take(session: &mut Session) -> Vec<u8> {
    let out = session.take_output();
    if out.is_empty() {
        return out;
    }
    assert!(out.ends_with(b"\r\n"), "output does not end in CRLF: {:?}", String::from_utf8_lossy(&out));
    for (i, &b) in out.iter().enumerate() {
        match b {
            b'\r' => assert_eq!(out.get(i + 1), Some(&b'\n'), "bare CR in output: {:?}", String::from_utf8_lossy(&out)),
            b'\n' => assert!(i > 0 && out[i - 1] == b'\r', "bare LF in output: {:?}", String::from_utf8_lossy(&out)),
            _ => {}
        }
    }
    out
}

/// Checks the answer to a load: `-ERR`, or a multi-line `+OK` whose
/// unstuffed body is (for RETR, exactly) the normalized message.
fn check_loaded(out: &[u8], message: Option<&[u8]>) {
    if out.starts_with(b"-ERR") {
        return;
    }
    let Some(message) = message else {
        panic!("+OK for a message that did not load: {:?}", String::from_utf8_lossy(out));
    };
    assert!(out.starts_with(b"+OK "), "neither +OK nor -ERR");
    let first_end = out.windows(2).position(|w| w == b"\r\n").expect("a first line") + 2;
    assert!(out.len() >= first_end + 3 && out.ends_with(b".\r\n"), "no terminator");
    let first = &out[..first_end];
    let mut body = Vec::new();
    for line in out[first_end..out.len() - 3].split_inclusive(|&b| b == b'\n') {
        assert_ne!(line, b".\r\n", "a lone dot inside a message");
        body.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        if line.starts_with(b".") {
            assert!(line.starts_with(b".."), "a line starting with one dot was not stuffed");
        }
    }
    let normalized = message::normalize(message);
    if first.starts_with(b"+OK top") {
        assert!(normalized.starts_with(&body), "TOP is not a prefix of the message");
    } else {
        assert_eq!(first, format!("+OK {} octets\r\n", normalized.len()).as_bytes());
        assert_eq!(body, normalized, "RETR did not send the normalized message");
        assert_eq!(body.len() as u64, message::pop3_size(message));
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, flags, n, rest @ ..] = data else { return };
    let n = usize::from(*n % 32).min(rest.len());
    let (stream, answers) = rest.split_at(rest.len() - n);
    let mut answers = Answers { bytes: answers };
    let mut reads = Reads::new(*mode);
    let implicit_tls = flags & 4 != 0;
    let config = SessionConfig { tls_available: flags & 1 != 0 && !implicit_tls, plaintext_auth: flags & 2 != 0, max_errors: 10 };
    let tls_available = config.tls_available;
    let plaintext_auth = config.plaintext_auth;
    let mut session = Session::new(config, implicit_tls);
    let greeting = take(&mut session);
    assert!(greeting.starts_with(b"+OK "), "no greeting");
    let mut updated = false;

    let mut remaining = stream;
    'reads: while !remaining.is_empty() {
        let size = reads.next().min(remaining.len());
        let (chunk, tail) = remaining.split_at(size);
        remaining = tail;
        let mut input = chunk;
        loop {
            let before = input.len();
            let action = session.feed(&mut input);
            assert!(input.len() <= before, "feed grew the input");
            take(&mut session);
            match action {
                None => {
                    assert!(input.is_empty() || session.is_closed(), "feed stopped with input left");
                    break;
                }
                Some(Action::StartTls) => {
                    assert!(!session.is_tls() && tls_available, "STLS where it is not offered");
                    session.tls_started();
                    assert!(session.is_tls());
                    break; // what followed STLS in the clear is dropped
                }
                Some(Action::Login { .. }) => {
                    assert!(session.is_tls() || plaintext_auth, "a login in the clear off loopback");
                    session.login_done(answers.login());
                    take(&mut session);
                }
                Some(Action::Load { uid }) => {
                    assert!(MESSAGES.iter().any(|(u, _)| *u == uid), "load of a UID not in the maildrop");
                    let loaded = answers.load(uid);
                    let message = match &loaded {
                        Loaded::Message(m) => Some(m.clone()),
                        _ => None,
                    };
                    session.message_loaded(loaded);
                    let out = take(&mut session);
                    check_loaded(&out, message.as_deref());
                }
                Some(Action::Update { delete }) => {
                    assert!(!updated, "a second update");
                    assert!(!delete.is_empty(), "an empty update");
                    assert!(delete.windows(2).all(|w| w[0] < w[1]), "update UIDs repeat or are out of order");
                    assert!(delete.iter().all(|u| MESSAGES.iter().any(|(m, _)| m == u)), "update of a UID not in the maildrop");
                    updated = true;
                    session.updated(answers.update());
                    take(&mut session);
                    assert!(session.is_closed(), "the session goes on after its update");
                }
                Some(Action::Close) => {
                    assert!(session.is_closed(), "Close while the session is open");
                    break 'reads;
                }
            }
        }
    }

    if !session.is_closed() {
        session.timed_out();
        assert!(session.is_closed());
        take(&mut session);
    }
    let mut input: &[u8] = b"QUIT\r\n";
    assert!(session.feed(&mut input).is_none(), "a closed session still acts");
    assert!(session.take_output().is_empty(), "a closed session still answers");
});
