//! The selected state (RFC 3501 6.4): SELECT/EXAMINE, the session's view of
//! the folder (sequence numbers), untagged updates for changes made elsewhere,
//! CLOSE/UNSELECT, EXPUNGE, STORE, COPY and MOVE.

use super::mailboxes::{Fail, Reply};
use super::{code, store_failure, Bad, Handler, No};
use crate::imap::convert::{flags as fetch_flags, has_flag};
use crate::imap::session::{Session, State};
use crate::store::{changes_between, MailboxInfo, MsgRow};
use imap_codec::imap_types::command::{CommandBody, SelectParameter, StoreModifier};
use imap_codec::imap_types::core::{Tag, Vec1};
use imap_codec::imap_types::extensions::uidplus::{UidElement, UidSet};
use imap_codec::imap_types::fetch::MessageDataItem;
use imap_codec::imap_types::flag::{Flag, FlagPerm};
use imap_codec::imap_types::mailbox::Mailbox;
use imap_codec::imap_types::response::{Code, Data, Response};
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use std::num::{NonZeroU32, NonZeroU64};
use std::sync::Arc;

pub struct Selected {
    pub mailbox: MailboxInfo,
    pub read_only: bool,
    /// The client's view: message `n` is `msgs[n - 1]`. Shared with the
    /// store's listing until this session's view changes.
    pub msgs: Arc<Vec<MsgRow>>,
    /// The folder's HIGHESTMODSEQ as this session last saw it.
    pub modseq: u64,
    /// The store's change generation before this session last looked: while
    /// it stays the same, there is nothing to tell the client.
    pub generation: u64,
}

impl Selected {
    /// Indexes into `msgs` named by a sequence set (of UIDs with `uid`).
    pub fn resolve(&self, set: &SequenceSet, uid: bool) -> Vec<usize> {
        let n = self.msgs.len();
        let mut out = Vec::new();
        if n == 0 {
            return out;
        }
        let largest = if uid { self.msgs[n - 1].uid } else { n as u32 };
        let value = |v: &SeqOrUid| match v {
            SeqOrUid::Value(v) => v.get(),
            SeqOrUid::Asterisk => largest,
        };
        for seq in set.0.as_ref() {
            let (a, b) = match seq {
                Sequence::Single(v) => (value(v), value(v)),
                Sequence::Range(a, b) => (value(a).min(value(b)), value(a).max(value(b))),
            };
            if uid {
                let start = self.msgs.partition_point(|m| m.uid < a);
                let end = self.msgs.partition_point(|m| m.uid <= b);
                out.extend(start..end);
            } else {
                let (a, b) = (a.max(1) as usize, (b as usize).min(n));
                if a <= b {
                    out.extend(a - 1..b);
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    pub(super) fn index_of(&self, uid: u32) -> Option<usize> {
        self.msgs.binary_search_by_key(&uid, |m| m.uid).ok()
    }
}

/// Compact UID set for COPYUID (RFC 4315), in the order given.
pub fn uid_set(uids: impl IntoIterator<Item = u32>) -> Option<UidSet> {
    let mut out: Vec<UidElement> = Vec::new();
    for u in uids {
        let u = NonZeroU32::new(u)?;
        match out.last_mut() {
            Some(UidElement::Single(a)) if a.get().checked_add(1) == Some(u.get()) => {
                *out.last_mut()? = UidElement::Range(*a, u);
            }
            Some(UidElement::Range(a, b)) if b.get().checked_add(1) == Some(u.get()) => {
                *out.last_mut()? = UidElement::Range(*a, u);
            }
            _ => out.push(UidElement::Single(u)),
        }
    }
    Vec1::try_from(out).ok().map(UidSet)
}

/// A sequence set of these numbers (ascending runs joined).
pub fn sequence_set(nums: impl IntoIterator<Item = u32>) -> Option<SequenceSet> {
    let seqs: Vec<Sequence> = uid_set(nums)?
        .0
        .into_iter()
        .map(|e| match e {
            UidElement::Single(a) => Sequence::Single(SeqOrUid::Value(a)),
            UidElement::Range(a, b) => Sequence::Range(SeqOrUid::Value(a), SeqOrUid::Value(b)),
        })
        .collect();
    Vec1::try_from(seqs).ok().map(SequenceSet)
}

/// Whether `n` is in a sequence set whose `*` is `largest`.
pub fn contains(set: &SequenceSet, n: u32, largest: u32) -> bool {
    let v = |x: &SeqOrUid| match x {
        SeqOrUid::Value(v) => v.get(),
        SeqOrUid::Asterisk => largest,
    };
    set.0.as_ref().iter().any(|s| match s {
        Sequence::Single(a) => v(a) == n,
        Sequence::Range(a, b) => (v(a).min(v(b))..=v(a).max(v(b))).contains(&n),
    })
}

const SYSTEM_FLAGS: [Flag<'static>; 5] = [
    Flag::Answered,
    Flag::Flagged,
    Flag::Deleted,
    Flag::Seen,
    Flag::Draft,
];

impl Handler {
    pub(super) async fn select(
        &mut self,
        s: &mut Session,
        _tag: &Tag<'static>,
        mailbox: &Mailbox<'_>,
        params: Vec<SelectParameter>,
        read_only: bool,
    ) -> Reply {
        // RFC 7162 3.2.11: with QRESYNC, say where the old folder's updates end.
        if self.selected.is_some() && self.qresync {
            s.send(&crate::imap::session::status(
                None,
                super::Done,
                Some(Code::Closed),
                "previous folder closed",
            ));
        }
        // RFC 3501 6.3.1: a failed SELECT leaves no folder selected.
        self.selected = None;
        s.set_state(State::Authenticated);
        let name = self.name(mailbox)?;
        if params
            .iter()
            .any(|p| matches!(p, SelectParameter::CondStore))
        {
            self.condstore = true;
        }
        let qresync = params.iter().find_map(|p| match p {
            SelectParameter::QResync {
                uid_validity,
                mod_sequence_value,
                known_uids,
                ..
            } => Some((
                uid_validity.get(),
                mod_sequence_value.get(),
                known_uids.clone(),
            )),
            _ => None,
        });
        if qresync.is_some() && !self.qresync {
            // RFC 7162 3.2.5: only after ENABLE QRESYNC.
            return Err((Bad, None, "ENABLE QRESYNC first".into()));
        }
        let generation = self.ctx.store.generation();
        let mb = self.existing(&name).await?;
        let msgs = self
            .ctx
            .store
            .listing(&mb, generation)
            .await
            .map_err(|e| store_failure(&e))?;
        // HIGHESTMODSEQ was read before the snapshot: changes in between come
        // again as updates, which are idempotent.
        let modseq = mb.highestmodseq;
        s.send(&Response::Data(Data::Flags(SYSTEM_FLAGS.to_vec())));
        s.send(&Response::Data(Data::Exists(msgs.len() as u32)));
        s.send(&Response::Data(Data::Recent(0)));
        let ok = |s: &mut Session, code: Code<'static>, text: &str| {
            s.send(&crate::imap::session::status(
                None,
                super::Done,
                Some(code),
                text,
            ));
        };
        if let Some(first) = msgs.iter().position(|m| !has_flag(&m.flags, "\\Seen")) {
            if let Some(n) = NonZeroU32::new(first as u32 + 1) {
                ok(s, Code::Unseen(n), "first unseen");
            }
        }
        let mut perm: Vec<FlagPerm> = SYSTEM_FLAGS.iter().cloned().map(FlagPerm::Flag).collect();
        perm.push(FlagPerm::Asterisk);
        ok(
            s,
            Code::PermanentFlags(if read_only { Vec::new() } else { perm }),
            "flags permitted",
        );
        if let Some(v) = NonZeroU32::new(mb.uidvalidity) {
            ok(s, Code::UidValidity(v), "UIDs valid");
        }
        if let Some(v) = NonZeroU32::new(mb.uidnext) {
            ok(s, Code::UidNext(v), "predicted next UID");
        }
        match NonZeroU64::new(mb.highestmodseq) {
            Some(v) => ok(s, Code::HighestModSeq(v), "highest"),
            None => ok(s, Code::NoModSeq, "no mod-sequences"),
        }
        let mailbox_id = mb.id;
        let uidvalidity = mb.uidvalidity;
        self.selected = Some(Selected {
            mailbox: mb,
            read_only,
            msgs,
            modseq,
            generation,
        });
        s.set_state(State::Selected);
        if let Some((validity, since, known)) = qresync {
            if validity == uidvalidity {
                self.resync(s, mailbox_id, since, known.as_ref()).await?;
            }
        }
        Ok(Some(if read_only {
            Code::ReadOnly
        } else {
            Code::ReadWrite
        }))
    }

    /// Tells the client what changed in the selected folder since it last
    /// looked: EXPUNGE (when `expunge_ok`), FETCH FLAGS, EXISTS.
    pub(super) async fn sync(&mut self, s: &mut Session, expunge_ok: bool) {
        let Some(sel) = self.selected.as_mut() else {
            return;
        };
        let generation = self.ctx.store.generation();
        if generation == sel.generation {
            return;
        }
        // The folder's shared listing, when it is known to be current (flag
        // changes made here keep it so), tells what changed without the
        // three queries below: with ten apps opening messages (each BODY[]
        // sets \Seen), every command of every session had to make them.
        let (highest, changed, gone) =
            match self.ctx.store.current_listing(sel.mailbox.id, generation) {
                Some((rows, highest)) => {
                    if highest <= sel.modseq {
                        sel.generation = generation;
                        return;
                    }
                    let (changed, gone) = changes_between(&sel.msgs, &rows, sel.modseq);
                    (highest, changed, gone)
                }
                None => {
                    let Ok(Some(mb)) = self.ctx.store.mailbox_by_id(sel.mailbox.id).await else {
                        return;
                    };
                    if mb.highestmodseq <= sel.modseq {
                        sel.generation = generation;
                        return;
                    }
                    let Ok((changed, gone)) = self
                        .ctx
                        .store
                        .changes_since(sel.mailbox.id, sel.modseq)
                        .await
                    else {
                        return;
                    };
                    (mb.highestmodseq, changed, gone)
                }
            };
        let gone: Vec<u32> = gone
            .into_iter()
            .filter(|u| sel.index_of(*u).is_some())
            .collect();
        let held_back = !gone.is_empty() && !expunge_ok;
        if !held_back && !gone.is_empty() {
            self.announce_expunged(s, &gone);
        }
        let condstore = self.condstore;
        let Some(sel) = self.selected.as_mut() else {
            return;
        };
        let before = sel.msgs.len();
        let last_uid = sel.msgs.last().map_or(0, |m| m.uid);
        for row in changed {
            match sel.index_of(row.uid) {
                Some(i) if sel.msgs[i] == row => {}
                Some(i) => {
                    let old = &mut Arc::make_mut(&mut sel.msgs)[i];
                    let flags_differ = old.flags != row.flags;
                    *old = row.clone();
                    if flags_differ {
                        let mut items = vec![MessageDataItem::Flags(fetch_flags(&row.flags))];
                        if condstore {
                            if let Some(m) = NonZeroU64::new(row.modseq) {
                                items.push(MessageDataItem::ModSeq(m));
                            }
                        }
                        if let (Some(n), Ok(items)) =
                            (NonZeroU32::new(i as u32 + 1), Vec1::try_from(items))
                        {
                            s.send(&Response::Data(Data::Fetch { seq: n, items }));
                        }
                    }
                }
                None if row.uid > last_uid => Arc::make_mut(&mut sel.msgs).push(row),
                None => {}
            }
        }
        if sel.msgs.len() != before {
            s.send(&Response::Data(Data::Exists(sel.msgs.len() as u32)));
        }
        if !held_back {
            sel.modseq = highest;
            sel.generation = generation;
        }
    }

    /// RFC 7162 3.2.5.2: what vanished and what changed since `since`.
    async fn resync(
        &mut self,
        s: &mut Session,
        mailbox_id: i64,
        since: u64,
        known: Option<&SequenceSet>,
    ) -> Result<(), Fail> {
        let (changed, gone) = self
            .ctx
            .store
            .changes_since(mailbox_id, since)
            .await
            .map_err(|e| store_failure(&e))?;
        let gone: Vec<u32> = gone
            .into_iter()
            .filter(|u| known.is_none_or(|k| contains(k, *u, u32::MAX)))
            .collect();
        if let Some(known_uids) = sequence_set(gone) {
            s.send(&Response::Data(Data::Vanished {
                earlier: true,
                known_uids,
            }));
        }
        let Some(sel) = self.selected.as_ref() else {
            return Ok(());
        };
        for row in changed {
            let Some(i) = sel.index_of(row.uid) else {
                continue;
            };
            let (Some(uid), Some(modseq)) = (NonZeroU32::new(row.uid), NonZeroU64::new(row.modseq))
            else {
                continue;
            };
            let items = vec![
                MessageDataItem::Uid(uid),
                MessageDataItem::Flags(fetch_flags(&row.flags)),
                MessageDataItem::ModSeq(modseq),
            ];
            if let (Some(seq), Ok(items)) = (NonZeroU32::new(i as u32 + 1), Vec1::try_from(items)) {
                s.send(&Response::Data(Data::Fetch { seq, items }));
            }
        }
        Ok(())
    }

    pub(super) async fn selected_command(
        &mut self,
        s: &mut Session,
        tag: &Tag<'static>,
        body: CommandBody<'static>,
        _expunge_ok: bool,
    ) -> Reply {
        match body {
            CommandBody::Close | CommandBody::Unselect => {
                let close = matches!(body, CommandBody::Close);
                if let Some(sel) = self.selected.take() {
                    if close && !sel.read_only {
                        // RFC 3501 6.4.2: silently expunge.
                        self.ctx
                            .store
                            .expunge(sel.mailbox.id, None)
                            .await
                            .map_err(|e| store_failure(&e))?;
                    }
                }
                s.set_state(State::Authenticated);
                Ok(None)
            }
            CommandBody::Expunge => self.expunge(s, None).await,
            CommandBody::ExpungeUid { sequence_set } => self.expunge(s, Some(sequence_set)).await,
            CommandBody::Store {
                sequence_set,
                kind,
                response,
                flags,
                uid,
                modifiers,
            } => {
                let flags: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
                let unchanged = modifiers.iter().map(|m| match m {
                    StoreModifier::UnchangedSince(v) => *v,
                });
                let unchanged = unchanged.min();
                self.store(s, &sequence_set, kind, response, &flags, uid, unchanged)
                    .await
            }
            CommandBody::Copy {
                sequence_set,
                mailbox,
                uid,
            } => self.transfer(s, &sequence_set, &mailbox, uid, false).await,
            CommandBody::Move {
                sequence_set,
                mailbox,
                uid,
            } => self.transfer(s, &sequence_set, &mailbox, uid, true).await,
            CommandBody::Search {
                charset,
                criteria,
                uid,
            } => self.search(s, charset, criteria, uid).await,
            _ => {
                let _ = tag;
                Err((Bad, None, "command not supported".into()))
            }
        }
    }

    pub(super) fn writable(&self) -> Result<&Selected, Fail> {
        match &self.selected {
            Some(sel) if sel.read_only => Err((
                No,
                code("READ-ONLY"),
                "the folder is open read-only (EXAMINE)".into(),
            )),
            Some(sel) => Ok(sel),
            None => Err((Bad, None, "select a folder first".into())),
        }
    }

    async fn expunge(&mut self, s: &mut Session, only: Option<SequenceSet>) -> Reply {
        let sel = self.writable()?;
        let id = sel.mailbox.id;
        let only: Option<Vec<u32>> = only.map(|set| {
            sel.resolve(&set, true)
                .into_iter()
                .map(|i| sel.msgs[i].uid)
                .collect()
        });
        let gone = self
            .ctx
            .store
            .expunge(id, only.as_deref())
            .await
            .map_err(|e| store_failure(&e))?;
        self.announce_expunged(s, &gone);
        Ok(None)
    }

    /// Sends EXPUNGE for messages this session removed (highest first would
    /// also do; ascending with renumbering is what RFC 3501 7.4.1 shows).
    pub(super) fn announce_expunged(&mut self, s: &mut Session, uids: &[u32]) {
        if self.qresync {
            // RFC 7162 3.2.10: VANISHED (by UID) instead of EXPUNGE.
            if let Some(sel) = self.selected.as_mut() {
                Arc::make_mut(&mut sel.msgs).retain(|m| !uids.contains(&m.uid));
            }
            if let Some(known_uids) = sequence_set(uids.iter().copied()) {
                s.send(&Response::Data(Data::Vanished {
                    earlier: false,
                    known_uids,
                }));
            }
            return;
        }
        let Some(sel) = self.selected.as_mut() else {
            return;
        };
        for uid in uids {
            if let Some(i) = sel.index_of(*uid) {
                Arc::make_mut(&mut sel.msgs).remove(i);
                if let Some(n) = NonZeroU32::new(i as u32 + 1) {
                    s.send(&Response::Data(Data::Expunge(n)));
                }
            }
        }
    }
}
