//! The AUTHORIZATION state of the POP3 session (RFC 1939 section 4): STLS
//! (RFC 2595), USER/PASS, SASL PLAIN (RFC 5034, RFC 4616), and the driver's
//! answer to a login.

use super::command::Command;
use super::{Action, LoginVerdict, Session, State};
use base64::Engine;

impl Session {
    /// RFC 1939 section 4, the AUTHORIZATION state.
    pub(super) fn authorization(&mut self, cmd: Command<'_>) -> Option<Action> {
        // PASS must come right after USER (RFC 1939 section 7).
        let user = self.user.take();
        let needs_auth = matches!(
            cmd,
            Command::User(_) | Command::Pass(_) | Command::Auth { .. }
        );
        if needs_auth && !self.auth_allowed() {
            self.error(
                "-ERR [AUTH] plaintext authentication is refused before TLS; use STLS first",
            );
            return None;
        }
        match cmd {
            Command::Capa => self.capa(),
            Command::Quit => {
                self.reply("+OK Own-Mailbox POP3 server signing off");
                self.state = State::Closed;
            }
            Command::Stls => {
                if self.tls {
                    self.error("-ERR already using TLS");
                } else if !self.config.tls_available {
                    self.error("-ERR TLS is not available here");
                } else {
                    self.reply("+OK begin TLS negotiation");
                    self.state = State::WaitTls;
                    return Some(Action::StartTls);
                }
            }
            Command::User(name) => {
                self.user = Some(name.to_string());
                self.reply("+OK send PASS");
            }
            Command::Pass(password) => match user {
                Some(user) => {
                    self.state = State::WaitLogin;
                    return Some(Action::Login {
                        user,
                        password: password.to_string(),
                    });
                }
                None => self.error("-ERR send USER first"),
            },
            Command::Auth {
                mechanism: None, ..
            } => {
                // The mechanism listing of RFC 1734 clients still ask for.
                self.reply("+OK SASL mechanisms follow\r\nPLAIN\r\n.");
            }
            Command::Auth {
                mechanism: Some(mechanism),
                initial,
            } => {
                if !mechanism.eq_ignore_ascii_case("PLAIN") {
                    self.error("-ERR unsupported SASL mechanism; use PLAIN");
                } else if let Some(initial) = initial {
                    return self.plain(initial);
                } else {
                    self.reply("+ ");
                    self.state = State::AuthPlain;
                }
            }
            Command::Apop => self.error("-ERR APOP is not supported; use USER/PASS or AUTH PLAIN"),
            _ => self.error("-ERR log in first"),
        }
        None
    }

    /// A SASL PLAIN response (RFC 4616): `authzid NUL authcid NUL password`, in
    /// base64; `=` is the empty response (RFC 5034 section 4).
    pub(super) fn plain(&mut self, b64: &str) -> Option<Action> {
        let decoded = if b64 == "=" {
            Ok(Vec::new())
        } else {
            base64::engine::general_purpose::STANDARD.decode(b64)
        };
        let Ok(decoded) = decoded else {
            self.error("-ERR the SASL response is not valid base64");
            return None;
        };
        let parts: Vec<&[u8]> = decoded.split(|&b| b == 0).collect();
        let [authzid, authcid, password] = parts.as_slice() else {
            self.error("-ERR [AUTH] a PLAIN response is authzid NUL user NUL password");
            return None;
        };
        let (Ok(authzid), Ok(user), Ok(password)) = (
            std::str::from_utf8(authzid),
            std::str::from_utf8(authcid),
            std::str::from_utf8(password),
        ) else {
            self.error("-ERR [AUTH] user name and password must be UTF-8");
            return None;
        };
        if !authzid.is_empty() && authzid != user {
            self.error("-ERR [AUTH] logging in as another user is not supported");
            return None;
        }
        self.state = State::WaitLogin;
        Some(Action::Login {
            user: user.to_string(),
            password: password.to_string(),
        })
    }

    /// The driver's answer to [`Action::Login`].
    pub fn login_done(&mut self, verdict: LoginVerdict) {
        if self.state != State::WaitLogin {
            return;
        }
        self.state = State::Authorization;
        match verdict {
            LoginVerdict::Ok(entries) => {
                self.deleted = vec![false; entries.len()];
                self.maildrop = entries;
                self.state = State::Transaction;
                let (count, size) = self.totals();
                self.reply(&format!(
                    "+OK maildrop has {count} messages ({size} octets)"
                ));
            }
            LoginVerdict::Failed => self.error("-ERR [AUTH] wrong user name or password"),
            // RFC 2449 section 8.1.1: not allowed to log in again yet.
            LoginVerdict::Throttled => self.error(
                "-ERR [LOGIN-DELAY] too many failed logins from your address; try again later",
            ),
            LoginVerdict::NoPassword => self.error(
                "-ERR [SYS/PERM] no password is set on this node; set one with `omb-node password`",
            ),
            // RFC 2449 section 8.1.2: the maildrop is locked by another session.
            LoginVerdict::InUse => self.error(
                "-ERR [IN-USE] the maildrop is open in another POP3 session; try again later",
            ),
            LoginVerdict::TempFail => {
                self.error("-ERR [SYS/TEMP] cannot open the maildrop; try again later")
            }
        }
    }
}
