//! FETCH and UID FETCH (RFC 3501 6.4.5, RFC 3516 BINARY, RFC 7162 MODSEQ and
//! CHANGEDSINCE). Metadata (ENVELOPE, BODYSTRUCTURE, size) comes from the
//! store's cache; a message is decrypted only for its body, or once to fill
//! the cache. A big FETCH runs in steps so the driver can write as it goes.

use super::mailboxes::Reply;
use super::{code, Flow, Handler, No};
use crate::imap::cache::{keep_all, render};
use crate::imap::convert::{body_structure, envelope, flags as fetch_flags, has_flag};
use crate::imap::mime::Meta;
use crate::imap::session::{status, Session};
use crate::imap::{section, wire};
use crate::store::FlagOp;
use imap_codec::imap_types::command::FetchModifier;
use imap_codec::imap_types::core::{Literal, NString, NString8, Tag, Vec1};
use imap_codec::imap_types::datetime::DateTime;
use imap_codec::imap_types::extensions::binary::Literal8;
use imap_codec::imap_types::fetch::{
    Macro, MacroOrMessageDataItemNames, MessageDataItem, MessageDataItemName,
};
use imap_codec::imap_types::response::{Data, Response};
use imap_codec::imap_types::sequence::SequenceSet;
use omb_shared::pgp::MessageKey;
use std::borrow::Cow;
use std::num::{NonZeroU32, NonZeroU64};

/// Messages handled per step, and output after which a step yields.
const CHUNK: usize = 200;
const OUTPUT_HIGH_WATER: usize = 512 * 1024;
/// Stored messages up to this size are decrypted on the session's own task
/// (well under a millisecond): handing them to the crypto threads and back
/// cost two thread wake-ups per fetch, more than the decryption of a typical
/// message. Bigger ones go to the crypto threads, so a session never holds a
/// runtime thread for long.
const INLINE_RENDER: usize = 128 * 1024;

pub struct FetchJob {
    tag: Tag<'static>,
    /// UIDs still to answer for.
    uids: Vec<u32>,
    pos: usize,
    items: Vec<MessageDataItemName<'static>>,
    /// Messages whose \Seen was just set here: they get FLAGS too.
    seen_now: Vec<u32>,
    expunge_ok: bool,
}

fn needs_meta(item: &MessageDataItemName) -> bool {
    !matches!(
        item,
        MessageDataItemName::Flags
            | MessageDataItemName::Uid
            | MessageDataItemName::InternalDate
            | MessageDataItemName::ModSeq
    )
}

/// Items the cached envelope answers (size and envelope only).
fn envelope_only(item: &MessageDataItemName) -> bool {
    matches!(
        item,
        MessageDataItemName::Envelope | MessageDataItemName::Rfc822Size
    )
}

fn needs_body(item: &MessageDataItemName) -> bool {
    matches!(
        item,
        MessageDataItemName::BodyExt { .. }
            | MessageDataItemName::Rfc822
            | MessageDataItemName::Rfc822Header
            | MessageDataItemName::Rfc822Text
            | MessageDataItemName::Binary { .. }
            | MessageDataItemName::BinarySize { .. }
    )
}

/// Items the cached header block answers, with no decryption (what mail apps
/// fetch for a message list).
fn header_only(item: &MessageDataItemName) -> bool {
    use imap_codec::imap_types::fetch::Section;
    matches!(
        item,
        MessageDataItemName::Rfc822Header
            | MessageDataItemName::BodyExt {
                section: Some(
                    Section::Header(None)
                        | Section::HeaderFields(None, _)
                        | Section::HeaderFieldsNot(None, _)
                ),
                ..
            }
    )
}

fn sets_seen(item: &MessageDataItemName) -> bool {
    matches!(
        item,
        MessageDataItemName::BodyExt { peek: false, .. }
            | MessageDataItemName::Binary { peek: false, .. }
            | MessageDataItemName::Rfc822
            | MessageDataItemName::Rfc822Text
    )
}

/// A literal for message bytes (NUL, which literals can't carry, as a space).
fn literal(bytes: &[u8]) -> NString<'static> {
    match Literal::try_from(bytes.to_vec()) {
        Ok(l) => NString::from(l),
        Err(_) => {
            let clean: Vec<u8> = bytes
                .iter()
                .map(|&b| if b == 0 { b' ' } else { b })
                .collect();
            Literal::try_from(clean)
                .map(NString::from)
                .unwrap_or(NString::NIL)
        }
    }
}

impl Handler {
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn fetch(
        &mut self,
        s: &mut Session,
        tag: &Tag<'static>,
        set: &SequenceSet,
        names: MacroOrMessageDataItemNames<'static>,
        uid: bool,
        modifiers: &[FetchModifier],
        expunge_ok: bool,
    ) -> Result<Flow, super::mailboxes::Fail> {
        let mut items = match names {
            MacroOrMessageDataItemNames::Macro(m) => match m {
                Macro::All => vec![
                    MessageDataItemName::Flags,
                    MessageDataItemName::InternalDate,
                    MessageDataItemName::Rfc822Size,
                    MessageDataItemName::Envelope,
                ],
                Macro::Fast => vec![
                    MessageDataItemName::Flags,
                    MessageDataItemName::InternalDate,
                    MessageDataItemName::Rfc822Size,
                ],
                Macro::Full => vec![
                    MessageDataItemName::Flags,
                    MessageDataItemName::InternalDate,
                    MessageDataItemName::Rfc822Size,
                    MessageDataItemName::Envelope,
                    MessageDataItemName::Body,
                ],
                _ => vec![
                    MessageDataItemName::Flags,
                    MessageDataItemName::InternalDate,
                    MessageDataItemName::Rfc822Size,
                    MessageDataItemName::Envelope,
                ],
            },
            MacroOrMessageDataItemNames::MessageDataItemNames(v) => v,
        };
        let changed_since = modifiers.iter().find_map(|m| match m {
            FetchModifier::ChangedSince(v) => Some(v.get()),
            FetchModifier::Vanished => None,
        });
        if changed_since.is_some() && !items.contains(&MessageDataItemName::ModSeq) {
            items.push(MessageDataItemName::ModSeq);
        }
        if items.contains(&MessageDataItemName::ModSeq) {
            self.condstore = true;
        }
        if uid && !items.contains(&MessageDataItemName::Uid) {
            items.insert(0, MessageDataItemName::Uid);
        }
        let vanished = modifiers.contains(&FetchModifier::Vanished);
        if vanished && !(uid && self.qresync && changed_since.is_some()) {
            // RFC 7162 3.2.6: UID FETCH only, with CHANGEDSINCE, after ENABLE QRESYNC.
            return Err((
                super::Bad,
                None,
                "VANISHED needs UID FETCH, CHANGEDSINCE and QRESYNC".into(),
            ));
        }
        let Some(sel) = self.selected.as_ref() else {
            return Err((super::Bad, None, "select a folder first".into()));
        };
        if let (true, Some(since)) = (vanished, changed_since) {
            let largest = sel
                .mailbox
                .uidnext
                .saturating_sub(1)
                .max(sel.msgs.last().map_or(0, |m| m.uid));
            let (_, gone) = self
                .ctx
                .store
                .changes_since(sel.mailbox.id, since)
                .await
                .map_err(|e| super::store_failure(&e))?;
            let gone = gone
                .into_iter()
                .filter(|u| super::selected::contains(set, *u, largest));
            if let Some(known_uids) = super::selected::sequence_set(gone) {
                s.send(&Response::Data(Data::Vanished {
                    earlier: true,
                    known_uids,
                }));
            }
        }
        let Some(sel) = self.selected.as_ref() else {
            return Err((super::Bad, None, "select a folder first".into()));
        };
        let uids: Vec<u32> = sel
            .resolve(set, uid)
            .into_iter()
            .map(|i| &sel.msgs[i])
            .filter(|m| changed_since.is_none_or(|c| m.modseq > c))
            .map(|m| m.uid)
            .collect();
        let mut seen_now = Vec::new();
        if !sel.read_only && items.iter().any(sets_seen) {
            let unseen: Vec<u32> = uids
                .iter()
                .filter_map(|u| sel.msgs.binary_search_by_key(u, |m| m.uid).ok())
                .filter(|&i| !has_flag(&sel.msgs[i].flags, "\\Seen"))
                .map(|i| sel.msgs[i].uid)
                .collect();
            if !unseen.is_empty() {
                let id = sel.mailbox.id;
                let update = self
                    .ctx
                    .store
                    .set_flags(id, &unseen, FlagOp::Add, &["\\Seen".to_string()], None)
                    .await
                    .map_err(|e| super::store_failure(&e))?;
                if let Some(sel) = self.selected.as_mut() {
                    for row in update.changed {
                        if let Ok(i) = sel.msgs.binary_search_by_key(&row.uid, |m| m.uid) {
                            seen_now.push(row.uid);
                            std::sync::Arc::make_mut(&mut sel.msgs)[i] = row;
                        }
                    }
                }
            }
        }
        self.fetch_job = Some(FetchJob {
            tag: tag.clone(),
            uids,
            pos: 0,
            items,
            seen_now,
            expunge_ok,
        });
        Ok(self.fetch_step(s).await)
    }

    /// Goes on with a FETCH that yielded.
    pub async fn resume(&mut self, s: &mut Session) -> Flow {
        self.fetch_step(s).await
    }

    async fn fetch_step(&mut self, s: &mut Session) -> Flow {
        let Some(mut job) = self.fetch_job.take() else {
            return Flow::Continue;
        };
        while job.pos < job.uids.len() {
            let end = (job.pos + CHUNK).min(job.uids.len());
            let chunk: Vec<u32> = job.uids[job.pos..end].to_vec();
            job.pos = end;
            if let Err(e) = self.fetch_chunk(s, &job, &chunk).await {
                tracing::warn!(error = %e, "FETCH failed");
                s.send(&status(
                    Some(&job.tag),
                    No,
                    code("SERVERBUG"),
                    "the mail store failed; try again",
                ));
                return Flow::Continue;
            }
            if s.output_len() > OUTPUT_HIGH_WATER && job.pos < job.uids.len() {
                self.fetch_job = Some(job);
                return Flow::More;
            }
        }
        self.sync(s, job.expunge_ok).await;
        s.send(&status(
            Some(&job.tag),
            super::Done,
            None,
            "FETCH completed",
        ));
        Flow::Continue
    }

    async fn fetch_chunk(
        &mut self,
        s: &mut Session,
        job: &FetchJob,
        uids: &[u32],
    ) -> Result<(), crate::store::StoreError> {
        let Some(sel) = self.selected.as_ref() else {
            return Ok(());
        };
        let mailbox_id = sel.mailbox.id;
        let ciphertext = self.ctx.view.ciphertext_to_apps();
        let want_meta = job.items.iter().any(needs_meta);
        let want_body = job.items.iter().any(|i| needs_body(i) && !header_only(i));
        let mut metas: Vec<Option<Meta>> = vec![None; uids.len()];
        // A body is read with its metadata, one message at a time; a message
        // list (ENVELOPE, RFC822.SIZE) reads only the cached envelopes.
        if want_meta && !want_body {
            let short = job.items.iter().all(|i| !needs_meta(i) || envelope_only(i));
            let cached = if short {
                self.ctx.store.envelopes(mailbox_id, uids).await?
            } else {
                self.ctx.store.metas(mailbox_id, uids).await?
            };
            for (uid, bytes) in cached {
                if let Ok(i) = uids.binary_search(&uid) {
                    metas[i] = bytes.and_then(|b| match short {
                        true => Meta::from_envelope_bytes(&b, ciphertext),
                        false => Meta::from_bytes(&b, ciphertext),
                    });
                }
            }
        }
        // The common items are written straight out (see `wire`).
        let direct = job.items.iter().all(wire::handles);
        // Metadata made here, cached in one commit at the end of the chunk.
        let mut fresh: Vec<(i64, u32, Meta)> = Vec::new();
        for (i, &uid) in uids.iter().enumerate() {
            let Some(sel) = self.selected.as_ref() else {
                break;
            };
            let Ok(idx) = sel.msgs.binary_search_by_key(&uid, |m| m.uid) else {
                continue;
            };
            let row = sel.msgs[idx].clone();
            let mut body: Option<Vec<u8>> = None;
            if want_body || (want_meta && metas[i].is_none()) {
                let Some((stored, cached)) = self.ctx.store.message(mailbox_id, uid).await? else {
                    // Expunged by another session: RFC 2180 4.1.2 allows NO; we skip it.
                    continue;
                };
                if metas[i].is_none() {
                    metas[i] = cached.and_then(|b| Meta::from_bytes(&b, ciphertext));
                    if let (false, Some(meta)) = (want_body, metas[i].as_ref()) {
                        // Cached, but not its envelope apart: now it is.
                        fresh.push((mailbox_id, uid, meta.clone()));
                    }
                }
                let need_meta = metas[i].is_none();
                // Without a body item, the metadata alone answers.
                if want_body || need_meta {
                    let known = metas[i]
                        .as_ref()
                        .and_then(|m| MessageKey::from_bytes(&m.key));
                    let done = if stored.len() <= INLINE_RENDER {
                        Some(render(
                            &self.ctx.view,
                            &stored,
                            known.as_ref(),
                            need_meta,
                            ciphertext,
                        ))
                    } else {
                        let view = self.ctx.view.clone();
                        self.ctx
                            .view
                            .blocking(move || {
                                render(&view, &stored, known.as_ref(), need_meta, ciphertext)
                            })
                            .await
                    };
                    let Some((rendered, meta)) = done else {
                        continue;
                    };
                    if let Some(meta) = meta {
                        fresh.push((mailbox_id, uid, meta.clone()));
                        metas[i] = Some(meta);
                    }
                    body = Some(rendered);
                }
            }
            let meta = metas[i].as_ref();
            let flags_too =
                job.seen_now.contains(&uid) && !job.items.contains(&MessageDataItemName::Flags);
            if direct {
                let seq = idx as u32 + 1;
                wire::fetch(
                    s.output(),
                    seq,
                    &job.items,
                    &row,
                    meta,
                    body.as_deref(),
                    flags_too,
                );
                continue;
            }
            let mut out: Vec<MessageDataItem<'static>> = Vec::with_capacity(job.items.len() + 1);
            for item in &job.items {
                if let Some(v) = self.item(item, &row, meta, body.as_deref()) {
                    out.push(v);
                }
            }
            if flags_too {
                out.push(MessageDataItem::Flags(fetch_flags(&row.flags)));
            }
            if let (Some(seq), Ok(items)) = (NonZeroU32::new(idx as u32 + 1), Vec1::try_from(out)) {
                s.send(&Response::Data(Data::Fetch { seq, items }));
            }
        }
        if !fresh.is_empty() {
            // The answers are out: a cache that cannot be written is made
            // again next time.
            if let Err(e) = keep_all(&self.ctx.store, &fresh).await {
                tracing::warn!(error = %e, "cannot cache message metadata");
            }
        }
        Ok(())
    }

    fn item(
        &self,
        item: &MessageDataItemName<'static>,
        row: &crate::store::MsgRow,
        meta: Option<&Meta>,
        body: Option<&[u8]>,
    ) -> Option<MessageDataItem<'static>> {
        use MessageDataItemName as N;
        // Without the body, header-only items read the cached header block.
        let raw = body.or(meta.map(|m| m.header.as_slice())).unwrap_or(b"");
        let tree = meta.map(|m| &m.tree);
        Some(match item {
            N::Flags => MessageDataItem::Flags(fetch_flags(&row.flags)),
            N::Uid => MessageDataItem::Uid(NonZeroU32::new(row.uid)?),
            N::ModSeq => MessageDataItem::ModSeq(NonZeroU64::new(row.modseq)?),
            N::InternalDate => {
                let t = chrono::DateTime::from_timestamp(row.internaldate, 0)?;
                MessageDataItem::InternalDate(DateTime::try_from(t.fixed_offset()).ok()?)
            }
            N::Rfc822Size => MessageDataItem::Rfc822Size(meta?.size),
            N::Envelope => MessageDataItem::Envelope(envelope(&meta?.envelope)),
            N::BodyStructure => MessageDataItem::BodyStructure(body_structure(tree?, true)),
            N::Body => MessageDataItem::Body(body_structure(tree?, false)),
            N::Rfc822 => MessageDataItem::Rfc822(literal(raw)),
            N::Rfc822Header => MessageDataItem::Rfc822Header(literal(&section::section(
                raw,
                tree?,
                Some(&imap_codec::imap_types::fetch::Section::Header(None)),
            ))),
            N::Rfc822Text => MessageDataItem::Rfc822Text(literal(&section::section(
                raw,
                tree?,
                Some(&imap_codec::imap_types::fetch::Section::Text(None)),
            ))),
            N::BodyExt {
                section: sec,
                partial,
                ..
            } => {
                let data = section::section(raw, tree?, sec.as_ref());
                MessageDataItem::BodyExt {
                    section: sec.clone(),
                    origin: partial.map(|p| p.0),
                    data: literal(section::partial(&data, *partial)),
                }
            }
            N::Binary {
                section: path,
                partial,
                ..
            } => {
                let data = section::binary(raw, tree?, path).unwrap_or(Cow::Borrowed(b""));
                let data = section::partial(&data, *partial).to_vec();
                MessageDataItem::Binary {
                    section: path.clone(),
                    value: NString8::Literal8(Literal8 {
                        data: Cow::Owned(data),
                        mode: imap_codec::imap_types::core::LiteralMode::Sync,
                    }),
                }
            }
            N::BinarySize { section: path } => {
                let size = section::binary(raw, tree?, path).map_or(0, |d| d.len() as u32);
                MessageDataItem::BinarySize {
                    section: path.clone(),
                    size,
                }
            }
        })
    }
}

#[allow(dead_code)]
fn _reply_type(_: Reply) {}
