//! The command layer: runs parsed commands against the store and queues the
//! responses on the session. Async (the store is); no sockets — the driver
//! (`server.rs`) owns those and flushes the session's output.

mod fetch;
mod mailboxes;
mod search;
mod selected;

use super::session::{status, Event, Session, State};
use crate::access::login::LoginError;
use crate::access::AccessContext;
use crate::store::StoreError;
use imap_codec::imap_types::auth::{AuthMechanism, AuthenticateData};
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::core::{Atom, IString, NString, Tag, Vec1};
use imap_codec::imap_types::extensions::enable::CapabilityEnable;
use imap_codec::imap_types::extensions::utf8::Utf8Kind;
use imap_codec::imap_types::response::{Capability, Code, CodeOther, Data, Response, StatusKind};
use selected::Selected;
use std::net::IpAddr;

pub use StatusKind::{Bad, No, Ok as Done};

/// What the driver must do after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Flush, then start TLS (the tagged OK is queued).
    StartTls,
    /// Flush, then call [`Handler::resume`]: a long FETCH goes on.
    More,
}

pub struct Handler {
    ctx: AccessContext,
    peer: IpAddr,
    tls: bool,
    /// UTF8=ACCEPT enabled (RFC 6855): folder names are UTF-8 on the wire.
    utf8: bool,
    /// CONDSTORE enabled (RFC 7162 3.1): MODSEQ in FETCH responses.
    condstore: bool,
    selected: Option<Selected>,
    /// The tag of an AUTHENTICATE waiting for its data, or of IDLE.
    waiting: Option<Tag<'static>>,
    fetch_job: Option<fetch::FetchJob>,
}

/// A response code of RFC 5530 (or another not in imap-types).
fn code(name: &'static str) -> Option<Code<'static>> {
    Some(Code::Other(CodeOther::unvalidated(name.as_bytes())))
}

/// The reply for a store failure.
fn store_failure(e: &StoreError) -> (StatusKind, Option<Code<'static>>, String) {
    match e {
        StoreError::NoMailbox(_) => (No, code("NONEXISTENT"), e.to_string()),
        StoreError::MailboxExists(_) => (No, code("ALREADYEXISTS"), e.to_string()),
        StoreError::Refused(_) => (No, code("CANNOT"), e.to_string()),
        _ => {
            tracing::warn!(error = %e, "store error");
            (
                No,
                code("SERVERBUG"),
                "the mail store failed; try again".into(),
            )
        }
    }
}

impl Handler {
    pub fn new(ctx: AccessContext, peer: IpAddr, tls: bool) -> Self {
        Handler {
            ctx,
            peer,
            tls,
            utf8: false,
            condstore: false,
            selected: None,
            waiting: None,
            fetch_job: None,
        }
    }

    pub fn set_tls(&mut self) {
        self.tls = true;
    }

    /// Plaintext passwords are taken over TLS, or from this machine.
    fn may_log_in(&self) -> bool {
        self.tls || self.peer.is_loopback()
    }

    pub fn capabilities(&self, state: State) -> Vec1<Capability<'static>> {
        let other = |s: &'static str| Capability::from(Atom::unvalidated(s));
        let mut caps = vec![
            Capability::Imap4Rev1,
            Capability::LiteralPlus,
            Capability::SaslIr,
            Capability::Id,
            Capability::Enable,
            Capability::Idle,
            Capability::Namespace,
            Capability::Unselect,
        ];
        if state == State::NotAuthenticated {
            if !self.tls {
                caps.push(Capability::StartTls);
            }
            if self.may_log_in() {
                caps.push(Capability::Auth(AuthMechanism::Plain));
            } else {
                caps.push(Capability::LoginDisabled);
            }
        } else {
            caps.extend([
                Capability::UidPlus,
                Capability::Move,
                Capability::CondStore,
                Capability::Binary,
                Capability::Utf8(Utf8Kind::Accept),
                other("SPECIAL-USE"),
                other("CHILDREN"),
            ]);
        }
        Vec1::try_from(caps).unwrap_or_else(|_| Vec1::from(Capability::Imap4Rev1))
    }

    /// Handles one event from the session.
    pub async fn event(&mut self, s: &mut Session, event: Event) -> Flow {
        match event {
            Event::Command(cmd) => self.command(s, cmd).await,
            Event::AuthData(data) => {
                let Some(tag) = self.waiting.take() else {
                    return Flow::Continue;
                };
                match data {
                    AuthenticateData::Continue(bytes) => {
                        self.plain(s, &tag, bytes.declassify()).await;
                    }
                    AuthenticateData::Cancel => {
                        s.send(&status(Some(&tag), Bad, None, "authentication cancelled"));
                    }
                }
                Flow::Continue
            }
            Event::IdleDone => {
                if let Some(tag) = self.waiting.take() {
                    self.sync(s, true).await;
                    s.send(&status(Some(&tag), Done, None, "IDLE done"));
                }
                Flow::Continue
            }
        }
    }

    /// New mail or changes by other sessions, while IDLE (RFC 2177).
    pub async fn idle_update(&mut self, s: &mut Session) {
        self.sync(s, true).await;
    }

    /// The folder this session has selected, if any.
    pub fn selected_mailbox(&self) -> Option<i64> {
        self.selected.as_ref().map(|sel| sel.mailbox.id)
    }

    async fn command(&mut self, s: &mut Session, cmd: Command<'static>) -> Flow {
        let tag = cmd.tag.clone();
        if let Err(why) = s.allowed(&cmd.body) {
            s.send(&status(Some(&tag), Bad, None, why));
            return Flow::Continue;
        }
        // RFC 3501 7.4.1: no EXPUNGE while FETCH, STORE, SEARCH (by sequence
        // number) runs, so sequence numbers stay put for the client.
        let expunge_ok = !matches!(
            cmd.body,
            CommandBody::Fetch { uid: false, .. }
                | CommandBody::Store { uid: false, .. }
                | CommandBody::Search { uid: false, .. }
                | CommandBody::Copy { uid: false, .. }
        );
        let result: mailboxes::Reply = match cmd.body {
            CommandBody::Capability => {
                s.send(&Response::Data(Data::Capability(
                    self.capabilities(s.state()),
                )));
                Ok(None)
            }
            CommandBody::Noop | CommandBody::Check => Ok(None),
            CommandBody::Logout => {
                s.send(&Response::Status(
                    imap_codec::imap_types::response::Status::bye(None, "logging out")
                        .unwrap_or_else(|_| unreachable_bye()),
                ));
                s.send(&status(Some(&tag), Done, None, "LOGOUT completed"));
                s.set_state(State::Logout);
                return Flow::Continue;
            }
            CommandBody::StartTLS => {
                if self.tls {
                    Err((Bad, None, "TLS is already on".into()))
                } else {
                    s.send(&status(Some(&tag), Done, None, "begin TLS negotiation now"));
                    return Flow::StartTls;
                }
            }
            CommandBody::Login { username, password } => {
                let user = String::from_utf8_lossy(username.as_ref()).into_owned();
                let pass = String::from_utf8_lossy(password.declassify().as_ref()).into_owned();
                self.log_in(s, &tag, &user, &pass).await;
                return Flow::Continue;
            }
            CommandBody::Authenticate {
                mechanism,
                initial_response,
            } => {
                if mechanism != AuthMechanism::Plain {
                    Err((No, None, "only AUTHENTICATE PLAIN is offered".into()))
                } else if let Some(ir) = initial_response {
                    self.plain(s, &tag, ir.declassify()).await;
                    return Flow::Continue;
                } else {
                    self.waiting = Some(tag);
                    s.request_auth_data("");
                    return Flow::Continue;
                }
            }
            CommandBody::Id { .. } => {
                let params = vec![(
                    IString::try_from("name").unwrap_or_else(|_| {
                        IString::Quoted(imap_codec::imap_types::core::Quoted::unvalidated(""))
                    }),
                    NString::try_from("Own-Mailbox").unwrap_or_default(),
                )];
                s.send(&Response::Data(Data::Id {
                    parameters: Some(params),
                }));
                Ok(None)
            }
            CommandBody::Enable { capabilities } => {
                let mut enabled = Vec::new();
                for c in capabilities.into_inner() {
                    match c {
                        CapabilityEnable::CondStore => {
                            self.condstore = true;
                            enabled.push(CapabilityEnable::CondStore);
                        }
                        CapabilityEnable::Utf8(Utf8Kind::Accept) => {
                            self.utf8 = true;
                            enabled.push(c);
                        }
                        _ => {}
                    }
                }
                s.send(&Response::Data(Data::Enabled {
                    capabilities: enabled,
                }));
                Ok(None)
            }
            CommandBody::Namespace => {
                let personal = imap_codec::imap_types::extensions::namespace::Namespace::new(
                    IString::try_from("").unwrap_or_else(|_| {
                        IString::Quoted(imap_codec::imap_types::core::Quoted::unvalidated(""))
                    }),
                    imap_codec::imap_types::core::QuotedChar::try_from('/').ok(),
                );
                s.send(&Response::Data(Data::Namespace {
                    personal: vec![personal],
                    other: Vec::new(),
                    shared: Vec::new(),
                }));
                Ok(None)
            }
            CommandBody::Idle => {
                self.sync(s, true).await;
                self.waiting = Some(tag);
                s.start_idle();
                return Flow::Continue;
            }
            CommandBody::Fetch {
                sequence_set,
                macro_or_item_names,
                uid,
                modifiers,
            } => {
                match self
                    .fetch(
                        s,
                        &tag,
                        &sequence_set,
                        macro_or_item_names,
                        uid,
                        &modifiers,
                        expunge_ok,
                    )
                    .await
                {
                    Ok(flow) => return flow,
                    Err(e) => Err(e),
                }
            }
            CommandBody::Compress { .. } => Err((No, None, "COMPRESS is not offered".into())),
            body => self.mailbox_command(s, &tag, body, expunge_ok).await,
        };
        if s.state() == State::Selected {
            self.sync(s, expunge_ok).await;
        }
        match result {
            Ok(code) => s.send(&status(Some(&tag), Done, code, "completed")),
            Err((kind, code, text)) => s.send(&status(Some(&tag), kind, code, &text)),
        }
        Flow::Continue
    }

    async fn log_in(&mut self, s: &mut Session, tag: &Tag<'static>, user: &str, pass: &str) {
        if !self.may_log_in() {
            s.send(&status(
                Some(tag),
                No,
                code("PRIVACYREQUIRED"),
                "use STARTTLS (or port 993) before logging in",
            ));
            return;
        }
        match self.ctx.login.check(self.peer, user, pass).await {
            Ok(()) => {
                s.set_state(State::Authenticated);
                tracing::info!("logged in");
                let caps = self.capabilities(State::Authenticated);
                s.send(&status(
                    Some(tag),
                    Done,
                    Some(Code::Capability(caps)),
                    "logged in",
                ));
            }
            Err(LoginError::Throttled) => s.send(&status(
                Some(tag),
                No,
                code("UNAVAILABLE"),
                &LoginError::Throttled.to_string(),
            )),
            Err(LoginError::NoPassword) => s.send(&status(
                Some(tag),
                No,
                code("UNAVAILABLE"),
                &LoginError::NoPassword.to_string(),
            )),
            Err(e) => s.send(&status(
                Some(tag),
                No,
                code("AUTHENTICATIONFAILED"),
                &e.to_string(),
            )),
        }
    }

    /// SASL PLAIN (RFC 4616): authzid NUL authcid NUL password.
    async fn plain(&mut self, s: &mut Session, tag: &Tag<'static>, data: &[u8]) {
        let parts: Vec<&[u8]> = data.split(|&b| b == 0).collect();
        let [authz, user, pass] = parts.as_slice() else {
            s.send(&status(Some(tag), Bad, None, "malformed PLAIN response"));
            return;
        };
        let user = String::from_utf8_lossy(user).into_owned();
        if !authz.is_empty() && *authz != user.as_bytes() {
            s.send(&status(
                Some(tag),
                No,
                code("AUTHORIZATIONFAILED"),
                "cannot act as another user",
            ));
            return;
        }
        let pass = String::from_utf8_lossy(pass).into_owned();
        self.log_in(s, tag, &user, &pass).await;
    }
}

fn unreachable_bye() -> imap_codec::imap_types::response::Status<'static> {
    imap_codec::imap_types::response::Status::Bye(imap_codec::imap_types::response::Bye {
        code: None,
        text: imap_codec::imap_types::core::Text::unvalidated("bye"),
    })
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
