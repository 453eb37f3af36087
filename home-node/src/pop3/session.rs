//! The POP3 session as a state machine with no I/O (RFC 1939): bytes in,
//! responses and requests out. The tokio driver in `server.rs` reads the
//! socket, answers the requests (checking a login, loading a message, applying
//! deletions, starting TLS) and writes the responses. Unit tests
//! (`session_tests.rs`) and the fuzz target drive it byte by byte.
//!
//! Extensions: CAPA and extended response codes (RFC 2449, RFC 3206), STLS
//! (RFC 2595), SASL PLAIN with an initial response (RFC 5034, RFC 4616).

use super::command::{self, Command, ParseError};
use super::message;

/// The longest command line accepted, CRLF included. RFC 2449 section 4 allows
/// 255 octets; SASL responses (RFC 5034 section 4) and long passwords get more.
pub const MAX_LINE: usize = 1024;

/// Limits and facts a session needs.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Whether STLS can be offered on this connection.
    pub tls_available: bool,
    /// Whether USER/PASS and AUTH may be used before TLS: only for a client on
    /// the loopback interface (RFC 2595 section 2.1).
    pub plaintext_auth: bool,
    /// Bad commands tolerated before the session is closed.
    pub max_errors: usize,
}

/// What the driver must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Flush the responses, start TLS, drop whatever the client sent after
    /// STLS (it was sent in the clear, RFC 2595 section 4), then call
    /// [`Session::tls_started`].
    StartTls,
    /// Check the credentials, lock and list the maildrop, then call
    /// [`Session::login_done`].
    Login { user: String, password: String },
    /// Load the message with this UID as apps see it, then call
    /// [`Session::message_loaded`].
    Load { uid: u32 },
    /// QUIT with messages marked as deleted (RFC 1939 section 6, the UPDATE
    /// state): remove them all, or none, then call [`Session::updated`].
    Update { delete: Vec<u32> },
    /// Flush the responses and close the connection. Nothing is deleted.
    Close,
}

/// One message of the maildrop, as listed when the session opens it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaildropEntry {
    pub uid: u32,
    /// The UIDL of the message (see [`message::unique_id`]).
    pub unique_id: String,
    /// Octets RETR sends, before dot-stuffing (see [`message::pop3_size`]).
    pub size: u64,
}

/// The driver's answer to [`Action::Login`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginVerdict {
    /// Logged in; the maildrop is locked for this session and holds these
    /// messages, in order.
    Ok(Vec<MaildropEntry>),
    Failed,
    /// Too many failures from the client's address.
    Throttled,
    /// No password is set on this node.
    NoPassword,
    /// Another POP3 session holds the maildrop.
    InUse,
    /// The store could not be read.
    TempFail,
}

/// The driver's answer to [`Action::Load`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    /// The message as apps see it (any line endings).
    Message(Vec<u8>),
    /// Removed meanwhile (by IMAP).
    Gone,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Authorization,
    /// Waiting for the client's response to `AUTH PLAIN` with no initial response.
    AuthPlain,
    WaitLogin,
    WaitTls,
    Transaction,
    WaitMessage,
    WaitUpdate,
    Closed,
}

pub struct Session {
    config: SessionConfig,
    state: State,
    tls: bool,
    line: Vec<u8>,
    /// Discarding the rest of a line that was too long.
    skipping: bool,
    out: Vec<u8>,
    errors: usize,
    /// Set by the last command when it was a successful USER.
    user: Option<String>,
    maildrop: Vec<MaildropEntry>,
    deleted: Vec<bool>,
    /// The message being loaded (index) and, for TOP, how many body lines.
    pending: Option<(usize, Option<u64>)>,
    close_announced: bool,
}

impl Session {
    /// A new session; the greeting is already in the output.
    pub fn new(config: SessionConfig, tls: bool) -> Self {
        let mut s = Session {
            config,
            state: State::Authorization,
            tls,
            line: Vec::new(),
            skipping: false,
            out: Vec::new(),
            errors: 0,
            user: None,
            maildrop: Vec::new(),
            deleted: Vec::new(),
            pending: None,
            close_announced: false,
        };
        s.reply("+OK Own-Mailbox POP3 server ready");
        s
    }

    /// Responses produced so far, to be written to the client.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Consumes client bytes until a command needs the driver (the bytes after
    /// it stay in `input`, to be fed again after the answer) or `input` is used
    /// up. A partial line is kept until its end arrives.
    pub fn feed(&mut self, input: &mut &[u8]) -> Option<Action> {
        loop {
            match self.state {
                State::Closed if !self.close_announced => {
                    self.close_announced = true;
                    return Some(Action::Close);
                }
                State::Authorization | State::AuthPlain | State::Transaction => {}
                _ => return None,
            }
            if input.is_empty() {
                return None;
            }
            let Some(end) = input.iter().position(|&b| b == b'\n') else {
                let chunk = std::mem::take(input);
                if !self.skipping {
                    if self.line.len() + chunk.len() > MAX_LINE {
                        self.line_too_long();
                    } else {
                        self.line.extend_from_slice(chunk);
                    }
                }
                continue;
            };
            let (chunk, rest) = input.split_at(end + 1);
            *input = rest;
            if self.skipping {
                self.skipping = false;
                continue;
            }
            if self.line.len() + chunk.len() > MAX_LINE {
                self.line_too_long();
                self.skipping = false;
                continue;
            }
            let mut line = std::mem::take(&mut self.line);
            line.extend_from_slice(chunk);
            if let Some(action) = self.handle_line(&line) {
                return Some(action);
            }
        }
    }

    fn line_too_long(&mut self) {
        self.line.clear();
        self.skipping = true;
        self.error(format!("-ERR line too long (at most {MAX_LINE} octets)"));
    }

    fn handle_line(&mut self, raw: &[u8]) -> Option<Action> {
        let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let Ok(line) = std::str::from_utf8(raw) else {
            self.state = self.state_after_bad_input();
            self.error("-ERR a command must be UTF-8 text");
            return None;
        };
        if self.state == State::AuthPlain {
            self.state = State::Authorization;
            if line == "*" {
                self.error("-ERR authentication cancelled");
                return None;
            }
            return self.plain(line);
        }
        match command::parse(line) {
            Err(ParseError::Unknown) => {
                self.error("-ERR unknown command");
                None
            }
            Err(ParseError::Syntax(usage)) => {
                self.error(format!("-ERR {usage}"));
                None
            }
            Ok(cmd) if self.state == State::Authorization => self.authorization(cmd),
            Ok(cmd) => self.transaction(cmd),
        }
    }

    fn state_after_bad_input(&self) -> State {
        if self.state == State::AuthPlain {
            State::Authorization
        } else {
            self.state
        }
    }

    fn auth_allowed(&self) -> bool {
        self.tls || self.config.plaintext_auth
    }

    /// RFC 1939 section 5, the TRANSACTION state.
    fn transaction(&mut self, cmd: Command<'_>) -> Option<Action> {
        match cmd {
            Command::Capa => self.capa(),
            Command::Noop => self.reply("+OK"),
            Command::Stat => {
                let (count, size) = self.totals();
                self.reply(&format!("+OK {count} {size}"));
            }
            Command::List(None) | Command::Uidl(None) => {
                let list = matches!(cmd, Command::List(_));
                let mut text = if list {
                    let (count, size) = self.totals();
                    format!("+OK {count} messages ({size} octets)\r\n")
                } else {
                    "+OK unique-id listing follows\r\n".to_string()
                };
                for (i, m) in self.maildrop.iter().enumerate() {
                    if !self.deleted[i] {
                        let value = if list {
                            m.size.to_string()
                        } else {
                            m.unique_id.clone()
                        };
                        text.push_str(&format!("{} {value}\r\n", i + 1));
                    }
                }
                text.push('.');
                self.reply(&text);
            }
            Command::List(Some(n)) | Command::Uidl(Some(n)) => {
                if let Some(i) = self.message(n) {
                    let m = &self.maildrop[i];
                    let text = match cmd {
                        Command::List(_) => format!("+OK {n} {}", m.size),
                        _ => format!("+OK {n} {}", m.unique_id),
                    };
                    self.reply(&text);
                }
            }
            Command::Retr(n) | Command::Top(n, _) => {
                if let Some(i) = self.message(n) {
                    let top = match cmd {
                        Command::Top(_, lines) => Some(lines),
                        _ => None,
                    };
                    self.pending = Some((i, top));
                    self.state = State::WaitMessage;
                    return Some(Action::Load {
                        uid: self.maildrop[i].uid,
                    });
                }
            }
            Command::Dele(n) => {
                if let Some(i) = self.message(n) {
                    self.deleted[i] = true;
                    self.reply(&format!("+OK message {n} deleted"));
                }
            }
            Command::Rset => {
                self.deleted.iter_mut().for_each(|d| *d = false);
                let (count, size) = self.totals();
                self.reply(&format!(
                    "+OK maildrop has {count} messages ({size} octets)"
                ));
            }
            Command::Quit => {
                let delete: Vec<u32> = self
                    .maildrop
                    .iter()
                    .zip(&self.deleted)
                    .filter(|(_, d)| **d)
                    .map(|(m, _)| m.uid)
                    .collect();
                if delete.is_empty() {
                    self.signing_off();
                } else {
                    self.state = State::WaitUpdate;
                    return Some(Action::Update { delete });
                }
            }
            Command::Stls
            | Command::User(_)
            | Command::Pass(_)
            | Command::Auth { .. }
            | Command::Apop => self.error("-ERR already logged in"),
        }
        None
    }

    /// The index of message number `n`, or the error response for it (RFC 1939
    /// section 5: a message marked as deleted may not be referred to).
    fn message(&mut self, n: u64) -> Option<usize> {
        let i = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .filter(|&i| i < self.maildrop.len());
        match i {
            Some(i) if self.deleted[i] => {
                self.error(format!("-ERR message {n} already deleted"));
                None
            }
            Some(i) => Some(i),
            None => {
                self.error("-ERR no such message");
                None
            }
        }
    }

    /// The driver's answer to [`Action::Load`].
    pub fn message_loaded(&mut self, loaded: Loaded) {
        if self.state != State::WaitMessage {
            return;
        }
        self.state = State::Transaction;
        let Some((i, top)) = self.pending.take() else {
            return;
        };
        let n = i + 1;
        match loaded {
            Loaded::Message(bytes) => {
                let normalized = message::normalize(&bytes);
                let first = match top {
                    None => format!("+OK {} octets\r\n", normalized.len()),
                    Some(_) => "+OK top of message follows\r\n".to_string(),
                };
                self.out.extend_from_slice(first.as_bytes());
                let body = match top {
                    None => &normalized[..],
                    Some(lines) => message::top(&normalized, lines),
                };
                message::write_dot_stuffed(&mut self.out, body);
            }
            Loaded::Gone => self.reply(&format!(
                "-ERR message {n} was removed by another mail app meanwhile"
            )),
            Loaded::Failed => self.reply(&format!(
                "-ERR [SYS/TEMP] cannot read message {n}; try again later"
            )),
        }
    }

    /// The driver's answer to [`Action::Update`]: `true` when every deletion
    /// was applied, `false` when none was.
    pub fn updated(&mut self, applied: bool) {
        if self.state != State::WaitUpdate {
            return;
        }
        if applied {
            self.signing_off();
        } else {
            // RFC 1939 section 6: the -ERR of a QUIT whose removals failed.
            self.reply("-ERR [SYS/TEMP] some deleted messages not removed; try again later");
            self.state = State::Closed;
        }
    }

    fn signing_off(&mut self) {
        let (count, _) = self.totals();
        self.reply(&format!(
            "+OK Own-Mailbox POP3 server signing off ({count} messages left)"
        ));
        self.state = State::Closed;
    }

    /// TLS is up; the session starts over in the AUTHORIZATION state with
    /// nothing kept from before (RFC 2595 section 4).
    pub fn tls_started(&mut self) {
        if self.state != State::WaitTls {
            return;
        }
        self.tls = true;
        self.state = State::Authorization;
        self.user = None;
        self.line.clear();
        self.skipping = false;
    }

    /// The client was idle too long: the session closes without entering the
    /// UPDATE state (RFC 1939 section 3), so nothing is deleted.
    pub fn timed_out(&mut self) {
        if self.state == State::Closed {
            return;
        }
        self.reply("-ERR [SYS/TEMP] autologout: idle for too long");
        self.state = State::Closed;
        self.close_announced = true;
    }

    /// RFC 2449 section 5.
    fn capa(&mut self) {
        let mut text = String::from(
            "+OK capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n\
             PIPELINING\r\nEXPIRE NEVER\r\nIMPLEMENTATION Own-Mailbox\r\n",
        );
        if self.state == State::Authorization {
            if self.auth_allowed() {
                text.push_str("USER\r\nSASL PLAIN\r\n");
            }
            if !self.tls && self.config.tls_available {
                text.push_str("STLS\r\n");
            }
        }
        text.push('.');
        self.reply(&text);
    }

    /// Messages not marked as deleted, and their octets.
    fn totals(&self) -> (usize, u64) {
        self.maildrop
            .iter()
            .zip(&self.deleted)
            .filter(|(_, d)| !**d)
            .fold((0, 0), |(n, s), (m, _)| (n + 1, s + m.size))
    }

    /// Writes a response (any status); `text` has no final CRLF.
    fn reply(&mut self, text: &str) {
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// Writes a `-ERR` response that counts against the client; past
    /// `max_errors` the session closes.
    fn error(&mut self, text: impl AsRef<str>) {
        self.reply(text.as_ref());
        self.errors += 1;
        if self.errors >= self.config.max_errors && self.state != State::Closed {
            self.reply("-ERR too many errors; closing the connection");
            self.state = State::Closed;
        }
    }
}

#[path = "session_auth.rs"]
mod auth;

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
