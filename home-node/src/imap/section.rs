//! BODY[section] and BINARY[section] contents (RFC 3501 6.4.5, RFC 3516),
//! cut from the message as apps see it with the offsets of its cached structure.

use super::mime::{Kind, Part};
use imap_codec::imap_types::fetch::{Part as PartPath, Section};
use std::borrow::Cow;
use std::num::NonZeroU32;

/// The `n`th part of a message whose root part is `root` (a non-multipart
/// message has one part: its body).
fn message_child(root: &Part, n: u32) -> Option<&Part> {
    match &root.kind {
        Kind::Multi(kids) => kids.get(n.checked_sub(1)? as usize),
        _ => (n == 1).then_some(root),
    }
}

/// The part at a part path like 1.2.3.
pub fn find<'p>(root: &'p Part, path: &[NonZeroU32]) -> Option<&'p Part> {
    let (first, rest) = path.split_first()?;
    let mut cur = message_child(root, first.get())?;
    for n in rest {
        cur = match &cur.kind {
            Kind::Multi(kids) => kids.get(n.get() as usize - 1)?,
            Kind::Message(_, inner) => message_child(inner, n.get())?,
            Kind::Leaf => return None,
        };
    }
    Some(cur)
}

fn slice(raw: &[u8], range: (u32, u32)) -> &[u8] {
    let end = (range.1 as usize).min(raw.len());
    let start = (range.0 as usize).min(end);
    &raw[start..end]
}

/// The message a HEADER/TEXT specifier addresses: the whole message, or the
/// message inside a message/rfc822 part.
fn message_at<'p>(root: &'p Part, part: Option<&PartPath>) -> Option<&'p Part> {
    match part {
        None => Some(root),
        Some(p) => match &find(root, p.0.as_ref())?.kind {
            Kind::Message(_, inner) => Some(inner),
            _ => None,
        },
    }
}

/// The bytes of a section; empty for a part that does not exist.
pub fn section<'r>(raw: &'r [u8], root: &Part, section: Option<&Section>) -> Cow<'r, [u8]> {
    let empty = Cow::Borrowed(&b""[..]);
    let Some(section) = section else {
        return Cow::Borrowed(raw);
    };
    match section {
        Section::Part(p) => match find(root, p.0.as_ref()) {
            Some(part) => Cow::Borrowed(slice(raw, part.body)),
            None => empty,
        },
        Section::Header(p) => match message_at(root, p.as_ref()) {
            Some(m) => Cow::Borrowed(slice(raw, m.header)),
            None => empty,
        },
        Section::Text(p) => match message_at(root, p.as_ref()) {
            Some(m) => Cow::Borrowed(slice(raw, m.body)),
            None => empty,
        },
        Section::Mime(p) => match find(root, p.0.as_ref()) {
            Some(part) => Cow::Borrowed(slice(raw, part.header)),
            None => empty,
        },
        Section::HeaderFields(p, names) | Section::HeaderFieldsNot(p, names) => {
            let not = matches!(section, Section::HeaderFieldsNot(..));
            let Some(m) = message_at(root, p.as_ref()) else {
                return empty;
            };
            let names: Vec<Vec<u8>> = names
                .as_ref()
                .iter()
                .map(|n| n.as_ref().to_ascii_lowercase())
                .collect();
            Cow::Owned(header_fields(slice(raw, m.header), &names, not))
        }
    }
}

/// The header fields named (or, with `not`, all others), then an empty line.
pub fn header_fields(block: &[u8], names: &[Vec<u8>], not: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for field in fields(block) {
        let name = field
            .iter()
            .position(|&b| b == b':')
            .map(|p| field[..p].trim_ascii().to_ascii_lowercase());
        let Some(name) = name else { continue };
        if names.contains(&name) != not {
            out.extend_from_slice(field);
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The fields of a header block, each with its continuation lines and line end.
pub fn fields(block: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < block.len() {
        let line_end = block[i..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(block.len(), |p| i + p + 1);
        let line = &block[i..line_end];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if !continuation && i > start {
            out.push(&block[start..i]);
            start = i;
        }
        i = line_end;
    }
    if i > start {
        out.push(&block[start..i]);
    }
    out
}

/// BINARY[part]: the part's content with its transfer encoding undone
/// (RFC 3516); None when the encoding is unknown (UNKNOWN-CTE).
pub fn binary<'r>(raw: &'r [u8], root: &Part, path: &[NonZeroU32]) -> Option<Cow<'r, [u8]>> {
    let part = if path.is_empty() {
        return Some(Cow::Borrowed(raw));
    } else {
        match find(root, path) {
            Some(p) => p,
            None => return Some(Cow::Borrowed(b"")),
        }
    };
    let body = slice(raw, part.body);
    match part.encoding.to_ascii_lowercase().as_str() {
        "7bit" | "8bit" | "binary" | "" => Some(Cow::Borrowed(body)),
        "base64" => {
            use base64::Engine;
            let clean: Vec<u8> = body
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            base64::engine::general_purpose::STANDARD
                .decode(&clean)
                .or_else(|_| {
                    base64::engine::general_purpose::STANDARD_NO_PAD.decode(clean.trim_ascii_end())
                })
                .ok()
                .map(Cow::Owned)
        }
        "quoted-printable" => Some(Cow::Owned(quoted_printable(body))),
        _ => None,
    }
}

fn quoted_printable(body: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        if b == b'=' {
            match (body.get(i + 1), body.get(i + 2)) {
                (Some(b'\r'), Some(b'\n')) => i += 3,
                (Some(b'\n'), _) => i += 2,
                (Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                    out.push(hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0));
                    i += 3;
                }
                _ => {
                    out.push(b);
                    i += 1;
                }
            }
        } else {
            out.push(b);
            i += 1;
        }
    }
    out
}

/// A partial fetch `<origin.length>` of some bytes.
pub fn partial(data: &[u8], partial: Option<(u32, NonZeroU32)>) -> &[u8] {
    match partial {
        None => data,
        Some((origin, len)) => {
            let start = (origin as usize).min(data.len());
            let end = start.saturating_add(len.get() as usize).min(data.len());
            &data[start..end]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imap::mime::Meta;
    use imap_codec::imap_types::core::{AString, Vec1};

    const MSG: &[u8] = b"Subject: x\r\nX-A: 1\r\n continued\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nh=C3=A9llo=\r\n world\r\n--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: in\r\n\r\ninside\r\n--b--\r\n";

    fn n(v: u32) -> NonZeroU32 {
        NonZeroU32::new(v).unwrap()
    }

    #[test]
    fn sections() {
        let m = Meta::build(MSG, false, None);
        let t = &m.tree;
        let part = |p: Vec<u32>| {
            PartPath(Vec1::try_from(p.into_iter().map(n).collect::<Vec<_>>()).unwrap())
        };
        assert_eq!(
            &*section(MSG, t, Some(&Section::Part(part(vec![1])))),
            b"h=C3=A9llo=\r\n world"
        );
        assert_eq!(
            &*section(MSG, t, Some(&Section::Header(Some(part(vec![2]))))),
            b"Subject: in\r\n\r\n"
        );
        assert_eq!(
            &*section(MSG, t, Some(&Section::Text(Some(part(vec![2]))))),
            b"inside"
        );
        assert_eq!(
            &*section(MSG, t, Some(&Section::Part(part(vec![2, 1])))),
            b"inside"
        );
        assert_eq!(
            &*section(MSG, t, Some(&Section::Mime(part(vec![2])))),
            b"Content-Type: message/rfc822\r\n\r\n"
        );
        assert_eq!(&*section(MSG, t, Some(&Section::Part(part(vec![3])))), b"");
        let names = Vec1::from(AString::try_from("x-a").unwrap());
        assert_eq!(
            &*section(MSG, t, Some(&Section::HeaderFields(None, names.clone()))),
            b"X-A: 1\r\n continued\r\n\r\n"
        );
        let not = section(MSG, t, Some(&Section::HeaderFieldsNot(None, names)));
        assert!(
            not.starts_with(b"Subject: x\r\nContent-Type"),
            "{:?}",
            String::from_utf8_lossy(&not)
        );
        assert_eq!(&*binary(MSG, t, &[n(1)]).unwrap(), "héllo world".as_bytes());
        assert_eq!(partial(b"0123456789", Some((2, n(3)))), b"234");
        assert_eq!(partial(b"0123", Some((9, n(3)))), b"");
    }
}
