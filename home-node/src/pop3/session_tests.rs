use super::*;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

const PASSWORD: &str = "secret pw";

/// A fake driver: answers the session's requests from a few messages and one
/// account (`alice`, [`PASSWORD`]), and records what it was asked to do.
struct Driver {
    session: Session,
    messages: Vec<(u32, Vec<u8>)>,
    /// When set, the answer to every login.
    verdict: Option<LoginVerdict>,
    logins: Vec<(String, String)>,
    updates: Vec<Vec<u32>>,
    update_ok: bool,
    gone: Vec<u32>,
    closes: usize,
    tls_starts: usize,
}

const M1: &[u8] = b"From: a@example.org\r\nSubject: one\r\n\r\nfirst line\r\n.dot line\r\nlast\r\n";
/// Bare LFs and no final line end: sent with CRLF everywhere.
const M2: &[u8] = b"Subject: two\n\nl1\nl2\n..two dots\nl4";
const M3: &[u8] = b"Subject: three\r\n\r\n.\r\n";

impl Driver {
    fn new(tls_available: bool, plaintext_auth: bool, tls: bool) -> (Self, String) {
        let config = SessionConfig {
            tls_available,
            plaintext_auth,
            max_errors: 5,
        };
        let mut d = Driver {
            session: Session::new(config, tls),
            messages: vec![(3, M1.to_vec()), (5, M2.to_vec()), (9, M3.to_vec())],
            verdict: None,
            logins: Vec::new(),
            updates: Vec::new(),
            update_ok: true,
            gone: Vec::new(),
            closes: 0,
            tls_starts: 0,
        };
        let greeting = d.output();
        (d, greeting)
    }

    /// A loopback session, logged in with USER/PASS.
    fn logged_in() -> Self {
        let (mut d, _) = Self::new(true, true, false);
        let out = d.send(&format!("USER alice\r\nPASS {PASSWORD}\r\n"));
        assert_eq!(
            out,
            "+OK send PASS\r\n+OK maildrop has 3 messages (127 octets)\r\n"
        );
        d
    }

    fn entries(&self) -> Vec<MaildropEntry> {
        self.messages
            .iter()
            .map(|(uid, m)| MaildropEntry {
                uid: *uid,
                unique_id: format!("id-{uid}"),
                size: message::pop3_size(m),
            })
            .collect()
    }

    fn run(&mut self, mut input: &[u8]) {
        while let Some(action) = self.session.feed(&mut input) {
            match action {
                Action::StartTls => {
                    // Whatever followed STLS in the clear is dropped.
                    input = &[];
                    self.tls_starts += 1;
                    self.session.tls_started();
                }
                Action::Login { user, password } => {
                    let verdict = self.verdict.clone().unwrap_or_else(|| {
                        if user == "alice" && password == PASSWORD {
                            LoginVerdict::Ok(self.entries())
                        } else {
                            LoginVerdict::Failed
                        }
                    });
                    self.logins.push((user, password));
                    self.session.login_done(verdict);
                }
                Action::Load { uid } => {
                    let loaded = match self.messages.iter().find(|(u, _)| *u == uid) {
                        Some(_) if self.gone.contains(&uid) => Loaded::Gone,
                        Some((_, m)) => Loaded::Message(m.clone()),
                        None => Loaded::Failed,
                    };
                    self.session.message_loaded(loaded);
                }
                Action::Update { delete } => {
                    self.updates.push(delete);
                    self.session.updated(self.update_ok);
                }
                Action::Close => self.closes += 1,
            }
        }
        assert!(
            input.is_empty() || self.session.is_closed(),
            "feed stopped early"
        );
    }

    fn output(&mut self) -> String {
        String::from_utf8(self.session.take_output()).expect("output is UTF-8")
    }

    fn send(&mut self, text: &str) -> String {
        self.run(text.as_bytes());
        self.output()
    }

    /// Feeds one byte at a time.
    fn send_bytewise(&mut self, bytes: &[u8]) -> String {
        for b in bytes {
            self.run(std::slice::from_ref(b));
        }
        self.output()
    }
}

const CAPA_COMMON: &str = "+OK capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\n\
    AUTH-RESP-CODE\r\nPIPELINING\r\nEXPIRE NEVER\r\nIMPLEMENTATION Own-Mailbox\r\n";

#[test]
fn greeting_and_capabilities_follow_tls_and_loopback() {
    let (mut d, greeting) = Driver::new(true, false, false);
    assert_eq!(greeting, "+OK Own-Mailbox POP3 server ready\r\n");
    // Not loopback, no TLS yet: no USER, no SASL, only STLS.
    assert_eq!(d.send("CAPA\r\n"), format!("{CAPA_COMMON}STLS\r\n.\r\n"));
    // Loopback: plaintext login is offered too.
    let (mut d, _) = Driver::new(true, true, false);
    assert_eq!(
        d.send("capa\r\n"),
        format!("{CAPA_COMMON}USER\r\nSASL PLAIN\r\nSTLS\r\n.\r\n")
    );
    // Implicit TLS: no STLS.
    let (mut d, _) = Driver::new(false, false, true);
    assert_eq!(
        d.send("CAPA\r\n"),
        format!("{CAPA_COMMON}USER\r\nSASL PLAIN\r\n.\r\n")
    );
    // Logged in: nothing about logging in.
    let mut d = Driver::logged_in();
    assert_eq!(d.send("CAPA\r\n"), format!("{CAPA_COMMON}.\r\n"));
}

#[test]
fn plaintext_login_is_refused_before_stls_off_loopback() {
    let (mut d, _) = Driver::new(true, false, false);
    for cmd in ["USER alice", "AUTH PLAIN"] {
        assert!(
            d.send(&format!("{cmd}\r\n"))
                .starts_with("-ERR [AUTH] plaintext authentication is refused before TLS"),
            "{cmd}"
        );
    }
    assert!(d.logins.is_empty());
    // STLS; the USER pipelined behind it in the clear is dropped.
    assert_eq!(
        d.send("STLS\r\nUSER injected\r\n"),
        "+OK begin TLS negotiation\r\n"
    );
    assert_eq!(d.tls_starts, 1);
    assert!(d.session.is_tls());
    assert_eq!(
        d.send("PASS secret pw\r\n"),
        "-ERR send USER first\r\n",
        "the injected USER must not count"
    );
    assert_eq!(
        d.send("CAPA\r\n"),
        format!("{CAPA_COMMON}USER\r\nSASL PLAIN\r\n.\r\n")
    );
    assert_eq!(d.send("STLS\r\n"), "-ERR already using TLS\r\n");
    assert_eq!(
        d.send(&format!("USER alice\r\nPASS {PASSWORD}\r\n")),
        "+OK send PASS\r\n+OK maildrop has 3 messages (127 octets)\r\n"
    );
}

#[test]
fn stls_is_refused_where_tls_is_not_available() {
    let (mut d, _) = Driver::new(false, true, false);
    assert_eq!(d.send("STLS\r\n"), "-ERR TLS is not available here\r\n");
    assert_eq!(d.tls_starts, 0);
}

#[test]
fn user_pass_byte_by_byte_then_stat_list_uidl() {
    let (mut d, _) = Driver::new(true, true, false);
    let out = d.send_bytewise(format!("USER alice\r\nPASS {PASSWORD}\r\n").as_bytes());
    assert_eq!(
        out,
        "+OK send PASS\r\n+OK maildrop has 3 messages (127 octets)\r\n"
    );
    assert_eq!(d.logins, vec![("alice".to_string(), PASSWORD.to_string())]);
    // Sizes: M1 as is (66), M2 with CRLF and a final CRLF (40), M3 (21).
    assert_eq!(d.send_bytewise(b"STAT\r\n"), "+OK 3 127\r\n");
    assert_eq!(
        d.send("LIST\r\n"),
        "+OK 3 messages (127 octets)\r\n1 66\r\n2 40\r\n3 21\r\n.\r\n"
    );
    assert_eq!(d.send("LIST 2\r\n"), "+OK 2 40\r\n");
    assert_eq!(d.send("LIST 4\r\n"), "-ERR no such message\r\n");
    assert_eq!(d.send("LIST 0\r\n"), "-ERR no such message\r\n");
    assert_eq!(
        d.send("UIDL\r\n"),
        "+OK unique-id listing follows\r\n1 id-3\r\n2 id-5\r\n3 id-9\r\n.\r\n"
    );
    assert_eq!(d.send("uidl 3\r\n"), "+OK 3 id-9\r\n");
    assert_eq!(d.send("NOOP\n"), "+OK\r\n", "a bare LF ends a line too");
}

#[test]
fn retr_sends_crlf_and_dot_stuffing_with_the_listed_size() {
    let mut d = Driver::logged_in();
    assert_eq!(
        d.send("RETR 1\r\n"),
        "+OK 66 octets\r\nFrom: a@example.org\r\nSubject: one\r\n\r\nfirst line\r\n..dot line\r\nlast\r\n.\r\n"
    );
    let out = d.send("RETR 2\r\n");
    assert_eq!(
        out,
        "+OK 40 octets\r\nSubject: two\r\n\r\nl1\r\nl2\r\n...two dots\r\nl4\r\n.\r\n"
    );
    // The announced size is the message before dot-stuffing.
    let body = &out["+OK 40 octets\r\n".len()..out.len() - 3];
    assert_eq!(body.replace("\r\n..", "\r\n.").len(), 40);
    assert_eq!(
        d.send("RETR 3\r\n"),
        "+OK 21 octets\r\nSubject: three\r\n\r\n..\r\n.\r\n"
    );
    assert_eq!(d.send("RETR 4\r\n"), "-ERR no such message\r\n");
    assert_eq!(d.send("RETR x\r\n"), "-ERR invalid message number\r\n");
}

#[test]
fn top_sends_the_header_and_n_body_lines() {
    let mut d = Driver::logged_in();
    assert_eq!(
        d.send("TOP 1 0\r\n"),
        "+OK top of message follows\r\nFrom: a@example.org\r\nSubject: one\r\n\r\n.\r\n"
    );
    assert_eq!(
        d.send("TOP 2 3\r\n"),
        "+OK top of message follows\r\nSubject: two\r\n\r\nl1\r\nl2\r\n...two dots\r\n.\r\n"
    );
    assert_eq!(
        d.send("TOP 3 99999999999999999999999\r\n"),
        "+OK top of message follows\r\nSubject: three\r\n\r\n..\r\n.\r\n"
    );
    assert!(d.send("TOP 1\r\n").starts_with("-ERR usage: TOP msg n"));
}

#[test]
fn dele_and_rset_then_quit_removes_the_marked_messages_once() {
    let mut d = Driver::logged_in();
    assert_eq!(d.send("DELE 1\r\n"), "+OK message 1 deleted\r\n");
    assert_eq!(d.send("DELE 1\r\n"), "-ERR message 1 already deleted\r\n");
    assert_eq!(d.send("RETR 1\r\n"), "-ERR message 1 already deleted\r\n");
    assert_eq!(d.send("STAT\r\n"), "+OK 2 61\r\n");
    assert_eq!(
        d.send("LIST\r\n"),
        "+OK 2 messages (61 octets)\r\n2 40\r\n3 21\r\n.\r\n"
    );
    assert_eq!(
        d.send("UIDL\r\n"),
        "+OK unique-id listing follows\r\n2 id-5\r\n3 id-9\r\n.\r\n"
    );
    assert_eq!(
        d.send("RSET\r\n"),
        "+OK maildrop has 3 messages (127 octets)\r\n"
    );
    assert_eq!(
        d.send("DELE 3\r\nDELE 2\r\n"),
        "+OK message 3 deleted\r\n+OK message 2 deleted\r\n"
    );
    assert!(d.updates.is_empty(), "nothing is removed before QUIT");
    assert_eq!(
        d.send("QUIT\r\nNOOP\r\n"),
        "+OK Own-Mailbox POP3 server signing off (1 messages left)\r\n"
    );
    assert_eq!(d.updates, vec![vec![5, 9]]);
    assert_eq!(d.closes, 1);
    assert!(d.session.is_closed());
    // A closed session stays silent.
    assert_eq!(d.send("STAT\r\n"), "");
    assert_eq!(d.closes, 1);
}

#[test]
fn a_session_that_ends_without_quit_removes_nothing() {
    let mut d = Driver::logged_in();
    d.send("DELE 1\r\nDELE 2\r\n");
    d.session.timed_out();
    assert_eq!(
        d.output(),
        "-ERR [SYS/TEMP] autologout: idle for too long\r\n"
    );
    assert!(d.session.is_closed());
    d.send("QUIT\r\n");
    assert!(d.updates.is_empty());
    // QUIT with nothing marked needs no update either.
    let mut d = Driver::logged_in();
    assert_eq!(
        d.send("QUIT\r\n"),
        "+OK Own-Mailbox POP3 server signing off (3 messages left)\r\n"
    );
    assert!(d.updates.is_empty());
    assert_eq!(d.closes, 1);
}

#[test]
fn a_failed_update_says_so() {
    let mut d = Driver::logged_in();
    d.update_ok = false;
    assert_eq!(
        d.send("DELE 2\r\nQUIT\r\n"),
        "+OK message 2 deleted\r\n-ERR [SYS/TEMP] some deleted messages not removed; try again later\r\n"
    );
    assert!(d.session.is_closed());
    assert_eq!(d.closes, 1);
}

#[test]
fn auth_plain_with_and_without_an_initial_response() {
    let (mut d, _) = Driver::new(false, false, true);
    let good = STANDARD.encode(format!("\0alice\0{PASSWORD}"));
    assert_eq!(
        d.send(&format!("AUTH PLAIN {good}\r\n")),
        "+OK maildrop has 3 messages (127 octets)\r\n"
    );
    let (mut d, _) = Driver::new(false, false, true);
    assert_eq!(
        d.send("AUTH\r\n"),
        "+OK SASL mechanisms follow\r\nPLAIN\r\n.\r\n"
    );
    assert_eq!(d.send("AUTH plain\r\n"), "+ \r\n");
    assert_eq!(d.send("*\r\n"), "-ERR authentication cancelled\r\n");
    assert_eq!(d.send("AUTH PLAIN\r\n"), "+ \r\n");
    assert_eq!(
        d.send("!!!\r\n"),
        "-ERR the SASL response is not valid base64\r\n"
    );
    assert_eq!(
        d.send("AUTH CRAM-MD5\r\n"),
        "-ERR unsupported SASL mechanism; use PLAIN\r\n"
    );
    let other = STANDARD.encode(format!("bob\0alice\0{PASSWORD}"));
    assert_eq!(
        d.send(&format!("AUTH PLAIN {other}\r\n")),
        "-ERR [AUTH] logging in as another user is not supported\r\n"
    );
    assert!(d.logins.is_empty());
    assert!(!d.session.is_closed());
    assert_eq!(
        d.send("AUTH PLAIN x\r\n"),
        "-ERR the SASL response is not valid base64\r\n\
         -ERR too many errors; closing the connection\r\n"
    );
    assert!(d.session.is_closed(), "five errors close the session");

    let (mut d, _) = Driver::new(false, false, true);
    assert_eq!(
        d.send("AUTH PLAIN =\r\n"),
        "-ERR [AUTH] a PLAIN response is authzid NUL user NUL password\r\n"
    );
    let same = STANDARD.encode(format!("alice\0alice\0{PASSWORD}"));
    assert_eq!(d.send("AUTH PLAIN\r\n"), "+ \r\n");
    assert_eq!(
        d.send(&format!("{same}\r\n")),
        "+OK maildrop has 3 messages (127 octets)\r\n"
    );
}

#[test]
fn login_failures_carry_response_codes() {
    let cases = [
        (LoginVerdict::Failed, "-ERR [AUTH] "),
        (LoginVerdict::Throttled, "-ERR [LOGIN-DELAY] "),
        (LoginVerdict::NoPassword, "-ERR [SYS/PERM] "),
        (LoginVerdict::InUse, "-ERR [IN-USE] "),
        (LoginVerdict::TempFail, "-ERR [SYS/TEMP] "),
    ];
    for (verdict, code) in cases {
        let (mut d, _) = Driver::new(false, true, false);
        d.verdict = Some(verdict);
        let out = d.send("USER alice\r\nPASS nope\r\n");
        assert!(
            out.starts_with(&format!("+OK send PASS\r\n{code}")),
            "{out}"
        );
        // Still in the AUTHORIZATION state.
        assert_eq!(d.send("STAT\r\n"), "-ERR log in first\r\n");
    }
    let (mut d, _) = Driver::new(false, true, false);
    assert_eq!(
        d.send("USER alice\r\nPASS wrong\r\n"),
        "+OK send PASS\r\n-ERR [AUTH] wrong user name or password\r\n"
    );
    assert_eq!(d.send("PASS secret pw\r\n"), "-ERR send USER first\r\n");
}

#[test]
fn commands_in_the_wrong_state_and_unknown_ones_get_err() {
    let (mut d, _) = Driver::new(false, true, false);
    assert_eq!(d.send("RETR 1\r\n"), "-ERR log in first\r\n");
    assert_eq!(d.send("XYZZY\r\n"), "-ERR unknown command\r\n");
    assert_eq!(
        d.send("APOP alice 0123\r\n"),
        "-ERR APOP is not supported; use USER/PASS or AUTH PLAIN\r\n"
    );
    let mut d = Driver::logged_in();
    assert_eq!(d.send("USER bob\r\n"), "-ERR already logged in\r\n");
    assert_eq!(d.send("STLS\r\n"), "-ERR already logged in\r\n");
    assert_eq!(d.send("\r\n"), "-ERR unknown command\r\n");
    assert_eq!(d.send("STAT\r\n"), "+OK 3 127\r\n");
}

#[test]
fn bad_bytes_and_overlong_lines_get_err_and_the_session_goes_on() {
    let (mut d, _) = Driver::new(false, true, false);
    assert_eq!(d.send("\u{1}\u{7f}garbage\r\n"), "-ERR unknown command\r\n");
    d.run(b"\xff\xfe\r\n");
    assert_eq!(d.output(), "-ERR a command must be UTF-8 text\r\n");
    // An overlong line, byte by byte: one -ERR, and the next line is read.
    let mut long = vec![b'A'; MAX_LINE + 10];
    long.extend_from_slice(b"\r\nNOOP\r\n");
    assert_eq!(
        d.send_bytewise(&long),
        format!("-ERR line too long (at most {MAX_LINE} octets)\r\n-ERR log in first\r\n")
    );
    // In one piece, too.
    let mut long = vec![b'B'; 5000];
    long.extend_from_slice(b"\r\nCAPA\r\n");
    d.run(&long);
    let out = d.output();
    assert!(out.starts_with("-ERR line too long"), "{out}");
    assert!(
        out.contains("-ERR too many errors; closing the connection\r\n"),
        "{out}"
    );
    assert!(d.session.is_closed());
    assert_eq!(d.closes, 1);
}

#[test]
fn a_line_of_exactly_the_limit_is_read() {
    let (mut d, _) = Driver::new(false, true, false);
    let mut line = format!("USER {}", "a".repeat(MAX_LINE - 7)).into_bytes();
    line.extend_from_slice(b"\r\n");
    assert_eq!(line.len(), MAX_LINE);
    assert_eq!(d.send_bytewise(&line), "+OK send PASS\r\n");
}

#[test]
fn too_many_errors_close_the_session() {
    let (mut d, _) = Driver::new(false, true, false);
    let out = d.send("A\r\nB\r\nC\r\nD\r\nE\r\nF\r\n");
    assert_eq!(
        out,
        "-ERR unknown command\r\n".repeat(5) + "-ERR too many errors; closing the connection\r\n"
    );
    assert_eq!(d.closes, 1);
}

#[test]
fn pipelined_commands_are_answered_in_order() {
    let (mut d, _) = Driver::new(false, true, false);
    let out = d.send(&format!(
        "CAPA\r\nUSER alice\r\nPASS {PASSWORD}\r\nSTAT\r\nRETR 3\r\nDELE 3\r\nLIST\r\nQUIT\r\n"
    ));
    let expected = format!(
        "{CAPA_COMMON}USER\r\nSASL PLAIN\r\n.\r\n+OK send PASS\r\n\
         +OK maildrop has 3 messages (127 octets)\r\n+OK 3 127\r\n\
         +OK 21 octets\r\nSubject: three\r\n\r\n..\r\n.\r\n+OK message 3 deleted\r\n\
         +OK 2 messages (106 octets)\r\n1 66\r\n2 40\r\n.\r\n\
         +OK Own-Mailbox POP3 server signing off (2 messages left)\r\n"
    );
    assert_eq!(out, expected);
    assert_eq!(d.updates, vec![vec![9]]);
}

#[test]
fn a_message_removed_meanwhile_or_unreadable_gets_err() {
    let mut d = Driver::logged_in();
    d.gone.push(5);
    assert_eq!(
        d.send("RETR 2\r\n"),
        "-ERR message 2 was removed by another mail app meanwhile\r\n"
    );
    d.messages.retain(|(uid, _)| *uid != 9);
    assert_eq!(
        d.send("TOP 3 1\r\n"),
        "-ERR [SYS/TEMP] cannot read message 3; try again later\r\n"
    );
    assert_eq!(d.send("NOOP\r\n"), "+OK\r\n");
}

#[test]
fn answers_out_of_turn_are_ignored() {
    let (mut d, _) = Driver::new(true, true, false);
    d.session.login_done(LoginVerdict::Ok(Vec::new()));
    d.session.message_loaded(Loaded::Message(b"x".to_vec()));
    d.session.updated(true);
    d.session.tls_started();
    assert_eq!(d.output(), "");
    assert!(!d.session.is_tls());
    assert_eq!(d.send("STAT\r\n"), "-ERR log in first\r\n");
}
