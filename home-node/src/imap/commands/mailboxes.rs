//! Commands of the authenticated state (RFC 3501 6.3): folders, LIST/LSUB,
//! STATUS, APPEND; and the dispatch of the selected-state commands.

use super::{code, store_failure, Bad, Handler, No};
use crate::imap::convert::{name_from_wire, name_to_wire};
use crate::imap::mime::Meta;
use crate::imap::session::Session;
use crate::store::mailbox::DELIMITER;
use crate::store::MailboxInfo;
use imap_codec::imap_types::command::CommandBody;
use imap_codec::imap_types::core::{Atom, QuotedChar, Tag};
use imap_codec::imap_types::extensions::binary::LiteralOrLiteral8;
use imap_codec::imap_types::flag::FlagNameAttribute;
use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox};
use imap_codec::imap_types::response::{Code, Data, Response, StatusKind};
use imap_codec::imap_types::status::{StatusDataItem, StatusDataItemName};
use std::num::NonZeroU32;

pub(super) type Fail = (StatusKind, Option<Code<'static>>, String);
/// Ok: the code for the tagged OK, if any.
pub(super) type Reply = Result<Option<Code<'static>>, Fail>;

fn bad(text: &str) -> (StatusKind, Option<Code<'static>>, String) {
    (Bad, None, text.to_string())
}

/// LIST wildcards (RFC 3501 6.3.8): `*` matches anything, `%` anything but
/// the hierarchy delimiter.
pub fn matches(pattern: &[char], name: &[char]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some(('*', rest)) => (0..=name.len()).any(|i| matches(rest, &name[i..])),
        Some(('%', rest)) => (0..=name.len())
            .take_while(|&i| i == 0 || name[i - 1] != DELIMITER)
            .any(|i| matches(rest, &name[i..])),
        Some((c, rest)) => name.first() == Some(c) && matches(rest, &name[1..]),
    }
}

impl Handler {
    /// A folder name from a command, in the store's UTF-8.
    pub(super) fn name(&self, mailbox: &Mailbox) -> Result<String, Fail> {
        match mailbox {
            Mailbox::Inbox => Ok("INBOX".into()),
            Mailbox::Other(other) => name_from_wire(other.as_ref(), self.utf8)
                .ok_or_else(|| bad("folder name is not valid modified UTF-7")),
        }
    }

    /// A store name for a response.
    pub(super) fn wire(&self, name: &str) -> Mailbox<'static> {
        if name == "INBOX" {
            return Mailbox::Inbox;
        }
        Mailbox::try_from(name_to_wire(name, self.utf8)).unwrap_or(Mailbox::Inbox)
    }

    pub(super) async fn existing(&self, name: &str) -> Result<MailboxInfo, Fail> {
        match self.ctx.store.mailbox(name).await {
            Ok(Some(mb)) if !mb.noselect => Ok(mb),
            Ok(_) => Err((
                No,
                code("NONEXISTENT"),
                format!("no folder called {name:?}"),
            )),
            Err(e) => Err(store_failure(&e)),
        }
    }

    pub(super) async fn mailbox_command(
        &mut self,
        s: &mut Session,
        tag: &Tag<'static>,
        body: CommandBody<'static>,
        expunge_ok: bool,
    ) -> Reply {
        let store = self.ctx.store.clone();
        match body {
            CommandBody::Select {
                mailbox,
                parameters,
            } => self.select(s, tag, &mailbox, parameters, false).await,
            CommandBody::Examine {
                mailbox,
                parameters,
            } => self.select(s, tag, &mailbox, parameters, true).await,
            CommandBody::Create { mailbox } => {
                let name = self.name(&mailbox)?;
                store
                    .create_mailbox(&name)
                    .await
                    .map(|_| None)
                    .map_err(|e| store_failure(&e))
            }
            CommandBody::Delete { mailbox } => {
                let name = self.name(&mailbox)?;
                store
                    .delete_mailbox(&name)
                    .await
                    .map(|_| None)
                    .map_err(|e| store_failure(&e))
            }
            CommandBody::Rename { from, to } => {
                let (from, to) = (self.name(&from)?, self.name(&to)?);
                store
                    .rename_mailbox(&from, &to)
                    .await
                    .map(|_| None)
                    .map_err(|e| store_failure(&e))
            }
            CommandBody::Subscribe { mailbox } => {
                let name = self.name(&mailbox)?;
                store
                    .set_subscribed(&name, true)
                    .await
                    .map(|_| None)
                    .map_err(|e| store_failure(&e))
            }
            CommandBody::Unsubscribe { mailbox } => {
                let name = self.name(&mailbox)?;
                store
                    .set_subscribed(&name, false)
                    .await
                    .map(|_| None)
                    .map_err(|e| store_failure(&e))
            }
            CommandBody::List {
                reference,
                mailbox_wildcard,
            } => self.list(s, &reference, &mailbox_wildcard, false).await,
            CommandBody::Lsub {
                reference,
                mailbox_wildcard,
            } => self.list(s, &reference, &mailbox_wildcard, true).await,
            CommandBody::Status {
                mailbox,
                item_names,
            } => self.status(s, &mailbox, &item_names).await,
            CommandBody::Append {
                mailbox,
                flags,
                date,
                message,
            } => {
                let data = match message {
                    LiteralOrLiteral8::Literal(l) => l.into_inner().into_owned(),
                    LiteralOrLiteral8::Literal8(l) => l.data.into_owned(),
                };
                let flags: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
                let date = date.map(|d| d.as_ref().timestamp());
                self.append(&mailbox, flags, date, data).await
            }
            other => self.selected_command(s, tag, other, expunge_ok).await,
        }
    }

    async fn list(
        &self,
        s: &mut Session,
        reference: &Mailbox<'_>,
        pattern: &ListMailbox<'_>,
        lsub: bool,
    ) -> Reply {
        let reference = match reference {
            Mailbox::Inbox => "INBOX".to_string(),
            Mailbox::Other(o) => {
                name_from_wire(o.as_ref(), self.utf8).ok_or_else(|| bad("bad reference"))?
            }
        };
        let raw: &[u8] = match pattern {
            ListMailbox::Token(t) => t.as_ref(),
            ListMailbox::String(st) => st.as_ref(),
        };
        let pattern = name_from_wire(raw, self.utf8).ok_or_else(|| bad("bad pattern"))?;
        let delimiter = QuotedChar::try_from(DELIMITER).ok();
        if pattern.is_empty() && !lsub {
            // RFC 3501 6.3.8: the delimiter and root of the reference.
            s.send(&Response::Data(Data::List {
                items: vec![FlagNameAttribute::Noselect],
                delimiter,
                mailbox: Mailbox::try_from("").unwrap_or(Mailbox::Inbox),
            }));
            return Ok(None);
        }
        let full: Vec<char> = format!("{reference}{pattern}").chars().collect();
        let all = self
            .ctx
            .store
            .all_mailboxes()
            .await
            .map_err(|e| store_failure(&e))?;
        let names: Vec<(String, Option<&MailboxInfo>)> = if lsub {
            let subs = self
                .ctx
                .store
                .subscriptions()
                .await
                .map_err(|e| store_failure(&e))?;
            subs.into_iter()
                .map(|n| {
                    let mb = all.iter().find(|m| m.name == n);
                    (n, mb)
                })
                .collect()
        } else {
            all.iter().map(|m| (m.name.clone(), Some(m))).collect()
        };
        for (name, mb) in names {
            let chars: Vec<char> = name.chars().collect();
            let hit = matches(&full, &chars)
                || (name == "INBOX" && matches(&full, &['I', 'N', 'B', 'O', 'X']));
            let hit = hit
                || (name == "INBOX"
                    && full
                        .iter()
                        .collect::<String>()
                        .eq_ignore_ascii_case("inbox"));
            if !hit {
                continue;
            }
            let mut items = Vec::new();
            match mb {
                None => items.push(FlagNameAttribute::Noselect),
                Some(mb) => {
                    if mb.noselect {
                        items.push(FlagNameAttribute::Noselect);
                    }
                    let prefix = format!("{}{DELIMITER}", mb.name);
                    let children = all.iter().any(|m| m.name.starts_with(&prefix));
                    let child = if children {
                        "HasChildren"
                    } else {
                        "HasNoChildren"
                    };
                    items.push(FlagNameAttribute::from(Atom::unvalidated(child)));
                    if let Some(su) = &mb.special_use {
                        if let Ok(atom) = Atom::try_from(su.trim_start_matches('\\').to_string()) {
                            items.push(FlagNameAttribute::from(atom));
                        }
                    }
                }
            }
            let mailbox = self.wire(&name);
            s.send(&Response::Data(if lsub {
                Data::Lsub {
                    items,
                    delimiter,
                    mailbox,
                }
            } else {
                Data::List {
                    items,
                    delimiter,
                    mailbox,
                }
            }));
        }
        Ok(None)
    }

    async fn status(
        &self,
        s: &mut Session,
        mailbox: &Mailbox<'_>,
        names: &[StatusDataItemName],
    ) -> Reply {
        let name = self.name(mailbox)?;
        let mb = self.existing(&name).await?;
        let counts = self
            .ctx
            .store
            .counts(mb.id)
            .await
            .map_err(|e| store_failure(&e))?;
        let one = NonZeroU32::MIN;
        let items: Vec<StatusDataItem> = names
            .iter()
            .map(|n| match n {
                StatusDataItemName::Messages => StatusDataItem::Messages(counts.messages),
                StatusDataItemName::Recent => StatusDataItem::Recent(0),
                StatusDataItemName::UidNext => {
                    StatusDataItem::UidNext(NonZeroU32::new(mb.uidnext).unwrap_or(one))
                }
                StatusDataItemName::UidValidity => {
                    StatusDataItem::UidValidity(NonZeroU32::new(mb.uidvalidity).unwrap_or(one))
                }
                StatusDataItemName::Unseen => StatusDataItem::Unseen(counts.unseen),
                StatusDataItemName::Deleted => StatusDataItem::Deleted(counts.deleted),
                StatusDataItemName::DeletedStorage => StatusDataItem::DeletedStorage(0),
                StatusDataItemName::HighestModSeq => {
                    StatusDataItem::HighestModSeq(mb.highestmodseq)
                }
            })
            .collect();
        s.send(&Response::Data(Data::Status {
            mailbox: self.wire(&mb.name),
            items: items.into(),
        }));
        Ok(None)
    }

    async fn append(
        &mut self,
        mailbox: &Mailbox<'_>,
        flags: Vec<String>,
        date: Option<i64>,
        data: Vec<u8>,
    ) -> Reply {
        let name = self.name(mailbox)?;
        let mb = match self.ctx.store.mailbox(&name).await {
            Ok(Some(mb)) if !mb.noselect => mb,
            Ok(_) => {
                return Err((
                    No,
                    Some(Code::TryCreate),
                    format!("no folder called {name:?}"),
                ))
            }
            Err(e) => return Err(store_failure(&e)),
        };
        if data.is_empty() {
            return Err((No, None, "an empty message cannot be stored".into()));
        }
        let view = self.ctx.view.clone();
        let size = data.len() as i64;
        let sealed = self
            .ctx
            .view
            .blocking(move || {
                let (sealed, key) = view.seal_keyed(&data).ok()?;
                let ciphertext = view.ciphertext_to_apps();
                let meta = if ciphertext {
                    Meta::build(&sealed, true, None)
                } else {
                    Meta::build(&data, false, Some(&key))
                };
                Some((sealed, meta.to_bytes(), meta.envelope_bytes()))
            })
            .await
            .flatten();
        let Some((sealed, meta, envelope)) = sealed else {
            return Err((
                No,
                code("SERVERBUG"),
                "cannot encrypt the message for the store".into(),
            ));
        };
        let internaldate = date.unwrap_or_else(|| chrono::Utc::now().timestamp());
        let flags = flags.join(" ");
        let (uid, uidvalidity) = self
            .ctx
            .store
            .append(
                mb.id,
                internaldate,
                size,
                &sealed,
                &flags,
                Some(&crate::store::MetaBytes {
                    meta: &meta,
                    envelope: &envelope,
                }),
            )
            .await
            .map_err(|e| store_failure(&e))?;
        Ok(match (NonZeroU32::new(uidvalidity), NonZeroU32::new(uid)) {
            (Some(uid_validity), Some(uid)) => Some(Code::AppendUid { uid_validity, uid }),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    fn m(p: &str, n: &str) -> bool {
        matches(
            &p.chars().collect::<Vec<_>>(),
            &n.chars().collect::<Vec<_>>(),
        )
    }

    #[test]
    fn wildcards() {
        assert!(m("*", "a/b/c"));
        assert!(m("%", "Sent"));
        assert!(!m("%", "a/b"));
        assert!(m("a/%", "a/b"));
        assert!(!m("a/%", "a/b/c"));
        assert!(m("a*c", "a/b/c"));
        assert!(m("Entw%", "Entwürfe"));
    }
}
