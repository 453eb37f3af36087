//! The submission session as a state machine with no I/O (RFC 6409 on top of
//! RFC 5321): bytes in, replies and requests out. The tokio driver in
//! `server.rs` checks logins, signs and submits messages and runs TLS; unit
//! tests and the fuzz target drive this byte by byte.
//!
//! What differs from an MX: nothing is accepted before AUTH (RFC 6409 §4.3),
//! AUTH is offered only over TLS (RFC 4954 §4; the loopback exception is the
//! driver's choice), and the envelope sender must be one of the account's
//! addresses (RFC 6409 §6.1).

use base64::Engine;
use smtp_proto::request::receiver::{DataReceiver, DummyDataReceiver, RequestReceiver};
use smtp_proto::{Error as ProtoError, Request};

/// The longest SASL response line read (RFC 4954 §4: 12288 octets).
const MAX_AUTH_LINE: usize = 12 * 1024;

/// Limits and facts a session needs.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub hostname: String,
    pub max_message_size: usize,
    pub max_recipients: usize,
    /// Whether STARTTLS can be offered (false on the implicit-TLS port).
    pub tls_available: bool,
    /// Whether AUTH may be used without TLS (loopback clients only).
    pub plaintext_auth: bool,
    /// Bad commands tolerated before the session is closed.
    pub max_errors: usize,
    /// What the account may send as: the only envelope senders allowed.
    pub senders: Senders,
}

/// The addresses an account may send as, as the relay last described them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Senders {
    /// Its own addresses, lower case.
    pub addresses: Vec<String>,
    /// Domains whose every address is its own (verified custom domains, and
    /// `HANDLE.RELAYDOMAIN` while aliases are on), lower case.
    pub domains: Vec<String>,
}

impl Senders {
    /// Whether the account may send as `address` (any letter case).
    pub fn owns(&self, address: &str) -> bool {
        let lower = address.to_lowercase();
        self.addresses.contains(&lower)
            || lower.rsplit_once('@').is_some_and(|(local, domain)| {
                !local.is_empty() && self.domains.iter().any(|d| d == domain)
            })
    }
}

/// What the driver must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Check the credentials, then call [`Session::login_done`].
    Login { user: String, password: String },
    /// Check, sign and hand the message on, then call [`Session::submitted`].
    Submit(Transaction),
    /// Flush the replies, start TLS, drop any bytes the client sent after the
    /// command (RFC 3207 §4.2), then call [`Session::tls_started`].
    StartTls,
    /// Flush the replies and close the connection.
    Close,
}

/// The driver's verdict on a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginVerdict {
    Ok,
    Failed,
    Throttled,
    TempFail,
}

/// The driver's verdict on a submitted message: the texts start with an
/// enhanced status code (RFC 3463).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitVerdict {
    Queued(String),
    Temporary(String),
    Permanent(String),
}

/// A complete message with its envelope.
#[derive(Debug, PartialEq, Eq)]
pub struct Transaction {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// The message as received, dot-unstuffed.
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Command,
    /// Discarding the rest of a line that was too long.
    SkipLine,
    /// Reading a SASL response line (RFC 4954 §4).
    AuthLine(Sasl),
    WaitLogin,
    Data,
    DataTooBig,
    WaitSubmit,
    WaitTls,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sasl {
    Plain,
    LoginUser,
    LoginPassword,
}

pub struct Session {
    config: SessionConfig,
    state: State,
    receiver: RequestReceiver,
    data_receiver: DataReceiver,
    discard: Option<DummyDataReceiver>,
    out: Vec<u8>,
    line: Vec<u8>,
    helo: bool,
    tls: bool,
    authenticated: bool,
    login_user: String,
    mail_from: Option<String>,
    recipients: Vec<String>,
    data: Vec<u8>,
    errors: usize,
}

impl Session {
    /// A new session; the `220` greeting is already in the output.
    pub fn new(config: SessionConfig, tls: bool) -> Self {
        let mut s = Session {
            state: State::Command,
            receiver: RequestReceiver::default(),
            data_receiver: DataReceiver::new(),
            discard: None,
            out: Vec::new(),
            line: Vec::new(),
            helo: false,
            tls,
            authenticated: false,
            login_user: String::new(),
            mail_from: None,
            recipients: Vec::new(),
            data: Vec::new(),
            errors: 0,
            config,
        };
        let greeting = format!("220 {} ESMTP Own-Mailbox submission", s.config.hostname);
        s.reply(&greeting);
        s
    }

    /// Replies produced so far, to be written to the client.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    pub fn in_data(&self) -> bool {
        matches!(self.state, State::Data | State::DataTooBig)
    }

    fn reply(&mut self, text: &str) {
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    fn reset_transaction(&mut self) {
        self.mail_from = None;
        self.recipients.clear();
        self.data = Vec::new();
        self.discard = None;
    }

    fn auth_allowed(&self) -> bool {
        self.tls || self.config.plaintext_auth
    }

    /// A syntax or sequence error; too many of them end the session.
    fn error(&mut self, text: &str) -> Option<Action> {
        self.reply(text);
        self.errors += 1;
        if self.errors >= self.config.max_errors {
            self.reply("421 4.7.0 Too many errors, closing connection");
            self.state = State::Closed;
            return Some(Action::Close);
        }
        None
    }

    fn too_big(&mut self) {
        self.reset_transaction();
        self.state = State::Command;
        let text = format!(
            "552 5.3.4 Message exceeds the size limit of {} bytes",
            self.config.max_message_size
        );
        self.reply(&text);
    }

    /// Consumes input (advancing it) until an action is needed or the input
    /// is used up (`None`: read more).
    pub fn feed(&mut self, input: &mut &[u8]) -> Option<Action> {
        loop {
            match self.state {
                State::Closed | State::WaitLogin | State::WaitSubmit | State::WaitTls => {
                    return None
                }
                State::SkipLine => {
                    let pos = input.iter().position(|&b| b == b'\n')?;
                    *input = &input[pos + 1..];
                    self.state = State::Command;
                    if let Some(a) = self.error("500 5.5.2 Line too long") {
                        return Some(a);
                    }
                }
                State::AuthLine(step) => {
                    let Some(pos) = input.iter().position(|&b| b == b'\n') else {
                        self.line.extend_from_slice(input);
                        *input = &[];
                        if self.line.len() > MAX_AUTH_LINE {
                            self.line.clear();
                            self.state = State::SkipLine;
                        }
                        return None;
                    };
                    self.line.extend_from_slice(&input[..pos]);
                    *input = &input[pos + 1..];
                    let line = std::mem::take(&mut self.line);
                    if line.len() > MAX_AUTH_LINE {
                        self.state = State::Command;
                        self.reply("500 5.5.6 Authentication exchange line is too long");
                        continue;
                    }
                    let line = String::from_utf8_lossy(&line).trim_end().to_string();
                    if let Some(a) = self.sasl_line(step, &line) {
                        return Some(a);
                    }
                }
                State::Data => {
                    let mut iter = input.iter();
                    let done = self.data_receiver.ingest(&mut iter, &mut self.data);
                    *input = iter.as_slice();
                    if self.data.len() > self.config.max_message_size {
                        if done {
                            self.too_big();
                            continue;
                        }
                        // Read on to the final dot, keeping nothing (RFC 1870 §6.3).
                        self.discard = Some(DummyDataReceiver::new_data(&self.data_receiver));
                        self.data = Vec::new();
                        self.state = State::DataTooBig;
                    } else if done {
                        self.state = State::WaitSubmit;
                        return Some(Action::Submit(Transaction {
                            mail_from: self.mail_from.clone().unwrap_or_default(),
                            rcpt_to: self.recipients.clone(),
                            data: std::mem::take(&mut self.data),
                        }));
                    }
                    if input.is_empty() {
                        return None;
                    }
                }
                State::DataTooBig => {
                    let mut iter = input.iter();
                    let done = self
                        .discard
                        .as_mut()
                        .map(|d| d.ingest(&mut iter))
                        .unwrap_or(true);
                    *input = iter.as_slice();
                    if !done {
                        return None;
                    }
                    self.too_big();
                }
                State::Command => {
                    if input.is_empty() {
                        return None;
                    }
                    let mut iter = input.iter();
                    let parsed = self.receiver.ingest(&mut iter).map(Command::from);
                    *input = iter.as_slice();
                    match parsed {
                        Err(ProtoError::NeedsMoreData { .. }) => {
                            if input.is_empty() {
                                return None;
                            }
                        }
                        Err(ProtoError::ResponseTooLong) => {
                            self.receiver = RequestReceiver::default();
                            self.state = State::SkipLine;
                        }
                        Err(e) => {
                            let text = match e {
                                ProtoError::UnknownCommand => "500 5.5.1 Command unrecognized",
                                ProtoError::InvalidSenderAddress => {
                                    "501 5.1.7 Bad sender address syntax"
                                }
                                ProtoError::InvalidRecipientAddress => {
                                    "501 5.1.3 Bad recipient address syntax"
                                }
                                _ => "501 5.5.4 Syntax error in parameters",
                            };
                            if let Some(a) = self.error(text) {
                                return Some(a);
                            }
                        }
                        Ok(command) => {
                            if let Some(a) = self.command(command) {
                                return Some(a);
                            }
                        }
                    }
                }
            }
        }
    }

    fn command(&mut self, command: Command) -> Option<Action> {
        match command {
            Command::Ehlo => {
                self.reset_transaction();
                self.helo = true;
                let mut lines = vec![
                    self.config.hostname.clone(),
                    "PIPELINING".to_string(),
                    format!("SIZE {}", self.config.max_message_size),
                    "8BITMIME".to_string(),
                    "ENHANCEDSTATUSCODES".to_string(),
                ];
                if self.config.tls_available && !self.tls {
                    lines.push("STARTTLS".to_string());
                }
                if self.auth_allowed() && !self.authenticated {
                    lines.push("AUTH PLAIN LOGIN".to_string());
                }
                let last = lines.len() - 1;
                for (i, line) in lines.iter().enumerate() {
                    let sep = if i == last { ' ' } else { '-' };
                    self.out
                        .extend_from_slice(format!("250{sep}{line}\r\n").as_bytes());
                }
                None
            }
            Command::Helo => {
                self.reset_transaction();
                self.helo = true;
                let text = format!("250 {}", self.config.hostname);
                self.reply(&text);
                None
            }
            Command::StartTls => {
                if self.tls {
                    return self.error("503 5.5.1 TLS already active");
                }
                if !self.config.tls_available {
                    return self.error("502 5.5.1 STARTTLS not available");
                }
                self.reply("220 2.0.0 Ready to start TLS");
                self.state = State::WaitTls;
                Some(Action::StartTls)
            }
            Command::Auth { mechanism, initial } => self.auth(mechanism, initial),
            Command::Mail { address, size } => {
                if !self.helo {
                    return self.error("503 5.5.1 Say EHLO first");
                }
                if !self.authenticated {
                    return self.error("530 5.7.0 Authentication required");
                }
                if self.mail_from.is_some() {
                    return self.error("503 5.5.1 Nested MAIL command");
                }
                if size > self.config.max_message_size {
                    let text = format!(
                        "552 5.3.4 Message size exceeds the limit of {} bytes",
                        self.config.max_message_size
                    );
                    self.reply(&text);
                    return None;
                }
                if !self.config.senders.owns(&address) {
                    // RFC 6409 §6.1: the submission server may refuse a
                    // sender the user is not entitled to.
                    self.reply("553 5.7.1 Sender address is not one of this account's addresses");
                    return None;
                }
                self.mail_from = Some(address);
                self.reply("250 2.1.0 Sender OK");
                None
            }
            Command::Rcpt { address } => {
                if self.mail_from.is_none() {
                    return self.error("503 5.5.1 Need MAIL before RCPT");
                }
                if self.recipients.len() >= self.config.max_recipients {
                    // RFC 5321 §4.5.3.1.10: 452 for too many recipients.
                    self.reply("452 4.5.3 Too many recipients");
                    return None;
                }
                let Some((local, domain)) = address.rsplit_once('@') else {
                    self.reply("501 5.1.3 A recipient needs a domain");
                    return None;
                };
                if local.is_empty() || domain.is_empty() || domain.starts_with('[') {
                    self.reply("501 5.1.3 Bad recipient address");
                    return None;
                }
                self.recipients.push(address);
                self.reply("250 2.1.5 Recipient OK");
                None
            }
            Command::Data => {
                if self.mail_from.is_none() {
                    return self.error("503 5.5.1 Need MAIL command");
                }
                if self.recipients.is_empty() {
                    return self.error("554 5.5.1 No valid recipients");
                }
                // Prime the receiver with the DATA line's CRLF, so a first line
                // starting with a dot is read right (RFC 5321 §4.5.2).
                self.data_receiver = DataReceiver::new();
                let primer: &[u8] = b"\r\n";
                let mut scratch = Vec::new();
                self.data_receiver.ingest(&mut primer.iter(), &mut scratch);
                self.data = Vec::with_capacity(16 * 1024);
                self.state = State::Data;
                self.reply("354 Start mail input; end with <CRLF>.<CRLF>");
                None
            }
            Command::Bdat => {
                // CHUNKING is not offered; chunk bytes would follow.
                self.reply("502 5.5.1 BDAT not supported; closing");
                self.state = State::Closed;
                Some(Action::Close)
            }
            Command::Rset => {
                self.reset_transaction();
                self.reply("250 2.0.0 Reset");
                None
            }
            Command::Noop => {
                self.reply("250 2.0.0 OK");
                None
            }
            Command::Quit => {
                self.reply("221 2.0.0 Bye");
                self.state = State::Closed;
                Some(Action::Close)
            }
            Command::Vrfy => {
                self.reply("252 2.5.0 Cannot VRFY user");
                None
            }
            Command::Other => self.error("502 5.5.1 Command not implemented"),
        }
    }

    /// `AUTH` (RFC 4954 §4), PLAIN (RFC 4616) and LOGIN only.
    fn auth(&mut self, mechanism: u64, initial: String) -> Option<Action> {
        if !self.helo {
            return self.error("503 5.5.1 Say EHLO first");
        }
        if self.authenticated {
            return self.error("503 5.5.1 Already authenticated");
        }
        if self.mail_from.is_some() {
            return self.error("503 5.5.1 AUTH not allowed during a mail transaction");
        }
        if !self.auth_allowed() {
            return self.error("538 5.7.11 Encryption required: use STARTTLS first");
        }
        match mechanism {
            smtp_proto::AUTH_PLAIN if initial.is_empty() => {
                self.reply("334 ");
                self.state = State::AuthLine(Sasl::Plain);
                None
            }
            smtp_proto::AUTH_PLAIN => self.sasl_line(Sasl::Plain, &initial),
            smtp_proto::AUTH_LOGIN if initial.is_empty() => {
                self.reply("334 VXNlcm5hbWU6");
                self.state = State::AuthLine(Sasl::LoginUser);
                None
            }
            smtp_proto::AUTH_LOGIN => self.sasl_line(Sasl::LoginUser, &initial),
            _ => self.error("504 5.5.4 Unrecognized authentication mechanism"),
        }
    }

    fn sasl_line(&mut self, step: Sasl, line: &str) -> Option<Action> {
        self.state = State::Command;
        if line == "*" {
            self.login_user.clear();
            return self.error("501 5.7.0 Authentication cancelled");
        }
        // "=" is an empty initial response (RFC 4954 §4).
        let decoded = if line == "=" {
            Ok(Vec::new())
        } else {
            base64::engine::general_purpose::STANDARD.decode(line.trim())
        };
        let Ok(decoded) = decoded else {
            return self.error("501 5.5.2 Cannot decode the response");
        };
        let text = String::from_utf8_lossy(&decoded).into_owned();
        match step {
            Sasl::Plain => {
                // authzid NUL authcid NUL passwd (RFC 4616 §2).
                let mut parts = text.splitn(3, '\0');
                let (Some(authz), Some(user), Some(password)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return self.error("501 5.5.2 Malformed PLAIN response");
                };
                if !authz.is_empty() && authz != user {
                    self.reply("535 5.7.8 Cannot act for another user");
                    return None;
                }
                self.state = State::WaitLogin;
                Some(Action::Login {
                    user: user.to_string(),
                    password: password.to_string(),
                })
            }
            Sasl::LoginUser => {
                self.login_user = text;
                self.reply("334 UGFzc3dvcmQ6");
                self.state = State::AuthLine(Sasl::LoginPassword);
                None
            }
            Sasl::LoginPassword => {
                self.state = State::WaitLogin;
                Some(Action::Login {
                    user: std::mem::take(&mut self.login_user),
                    password: text,
                })
            }
        }
    }

    /// The driver's answer to [`Action::Login`].
    pub fn login_done(&mut self, verdict: LoginVerdict) {
        if self.state != State::WaitLogin {
            return;
        }
        self.state = State::Command;
        match verdict {
            LoginVerdict::Ok => {
                self.authenticated = true;
                self.reply("235 2.7.0 Authentication successful");
            }
            LoginVerdict::Failed => {
                self.reply("535 5.7.8 Authentication credentials invalid");
                self.errors += 1;
            }
            LoginVerdict::Throttled => {
                self.reply("454 4.7.0 Too many failed logins from your address; try later")
            }
            LoginVerdict::TempFail => self.reply("454 4.7.0 Temporary authentication failure"),
        }
    }

    /// The driver's answer to [`Action::Submit`]; `250` only once the relay
    /// holds the message durably.
    pub fn submitted(&mut self, verdict: SubmitVerdict) {
        if self.state != State::WaitSubmit {
            return;
        }
        self.state = State::Command;
        self.reset_transaction();
        let text = match verdict {
            SubmitVerdict::Queued(id) => format!("250 2.0.0 Ok: queued as {id}"),
            SubmitVerdict::Temporary(text) => format!("451 {}", one_line(&text)),
            SubmitVerdict::Permanent(text) => format!("550 {}", one_line(&text)),
        };
        self.reply(&text);
    }

    /// The driver's answer to [`Action::StartTls`]: the session starts over
    /// (RFC 3207 §4.2), with no greeting.
    pub fn tls_started(&mut self) {
        self.tls = true;
        self.helo = false;
        self.reset_transaction();
        self.receiver = RequestReceiver::default();
        self.state = State::Command;
    }

    /// The client took too long; say so and close.
    pub fn timed_out(&mut self) {
        self.reply("421 4.4.2 Timeout, closing connection");
        self.state = State::Closed;
    }
}

/// Keeps a reply text on one line.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(400)
        .collect()
}

/// The commands this server tells apart, owned.
enum Command {
    Ehlo,
    Helo,
    StartTls,
    Auth { mechanism: u64, initial: String },
    Mail { address: String, size: usize },
    Rcpt { address: String },
    Data,
    Bdat,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Other,
}

impl From<Request<std::borrow::Cow<'_, str>>> for Command {
    fn from(r: Request<std::borrow::Cow<'_, str>>) -> Self {
        match r {
            Request::Ehlo { .. } => Command::Ehlo,
            Request::Helo { .. } => Command::Helo,
            Request::StartTls => Command::StartTls,
            Request::Auth {
                mechanism,
                initial_response,
            } => Command::Auth {
                mechanism,
                initial: initial_response.into_owned(),
            },
            Request::Mail { from } => Command::Mail {
                address: from.address.into_owned(),
                size: from.size,
            },
            Request::Rcpt { to } => Command::Rcpt {
                address: to.address.into_owned(),
            },
            Request::Data => Command::Data,
            Request::Bdat { .. } => Command::Bdat,
            Request::Rset => Command::Rset,
            Request::Noop { .. } => Command::Noop,
            Request::Quit => Command::Quit,
            Request::Vrfy { .. } => Command::Vrfy,
            _ => Command::Other,
        }
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
