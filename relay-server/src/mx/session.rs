//! The MX's SMTP session as a state machine with no I/O (RFC 5321): bytes in,
//! replies and requests out. The tokio driver in `server.rs` reads the socket,
//! answers the requests (recipient look-ups, storing a message, STARTTLS) and
//! writes the replies. Unit tests and the fuzz target drive it byte by byte.

use omb_shared::types::Address;
use smtp_proto::request::receiver::{DataReceiver, DummyDataReceiver, RequestReceiver};
use smtp_proto::{Error as ProtoError, Request};
use std::net::IpAddr;

/// Limits and facts a session needs.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub hostname: String,
    pub max_message_size: usize,
    pub max_recipients: usize,
    /// Whether STARTTLS can be offered on this connection.
    pub tls_available: bool,
    /// Bad commands tolerated before the session is closed.
    pub max_errors: usize,
}

/// What the driver must do next.
#[derive(Debug)]
pub enum Action {
    /// Look the recipient up, then call [`Session::recipient_checked`].
    CheckRecipient(Address),
    /// Store the message, then call [`Session::message_stored`].
    Store(Transaction),
    /// Flush the replies, start TLS on the socket, discard any bytes the client
    /// sent after the command (RFC 3207 section 4.2), then call
    /// [`Session::tls_started`].
    StartTls,
    /// Flush the replies and close the connection.
    Close,
}

/// The verdict on one `RCPT TO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptVerdict {
    /// Hosted and active: the account's handle.
    Accept(String),
    Unknown,
    /// Hosted, but no node is linked yet, so it can't be encrypted to anyone.
    NotActive,
    OverQuota,
    TempFail,
}

/// The verdict on a message after `DATA`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreVerdict {
    /// Durably stored under this id.
    Stored(String),
    OverQuota,
    TempFail,
}

/// One accepted recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedRcpt {
    pub address: Address,
    pub handle: String,
}

/// A complete message with its envelope, ready to store.
#[derive(Debug)]
pub struct Transaction {
    pub helo: String,
    /// `ESMTP`, `ESMTPS`, `UTF8SMTPS`… for the `Received` header (RFC 3848, 6531).
    pub protocol: &'static str,
    /// Empty for the null reverse-path (bounces).
    pub mail_from: String,
    pub recipients: Vec<AcceptedRcpt>,
    /// The message as received, dot-unstuffed, ending in CRLF.
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Command,
    /// Discarding the rest of a line that was too long.
    SkipLine,
    WaitRcpt,
    Data,
    DataTooBig,
    WaitStore,
    WaitTls,
    Closed,
}

pub struct Session {
    config: SessionConfig,
    remote_ip: IpAddr,
    state: State,
    receiver: RequestReceiver,
    data_receiver: DataReceiver,
    discard: Option<DummyDataReceiver>,
    out: Vec<u8>,
    helo: Option<String>,
    esmtp: bool,
    tls: bool,
    mail_from: Option<String>,
    smtputf8: bool,
    recipients: Vec<AcceptedRcpt>,
    data: Vec<u8>,
    errors: usize,
}

impl Session {
    /// A new session; the `220` greeting is already in the output.
    pub fn new(config: SessionConfig, remote_ip: IpAddr, tls: bool) -> Self {
        let mut s = Session {
            remote_ip,
            state: State::Command,
            receiver: RequestReceiver::default(),
            data_receiver: DataReceiver::new(),
            discard: None,
            out: Vec::new(),
            helo: None,
            esmtp: false,
            tls,
            mail_from: None,
            smtputf8: false,
            recipients: Vec::new(),
            data: Vec::new(),
            errors: 0,
            config,
        };
        let greeting = format!("220 {} ESMTP Own-Mailbox relay\r\n", s.config.hostname);
        s.out.extend_from_slice(greeting.as_bytes());
        s
    }

    /// Replies produced so far, to be written to the client.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// True while the client is sending message data (the driver applies the
    /// DATA timeout instead of the command timeout).
    pub fn in_data(&self) -> bool {
        matches!(self.state, State::Data | State::DataTooBig)
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    fn reply(&mut self, text: &str) {
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    fn reset_transaction(&mut self) {
        self.mail_from = None;
        self.smtputf8 = false;
        self.recipients.clear();
        self.data = Vec::new();
        self.discard = None;
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

    /// Consumes input from `input` (advancing it) until an action is needed or
    /// the input is used up (`None`: read more).
    pub fn feed(&mut self, input: &mut &[u8]) -> Option<Action> {
        loop {
            match self.state {
                State::Closed | State::WaitRcpt | State::WaitStore | State::WaitTls => return None,
                State::SkipLine => {
                    let pos = input.iter().position(|&b| b == b'\n')?;
                    *input = &input[pos + 1..];
                    self.state = State::Command;
                    if let Some(a) = self.error("500 5.5.2 Line too long") {
                        return Some(a);
                    }
                }
                State::Data => {
                    let mut iter = input.iter();
                    let done = self.data_receiver.ingest(&mut iter, &mut self.data);
                    *input = iter.as_slice();
                    if self.data.len() > self.config.max_message_size && done {
                        // The limit was crossed in the same read as the final dot.
                        self.reset_transaction();
                        self.state = State::Command;
                        self.reply(&format!(
                            "552 5.3.4 Message exceeds the size limit of {} bytes",
                            self.config.max_message_size
                        ));
                        continue;
                    }
                    if done {
                        return Some(self.finish_data());
                    }
                    if self.data.len() > self.config.max_message_size {
                        // Keep reading to the final dot, but keep nothing (RFC 1870 section 6.3).
                        self.discard = Some(DummyDataReceiver::new_data(&self.data_receiver));
                        self.data = Vec::new();
                        self.state = State::DataTooBig;
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
                    if done {
                        self.reset_transaction();
                        self.state = State::Command;
                        self.reply(&format!(
                            "552 5.3.4 Message exceeds the size limit of {} bytes",
                            self.config.max_message_size
                        ));
                    } else {
                        return None;
                    }
                }
                State::Command => {
                    if input.is_empty() {
                        return None;
                    }
                    let mut iter = input.iter();
                    let parsed = self.receiver.ingest(&mut iter).map(owned);
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
                                ProtoError::UnknownCommand => {
                                    "500 5.5.1 Command unrecognized".to_string()
                                }
                                ProtoError::InvalidSenderAddress => {
                                    "501 5.1.7 Bad sender address syntax".to_string()
                                }
                                ProtoError::InvalidRecipientAddress => {
                                    "501 5.1.3 Bad recipient address syntax".to_string()
                                }
                                ProtoError::SyntaxError { syntax } => {
                                    format!("501 5.5.4 Syntax: {syntax}")
                                }
                                ProtoError::InvalidParameter { param } => {
                                    format!("501 5.5.4 Invalid parameter {param:?}")
                                }
                                ProtoError::UnsupportedParameter { param } => format!(
                                    "555 5.5.4 Unsupported parameter {:?}",
                                    param.chars().take(64).collect::<String>()
                                ),
                                _ => "500 5.5.2 Syntax error".to_string(),
                            };
                            if let Some(a) = self.error(&text) {
                                return Some(a);
                            }
                        }
                        Ok(request) => {
                            if let Some(a) = self.command(request) {
                                return Some(a);
                            }
                        }
                    }
                }
            }
        }
    }

    fn command(&mut self, request: Request<String>) -> Option<Action> {
        match request {
            Request::Ehlo { host } => {
                self.reset_transaction();
                self.helo = Some(host);
                self.esmtp = true;
                let mut lines = vec![
                    format!("{} greets [{}]", self.config.hostname, self.remote_ip),
                    "PIPELINING".to_string(),
                    format!("SIZE {}", self.config.max_message_size),
                    "8BITMIME".to_string(),
                    "SMTPUTF8".to_string(),
                    "ENHANCEDSTATUSCODES".to_string(),
                ];
                if self.config.tls_available && !self.tls {
                    lines.push("STARTTLS".to_string());
                }
                let last = lines.len() - 1;
                for (i, line) in lines.iter().enumerate() {
                    let sep = if i == last { ' ' } else { '-' };
                    self.out
                        .extend_from_slice(format!("250{sep}{line}\r\n").as_bytes());
                }
                None
            }
            Request::Helo { host } => {
                self.reset_transaction();
                self.helo = Some(host);
                self.esmtp = false;
                self.reply(&format!("250 {}", self.config.hostname));
                None
            }
            Request::Lhlo { .. } => self.error("500 5.5.1 This is SMTP, not LMTP"),
            Request::Mail { from } => {
                if self.helo.is_none() {
                    return self.error("503 5.5.1 Say EHLO first");
                }
                if self.mail_from.is_some() {
                    return self.error("503 5.5.1 Nested MAIL command");
                }
                if from.size > self.config.max_message_size {
                    self.reply(&format!(
                        "552 5.3.4 Message size exceeds the limit of {} bytes",
                        self.config.max_message_size
                    ));
                    return None;
                }
                let utf8 = from.flags & smtp_proto::MAIL_SMTPUTF8 != 0;
                if (utf8 || from.flags & smtp_proto::MAIL_BODY_8BITMIME != 0) && !self.esmtp {
                    return self.error("501 5.5.4 Parameters need EHLO");
                }
                if !from.address.is_empty() && Address::parse(&from.address).is_err() {
                    return self.error("501 5.1.7 Bad sender address syntax");
                }
                if !utf8 && !from.address.is_ascii() {
                    return self.error("553 5.6.7 Non-ASCII address without SMTPUTF8");
                }
                self.smtputf8 = utf8;
                self.mail_from = Some(from.address);
                self.reply("250 2.1.0 Sender OK");
                None
            }
            Request::Rcpt { to } => {
                if self.mail_from.is_none() {
                    return self.error("503 5.5.1 Need MAIL before RCPT");
                }
                if self.recipients.len() >= self.config.max_recipients {
                    self.reply("452 4.5.3 Too many recipients");
                    return None;
                }
                if !self.smtputf8 && !to.address.is_ascii() {
                    self.reply("553 5.6.7 Non-ASCII address without SMTPUTF8");
                    return None;
                }
                // Source routes, '%' and '!' hacks and address literals are never
                // relayed: this MX only takes mail for the addresses it hosts.
                match Address::parse(&to.address) {
                    Ok(addr) if !addr.local_part().contains(['%', '!']) => {
                        self.state = State::WaitRcpt;
                        Some(Action::CheckRecipient(addr))
                    }
                    _ => {
                        self.reply("550 5.1.1 No such user here");
                        None
                    }
                }
            }
            Request::Data => {
                if self.mail_from.is_none() {
                    return self.error("503 5.5.1 Need MAIL command");
                }
                if self.recipients.is_empty() {
                    return self.error("554 5.5.1 No valid recipients");
                }
                // The receiver must know the DATA line's CRLF came before the
                // data, so an empty message (".") and a first line starting
                // with a dot are read right (RFC 5321 section 4.5.2).
                self.data_receiver = DataReceiver::new();
                let mut primer: &[u8] = b"\r\n";
                let mut scratch = Vec::new();
                let mut iter = primer.iter();
                self.data_receiver.ingest(&mut iter, &mut scratch);
                primer = iter.as_slice();
                debug_assert!(primer.is_empty());
                self.data = Vec::with_capacity(16 * 1024);
                self.state = State::Data;
                self.reply("354 Start mail input; end with <CRLF>.<CRLF>");
                None
            }
            Request::Bdat { .. } => {
                // CHUNKING is not offered; chunk bytes would follow, so nothing on
                // this connection can be trusted any more (RFC 3030 section 2).
                self.reply("502 5.5.1 BDAT not supported; closing");
                self.state = State::Closed;
                Some(Action::Close)
            }
            Request::Rset => {
                self.reset_transaction();
                self.reply("250 2.0.0 Reset");
                None
            }
            Request::Noop { .. } => {
                self.reply("250 2.0.0 OK");
                None
            }
            Request::Quit => {
                self.reply(&format!(
                    "221 2.0.0 {} closing connection",
                    self.config.hostname
                ));
                self.state = State::Closed;
                Some(Action::Close)
            }
            Request::Vrfy { .. } => {
                // RFC 5321 section 3.5.3: answer without confirming anything.
                self.reply(
                    "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery",
                );
                None
            }
            Request::Expn { .. } => {
                self.reply("502 5.5.1 EXPN not available");
                None
            }
            Request::Help { .. } => {
                self.reply("214 2.0.0 See RFC 5321");
                None
            }
            Request::StartTls => {
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
            Request::Auth { .. } => self.error("503 5.5.1 AUTH is not offered on this MX"),
            Request::Etrn { .. } | Request::Atrn { .. } | Request::Burl { .. } => {
                self.error("502 5.5.1 Command not implemented")
            }
        }
    }

    /// The driver's answer to [`Action::CheckRecipient`].
    pub fn recipient_checked(&mut self, address: Address, verdict: RcptVerdict) {
        if self.state != State::WaitRcpt {
            return;
        }
        self.state = State::Command;
        match verdict {
            RcptVerdict::Accept(handle) => {
                if !self
                    .recipients
                    .iter()
                    .any(|r| r.address.canonical() == address.canonical())
                {
                    self.recipients.push(AcceptedRcpt { address, handle });
                }
                self.reply("250 2.1.5 Recipient OK");
            }
            RcptVerdict::Unknown => self.reply("550 5.1.1 No such user here"),
            RcptVerdict::NotActive => {
                self.reply("450 4.2.1 Mailbox not active yet, try again later")
            }
            RcptVerdict::OverQuota => self.reply("452 4.2.2 Mailbox full, try again later"),
            RcptVerdict::TempFail => self.reply("451 4.3.0 Temporary failure, try again later"),
        }
    }

    fn finish_data(&mut self) -> Action {
        self.state = State::WaitStore;
        let protocol = match (self.smtputf8, self.esmtp, self.tls) {
            (true, _, true) => "UTF8SMTPS",
            (true, _, false) => "UTF8SMTP",
            (false, true, true) => "ESMTPS",
            (false, true, false) => "ESMTP",
            (false, false, true) => "SMTPS",
            (false, false, false) => "SMTP",
        };
        Action::Store(Transaction {
            helo: self.helo.clone().unwrap_or_default(),
            protocol,
            mail_from: self.mail_from.clone().unwrap_or_default(),
            recipients: self.recipients.clone(),
            data: std::mem::take(&mut self.data),
        })
    }

    /// The driver's answer to [`Action::Store`]. `250` is only ever sent here,
    /// after the store said the message is durable.
    pub fn message_stored(&mut self, verdict: StoreVerdict) {
        if self.state != State::WaitStore {
            return;
        }
        self.state = State::Command;
        self.reset_transaction();
        match verdict {
            StoreVerdict::Stored(id) => self.reply(&format!("250 2.0.0 Ok: queued as {id}")),
            StoreVerdict::OverQuota => self.reply("452 4.2.2 Mailbox full, try again later"),
            StoreVerdict::TempFail => {
                self.reply("451 4.3.0 Temporary failure storing the message, try again later")
            }
        }
    }

    /// The driver's answer to [`Action::StartTls`]: the session starts over
    /// (RFC 3207 section 4.2), with no greeting.
    pub fn tls_started(&mut self) {
        self.tls = true;
        self.helo = None;
        self.esmtp = false;
        self.reset_transaction();
        self.receiver = RequestReceiver::default();
        self.state = State::Command;
    }

    /// The client took too long; say so and close (RFC 5321 section 4.5.3.2).
    pub fn timed_out(&mut self) {
        self.reply("421 4.4.2 Timeout, closing connection");
        self.state = State::Closed;
    }
}

fn owned(r: Request<std::borrow::Cow<'_, str>>) -> Request<String> {
    match r {
        Request::Ehlo { host } => Request::Ehlo {
            host: host.into_owned(),
        },
        Request::Lhlo { host } => Request::Lhlo {
            host: host.into_owned(),
        },
        Request::Helo { host } => Request::Helo {
            host: host.into_owned(),
        },
        Request::Mail { from } => Request::Mail {
            from: from.into_owned(),
        },
        Request::Rcpt { to } => Request::Rcpt {
            to: to.into_owned(),
        },
        Request::Bdat {
            chunk_size,
            is_last,
        } => Request::Bdat {
            chunk_size,
            is_last,
        },
        Request::Auth {
            mechanism,
            initial_response,
        } => Request::Auth {
            mechanism,
            initial_response: initial_response.into_owned(),
        },
        Request::Noop { value } => Request::Noop {
            value: value.into_owned(),
        },
        Request::Vrfy { value } => Request::Vrfy {
            value: value.into_owned(),
        },
        Request::Expn { value } => Request::Expn {
            value: value.into_owned(),
        },
        Request::Help { value } => Request::Help {
            value: value.into_owned(),
        },
        Request::Etrn { name } => Request::Etrn {
            name: name.into_owned(),
        },
        Request::Atrn { domains } => Request::Atrn {
            domains: domains.into_iter().map(|d| d.into_owned()).collect(),
        },
        Request::Burl { uri, is_last } => Request::Burl {
            uri: uri.into_owned(),
            is_last,
        },
        Request::StartTls => Request::StartTls,
        Request::Data => Request::Data,
        Request::Rset => Request::Rset,
        Request::Quit => Request::Quit,
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
