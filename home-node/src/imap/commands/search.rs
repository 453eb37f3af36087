//! SEARCH and UID SEARCH (RFC 3501 6.4.4, MODSEQ of RFC 7162 3.1.5): every
//! RFC 3501 key; flags, dates and sizes from the store and the metadata cache,
//! header keys from the cached header block (raw and RFC 2047-decoded), BODY
//! and TEXT on the decrypted message. Matching is case-insensitive substring.

use super::mailboxes::Reply;
use super::{code, store_failure, Bad, Handler, No};
use crate::imap::cache::{keep, render};
use crate::imap::convert::has_flag;
use crate::imap::mime::Meta;
use crate::imap::section::fields;
use crate::store::MsgRow;
use imap_codec::imap_types::core::{Charset, Vec1};
use imap_codec::imap_types::response::{Code, Data, Response};
use imap_codec::imap_types::search::SearchKey;
use mail_parser::{HeaderValue, MessageParser, PartType};
use omb_shared::pgp::MessageKey;
use std::num::{NonZeroU32, NonZeroU64};

/// What a message offers to the search.
struct Subject<'a> {
    seq: u32,
    row: &'a MsgRow,
    largest_seq: u32,
    largest_uid: u32,
    meta: Option<&'a Meta>,
    body: Option<&'a [u8]>,
}

fn walk(key: &SearchKey, f: &mut impl FnMut(&SearchKey)) {
    f(key);
    match key {
        SearchKey::And(keys) => keys.as_ref().iter().for_each(|k| walk(k, f)),
        SearchKey::Not(k) => walk(k, f),
        SearchKey::Or(a, b) => {
            walk(a, f);
            walk(b, f);
        }
        _ => {}
    }
}

fn lower(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_lowercase()
}

/// Whether a header field `name` contains `needle` (lowercase).
fn header_has(header: &[u8], name: &str, needle: &str) -> bool {
    let mut found = false;
    let mut hay = String::new();
    for field in fields(header) {
        let Some(colon) = field.iter().position(|&b| b == b':') else {
            continue;
        };
        if !field[..colon]
            .trim_ascii()
            .eq_ignore_ascii_case(name.as_bytes())
        {
            continue;
        }
        found = true;
        hay.push_str(&lower(&field[colon + 1..]));
        hay.push('\n');
    }
    if !found {
        return false;
    }
    if needle.is_empty() || hay.contains(needle) {
        return true;
    }
    // RFC 2047 words and addresses, decoded.
    if let Some(msg) = MessageParser::default().parse_headers(header) {
        for h in msg.headers() {
            if !h.name().eq_ignore_ascii_case(name) {
                continue;
            }
            let text = match h.value() {
                HeaderValue::Text(t) => t.to_string(),
                HeaderValue::TextList(l) => l.join(" "),
                HeaderValue::Address(a) => a
                    .iter()
                    .map(|x| {
                        format!(
                            "{} <{}>",
                            x.name.as_deref().unwrap_or(""),
                            x.address.as_deref().unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                _ => continue,
            };
            if text.to_lowercase().contains(needle) {
                return true;
            }
        }
    }
    false
}

/// The body text a BODY search looks at: decoded text parts, and the raw body.
fn body_has(message: &[u8], needle: &str) -> bool {
    let start = crate::imap::mime::header_end(message);
    if lower(&message[start..]).contains(needle) {
        return true;
    }
    let Some(msg) = MessageParser::default().parse(message) else {
        return false;
    };
    msg.parts.iter().any(|p| match &p.body {
        PartType::Text(t) | PartType::Html(t) => t.to_lowercase().contains(needle),
        _ => false,
    })
}

fn sent_date(meta: &Meta) -> Option<chrono::NaiveDate> {
    let raw = String::from_utf8_lossy(meta.envelope.date.as_deref()?).into_owned();
    chrono::DateTime::parse_from_rfc2822(raw.trim())
        .ok()
        .map(|d| d.date_naive())
}

fn matches(key: &SearchKey, m: &Subject) -> bool {
    use SearchKey as K;
    let flag = |f: &str| has_flag(&m.row.flags, f);
    let internal =
        || chrono::DateTime::from_timestamp(m.row.internaldate, 0).map(|d| d.date_naive());
    let size = || m.meta.map_or(m.row.size as u32, |x| x.size);
    let header = |name: &str, v: &[u8]| {
        m.meta
            .is_some_and(|x| header_has(&x.header, name, &lower(v)))
    };
    let in_set = |set: &imap_codec::imap_types::sequence::SequenceSet, n: u32, largest: u32| {
        set.0.as_ref().iter().any(|s| {
            use imap_codec::imap_types::sequence::{SeqOrUid, Sequence};
            let v = |x: &SeqOrUid| match x {
                SeqOrUid::Value(v) => v.get(),
                SeqOrUid::Asterisk => largest,
            };
            match s {
                Sequence::Single(a) => v(a) == n,
                Sequence::Range(a, b) => (v(a).min(v(b))..=v(a).max(v(b))).contains(&n),
            }
        })
    };
    match key {
        K::And(keys) => keys.as_ref().iter().all(|k| matches(k, m)),
        K::Or(a, b) => matches(a, m) || matches(b, m),
        K::Not(k) => !matches(k, m),
        K::All => true,
        K::SequenceSet(set) => in_set(set, m.seq, m.largest_seq),
        K::Uid(set) => in_set(set, m.row.uid, m.largest_uid),
        K::Answered => flag("\\Answered"),
        K::Deleted => flag("\\Deleted"),
        K::Draft => flag("\\Draft"),
        K::Flagged => flag("\\Flagged"),
        K::Seen => flag("\\Seen"),
        K::Unanswered => !flag("\\Answered"),
        K::Undeleted => !flag("\\Deleted"),
        K::Undraft => !flag("\\Draft"),
        K::Unflagged => !flag("\\Flagged"),
        K::Unseen => !flag("\\Seen"),
        K::Keyword(k) => flag(k.as_ref()),
        K::Unkeyword(k) => !flag(k.as_ref()),
        // No session here ever sees \Recent (IMAP4rev2 dropped it).
        K::Recent | K::New => false,
        K::Old => true,
        K::Before(d) => internal().is_some_and(|x| x < *d.as_ref()),
        K::On(d) => internal().is_some_and(|x| x == *d.as_ref()),
        K::Since(d) => internal().is_some_and(|x| x >= *d.as_ref()),
        K::SentBefore(d) => m.meta.and_then(sent_date).is_some_and(|x| x < *d.as_ref()),
        K::SentOn(d) => m.meta.and_then(sent_date).is_some_and(|x| x == *d.as_ref()),
        K::SentSince(d) => m.meta.and_then(sent_date).is_some_and(|x| x >= *d.as_ref()),
        K::Larger(n) => size() > *n,
        K::Smaller(n) => size() < *n,
        K::From(v) => header("From", v.as_ref()),
        K::To(v) => header("To", v.as_ref()),
        K::Cc(v) => header("Cc", v.as_ref()),
        K::Bcc(v) => header("Bcc", v.as_ref()),
        K::Subject(v) => header("Subject", v.as_ref()),
        K::Header(name, v) => header(&String::from_utf8_lossy(name.as_ref()), v.as_ref()),
        K::Body(v) => m.body.is_some_and(|b| body_has(b, &lower(v.as_ref()))),
        K::Text(v) => {
            let needle = lower(v.as_ref());
            m.body.is_some_and(|b| {
                lower(&b[..crate::imap::mime::header_end(b)]).contains(&needle)
                    || body_has(b, &needle)
            })
        }
        K::ModSequence { modseq, .. } => m.row.modseq >= *modseq,
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

impl Handler {
    pub(super) async fn search(
        &mut self,
        s: &mut crate::imap::session::Session,
        charset: Option<Charset<'static>>,
        criteria: Vec1<SearchKey<'static>>,
        uid: bool,
    ) -> Reply {
        if let Some(cs) = &charset {
            let cs: &str = cs.as_ref();
            if !cs.eq_ignore_ascii_case("UTF-8") && !cs.eq_ignore_ascii_case("US-ASCII") {
                return Err((
                    No,
                    Some(Code::BadCharset {
                        allowed: vec![
                            Charset::try_from("UTF-8").map_err(|_| (Bad, None, String::new()))?,
                            Charset::try_from("US-ASCII")
                                .map_err(|_| (Bad, None, String::new()))?,
                        ],
                    }),
                    "charsets are UTF-8 and US-ASCII".into(),
                ));
            }
        }
        let key = SearchKey::And(criteria);
        let (mut want_meta, mut want_body, mut modseq_key) = (false, false, false);
        walk(&key, &mut |k| match k {
            SearchKey::Body(_) | SearchKey::Text(_) => want_body = true,
            SearchKey::Larger(_)
            | SearchKey::Smaller(_)
            | SearchKey::SentBefore(_)
            | SearchKey::SentOn(_)
            | SearchKey::SentSince(_)
            | SearchKey::From(_)
            | SearchKey::To(_)
            | SearchKey::Cc(_)
            | SearchKey::Bcc(_)
            | SearchKey::Subject(_)
            | SearchKey::Header(..) => want_meta = true,
            SearchKey::ModSequence { .. } => modseq_key = true,
            _ => {}
        });
        if modseq_key {
            self.condstore = true;
        }
        let Some(sel) = self.selected.as_ref() else {
            return Err((Bad, None, "select a folder first".into()));
        };
        let id = sel.mailbox.id;
        let msgs = sel.msgs.clone();
        let ciphertext = self.ctx.view.ciphertext_to_apps();
        let largest_seq = msgs.len() as u32;
        let largest_uid = msgs.last().map_or(0, |m| m.uid);
        let mut hits: Vec<u32> = Vec::new();
        let mut top_modseq = 0;
        for (c, chunk) in msgs.chunks(500).enumerate() {
            let uids: Vec<u32> = chunk.iter().map(|m| m.uid).collect();
            let mut metas: Vec<Option<Meta>> = vec![None; chunk.len()];
            if want_meta {
                for (u, b) in self
                    .ctx
                    .store
                    .metas(id, &uids)
                    .await
                    .map_err(|e| store_failure(&e))?
                {
                    if let Ok(i) = uids.binary_search(&u) {
                        metas[i] = b.and_then(|b| Meta::from_bytes(&b, ciphertext));
                    }
                }
            }
            for (i, row) in chunk.iter().enumerate() {
                let mut body = None;
                if want_body || (want_meta && metas[i].is_none()) {
                    let Some(stored) = self
                        .ctx
                        .store
                        .data(id, row.uid)
                        .await
                        .map_err(|e| store_failure(&e))?
                    else {
                        continue;
                    };
                    let view = self.ctx.view.clone();
                    let need_meta = metas[i].is_none();
                    let known = metas[i]
                        .as_ref()
                        .and_then(|m| MessageKey::from_bytes(&m.key));
                    let Some((rendered, meta)) = self
                        .ctx
                        .view
                        .blocking(move || {
                            render(&view, &stored, known.as_ref(), need_meta, ciphertext)
                        })
                        .await
                    else {
                        return Err((No, code("SERVERBUG"), "search failed".into()));
                    };
                    if let Some(meta) = meta {
                        let _ = keep(&self.ctx.store, id, row.uid, &meta).await;
                        metas[i] = Some(meta);
                    }
                    body = Some(rendered);
                }
                let subject = Subject {
                    seq: (c * 500 + i + 1) as u32,
                    row,
                    largest_seq,
                    largest_uid,
                    meta: metas[i].as_ref(),
                    body: body.as_deref(),
                };
                if matches(&key, &subject) {
                    hits.push(if uid { row.uid } else { subject.seq });
                    top_modseq = top_modseq.max(row.modseq);
                }
            }
        }
        let hits: Vec<NonZeroU32> = hits.into_iter().filter_map(NonZeroU32::new).collect();
        let modseq = if modseq_key && !hits.is_empty() {
            NonZeroU64::new(top_modseq)
        } else {
            None
        };
        s.send(&Response::Data(Data::Search(hits, modseq)));
        Ok(None)
    }
}
