//! FETCH responses for the items asked most (a message list: UID, FLAGS,
//! INTERNALDATE, RFC822.SIZE, ENVELOPE, MODSEQ; opening a message: `BODY[]`),
//! written straight to bytes. Building imap-types values (each string
//! validated and copied) and encoding them with imap-codec was half the time of
//! `FETCH 1:* (FLAGS ENVELOPE)` on a big folder and copied every body fetched
//! three times. The bytes are those imap-codec writes for the same values (RFC
//! 3501 7.4.2 and 9; the tests compare both); any other item goes the imap-codec
//! way.

use super::convert::flags as fetch_flags;
use super::mime::{Addr, Env, Meta};
use crate::store::MsgRow;
use imap_codec::imap_types::datetime::DateTime;
use imap_codec::imap_types::fetch::MessageDataItemName;
use imap_codec::imap_types::flag::FlagFetch;
use std::io::Write;

/// Whether [`fetch`] writes this item.
pub fn handles(item: &MessageDataItemName) -> bool {
    use MessageDataItemName as N;
    match item {
        N::Uid | N::Flags | N::ModSeq | N::InternalDate | N::Rfc822Size | N::Envelope => true,
        N::BodyExt { section, .. } => section.is_none(),
        _ => false,
    }
}

/// `* seq FETCH (...)` for items that all pass [`handles`], with FLAGS added
/// at the end when `flags_too`; nothing when no item has a value (as
/// `Vec1` refuses an empty list). `body` is the message as apps get it.
pub fn fetch(
    out: &mut Vec<u8>,
    seq: u32,
    items: &[MessageDataItemName],
    row: &MsgRow,
    meta: Option<&Meta>,
    body: Option<&[u8]>,
    flags_too: bool,
) {
    let start = out.len();
    let _ = write!(out, "* {seq} FETCH (");
    let open = out.len();
    for item in items {
        let mark = out.len();
        if mark > open {
            out.push(b' ');
        }
        if !self::item(out, item, row, meta, body) {
            out.truncate(mark);
        }
    }
    if flags_too {
        if out.len() > open {
            out.push(b' ');
        }
        flags(out, &row.flags);
    }
    if out.len() == open {
        out.truncate(start);
        return;
    }
    out.extend_from_slice(b")\r\n");
}

/// One item; false when it has no value (as `Handler::item` gives None).
fn item(
    out: &mut Vec<u8>,
    item: &MessageDataItemName,
    row: &MsgRow,
    meta: Option<&Meta>,
    body: Option<&[u8]>,
) -> bool {
    use MessageDataItemName as N;
    match item {
        N::Uid if row.uid != 0 => {
            let _ = write!(out, "UID {}", row.uid);
        }
        N::Flags => flags(out, &row.flags),
        N::ModSeq if row.modseq != 0 => {
            let _ = write!(out, "MODSEQ ({})", row.modseq);
        }
        N::InternalDate => {
            let Some(t) = chrono::DateTime::from_timestamp(row.internaldate, 0) else {
                return false;
            };
            let Ok(t) = DateTime::try_from(t.fixed_offset()) else {
                return false;
            };
            let _ = write!(
                out,
                "INTERNALDATE \"{}\"",
                t.as_ref().format("%d-%b-%Y %H:%M:%S %z")
            );
        }
        N::Rfc822Size => {
            let Some(meta) = meta else { return false };
            let _ = write!(out, "RFC822.SIZE {}", meta.size);
        }
        N::Envelope => {
            let Some(meta) = meta else { return false };
            out.extend_from_slice(b"ENVELOPE ");
            envelope(out, &meta.envelope);
        }
        N::BodyExt {
            section: None,
            partial,
            ..
        } => {
            // The body's structure must be known, as for any section.
            if meta.is_none() {
                return false;
            }
            let data = super::section::partial(body.unwrap_or(b""), *partial);
            out.extend_from_slice(b"BODY[]");
            if let Some((origin, _)) = partial {
                let _ = write!(out, "<{origin}>");
            }
            let _ = write!(out, " {{{}}}\r\n", data.len());
            // A literal can't carry NUL: sent as a space, as `fetch::literal` does.
            let at = out.len();
            out.extend_from_slice(data);
            for b in &mut out[at..] {
                if *b == 0 {
                    *b = b' ';
                }
            }
        }
        _ => return false,
    }
    true
}

fn flags(out: &mut Vec<u8>, stored: &str) {
    out.extend_from_slice(b"FLAGS (");
    for (i, f) in fetch_flags(stored).iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        let _ = match f {
            FlagFetch::Flag(f) => write!(out, "{f}"),
            FlagFetch::Recent => write!(out, "\\Recent"),
        };
    }
    out.push(b')');
}

/// RFC 3501 7.4.2 ENVELOPE, as `convert::envelope` and imap-codec make it.
pub fn envelope(out: &mut Vec<u8>, e: &Env) {
    out.push(b'(');
    nstring(out, e.date.as_deref());
    out.push(b' ');
    nstring(out, e.subject.as_deref());
    for list in [&e.from, &e.sender, &e.reply_to, &e.to, &e.cc, &e.bcc] {
        out.push(b' ');
        addresses(out, list);
    }
    out.push(b' ');
    nstring(out, e.in_reply_to.as_deref());
    out.push(b' ');
    nstring(out, e.message_id.as_deref());
    out.push(b')');
}

fn addresses(out: &mut Vec<u8>, list: &[Addr]) {
    if list.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for a in list {
        out.push(b'(');
        nstring(out, a.name.as_deref());
        out.extend_from_slice(b" NIL ");
        nstring(out, a.mailbox.as_deref());
        out.push(b' ');
        nstring(out, a.host.as_deref());
        out.push(b')');
    }
    out.push(b')');
}

/// A quoted string when every byte is a TEXT-CHAR, else a literal; NIL for
/// what neither can carry (NUL), as `NString::try_from` decides.
fn nstring(out: &mut Vec<u8>, v: Option<&[u8]>) {
    let Some(v) = v else {
        out.extend_from_slice(b"NIL");
        return;
    };
    let text_char = |b: u8| matches!(b, 0x01..=0x09 | 0x0b..=0x0c | 0x0e..=0x7f);
    if v.iter().all(|&b| text_char(b)) {
        out.push(b'"');
        for &b in v {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    } else if v.contains(&0) {
        out.extend_from_slice(b"NIL");
    } else {
        let _ = write!(out, "{{{}}}\r\n", v.len());
        out.extend_from_slice(v);
    }
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
