//! Drives the node's sans-IO IMAP session (`omb_node::imap::session::Session`)
//! the way `imap/server.rs` and the command layer do, without a store: every
//! command gets a tagged OK and the state moves as it would (LOGIN and
//! AUTHENTICATE log in, SELECT selects, IDLE waits for DONE, STARTTLS drops
//! pipelined input, LOGOUT ends).
//!
//! Input layout: byte 0 picks how the stream is cut into reads (low nibble: the
//! largest read, 0 and 15 the whole stream); the rest is what the client sends.
//! So a text file starting with `0 ` and then an IMAP dialogue is a valid seed.
//!
//! Invariants checked:
//! - no panics, and bytes held back for a line never exceed the line and
//!   literal caps (the session closes first);
//! - what the session writes by itself is whole lines ending in CRLF, each an
//!   untagged (`* `), continuation (`+ `) or tagged reply;
//! - nothing is decoded after the session decided to close.

#![no_main]

use libfuzzer_sys::fuzz_target;
use omb_node::imap::session::imap_types::command::CommandBody;
use omb_node::imap::session::imap_types::response::StatusKind;
use omb_node::imap::session::{status, Event, Limits, Session, State};

const READ_SIZES: [usize; 16] = [usize::MAX, 1, 2, 3, 5, 8, 13, 64, 100, 256, 512, 1024, 7, 17, 31, usize::MAX];

fn check_lines(out: &[u8]) {
    if out.is_empty() {
        return;
    }
    assert!(out.ends_with(b"\r\n"), "output not CRLF-terminated: {out:?}");
    for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        assert!(line.ends_with(b"\r"), "bare LF in {out:?}");
        assert!(
            line.starts_with(b"* ")
                || line.starts_with(b"+")
                || [&b" OK"[..], b" NO", b" BAD"].iter().any(|k| line.windows(k.len()).any(|w| w == *k)),
            "odd line {line:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else { return };
    let largest = READ_SIZES[(mode & 15) as usize];
    let limits = Limits { max_line: 256, max_literal: 1024 };
    let mut s = Session::new(limits);
    let mut pos = 0;
    while pos < input.len() && !s.closing() {
        let n = largest.min(input.len() - pos);
        s.feed(&input[pos..pos + n]);
        pos += n;
        while let Some(event) = s.next_event() {
            assert!(!s.closing(), "an event after closing");
            match event {
                Event::Command(cmd) => {
                    if let Err(why) = s.allowed(&cmd.body) {
                        s.send(&status(Some(&cmd.tag), StatusKind::Bad, None, why));
                        continue;
                    }
                    match cmd.body {
                        CommandBody::Login { .. } => s.set_state(State::Authenticated),
                        CommandBody::Authenticate { initial_response: None, .. } => {
                            s.request_auth_data("");
                            continue;
                        }
                        CommandBody::Authenticate { .. } => s.set_state(State::Authenticated),
                        CommandBody::Select { .. } | CommandBody::Examine { .. } => s.set_state(State::Selected),
                        CommandBody::Close | CommandBody::Unselect => s.set_state(State::Authenticated),
                        CommandBody::Idle => {
                            s.start_idle();
                            continue;
                        }
                        CommandBody::StartTLS => s.discard_input(),
                        CommandBody::Logout => s.set_state(State::Logout),
                        _ => {}
                    }
                    s.send(&status(Some(&cmd.tag), StatusKind::Ok, None, "done"));
                }
                Event::AuthData(_) => s.set_state(State::Authenticated),
                Event::IdleDone => {}
            }
        }
        check_lines(&s.take_output());
    }
});
