//! The IMAP session machine, sans I/O: bytes in, events (parsed commands,
//! AUTHENTICATE data, IDLE's DONE) out, and the bytes to send back. Framing
//! (lines, literals, continuation requests) is imap-codec's Fragmentizer;
//! commands, responses and the greeting are parsed and serialised with
//! imap-codec. The command layer (`commands`) acts on the events and tells the
//! session its new state.

use imap_codec::fragmentizer::{
    DecodeMessageError, FragmentInfo, Fragmentizer, LiteralAnnouncement,
};
use imap_codec::imap_types::auth::AuthenticateData;
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::core::{LiteralMode, Tag, Text};
use imap_codec::imap_types::response::{
    Code, CommandContinuationRequest, Greeting, Response, Status,
};
use imap_codec::imap_types::IntoStatic;

/// The IMAP types the session speaks in (for drivers, tests and fuzzing).
pub use imap_codec::imap_types;
use imap_codec::{
    encode::Encoder, AuthenticateDataCodec, CommandCodec, GreetingCodec, IdleDoneCodec,
    ResponseCodec,
};

/// RFC 3501 section 3 (RFC 9051 section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    NotAuthenticated,
    Authenticated,
    Selected,
    Logout,
}

#[derive(Debug, PartialEq)]
pub enum Event {
    Command(Command<'static>),
    /// A line answering an AUTHENTICATE continuation request.
    AuthData(AuthenticateData<'static>),
    /// DONE, ending IDLE (RFC 2177).
    IdleDone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Command,
    AuthData,
    Idle,
}

/// Limits of one session.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest command line (without literals).
    pub max_line: u32,
    /// Largest literal accepted (APPEND of a big message).
    pub max_literal: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line: 64 * 1024,
            max_literal: 64 * 1024 * 1024,
        }
    }
}

pub struct Session {
    frag: Fragmentizer,
    limits: Limits,
    mode: Mode,
    state: State,
    out: Vec<u8>,
    /// Bytes fed and not yet part of a complete fragment.
    pending: usize,
    /// Literal bytes announced and still expected.
    literal_due: usize,
    closing: bool,
}

/// Serialises one response with imap-codec.
pub fn encode(response: &Response) -> Vec<u8> {
    ResponseCodec::default().encode(response).dump()
}

/// A tagged or untagged status line.
pub fn status(
    tag: Option<&Tag>,
    kind: imap_codec::imap_types::response::StatusKind,
    code: Option<Code<'static>>,
    text: &str,
) -> Response<'static> {
    // Response text is ASCII (RFC 9051 9: TEXT-CHAR); folder names in it are shown with '?'.
    let text: String = text
        .chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect();
    let text = Text::try_from(text).unwrap_or_else(|_| Text::unvalidated("."));
    Response::Status(
        Status::new(tag.map(|t| t.clone().into_static()), kind, code, text).unwrap_or_else(|_| {
            Status::Bye(imap_codec::imap_types::response::Bye {
                code: None,
                text: Text::unvalidated("."),
            })
        }),
    )
}

impl Session {
    pub fn new(limits: Limits) -> Self {
        let max_message = limits
            .max_literal
            .saturating_add(limits.max_line.saturating_mul(4));
        Session {
            frag: Fragmentizer::new(max_message),
            limits,
            mode: Mode::Command,
            state: State::NotAuthenticated,
            out: Vec::new(),
            pending: 0,
            literal_due: 0,
            closing: false,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn set_state(&mut self, state: State) {
        self.state = state;
        if state == State::Logout {
            self.closing = true;
        }
    }

    /// The server greeting (RFC 3501 7.1.1).
    pub fn greet(&mut self, code: Option<Code<'static>>, text: &str) {
        let text = Text::try_from(text.to_string()).unwrap_or_else(|_| Text::unvalidated("ready"));
        let greeting = Greeting {
            kind: imap_codec::imap_types::response::GreetingKind::Ok,
            code,
            text,
        };
        self.out
            .extend(GreetingCodec::default().encode(&greeting).dump());
    }

    /// True once the connection should be closed (after LOGOUT, or after input
    /// the session cannot recover from).
    pub fn closing(&self) -> bool {
        self.closing
    }

    pub fn close(&mut self) {
        self.closing = true;
    }

    /// Queues a response.
    pub fn send(&mut self, response: &Response) {
        self.out.extend(encode(response));
    }

    /// Queues bytes already serialised (by [`encode`]).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// The output queue, for responses serialised in place (`wire`).
    pub fn output(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// What to write to the client now.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    pub fn output_len(&self) -> usize {
        self.out.len()
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Sends `+ text` and treats the next line as AUTHENTICATE data.
    pub fn request_auth_data(&mut self, challenge: &str) {
        self.continuation(challenge);
        self.mode = Mode::AuthData;
    }

    /// Sends `+ idling` and waits for DONE.
    pub fn start_idle(&mut self) {
        self.continuation("idling");
        self.mode = Mode::Idle;
    }

    pub fn idling(&self) -> bool {
        self.mode == Mode::Idle
    }

    fn continuation(&mut self, text: &str) {
        let req = CommandContinuationRequest::basic(None, text.to_string()).unwrap_or(
            CommandContinuationRequest::Base64(std::borrow::Cow::Borrowed(b"")),
        );
        self.send(&Response::CommandContinuationRequest(req));
    }

    /// Takes bytes read from the client.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.closing {
            return;
        }
        self.frag.enqueue_bytes(bytes);
        self.pending += bytes.len();
    }

    /// Forgets input read but not yet handled (STARTTLS: RFC 3501 6.2.1 and
    /// RFC 2595 3.1 — plaintext pipelined after STARTTLS must be discarded).
    pub fn discard_input(&mut self) {
        self.frag = Fragmentizer::new(
            self.limits
                .max_literal
                .saturating_add(self.limits.max_line.saturating_mul(4)),
        );
        self.pending = 0;
        self.literal_due = 0;
    }

    /// The next event from the input, or None when more bytes are needed.
    /// Framing errors are answered here (BAD, BYE).
    pub fn next_event(&mut self) -> Option<Event> {
        use imap_codec::imap_types::response::StatusKind::{Bad, No};
        while !self.closing {
            let Some(fragment) = self.frag.progress() else {
                let allowed = self.literal_due + self.limits.max_line as usize;
                if self.pending > allowed {
                    // A line with no end in sight (RFC 9051 leaves the limit to
                    // the server); the stream can't be resynchronised.
                    self.send(&status(None, Bad, None, "line too long"));
                    self.send(&Response::Status(
                        Status::bye(None, "line too long").unwrap_or_else(|_| {
                            Status::Bye(imap_codec::imap_types::response::Bye {
                                code: None,
                                text: Text::unvalidated("bye"),
                            })
                        }),
                    ));
                    self.closing = true;
                }
                return None;
            };
            let len = fragment.range().len();
            self.pending = self.pending.saturating_sub(len);
            match fragment {
                FragmentInfo::Literal { .. } => {
                    self.literal_due = self.literal_due.saturating_sub(len);
                }
                FragmentInfo::Line {
                    announcement: Some(LiteralAnnouncement { mode, length }),
                    ..
                } => {
                    let tag = self.frag.decode_tag().map(|t| t.into_static());
                    if length > self.limits.max_literal {
                        match mode {
                            LiteralMode::Sync => {
                                // Refused before the client sends it.
                                self.send(&status(
                                    tag.as_ref(),
                                    No,
                                    Some(Code::TooBig),
                                    "literal too big",
                                ));
                                self.frag.skip_message();
                            }
                            LiteralMode::NonSync => {
                                // RFC 7888 section 4: BAD, then close.
                                self.send(&status(
                                    tag.as_ref(),
                                    Bad,
                                    Some(Code::TooBig),
                                    "non-synchronising literal too big",
                                ));
                                self.send(&Response::Status(
                                    Status::bye(None, "literal too big").unwrap_or_else(|_| {
                                        Status::Bye(imap_codec::imap_types::response::Bye {
                                            code: None,
                                            text: Text::unvalidated("bye"),
                                        })
                                    }),
                                ));
                                self.closing = true;
                            }
                        }
                        continue;
                    }
                    if tag.is_none() && self.mode == Mode::Command {
                        self.frag.poison_message();
                    }
                    self.literal_due = length as usize;
                    if mode == LiteralMode::Sync && self.mode == Mode::Command {
                        self.continuation("ready for literal");
                    }
                }
                FragmentInfo::Line { .. } => {}
            }
            if !self.frag.is_message_complete() {
                continue;
            }
            self.literal_due = 0;
            if let Some(event) = self.decode() {
                return Some(event);
            }
        }
        None
    }

    fn decode(&mut self) -> Option<Event> {
        use imap_codec::imap_types::response::StatusKind::Bad;
        match self.mode {
            Mode::Command => match self.frag.decode_message(&CommandCodec::default()) {
                Ok(cmd) => Some(Event::Command(cmd.into_static())),
                Err(e) => {
                    let text = match e {
                        DecodeMessageError::MessageTooLong { .. } => "command too long",
                        _ => "unknown command or bad arguments",
                    };
                    let tag = self.frag.decode_tag().map(|t| t.into_static());
                    self.send(&status(tag.as_ref(), Bad, None, text));
                    None
                }
            },
            Mode::AuthData => {
                self.mode = Mode::Command;
                match self.frag.decode_message(&AuthenticateDataCodec::default()) {
                    Ok(data) => Some(Event::AuthData(data.into_static())),
                    // Not base64: the command layer answers BAD for it.
                    Err(_) => Some(Event::AuthData(AuthenticateData::Cancel)),
                }
            }
            Mode::Idle => {
                self.mode = Mode::Command;
                match self.frag.decode_message(&IdleDoneCodec::default()) {
                    Ok(_) => Some(Event::IdleDone),
                    Err(_) => {
                        // Anything but DONE ends IDLE too; the command layer
                        // answers the IDLE command with BAD.
                        Some(Event::IdleDone)
                    }
                }
            }
        }
    }

    /// Whether a command may run in the current state (RFC 3501 section 6);
    /// the error text otherwise.
    pub fn allowed(&self, body: &CommandBody) -> Result<(), &'static str> {
        use CommandBody as C;
        let any = matches!(body, C::Capability | C::Noop | C::Logout);
        let any = any || matches!(body, C::Id { .. });
        let not_auth = matches!(body, C::StartTLS | C::Authenticate { .. } | C::Login { .. });
        let selected_only = matches!(
            body,
            C::Check
                | C::Close
                | C::Unselect
                | C::Expunge
                | C::ExpungeUid { .. }
                | C::Search { .. }
                | C::Fetch { .. }
                | C::Store { .. }
                | C::Copy { .. }
                | C::Move { .. }
        );
        let unsupported = matches!(
            body,
            C::Sort { .. }
                | C::Thread { .. }
                | C::GetQuota { .. }
                | C::GetQuotaRoot { .. }
                | C::SetQuota { .. }
        );
        if unsupported {
            return Err("command not supported");
        }
        match self.state {
            _ if any => Ok(()),
            State::NotAuthenticated if not_auth => Ok(()),
            State::NotAuthenticated => Err("log in first"),
            State::Authenticated | State::Selected if not_auth => Err("already logged in"),
            State::Authenticated if selected_only => Err("select a folder first"),
            State::Authenticated | State::Selected => Ok(()),
            State::Logout => Err("logging out"),
        }
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
