//! What IMAP needs to know of a message's MIME structure (RFC 3501 7.4.2:
//! ENVELOPE, BODYSTRUCTURE, section offsets), computed once with mail-parser
//! from the message as apps see it and kept in the store's encrypted cache.

use mail_parser::{Address, HeaderValue, MessageParser, MimeHeaders, PartType};
use omb_shared::pgp::MessageKey;
use serde::{Deserialize, Serialize};

/// Bumped when the layout changes: older cache entries are made again.
const VERSION: u8 = 3;
/// Nesting deeper than this is shown as an opaque part.
const MAX_DEPTH: usize = 16;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub version: u8,
    /// Made from the stored ciphertext (`ciphertext_to_apps`), not the plaintext.
    pub ciphertext: bool,
    /// Length of the message as apps get it (RFC822.SIZE = length of BODY[]).
    pub size: u32,
    pub envelope: Env,
    pub tree: Part,
    /// The message's header block (with the empty line): header fetches and
    /// header searches need no decryption.
    #[serde(with = "bytes")]
    pub header: Vec<u8>,
    /// The message's OpenPGP session key (`MessageKey::to_bytes`; empty when
    /// apps get the stored form): reading it again skips the public-key step.
    /// No more secret than the message and its headers next to it in this
    /// encrypted cache.
    #[serde(with = "bytes")]
    pub key: Vec<u8>,
}

/// ENVELOPE fields, raw (RFC 2047 words left encoded, as RFC 3501 asks).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Env {
    #[serde(with = "opt_bytes")]
    pub date: Option<Vec<u8>>,
    #[serde(with = "opt_bytes")]
    pub subject: Option<Vec<u8>>,
    pub from: Vec<Addr>,
    pub sender: Vec<Addr>,
    pub reply_to: Vec<Addr>,
    pub to: Vec<Addr>,
    pub cc: Vec<Addr>,
    pub bcc: Vec<Addr>,
    #[serde(with = "opt_bytes")]
    pub in_reply_to: Option<Vec<u8>>,
    #[serde(with = "opt_bytes")]
    pub message_id: Option<Vec<u8>>,
}

/// One ENVELOPE address; a group start has only `mailbox` (the group name),
/// a group end has nothing (RFC 3501 7.4.2).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Addr {
    #[serde(with = "opt_bytes")]
    pub name: Option<Vec<u8>>,
    #[serde(with = "opt_bytes")]
    pub mailbox: Option<Vec<u8>>,
    #[serde(with = "opt_bytes")]
    pub host: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// Offsets into the whole message: its header block (with the empty line)
    /// and its body.
    pub header: (u32, u32),
    pub body: (u32, u32),
    pub ctype: String,
    pub subtype: String,
    pub params: Vec<(String, String)>,
    pub id: Option<String>,
    pub description: Option<String>,
    pub encoding: String,
    pub md5: Option<String>,
    pub disposition: Option<(String, Vec<(String, String)>)>,
    pub language: Vec<String>,
    pub location: Option<String>,
    pub lines: u32,
    pub kind: Kind,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    #[default]
    Leaf,
    Multi(Vec<Part>),
    /// message/rfc822: the envelope and structure of the message inside.
    Message(Box<Env>, Box<Part>),
}

/// Byte strings as serde bytes (postcard then copies them whole, instead of
/// element by element as for a `Vec<u8>`).
mod bytes {
    use serde::{de, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub struct Bytes;
    impl de::Visitor<'_> for Bytes {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("bytes")
        }
        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_bytes(Bytes)
    }
}

mod opt_bytes {
    use serde::{de, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_some(&serde_bytes_ref(v)),
            None => s.serialize_none(),
        }
    }

    struct Wrap<'a>(&'a [u8]);
    impl serde::Serialize for Wrap<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }
    fn serde_bytes_ref(v: &[u8]) -> Wrap<'_> {
        Wrap(v)
    }

    struct OptBytes;
    impl<'de> de::Visitor<'de> for OptBytes {
        type Value = Option<Vec<u8>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("optional bytes")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            super::bytes::deserialize(d).map(Some)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        d.deserialize_option(OptBytes)
    }
}

/// The short part of [`Meta`] that a message list reads (ENVELOPE and
/// RFC822.SIZE), cached apart: written from a borrowed envelope, read into
/// an owned one (the same postcard layout).
#[derive(Serialize)]
struct EnvelopeRef<'a> {
    version: u8,
    ciphertext: bool,
    size: u32,
    envelope: &'a Env,
}

#[derive(Deserialize)]
struct EnvelopeOwned {
    version: u8,
    ciphertext: bool,
    size: u32,
    envelope: Env,
}

impl Meta {
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// The envelope part (see [`Meta::from_envelope_bytes`]).
    pub fn envelope_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(&EnvelopeRef {
            version: self.version,
            ciphertext: self.ciphertext,
            size: self.size,
            envelope: &self.envelope,
        })
        .unwrap_or_default()
    }

    /// A `Meta` with only its size and envelope (no structure, no header
    /// block, no key), for items that need no more; None as for `from_bytes`.
    pub fn from_envelope_bytes(bytes: &[u8], ciphertext: bool) -> Option<Meta> {
        let e: EnvelopeOwned = postcard::from_bytes(bytes).ok()?;
        (e.version == VERSION && e.ciphertext == ciphertext).then(|| Meta {
            version: e.version,
            ciphertext: e.ciphertext,
            size: e.size,
            envelope: e.envelope,
            ..Meta::default()
        })
    }

    /// None for a cache entry of another layout or view (then it is made again).
    pub fn from_bytes(bytes: &[u8], ciphertext: bool) -> Option<Meta> {
        let meta: Meta = postcard::from_bytes(bytes).ok()?;
        (meta.version == VERSION && meta.ciphertext == ciphertext).then_some(meta)
    }

    /// Analyses a message as apps see it; `key` is the session key it was
    /// decrypted with.
    pub fn build(message: &[u8], ciphertext: bool, key: Option<&MessageKey>) -> Meta {
        let (envelope, tree) = analyse(message, 0, 0);
        Meta {
            version: VERSION,
            ciphertext,
            key: key.map(MessageKey::to_bytes).unwrap_or_default(),
            size: message.len().min(u32::MAX as usize) as u32,
            header: message[..(tree.header.1 as usize).min(message.len())].to_vec(),
            envelope,
            tree,
        }
    }
}

/// The envelope and structure of the message `raw`, which sits at `base` in
/// the whole message.
fn analyse(raw: &[u8], base: u32, depth: usize) -> (Env, Part) {
    let Some(msg) = MessageParser::default().parse(raw) else {
        let split = header_end(raw);
        let part = Part {
            header: (base, base + split as u32),
            body: (base + split as u32, base + raw.len() as u32),
            ctype: "text".into(),
            subtype: "plain".into(),
            encoding: "7BIT".into(),
            lines: count_lines(&raw[split..]),
            ..Part::default()
        };
        return (Env::default(), part);
    };
    let env = envelope(&msg, raw);
    let tree = part(&msg, 0, raw, base, depth);
    (env, tree)
}

fn part(msg: &mail_parser::Message, index: usize, raw: &[u8], base: u32, depth: usize) -> Part {
    let Some(p) = msg.parts.get(index) else {
        return Part::default();
    };
    let len = raw.len() as u32;
    let (h0, b0) = (p.offset_header.min(len), p.offset_body.min(len));
    let b1 = if index == 0 {
        len
    } else {
        p.offset_end.clamp(b0, len)
    };
    let ct = p.content_type();
    let (mut ctype, mut subtype) = match ct {
        Some(ct) => (
            ct.c_type.to_ascii_lowercase(),
            ct.c_subtype.as_deref().unwrap_or("").to_ascii_lowercase(),
        ),
        None => ("text".to_string(), "plain".to_string()),
    };
    if subtype.is_empty() {
        (ctype, subtype) = ("text".into(), "plain".into());
    }
    let mut params: Vec<(String, String)> = ct
        .and_then(|c| c.attributes.as_ref())
        .map(|a| {
            a.iter()
                .map(|x| (x.name.to_string(), x.value.to_string()))
                .collect()
        })
        .unwrap_or_default();
    if ct.is_none() {
        params.push(("charset".into(), "us-ascii".into()));
    }
    let body = &raw[b0 as usize..b1 as usize];
    let mut out = Part {
        header: (base + h0, base + b0),
        body: (base + b0, base + b1),
        id: p.content_id().map(|s| format!("<{s}>")),
        description: p.content_description().map(str::to_string),
        encoding: p
            .content_transfer_encoding()
            .unwrap_or("7bit")
            .to_ascii_uppercase(),
        md5: p
            .headers
            .iter()
            .find(|h| h.name().eq_ignore_ascii_case("Content-MD5"))
            .and_then(|h| h.value().as_text())
            .map(str::to_string),
        disposition: p.content_disposition().map(|d| {
            (
                d.c_type.to_string(),
                d.attributes
                    .as_ref()
                    .map(|a| {
                        a.iter()
                            .map(|x| (x.name.to_string(), x.value.to_string()))
                            .collect()
                    })
                    .unwrap_or_default(),
            )
        }),
        language: match p.content_language() {
            HeaderValue::Text(t) => vec![t.to_string()],
            HeaderValue::TextList(l) => l.iter().map(|t| t.to_string()).collect(),
            _ => Vec::new(),
        },
        location: p.content_location().map(str::to_string),
        lines: 0,
        kind: Kind::Leaf,
        ctype,
        subtype,
        params,
    };
    match &p.body {
        PartType::Multipart(children) if depth < MAX_DEPTH => {
            let kids: Vec<Part> = children
                .iter()
                .map(|&c| part(msg, c as usize, raw, base, depth + 1))
                .collect();
            if kids.is_empty() {
                out.kind = Kind::Leaf;
            } else {
                out.kind = Kind::Multi(kids);
            }
        }
        PartType::Message(_) if depth < MAX_DEPTH => {
            let (env, inner) = analyse(body, base + b0, depth + 1);
            out.lines = count_lines(body);
            out.kind = Kind::Message(Box::new(env), Box::new(inner));
        }
        _ => {
            if out.ctype == "text" {
                out.lines = count_lines(body);
            }
        }
    }
    out
}

fn envelope(msg: &mail_parser::Message, raw: &[u8]) -> Env {
    let headers = msg
        .parts
        .first()
        .map(|p| p.headers.as_slice())
        .unwrap_or(&[]);
    let raw_value = |name: &str| -> Option<Vec<u8>> {
        let h = headers
            .iter()
            .find(|h| h.name().eq_ignore_ascii_case(name))?;
        let (s, e) = (
            h.offset_start as usize,
            (h.offset_end as usize).min(raw.len()),
        );
        let v: Vec<u8> = raw
            .get(s..e)?
            .iter()
            .copied()
            .filter(|&b| b != b'\r' && b != b'\n')
            .collect();
        let v = trim(&v).to_vec();
        Some(v)
    };
    let addrs = |a: Option<&Address>| a.map(addresses).unwrap_or_default();
    let from = addrs(msg.from());
    let sender = match addrs(msg.sender()) {
        s if s.is_empty() => from.clone(),
        s => s,
    };
    let reply_to = match addrs(msg.reply_to()) {
        r if r.is_empty() => from.clone(),
        r => r,
    };
    Env {
        date: raw_value("Date"),
        subject: raw_value("Subject"),
        from,
        sender,
        reply_to,
        to: addrs(msg.to()),
        cc: addrs(msg.cc()),
        bcc: addrs(msg.bcc()),
        in_reply_to: raw_value("In-Reply-To"),
        message_id: raw_value("Message-ID"),
    }
}

fn addresses(a: &Address) -> Vec<Addr> {
    let one = |x: &mail_parser::Addr| {
        let address = x.address.as_deref().unwrap_or("");
        let (mailbox, host) = match address.rsplit_once('@') {
            Some((m, h)) => (m, h),
            None => (address, ""),
        };
        Addr {
            name: x.name.as_deref().map(encode_word),
            mailbox: Some(mailbox.as_bytes().to_vec()),
            host: (!host.is_empty()).then(|| host.as_bytes().to_vec()),
        }
    };
    match a {
        Address::List(list) => list.iter().map(one).collect(),
        Address::Group(groups) => {
            let mut out = Vec::new();
            for g in groups {
                match &g.name {
                    Some(name) => {
                        out.push(Addr {
                            mailbox: Some(name.as_bytes().to_vec()),
                            ..Addr::default()
                        });
                        out.extend(g.addresses.iter().map(one));
                        out.push(Addr::default());
                    }
                    None => out.extend(g.addresses.iter().map(one)),
                }
            }
            out
        }
    }
}

/// A display name as ENVELOPE carries it: ASCII as is, anything else as an
/// RFC 2047 encoded word (mail-parser hands names over decoded).
fn encode_word(name: &str) -> Vec<u8> {
    if name.is_ascii() {
        return name.as_bytes().to_vec();
    }
    use base64::Engine;
    format!(
        "=?utf-8?b?{}?=",
        base64::engine::general_purpose::STANDARD.encode(name)
    )
    .into_bytes()
}

fn trim(v: &[u8]) -> &[u8] {
    let s = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let e = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(s, |e| e + 1);
    &v[s..e]
}

/// Lines of a body; a last line without its line end counts too.
fn count_lines(body: &[u8]) -> u32 {
    let ends = body.iter().filter(|&&b| b == b'\n').count();
    let open = !body.is_empty() && !body.ends_with(b"\n");
    (ends + usize::from(open)) as u32
}

/// Where the header block ends (after the empty line), or the whole length.
pub fn header_end(raw: &[u8]) -> usize {
    if raw.starts_with(b"\r\n") {
        return 2;
    }
    if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
        return p + 4;
    }
    if let Some(p) = raw.windows(2).position(|w| w == b"\n\n") {
        return p + 2;
    }
    raw.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIXED: &[u8] = b"From: =?utf-8?q?J=C3=B6rg?= <jorg@example.org>\r\nTo: a@b.c, Group: x@y.z;\r\nSubject: =?utf-8?q?hi?=\r\nDate: Mon, 7 Feb 1994 21:52:25 -0800\r\nMessage-ID: <id@x>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\npreamble\r\n--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nline one\r\nline two\r\n--XX\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner body\r\n--XX--\r\n";

    #[test]
    fn structure_and_envelope() {
        let m = Meta::build(MIXED, false, None);
        assert_eq!(m.size as usize, MIXED.len());
        assert_eq!(m.envelope.subject.as_deref(), Some(&b"=?utf-8?q?hi?="[..]));
        assert_eq!(
            m.envelope.from[0].name.as_deref(),
            Some(&b"=?utf-8?b?SsO2cmc=?="[..])
        );
        assert_eq!(
            m.envelope.from[0].host.as_deref(),
            Some(&b"example.org"[..])
        );
        assert_eq!(m.envelope.sender, m.envelope.from);
        assert_eq!(m.envelope.to.len(), 4, "{:?}", m.envelope.to);
        let Kind::Multi(kids) = &m.tree.kind else {
            panic!("{:?}", m.tree)
        };
        assert_eq!(kids.len(), 2);
        let text = &MIXED[kids[0].body.0 as usize..kids[0].body.1 as usize];
        assert!(
            text.starts_with(b"line one\r\nline two"),
            "{:?}",
            String::from_utf8_lossy(text)
        );
        assert_eq!(kids[0].subtype, "plain");
        let Kind::Message(env, inner) = &kids[1].kind else {
            panic!()
        };
        assert_eq!(env.subject.as_deref(), Some(&b"inner"[..]));
        let body = &MIXED[inner.body.0 as usize..inner.body.1 as usize];
        assert!(
            body.starts_with(b"inner body"),
            "{:?}",
            String::from_utf8_lossy(body)
        );
        let again = Meta::from_bytes(&m.to_bytes(), false).unwrap();
        assert_eq!(again, m);
        let short = Meta::from_envelope_bytes(&m.envelope_bytes(), false).unwrap();
        assert_eq!((short.size, &short.envelope), (m.size, &m.envelope));
        assert!(Meta::from_envelope_bytes(&m.envelope_bytes(), true).is_none());
        assert!(Meta::from_bytes(&m.to_bytes(), true).is_none());
    }
}
