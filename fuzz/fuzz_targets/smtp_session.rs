//! Drives the MX's sans-IO SMTP session (`omb_relay::mx::session::Session`) the
//! way `mx/server.rs` does, with the client's bytes and the driver's answers both
//! taken from the fuzz input.
//!
//! Input layout:
//! - byte 0: how the stream is cut into reads. Low nibble picks the largest read
//!   (0 and 15: the whole stream at once); a non-zero high nibble makes the read
//!   sizes vary between 1 and that largest size.
//! - byte 1: `n = byte % 32`, how many bytes at the end of the input are answers.
//! - the last `n` bytes: one answer per `CheckRecipient` / `Store` action, in
//!   order; once they run out every recipient is accepted and every message stored.
//! - everything in between: what the client sends.
//!
//! So a text file that starts with `0 ` (whole stream, no answers) followed by an
//! SMTP dialogue is a valid seed.
//!
//! Invariants checked:
//! - the output is CRLF-terminated lines, each starting with three digits;
//! - `250 2.0.0 Ok: queued` appears only right after a `Store` answered `Stored`;
//! - a stored transaction holds at most `max_message_size` bytes of data, and
//!   between 1 and `max_recipients` recipients;
//! - no panics.

#![no_main]

use libfuzzer_sys::fuzz_target;
use omb_relay::mx::session::{Action, RcptVerdict, Session, SessionConfig, StoreVerdict};
use std::net::{IpAddr, Ipv4Addr};

/// Small on purpose: libFuzzer's inputs are at most 4096 bytes by default, and the
/// size limit must be within reach of one input.
const MAX_MESSAGE_SIZE: usize = 256;
const MAX_RECIPIENTS: usize = 5;

const QUEUED: &[u8] = b"250 2.0.0 Ok: queued";

const READ_SIZES: [usize; 16] = [usize::MAX, 1, 2, 3, 5, 8, 13, 64, 100, 256, 512, 1024, 7, 17, 31, usize::MAX];

/// The driver's answers, taken from the end of the input.
struct Answers<'a> {
    bytes: &'a [u8],
    stores: usize,
}

impl Answers<'_> {
    fn next(&mut self) -> Option<u8> {
        let (&b, rest) = self.bytes.split_first()?;
        self.bytes = rest;
        Some(b)
    }

    fn rcpt(&mut self) -> RcptVerdict {
        match self.next().map(|b| b % 8) {
            None | Some(0..=3) => RcptVerdict::Accept("handle".to_string()),
            Some(4) => RcptVerdict::Unknown,
            Some(5) => RcptVerdict::NotActive,
            Some(6) => RcptVerdict::OverQuota,
            _ => RcptVerdict::TempFail,
        }
    }

    fn store(&mut self) -> StoreVerdict {
        self.stores += 1;
        match self.next().map(|b| b % 4) {
            None | Some(0..=1) => StoreVerdict::Stored(format!("Q{}", self.stores)),
            Some(2) => StoreVerdict::OverQuota,
            _ => StoreVerdict::TempFail,
        }
    }
}

/// Read sizes: fixed, or varying by a small LCG seeded from the mode byte.
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

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).filter(|w| *w == needle).count()
}

/// Takes the session's output, checks that it is well-formed replies with no
/// `queued` line, and keeps it in the transcript.
fn take(session: &mut Session, transcript: &mut Vec<u8>) -> Vec<u8> {
    let out = session.take_output();
    check_replies(&out);
    transcript.extend_from_slice(&out);
    out
}

fn check_replies(out: &[u8]) {
    if out.is_empty() {
        return;
    }
    assert!(out.ends_with(b"\r\n"), "output does not end in CRLF: {:?}", String::from_utf8_lossy(out));
    // Every '\n' but the last one separates two lines; each line ends in '\r'.
    for line in out[..out.len() - 1].split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or_else(|| panic!("bare LF in output: {:?}", String::from_utf8_lossy(out)));
        assert!(!line.contains(&b'\r'), "bare CR in reply line: {:?}", String::from_utf8_lossy(line));
        assert!(
            line.len() >= 3 && line[..3].iter().all(u8::is_ascii_digit),
            "reply line does not start with a code: {:?}",
            String::from_utf8_lossy(line)
        );
        assert!(line.len() == 3 || matches!(line[3], b' ' | b'-'), "bad separator after the code: {:?}", String::from_utf8_lossy(line));
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, n, rest @ ..] = data else { return };
    let n = usize::from(*n % 32).min(rest.len());
    let (stream, answers) = rest.split_at(rest.len() - n);
    let mut answers = Answers { bytes: answers, stores: 0 };
    let mut reads = Reads::new(*mode);

    let config = SessionConfig {
        hostname: "mx.relay.test".to_string(),
        max_message_size: MAX_MESSAGE_SIZE,
        max_recipients: MAX_RECIPIENTS,
        tls_available: true,
        max_errors: 10,
    };
    let mut session = Session::new(config, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)), false);
    let mut transcript = Vec::new();
    let greeting = take(&mut session, &mut transcript);
    assert!(greeting.starts_with(b"220 "), "no greeting");
    assert_eq!(count(&greeting, QUEUED), 0);

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
            let out = take(&mut session, &mut transcript);
            assert_eq!(count(&out, QUEUED), 0, "queued without a store: {:?}", String::from_utf8_lossy(&out));
            match action {
                // Read more. The driver drops what `feed` left (the tail of an
                // over-long line that it skips, or bytes after the session closed).
                None => break,
                Some(Action::CheckRecipient(addr)) => {
                    let verdict = answers.rcpt();
                    session.recipient_checked(addr, verdict);
                    let out = take(&mut session, &mut transcript);
                    assert_eq!(count(&out, QUEUED), 0);
                }
                Some(Action::Store(tx)) => {
                    assert!(
                        tx.data.len() <= MAX_MESSAGE_SIZE,
                        "stored a message of {} bytes, over the limit of {MAX_MESSAGE_SIZE}",
                        tx.data.len()
                    );
                    assert!(!tx.recipients.is_empty(), "store with no recipients");
                    assert!(tx.recipients.len() <= MAX_RECIPIENTS, "store with {} recipients", tx.recipients.len());
                    let verdict = answers.store();
                    let stored = matches!(verdict, StoreVerdict::Stored(_));
                    session.message_stored(verdict);
                    let out = take(&mut session, &mut transcript);
                    assert_eq!(count(&out, QUEUED), usize::from(stored), "reply to the store: {:?}", String::from_utf8_lossy(&out));
                }
                Some(Action::StartTls) => {
                    // The driver drops whatever was pipelined after STARTTLS
                    // (RFC 3207 section 4.2) and starts over on the TLS stream.
                    session.tls_started();
                    assert!(session.is_tls());
                    break;
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
        take(&mut session, &mut transcript);
    }
    let mut input: &[u8] = b"QUIT\r\n";
    assert!(session.feed(&mut input).is_none(), "a closed session still acts");
    assert!(session.take_output().is_empty(), "a closed session still answers");
    check_replies(&transcript);
});
