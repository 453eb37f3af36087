//! The hand-written FETCH responses against imap-codec's for the same values.

use super::*;
use crate::imap::convert;
use crate::imap::session::encode;
use imap_codec::imap_types::core::{Literal, NString, Vec1};
use imap_codec::imap_types::fetch::MessageDataItem;
use imap_codec::imap_types::response::{Data, Response};
use std::num::{NonZeroU32, NonZeroU64};

fn addr(name: Option<&[u8]>, mailbox: Option<&[u8]>, host: Option<&[u8]>) -> Addr {
    Addr {
        name: name.map(<[u8]>::to_vec),
        mailbox: mailbox.map(<[u8]>::to_vec),
        host: host.map(<[u8]>::to_vec),
    }
}

fn envelopes() -> Vec<Env> {
    let odd: &[u8] = b"a \"quoted\" back\\slash";
    vec![
        Env::default(),
        Env {
            date: Some(b"Mon, 7 Feb 1994 21:52:25 -0800".to_vec()),
            subject: Some(b"=?utf-8?q?caf=C3=A9?= \"hi\"".to_vec()),
            from: vec![addr(Some(b"Al \\ Bo"), Some(b"al"), Some(b"example.org"))],
            sender: vec![addr(None, Some(b"al"), Some(b"example.org"))],
            reply_to: vec![],
            to: vec![
                addr(None, Some(b"group"), None),
                addr(Some(odd), Some(b"b"), Some(b"x.test")),
                addr(None, None, None),
            ],
            cc: vec![addr(Some("Zoë".as_bytes()), Some(b"z"), Some(b"x.test"))],
            bcc: vec![addr(Some(b"line\r\nbreak"), Some(b"n\0ul"), Some(b""))],
            in_reply_to: Some(b"<a@b>".to_vec()),
            message_id: Some(b"<c@d>".to_vec()),
        },
    ]
}

fn row(flags: &str) -> MsgRow {
    MsgRow {
        uid: 42,
        flags: flags.into(),
        modseq: 7,
        internaldate: 760_000_000,
        size: 5,
    }
}

fn meta(env: Env) -> Meta {
    Meta {
        size: 1234,
        envelope: env,
        ..Meta::default()
    }
}

/// What imap-codec writes for the items `Handler::item` would make.
fn expected(
    items: &[MessageDataItemName],
    row: &MsgRow,
    meta: Option<&Meta>,
    body: &[u8],
    flags_too: bool,
) -> Vec<u8> {
    use MessageDataItemName as N;
    let mut v: Vec<MessageDataItem<'static>> = Vec::new();
    for item in items {
        let value = match item {
            N::Uid => NonZeroU32::new(row.uid).map(MessageDataItem::Uid),
            N::Flags => Some(MessageDataItem::Flags(convert::flags(&row.flags))),
            N::ModSeq => NonZeroU64::new(row.modseq).map(MessageDataItem::ModSeq),
            N::InternalDate => chrono::DateTime::from_timestamp(row.internaldate, 0)
                .and_then(|t| DateTime::try_from(t.fixed_offset()).ok())
                .map(MessageDataItem::InternalDate),
            N::Rfc822Size => meta.map(|m| MessageDataItem::Rfc822Size(m.size)),
            N::Envelope => meta.map(|m| MessageDataItem::Envelope(convert::envelope(&m.envelope))),
            N::BodyExt { partial, .. } => meta.map(|_| {
                let data = crate::imap::section::partial(body, *partial);
                let clean: Vec<u8> = data
                    .iter()
                    .map(|&b| if b == 0 { b' ' } else { b })
                    .collect();
                MessageDataItem::BodyExt {
                    section: None,
                    origin: partial.map(|p| p.0),
                    data: NString::from(Literal::try_from(clean).unwrap()),
                }
            }),
            _ => unreachable!(),
        };
        v.extend(value);
    }
    if flags_too {
        v.push(MessageDataItem::Flags(convert::flags(&row.flags)));
    }
    match Vec1::try_from(v) {
        Ok(items) => encode(&Response::Data(Data::Fetch {
            seq: NonZeroU32::new(3).unwrap(),
            items,
        })),
        Err(_) => Vec::new(),
    }
}

fn check(
    items: &[MessageDataItemName],
    row: &MsgRow,
    meta: Option<&Meta>,
    body: &[u8],
    flags_too: bool,
) {
    assert!(items.iter().all(handles));
    let mut got = b"before".to_vec();
    fetch(&mut got, 3, items, row, meta, Some(body), flags_too);
    let mut want = b"before".to_vec();
    want.extend(expected(items, row, meta, body, flags_too));
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&want),
        "{items:?}"
    );
}

#[test]
fn message_list_items_match_imap_codec() {
    use MessageDataItemName as N;
    let all = [
        N::Uid,
        N::Flags,
        N::InternalDate,
        N::Rfc822Size,
        N::Envelope,
        N::ModSeq,
    ];
    for env in envelopes() {
        for flags in [
            "",
            "\\Seen",
            "\\seen $Forwarded \\Flagged custom",
            "bad(flag \\Answered",
        ] {
            let m = meta(env.clone());
            check(&all, &row(flags), Some(&m), b"", false);
            check(&[N::Flags, N::Envelope], &row(flags), Some(&m), b"", false);
            check(&[N::Envelope, N::Uid], &row(flags), None, b"", true);
        }
    }
    let mut zero = row("");
    zero.uid = 0;
    zero.modseq = 0;
    check(&[N::Uid, N::ModSeq], &zero, None, b"", false);
    check(&[N::Uid, N::ModSeq, N::Flags], &zero, None, b"", false);
}

#[test]
fn body_matches_imap_codec() {
    use MessageDataItemName as N;
    let m = meta(Env::default());
    let body = b"Subject: x\r\n\r\nnul \0 here\r\n";
    let whole = N::BodyExt {
        section: None,
        partial: None,
        peek: false,
    };
    let part = N::BodyExt {
        section: None,
        partial: Some((3, NonZeroU32::new(9).unwrap())),
        peek: true,
    };
    check(
        &[N::Uid, whole.clone()],
        &row("\\Seen"),
        Some(&m),
        body,
        true,
    );
    check(&[part, N::Uid], &row(""), Some(&m), body, false);
    check(&[N::Uid, whole], &row(""), None, body, false);
}
