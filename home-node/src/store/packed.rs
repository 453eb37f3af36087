//! How a message body is kept in `messages.data`. A PGP/MIME message whose
//! armoured OpenPGP block is laid out exactly as sequoia armours (64-column
//! base64 lines, CRC-24 line, CRLF) is kept *packed*: its MIME text around
//! the block, and the block as binary OpenPGP. Every other message is kept as
//! it came (the rows written before packing existed are such rows; both read).
//!
//! The binary message is what the node decrypts: a packed row is about a
//! quarter smaller (fewer SQLite overflow pages to read per FETCH) and needs
//! no base64 decoding on every reading ([`split`] finds it). [`unpack`] gives back the stored
//! message byte for byte, for apps that get the ciphertext, POP3 and
//! `omb-node mail show --raw`; [`pack`] keeps a message packed only when that
//! holds.
//!
//! Packed layout: [`MAGIC`], the MIME text before the block (u32 length,
//! little-endian, then the bytes), the MIME text after it (the same), then the
//! binary OpenPGP message to the end. A message as it came never starts with
//! NUL (RFC 5322 text), so the magic tells the two apart.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine;
use std::borrow::Cow;

const MAGIC: &[u8] = b"\0omb-packed-pgp-1\0";
const BEGIN: &[u8] = b"-----BEGIN PGP MESSAGE-----";
const END: &[u8] = b"-----END PGP MESSAGE-----";
/// Base64 characters per armour line (sequoia's `LINE_LENGTH`).
const LINE: usize = 64;

/// A stored message, as [`split`] sees it.
pub(crate) enum Stored<'a> {
    /// Kept as it came.
    AsIs(&'a [u8]),
    /// Packed: the MIME text around the armoured block, and the block's
    /// binary OpenPGP message.
    Packed {
        head: &'a [u8],
        tail: &'a [u8],
        binary: &'a [u8],
    },
}

/// Reads a stored message's layout. A packed row that does not parse (damage)
/// is handed over as it is stored.
pub(crate) fn split(stored: &[u8]) -> Stored<'_> {
    fn part(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
        let (len, rest) = bytes.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        (rest.len() >= len).then(|| rest.split_at(len))
    }
    let Some(packed) = stored.strip_prefix(MAGIC) else {
        return Stored::AsIs(stored);
    };
    let parts = part(packed).and_then(|(head, rest)| {
        let (tail, binary) = part(rest)?;
        Some((head, tail, binary))
    });
    match parts {
        Some((head, tail, binary)) => Stored::Packed { head, tail, binary },
        None => Stored::AsIs(stored),
    }
}

/// The message packed, or None when it has no armoured block that packing
/// gives back byte for byte (it is then kept as it came).
pub(crate) fn pack(message: &[u8]) -> Option<Vec<u8>> {
    if message.starts_with(MAGIC) {
        return None;
    }
    let start = find(message, BEGIN)?;
    let end = start + find(&message[start..], END)? + END.len();
    let block = &message[start..end];
    let binary = crate::access::armor::dearmor(block)?;
    if armour(&binary) != block {
        return None;
    }
    from_parts(&message[..start], &binary, &message[end..])
}

/// The packed row of the message that is `head`, then `binary` armoured as
/// [`unpack`] armours it, then `tail`; None past 4 GiB of text.
pub(crate) fn from_parts(head: &[u8], binary: &[u8], tail: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(MAGIC.len() + 8 + head.len() + tail.len() + binary.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&u32::try_from(head.len()).ok()?.to_le_bytes());
    out.extend_from_slice(head);
    out.extend_from_slice(&u32::try_from(tail.len()).ok()?.to_le_bytes());
    out.extend_from_slice(tail);
    out.extend_from_slice(binary);
    Some(out)
}

/// A message to store: packed when [`pack`] can, else as it came.
pub(crate) fn for_storage(message: &[u8]) -> Cow<'_, [u8]> {
    match pack(message) {
        Some(packed) => Cow::Owned(packed),
        None => Cow::Borrowed(message),
    }
}

/// The message as it came, whichever way it is stored.
pub fn unpack(stored: &[u8]) -> Cow<'_, [u8]> {
    match split(stored) {
        Stored::AsIs(m) => Cow::Borrowed(m),
        Stored::Packed { head, tail, binary } => {
            let block = armour(binary);
            let mut out = Vec::with_capacity(head.len() + block.len() + tail.len());
            out.extend_from_slice(head);
            out.extend_from_slice(&block);
            out.extend_from_slice(tail);
            Cow::Owned(out)
        }
    }
}

/// `binary` armoured as sequoia armours a message (RFC 9580 6.2, with the
/// CRC-24 line of RFC 4880), CRLF line ends, from the BEGIN line to the END
/// marker (the line end after it is the caller's).
fn armour(binary: &[u8]) -> Vec<u8> {
    let text = STANDARD.encode(binary);
    let mut out = Vec::with_capacity(text.len() + text.len() / LINE * 2 + 128);
    out.extend_from_slice(BEGIN);
    out.extend_from_slice(b"\r\n\r\n");
    for line in text.as_bytes().chunks(LINE) {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.push(b'=');
    let crc = crc24(binary).to_be_bytes();
    out.extend_from_slice(STANDARD_NO_PAD.encode(&crc[1..4]).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(END);
    out
}

/// CRC-24 of RFC 4880 6.1.
fn crc24(data: &[u8]) -> u32 {
    const INIT: u32 = 0xB7_04CE;
    const POLY: u32 = 0x86_4CFB;
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut crc = (i as u32) << 16;
            let mut bit = 0;
            while bit < 8 {
                crc <<= 1;
                if crc & 0x100_0000 != 0 {
                    crc ^= POLY;
                }
                bit += 1;
            }
            t[i] = crc & 0xFF_FFFF;
            i += 1;
        }
        t
    };
    let mut crc = INIT;
    for &b in data {
        crc = ((crc << 8) ^ TABLE[(((crc >> 16) as u8) ^ b) as usize]) & 0xFF_FFFF;
    }
    crc
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use omb_shared::pgp;

    #[test]
    fn crc24_of_a_known_value() {
        // RFC 4880 6.1's algorithm over "123456789" (the CRC-24/OpenPGP check value).
        assert_eq!(crc24(b"123456789"), 0x21_CF02);
    }

    #[test]
    fn sealed_messages_pack_and_come_back_byte_for_byte() {
        let cert = pgp::generate_cert(&["t@example.org".into()]).unwrap();
        // Sizes around the armour's line and group boundaries.
        for n in [0usize, 1, 2, 3, 47, 48, 49, 100, 3000, 20_000] {
            let plain: Vec<u8> = (0..n).map(|i| b"abcdefgh\r\n"[i % 10]).collect();
            let plain = [b"Subject: t\r\n\r\n".as_slice(), &plain].concat();
            let stored = pgp::encrypt_whole_message(&cert, &plain).unwrap();
            let packed = pack(&stored).expect("the relay's layout packs");
            assert!(packed.len() < stored.len());
            assert_eq!(unpack(&packed), stored.as_slice());
            let Stored::Packed { binary, .. } = split(&packed) else {
                panic!("packed row reads as packed");
            };
            assert_eq!(pgp::decrypt_bytes(&cert, binary).unwrap(), plain);
        }
    }

    #[test]
    fn messages_sealed_in_parts_are_what_packing_makes() {
        let cert = pgp::generate_cert(&["t@example.org".into()]).unwrap();
        for n in [0usize, 1, 2, 3, 47, 48, 49, 100, 3000, 20_000] {
            let plain: Vec<u8> = (0..n).map(|i| b"abcdefgh\r\n"[i % 10]).collect();
            let plain = [b"Subject: t\r\n\r\n".as_slice(), &plain].concat();
            let (parts, key) = pgp::encrypt_whole_message_parts(&cert, &plain).unwrap();
            let packed = from_parts(&parts.head, &parts.binary, &parts.tail).unwrap();
            // Unpacked, it is a PGP/MIME message as the relay's are, which
            // packing takes apart into the same row again.
            let message = unpack(&packed).into_owned();
            assert!(message.starts_with(b"MIME-Version: 1.0\r\nContent-Type: multipart/encrypted;"));
            assert!(message.ends_with(b"--\r\n"));
            assert_eq!(pack(&message).as_deref(), Some(packed.as_slice()));
            assert_eq!(pgp::decrypt_message(&cert, &message).unwrap(), plain);
            let (again, _) = pgp::decrypt_bytes_with(&cert, &parts.binary, Some(&key)).unwrap();
            assert_eq!(again, plain);
        }
    }

    #[test]
    fn other_messages_stay_as_they_came() {
        let plain = b"Subject: clear\r\n\r\nhello\r\n";
        assert!(pack(plain).is_none());
        assert_eq!(for_storage(plain), plain.as_slice());
        assert_eq!(unpack(plain), plain.as_slice());
        assert!(matches!(split(plain), Stored::AsIs(_)));
        // Armour laid out otherwise (76 columns, no checksum) is not packed.
        let odd =
            b"x\r\n-----BEGIN PGP MESSAGE-----\r\n\r\naGVsbG8=\r\n-----END PGP MESSAGE-----\r\n";
        assert!(pack(odd).is_none());
        // A damaged packed row is handed over as stored.
        let damaged = [MAGIC, &[200, 0, 0, 0][..], b"short"].concat();
        assert_eq!(unpack(&damaged), damaged.as_slice());
        assert!(matches!(split(&damaged), Stored::AsIs(_)));
    }
}

#[cfg(test)]
mod store_tests {
    use super::{split, Stored};
    use crate::access::view::MailView;
    use crate::store::MailStore;
    use omb_shared::pgp;
    use std::sync::Arc;

    /// A row written before packing (armoured, as the relay sent it) and a
    /// packed one read alike: decrypted by the view, and given back byte for
    /// byte to apps that get the ciphertext and to `raw`.
    #[tokio::test]
    async fn old_armoured_rows_and_packed_rows_both_read() {
        let dir = std::env::temp_dir().join(format!("omb-packed-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let keys = Arc::new(crate::keys::Keys::load_or_create(&dir, "a@example.org").unwrap());
        let store = MailStore::open(&dir).await.unwrap();
        let old_plain = b"Subject: old\r\n\r\nwritten before packing\r\n".to_vec();
        let new_plain = b"Subject: new\r\n\r\ndelivered packed\r\n".to_vec();
        let old = pgp::encrypt_whole_message(&keys.openpgp, &old_plain).unwrap();
        let new = pgp::encrypt_whole_message(&keys.openpgp, &new_plain).unwrap();
        // The old row goes in as rows were written before (no packing).
        let inbox = store.mailbox_id("INBOX").await.unwrap();
        sqlx::query("INSERT INTO messages (mailbox_id, uid, internaldate, size, modseq, data) VALUES (?1, 1, 0, 1, 1, ?2)")
            .bind(inbox)
            .bind(&old)
            .execute(&store.pool)
            .await
            .unwrap();
        sqlx::query("UPDATE mailboxes SET uidnext = 2, highestmodseq = 2 WHERE id = ?1")
            .bind(inbox)
            .execute(&store.pool)
            .await
            .unwrap();
        let stored = store.deliver("q2", 0, 1, &new).await.unwrap();
        assert_eq!(stored, crate::store::Stored::New { uid: 2 });

        let old_row = store.data(inbox, 1).await.unwrap().unwrap();
        let new_row = store.data(inbox, 2).await.unwrap().unwrap();
        assert_eq!(old_row, old);
        assert!(matches!(split(&new_row), Stored::Packed { .. }));
        assert!(new_row.len() < new.len());

        let plain_view = MailView::new(keys.clone(), false);
        let cipher_view = MailView::new(keys.clone(), true);
        for (row, plain, original) in [(&old_row, &old_plain, &old), (&new_row, &new_plain, &new)] {
            let (got, key) = plain_view.render_with(row, None);
            assert_eq!(&got, plain);
            // Again with the session key kept from the first reading.
            assert_eq!(&plain_view.render_with(row, key.as_ref()).0, plain);
            assert_eq!(&cipher_view.render(row), original);
        }
        assert_eq!(store.raw("INBOX", 1).await.unwrap().unwrap(), old);
        assert_eq!(store.raw("INBOX", 2).await.unwrap().unwrap(), new);
        store.close().await;
        std::fs::remove_dir_all(dir).unwrap();
    }
}
