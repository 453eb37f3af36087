//! The selected state (RFC 3501 6.4): SELECT/EXAMINE, the session's view of
//! the folder (sequence numbers), untagged updates for changes made elsewhere,
//! CLOSE/UNSELECT, EXPUNGE, STORE, COPY and MOVE.

use super::mailboxes::{Fail, Reply};
use super::{code, store_failure, Bad, Handler, No};
use crate::imap::convert::{flags as fetch_flags, has_flag};
use crate::imap::session::{Session, State};
use crate::store::{FlagOp, MailboxInfo, MsgRow};
use imap_codec::imap_types::command::{CommandBody, SelectParameter, StoreModifier};
use imap_codec::imap_types::core::{Tag, Vec1};
use imap_codec::imap_types::extensions::uidplus::{UidElement, UidSet};
use imap_codec::imap_types::fetch::MessageDataItem;
use imap_codec::imap_types::flag::{Flag, FlagPerm, StoreResponse, StoreType};
use imap_codec::imap_types::mailbox::Mailbox;
use imap_codec::imap_types::response::{Code, Data, Response};
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use std::num::{NonZeroU32, NonZeroU64};

pub struct Selected {
    pub mailbox: MailboxInfo,
    pub read_only: bool,
    /// The client's view: message `n` is `msgs[n - 1]`.
    pub msgs: Vec<MsgRow>,
    /// The folder's HIGHESTMODSEQ as this session last saw it.
    pub modseq: u64,
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

    fn index_of(&self, uid: u32) -> Option<usize> {
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
        if params
            .iter()
            .any(|p| matches!(p, SelectParameter::QResync { .. }))
        {
            return Err((Bad, None, "QRESYNC is not offered".into()));
        }
        let mb = self.existing(&name).await?;
        let msgs = self
            .ctx
            .store
            .snapshot(mb.id)
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
        self.selected = Some(Selected {
            mailbox: mb,
            read_only,
            msgs,
            modseq,
        });
        s.set_state(State::Selected);
        Ok(Some(if read_only {
            Code::ReadOnly
        } else {
            Code::ReadWrite
        }))
    }

    /// Tells the client what changed in the selected folder since it last
    /// looked: EXPUNGE (when `expunge_ok`), FETCH FLAGS, EXISTS.
    pub(super) async fn sync(&mut self, s: &mut Session, expunge_ok: bool) {
        let condstore = self.condstore;
        let Some(sel) = self.selected.as_mut() else {
            return;
        };
        let Ok(Some(mb)) = self.ctx.store.mailbox_by_id(sel.mailbox.id).await else {
            return;
        };
        if mb.highestmodseq <= sel.modseq {
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
        let mut held_back = false;
        for uid in gone {
            let Some(i) = sel.index_of(uid) else { continue };
            if !expunge_ok {
                held_back = true;
                continue;
            }
            sel.msgs.remove(i);
            if let Some(n) = NonZeroU32::new(i as u32 + 1) {
                s.send(&Response::Data(Data::Expunge(n)));
            }
        }
        let before = sel.msgs.len();
        let last_uid = sel.msgs.last().map_or(0, |m| m.uid);
        for row in changed {
            match sel.index_of(row.uid) {
                Some(i) => {
                    let old = &mut sel.msgs[i];
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
                None if row.uid > last_uid => sel.msgs.push(row),
                None => {}
            }
        }
        if sel.msgs.len() != before {
            s.send(&Response::Data(Data::Exists(sel.msgs.len() as u32)));
        }
        if !held_back {
            sel.modseq = mb.highestmodseq;
        }
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
                if close && self.condstore {
                    // RFC 7162 3.2.11 asks for [CLOSED] only with QRESYNC.
                }
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

    fn writable(&self) -> Result<&Selected, Fail> {
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
    fn announce_expunged(&mut self, s: &mut Session, uids: &[u32]) {
        let Some(sel) = self.selected.as_mut() else {
            return;
        };
        for uid in uids {
            if let Some(i) = sel.index_of(*uid) {
                sel.msgs.remove(i);
                if let Some(n) = NonZeroU32::new(i as u32 + 1) {
                    s.send(&Response::Data(Data::Expunge(n)));
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn store(
        &mut self,
        s: &mut Session,
        set: &SequenceSet,
        kind: StoreType,
        response: StoreResponse,
        flags: &[String],
        uid: bool,
        unchanged_since: Option<u64>,
    ) -> Reply {
        let condstore = self.condstore || unchanged_since.is_some();
        self.condstore = condstore;
        let sel = self.writable()?;
        let id = sel.mailbox.id;
        let indexes = sel.resolve(set, uid);
        let uids: Vec<u32> = indexes.iter().map(|&i| sel.msgs[i].uid).collect();
        let flags: Vec<String> = flags
            .iter()
            .filter(|f| !f.eq_ignore_ascii_case("\\Recent"))
            .cloned()
            .collect();
        let op = match kind {
            StoreType::Add => FlagOp::Add,
            StoreType::Remove => FlagOp::Remove,
            StoreType::Replace => FlagOp::Replace,
        };
        let update = self
            .ctx
            .store
            .set_flags(id, &uids, op, &flags, unchanged_since)
            .await
            .map_err(|e| store_failure(&e))?;
        let Some(sel) = self.selected.as_mut() else {
            return Ok(None);
        };
        for row in &update.changed {
            if let Some(i) = sel.index_of(row.uid) {
                sel.msgs[i] = row.clone();
            }
        }
        for &i in &indexes {
            let m = &sel.msgs[i];
            if update.modified.contains(&m.uid) {
                continue;
            }
            let changed = update.changed.iter().any(|r| r.uid == m.uid);
            // .SILENT still reports MODSEQ of changed messages (RFC 7162 3.1.3).
            if response == StoreResponse::Silent && !(changed && unchanged_since.is_some()) {
                continue;
            }
            let mut items = Vec::new();
            if uid {
                if let Some(u) = NonZeroU32::new(m.uid) {
                    items.push(MessageDataItem::Uid(u));
                }
            }
            if response == StoreResponse::Answer {
                items.push(MessageDataItem::Flags(fetch_flags(&m.flags)));
            }
            if condstore {
                if let Some(ms) = NonZeroU64::new(m.modseq) {
                    items.push(MessageDataItem::ModSeq(ms));
                }
            }
            if let (Some(n), Ok(items)) = (NonZeroU32::new(i as u32 + 1), Vec1::try_from(items)) {
                s.send(&Response::Data(Data::Fetch { seq: n, items }));
            }
        }
        if update.modified.is_empty() {
            return Ok(None);
        }
        // RFC 7162 3.1.3: [MODIFIED set] names what was left alone.
        let set: Vec<u32> = if uid {
            update.modified.clone()
        } else {
            update
                .modified
                .iter()
                .filter_map(|u| sel.index_of(*u))
                .map(|i| i as u32 + 1)
                .collect()
        };
        let set = uid_set(set).and_then(|u| {
            let seqs: Vec<Sequence> =
                u.0.into_iter()
                    .map(|e| match e {
                        UidElement::Single(a) => Sequence::Single(SeqOrUid::Value(a)),
                        UidElement::Range(a, b) => {
                            Sequence::Range(SeqOrUid::Value(a), SeqOrUid::Value(b))
                        }
                    })
                    .collect();
            Vec1::try_from(seqs).ok().map(SequenceSet)
        });
        Ok(set.map(Code::Modified))
    }

    async fn transfer(
        &mut self,
        s: &mut Session,
        set: &SequenceSet,
        mailbox: &Mailbox<'_>,
        uid: bool,
        moving: bool,
    ) -> Reply {
        let name = self.name(mailbox)?;
        let target = match self.ctx.store.mailbox(&name).await {
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
        let sel = if moving {
            self.writable()?
        } else {
            self.selected
                .as_ref()
                .ok_or_else(|| (Bad, None, "select a folder first".to_string()))?
        };
        let source = sel.mailbox.id;
        let uids: Vec<u32> = sel
            .resolve(set, uid)
            .into_iter()
            .map(|i| sel.msgs[i].uid)
            .collect();
        if uids.is_empty() {
            return Ok(None);
        }
        let store = &self.ctx.store;
        let pairs = if moving {
            store.move_messages(source, &uids, target.id).await
        } else {
            store.copy(source, &uids, target.id).await
        }
        .map_err(|e| store_failure(&e))?;
        let code = match (
            NonZeroU32::new(target.uidvalidity),
            uid_set(pairs.iter().map(|p| p.0)),
            uid_set(pairs.iter().map(|p| p.1)),
        ) {
            (Some(uid_validity), Some(source), Some(destination)) => Some(Code::CopyUid {
                uid_validity,
                source,
                destination,
            }),
            _ => None,
        };
        if moving {
            // RFC 6851 4.3: COPYUID in an untagged OK before the EXPUNGEs.
            if let Some(c) = code {
                s.send(&crate::imap::session::status(
                    None,
                    super::Done,
                    Some(c),
                    "moved",
                ));
            }
            let moved: Vec<u32> = pairs.iter().map(|p| p.0).collect();
            self.announce_expunged(s, &moved);
            return Ok(None);
        }
        Ok(code)
    }
}
