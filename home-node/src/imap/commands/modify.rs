//! STORE, COPY and MOVE (RFC 3501 6.4.6–6.4.7, RFC 4315 COPYUID, RFC 6851,
//! RFC 7162 UNCHANGEDSINCE/MODIFIED).

use super::mailboxes::Reply;
use super::selected::{sequence_set, uid_set};
use super::{store_failure, Bad, Handler, No};
use crate::imap::convert::flags as fetch_flags;
use crate::imap::session::Session;
use crate::store::FlagOp;
use imap_codec::imap_types::core::Vec1;
use imap_codec::imap_types::fetch::MessageDataItem;
use imap_codec::imap_types::flag::{StoreResponse, StoreType};
use imap_codec::imap_types::mailbox::Mailbox;
use imap_codec::imap_types::response::{Code, Data, Response};
use imap_codec::imap_types::sequence::SequenceSet;
use std::num::{NonZeroU32, NonZeroU64};

impl Handler {
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn store(
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
                std::sync::Arc::make_mut(&mut sel.msgs)[i] = row.clone();
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
        let set = sequence_set(set);
        Ok(set.map(Code::Modified))
    }

    pub(super) async fn transfer(
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
