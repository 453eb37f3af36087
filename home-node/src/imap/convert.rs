//! From the cached metadata and stored flags to imap-types values, and folder
//! names between the store (UTF-8) and the wire (modified UTF-7, RFC 3501
//! 5.1.3, or UTF-8 once the client enabled UTF8=ACCEPT, RFC 6855).

use super::mime::{Addr, Env, Kind, Part};
use imap_codec::imap_types::body::{
    BasicFields, Body, BodyStructure, Disposition, Language, Location, MultiPartExtensionData,
    SinglePartExtensionData, SpecificFields,
};
use imap_codec::imap_types::core::{IString, NString, Vec1};
use imap_codec::imap_types::envelope::{Address, Envelope};
use imap_codec::imap_types::flag::{Flag, FlagFetch};

fn nstring(v: Option<&[u8]>) -> NString<'static> {
    v.and_then(|v| NString::try_from(v.to_vec()).ok())
        .unwrap_or(NString::NIL)
}

fn istring(s: &str) -> IString<'static> {
    IString::try_from(s.to_string())
        .or_else(|_| IString::try_from(s.replace('\0', "")))
        .unwrap_or_else(|_| {
            IString::try_from("").unwrap_or(IString::Quoted(
                imap_codec::imap_types::core::Quoted::unvalidated(""),
            ))
        })
}

fn address(a: &Addr) -> Address<'static> {
    Address {
        name: nstring(a.name.as_deref()),
        adl: NString::NIL,
        mailbox: nstring(a.mailbox.as_deref()),
        host: nstring(a.host.as_deref()),
    }
}

pub fn envelope(e: &Env) -> Envelope<'static> {
    let list = |v: &[Addr]| v.iter().map(address).collect();
    Envelope {
        date: nstring(e.date.as_deref()),
        subject: nstring(e.subject.as_deref()),
        from: list(&e.from),
        sender: list(&e.sender),
        reply_to: list(&e.reply_to),
        to: list(&e.to),
        cc: list(&e.cc),
        bcc: list(&e.bcc),
        in_reply_to: nstring(e.in_reply_to.as_deref()),
        message_id: nstring(e.message_id.as_deref()),
    }
}

fn params(p: &[(String, String)]) -> Vec<(IString<'static>, IString<'static>)> {
    p.iter().map(|(k, v)| (istring(k), istring(v))).collect()
}

fn disposition(p: &Part) -> Option<Disposition<'static>> {
    Some(Disposition {
        disposition: p
            .disposition
            .as_ref()
            .map(|(d, ps)| (istring(d), params(ps))),
        tail: Some(Language {
            language: p.language.iter().map(|l| istring(l)).collect(),
            tail: Some(Location {
                location: nstring(p.location.as_deref().map(str::as_bytes)),
                extensions: Vec::new(),
            }),
        }),
    })
}

/// BODYSTRUCTURE (`extended`) or BODY.
pub fn body_structure(p: &Part, extended: bool) -> BodyStructure<'static> {
    if let Kind::Multi(kids) = &p.kind {
        let bodies: Vec<BodyStructure<'static>> =
            kids.iter().map(|k| body_structure(k, extended)).collect();
        if let Ok(bodies) = Vec1::try_from(bodies) {
            return BodyStructure::Multi {
                bodies,
                subtype: istring(&p.subtype),
                extension_data: extended.then(|| MultiPartExtensionData {
                    parameter_list: params(&p.params),
                    tail: disposition(p),
                }),
            };
        }
    }
    let basic = BasicFields {
        parameter_list: params(&p.params),
        id: nstring(p.id.as_deref().map(str::as_bytes)),
        description: nstring(p.description.as_deref().map(str::as_bytes)),
        content_transfer_encoding: istring(&p.encoding),
        size: p.body.1.saturating_sub(p.body.0),
    };
    let specific = match &p.kind {
        Kind::Message(env, inner) => SpecificFields::Message {
            envelope: Box::new(envelope(env)),
            body_structure: Box::new(body_structure(inner, extended)),
            number_of_lines: p.lines,
        },
        _ if p.ctype == "text" => SpecificFields::Text {
            subtype: istring(&p.subtype),
            number_of_lines: p.lines,
        },
        _ => SpecificFields::Basic {
            r#type: istring(&p.ctype),
            subtype: istring(&p.subtype),
        },
    };
    BodyStructure::Single {
        body: Body { basic, specific },
        extension_data: extended.then(|| SinglePartExtensionData {
            md5: nstring(p.md5.as_deref().map(str::as_bytes)),
            tail: disposition(p),
        }),
    }
}

/// The stored flag string as FETCH FLAGS items.
pub fn flags(stored: &str) -> Vec<FlagFetch<'static>> {
    stored
        .split_whitespace()
        .filter_map(|f| Flag::try_from(f).ok())
        .map(|f| FlagFetch::Flag(f.into_static_flag()))
        .collect()
}

trait IntoStaticFlag {
    fn into_static_flag(self) -> Flag<'static>;
}
impl IntoStaticFlag for Flag<'_> {
    fn into_static_flag(self) -> Flag<'static> {
        use imap_codec::imap_types::IntoStatic;
        self.into_static()
    }
}

/// Whether a stored flag string holds a flag (case-insensitive).
pub fn has_flag(stored: &str, flag: &str) -> bool {
    stored
        .split_whitespace()
        .any(|f| f.eq_ignore_ascii_case(flag))
}

/// A folder name from the wire: modified UTF-7 unless UTF-8 was enabled.
/// None when the name is not valid modified UTF-7.
pub fn name_from_wire(raw: &[u8], utf8: bool) -> Option<String> {
    let s = std::str::from_utf8(raw).ok()?;
    if utf8 {
        return Some(s.to_string());
    }
    if !s.is_ascii() {
        // Pre-RFC 6855 clients still send UTF-8 sometimes; take it as is.
        return Some(s.to_string());
    }
    decode_mutf7(s)
}

/// A folder name for the wire.
pub fn name_to_wire(name: &str, utf8: bool) -> String {
    if utf8 {
        name.to_string()
    } else {
        encode_mutf7(name)
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

pub fn encode_mutf7(s: &str) -> String {
    let mut out = String::new();
    let mut pending: Vec<u16> = Vec::new();
    let flush = |pending: &mut Vec<u16>, out: &mut String| {
        if pending.is_empty() {
            return;
        }
        let bytes: Vec<u8> = pending.iter().flat_map(|u| u.to_be_bytes()).collect();
        out.push('&');
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            let chars = chunk.len() + 1;
            for i in 0..chars {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out.push('-');
        pending.clear();
    };
    for c in s.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut pending, &mut out);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut buf = [0u16; 2];
            pending.extend_from_slice(c.encode_utf16(&mut buf));
        }
    }
    flush(&mut pending, &mut out);
    out
}

pub fn decode_mutf7(s: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let dash = after.find('-')?;
        let enc = &after[..dash];
        if enc.is_empty() {
            out.push('&');
        } else {
            let mut bits = 0u32;
            let mut nbits = 0;
            let mut units = Vec::new();
            let mut bytes = Vec::new();
            for ch in enc.bytes() {
                let v = B64.iter().position(|&b| b == ch)? as u32;
                bits = (bits << 6) | v;
                nbits += 6;
                if nbits >= 8 {
                    nbits -= 8;
                    bytes.push((bits >> nbits) as u8);
                    bits &= (1 << nbits) - 1;
                }
            }
            for pair in bytes.chunks(2) {
                if pair.len() == 2 {
                    units.push(u16::from_be_bytes([pair[0], pair[1]]));
                }
            }
            out.push_str(&String::from_utf16(&units).ok()?);
        }
        rest = &after[dash + 1..];
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modified_utf7_round_trips() {
        assert_eq!(encode_mutf7("Entwürfe"), "Entw&APw-rfe");
        assert_eq!(
            encode_mutf7("~peter/mail/台北/日本語"),
            "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
        );
        assert_eq!(encode_mutf7("a&b"), "a&-b");
        for s in ["Entwürfe", "~peter/mail/台北/日本語", "a&b", "Ελληνικά 😀"] {
            assert_eq!(decode_mutf7(&encode_mutf7(s)).as_deref(), Some(s));
        }
        assert_eq!(decode_mutf7("&U,BTFw-").as_deref(), Some("台北"));
        assert!(decode_mutf7("&U,B").is_none());
    }
}
