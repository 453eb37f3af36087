use super::*;
use imap_codec::imap_types::response::StatusKind;

fn out(s: &mut Session) -> String {
    String::from_utf8_lossy(&s.take_output()).into_owned()
}

fn small() -> Session {
    Session::new(Limits {
        max_line: 100,
        max_literal: 1000,
    })
}

fn command(e: Option<Event>) -> Command<'static> {
    match e {
        Some(Event::Command(c)) => c,
        other => panic!("expected a command, got {other:?}"),
    }
}

#[test]
fn greeting_and_a_command_byte_by_byte() {
    let mut s = small();
    s.greet(None, "hello");
    assert_eq!(out(&mut s), "* OK hello\r\n");
    let mut got = None;
    for b in b"a1 NOOP\r\n" {
        s.feed(&[*b]);
        if let Some(e) = s.next_event() {
            got = Some(e);
        }
    }
    let c = command(got);
    assert_eq!(c.tag.inner(), "a1");
    assert_eq!(c.body, CommandBody::Noop);
    assert!(s.next_event().is_none());
}

#[test]
fn synchronising_literal_gets_a_continuation_request() {
    let mut s = small();
    s.feed(b"a LOGIN {5}\r\n");
    assert!(s.next_event().is_none());
    assert!(out(&mut s).starts_with("+ "));
    s.feed(b"alice \"pw\"\r\n");
    let c = command(s.next_event());
    assert!(matches!(c.body, CommandBody::Login { .. }));
}

#[test]
fn non_synchronising_literal_needs_no_continuation() {
    let mut s = small();
    s.feed(b"a LOGIN {5+}\r\nalice {2+}\r\npw\r\n");
    let c = command(s.next_event());
    assert!(matches!(c.body, CommandBody::Login { .. }));
    assert_eq!(out(&mut s), "");
}

#[test]
fn huge_sync_literal_is_refused_and_the_session_goes_on() {
    let mut s = small();
    s.feed(b"a APPEND INBOX {5000}\r\n");
    assert!(s.next_event().is_none());
    let o = out(&mut s);
    assert!(o.starts_with("a NO [TOOBIG]"), "{o}");
    s.feed(b"b NOOP\r\n");
    assert_eq!(command(s.next_event()).body, CommandBody::Noop);
    assert!(!s.closing());
}

#[test]
fn huge_non_sync_literal_is_bad_and_closes() {
    let mut s = small();
    s.feed(b"a APPEND INBOX {5000+}\r\nxxxx");
    assert!(s.next_event().is_none());
    let o = out(&mut s);
    assert!(o.starts_with("a BAD [TOOBIG]"), "{o}");
    assert!(o.contains("* BYE"), "{o}");
    assert!(s.closing());
}

#[test]
fn endless_line_is_cut_off() {
    let mut s = small();
    s.feed(&[b'x'; 150]);
    assert!(s.next_event().is_none());
    let o = out(&mut s);
    assert!(o.starts_with("* BAD"), "{o}");
    assert!(s.closing());
}

#[test]
fn garbage_and_unknown_commands_get_bad() {
    let mut s = small();
    s.feed(b"\x00\x01garbage\r\na FROBNICATE\r\nb NOOP\r\n");
    let c = command(s.next_event());
    assert_eq!(c.body, CommandBody::Noop);
    let o = out(&mut s);
    assert!(o.starts_with("* BAD"), "{o}");
    assert!(o.contains("a BAD"), "{o}");
}

#[test]
fn idle_and_authenticate_lines() {
    let mut s = small();
    s.start_idle();
    assert_eq!(out(&mut s), "+ idling\r\n");
    s.feed(b"DONE\r\n");
    assert_eq!(s.next_event(), Some(Event::IdleDone));
    s.request_auth_data("");
    assert!(out(&mut s).starts_with('+'));
    s.feed(b"AGFsaWNlAHB3\r\n");
    assert!(matches!(
        s.next_event(),
        Some(Event::AuthData(AuthenticateData::Continue(_)))
    ));
    s.request_auth_data("");
    s.feed(b"*\r\n");
    assert_eq!(
        s.next_event(),
        Some(Event::AuthData(AuthenticateData::Cancel))
    );
}

#[test]
fn states_gate_commands() {
    let mut s = small();
    s.feed(b"a SELECT INBOX\r\n");
    let c = command(s.next_event());
    assert_eq!(s.allowed(&c.body), Err("log in first"));
    s.set_state(State::Authenticated);
    assert!(s.allowed(&c.body).is_ok());
    s.feed(b"b FETCH 1 FLAGS\r\n");
    let c = command(s.next_event());
    assert_eq!(s.allowed(&c.body), Err("select a folder first"));
    s.set_state(State::Selected);
    assert!(s.allowed(&c.body).is_ok());
    s.send(&status(Some(&c.tag), StatusKind::Ok, None, "done"));
    assert_eq!(out(&mut s), "b OK done\r\n");
}

#[test]
fn pipelined_input_after_starttls_is_discarded() {
    let mut s = small();
    s.feed(b"a STARTTLS\r\nb LOGIN x y\r\n");
    let c = command(s.next_event());
    assert_eq!(c.body, CommandBody::StartTLS);
    s.discard_input();
    assert!(s.next_event().is_none());
}
