//! Reading a message again when its session key is known: the quick path.
//!
//! The node keeps each message's session key (encrypted) after the first
//! reading, so a mail app opening a message costs no public-key step. What is
//! left is the symmetric part, and there sequoia's general machinery costs
//! more than the work itself: layers of buffered readers, each with its own
//! zeroed buffer, and SHA-1 *with collision detection* for the MDC, about
//! three times plain SHA-1 (collision detection guards signatures; the MDC is
//! no signature, RFC 4880 §5.14). With ten apps fetching messages that was a
//! third of the node's CPU (bench/imap, perf).
//!
//! So the one layout the relay writes is read here directly: any PKESKs, then
//! one Symmetrically Encrypted Integrity Protected Data packet, version 1
//! (RFC 4880 §5.13), whose plaintext is one Literal Data packet (§5.9) and the
//! Modification Detection Code (§5.14). The MDC is checked before a single
//! byte is given out. Anything else — another layout, compression, an
//! algorithm other than AES, a key that does not fit, damage — gives `None`,
//! and the caller hands the message to sequoia, which reads it or says why it
//! cannot. So this path never decides that a message is bad; it only takes
//! the messages it is sure of.

use aes::{Aes128, Aes192, Aes256};
use cfb_mode::cipher::{AsyncStreamCipher, BlockCipher, BlockEncryptMut, KeyInit, KeyIvInit};
use sequoia_openpgp::types::SymmetricAlgorithm;
use sha1::{Digest, Sha1};
use std::borrow::Cow;

const TAG_PKESK: u8 = 1;
const TAG_LITERAL: u8 = 11;
const TAG_SEIPD: u8 = 18;
/// AES's block: the random prefix is this long, then its last two octets again.
const BLOCK: usize = 16;
/// The MDC packet: its header (new format, tag 19, length 20), then SHA-1.
const MDC_HEADER: [u8; 2] = [0xD3, 0x14];
const MDC: usize = 2 + 20;

/// The literal data of `message` (binary OpenPGP), decrypted with session key
/// `key` of algorithm `algo`, or None when the message is not one this path
/// reads (see the module's text).
pub(super) fn open(message: &[u8], algo: SymmetricAlgorithm, key: &[u8]) -> Option<Vec<u8>> {
    let mut rest = message;
    let sealed = loop {
        let (tag, body, after) = packet(rest)?;
        match tag {
            TAG_PKESK => rest = after,
            TAG_SEIPD if after.is_empty() => break body,
            _ => return None,
        }
    };
    let (&version, encrypted) = sealed.split_first()?;
    if version != 1 || encrypted.len() < BLOCK + 2 + MDC {
        return None;
    }
    let mut plain = encrypted.to_vec();
    // CFB with an all-zero IV over the whole packet: version 1 has no resync.
    let iv = [0u8; BLOCK];
    match (algo, key.len()) {
        (SymmetricAlgorithm::AES128, 16) => cfb::<Aes128>(key, &iv, &mut plain)?,
        (SymmetricAlgorithm::AES192, 24) => cfb::<Aes192>(key, &iv, &mut plain)?,
        (SymmetricAlgorithm::AES256, 32) => cfb::<Aes256>(key, &iv, &mut plain)?,
        _ => return None,
    }
    // §5.13: the prefix's last two octets repeat; a wrong key shows here.
    if plain[BLOCK - 2..BLOCK] != plain[BLOCK..BLOCK + 2] {
        return None;
    }
    // §5.14: SHA-1 over the prefix, the plaintext and the MDC's own header.
    let (hashed, code) = plain.split_at(plain.len() - 20);
    if !hashed.ends_with(&MDC_HEADER) {
        return None;
    }
    let digest = Sha1::digest(hashed);
    let differs = digest
        .iter()
        .zip(code)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if differs != 0 {
        return None;
    }
    let inner = &hashed[BLOCK + 2..hashed.len() - MDC_HEADER.len()];
    let (tag, literal, after) = packet(inner)?;
    if tag != TAG_LITERAL || !after.is_empty() {
        return None;
    }
    // §5.9: format, file name (length, then the name), date (4 octets), data.
    let (&_format, named) = literal.split_first()?;
    let (&name_len, named) = named.split_first()?;
    let data = named.get(usize::from(name_len) + 4..)?;
    Some(match literal {
        // The usual case, one chunk: the data is moved to the front of the
        // buffer already made instead of copied to a new one.
        Cow::Borrowed(_) => {
            let start = data.as_ptr() as usize - plain.as_ptr() as usize;
            let end = start + data.len();
            plain.truncate(end);
            plain.drain(..start);
            plain
        }
        Cow::Owned(_) => data.to_vec(),
    })
}

fn cfb<C>(key: &[u8], iv: &[u8], buf: &mut [u8]) -> Option<()>
where
    C: BlockEncryptMut + BlockCipher + KeyInit,
{
    cfb_mode::Decryptor::<C>::new_from_slices(key, iv)
        .ok()?
        .decrypt(buf);
    Some(())
}

/// One packet's tag, its body (the chunks of partial body lengths joined) and
/// the bytes after it.
type Packet<'a> = (u8, Cow<'a, [u8]>, &'a [u8]);

/// The first packet of `bytes` (RFC 4880 §4.2).
fn packet(bytes: &[u8]) -> Option<Packet<'_>> {
    let (&first, mut rest) = bytes.split_first()?;
    if first & 0x80 == 0 {
        return None;
    }
    if first & 0x40 == 0 {
        // Old format (§4.2.1): the length's size is in the header octet.
        let tag = (first >> 2) & 0x0f;
        let len = match first & 3 {
            0 => {
                let (&l, r) = rest.split_first()?;
                rest = r;
                usize::from(l)
            }
            1 => {
                let (l, r) = rest.split_first_chunk::<2>()?;
                rest = r;
                usize::from(u16::from_be_bytes(*l))
            }
            2 => {
                let (l, r) = rest.split_first_chunk::<4>()?;
                rest = r;
                usize::try_from(u32::from_be_bytes(*l)).ok()?
            }
            _ => rest.len(),
        };
        let (body, after) = rest.split_at_checked(len)?;
        return Some((tag, Cow::Borrowed(body), after));
    }
    // New format (§4.2.2).
    let tag = first & 0x3f;
    let mut joined: Option<Vec<u8>> = None;
    loop {
        let (&l1, r) = rest.split_first()?;
        let (len, partial, r) = match l1 {
            0..=191 => (usize::from(l1), false, r),
            192..=223 => {
                let (&l2, r) = r.split_first()?;
                (
                    (usize::from(l1 - 192) << 8) + usize::from(l2) + 192,
                    false,
                    r,
                )
            }
            255 => {
                let (l, r) = r.split_first_chunk::<4>()?;
                (usize::try_from(u32::from_be_bytes(*l)).ok()?, false, r)
            }
            // Partial body length (§4.2.2.4): more chunks follow.
            _ => (1usize << (l1 & 0x1f), true, r),
        };
        let (chunk, after) = r.split_at_checked(len)?;
        if !partial {
            return Some(match joined {
                None => (tag, Cow::Borrowed(chunk), after),
                Some(mut all) => {
                    all.extend_from_slice(chunk);
                    (tag, Cow::Owned(all), after)
                }
            });
        }
        joined
            .get_or_insert_with(|| Vec::with_capacity(bytes.len()))
            .extend_from_slice(chunk);
        rest = after;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgp::{decrypt_bytes_with, generate_cert, MessageKey};
    use openpgp::crypto::SessionKey;
    use openpgp::policy::StandardPolicy;
    use openpgp::serialize::stream::{Compressor, Encryptor, LiteralWriter, Message};
    use openpgp::types::CompressionAlgorithm;
    use sequoia_openpgp as openpgp;
    use std::io::Write;

    /// `data` encrypted to `cert` under `key`, as binary OpenPGP; compressed
    /// first when asked.
    fn encrypt(cert: &openpgp::Cert, key: &MessageKey, data: &[u8], compress: bool) -> Vec<u8> {
        let p = StandardPolicy::new();
        let recipients: Vec<_> = cert
            .keys()
            .with_policy(&p, None)
            .for_transport_encryption()
            .collect();
        let mut out = Vec::new();
        let message = Message::new(&mut out);
        let algo = key.algo.expect("SEIPDv1 keys name their algorithm");
        let message = Encryptor::with_session_key(message, algo, key.key.clone())
            .unwrap()
            .add_recipients(recipients)
            .build()
            .unwrap();
        let message = if compress {
            Compressor::new(message)
                .algo(CompressionAlgorithm::Zip)
                .build()
                .unwrap()
        } else {
            message
        };
        let mut message = LiteralWriter::new(message).build().unwrap();
        message.write_all(data).unwrap();
        message.finalize().unwrap();
        out
    }

    fn key(algo: SymmetricAlgorithm) -> MessageKey {
        MessageKey {
            algo: Some(algo),
            key: SessionKey::new(algo.key_size().unwrap()).unwrap(),
        }
    }

    fn bytes(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn reads_what_sequoia_reads_at_every_size_and_aes_key_length() {
        let cert = generate_cert(&["<a@example.org>".into()]).unwrap();
        for algo in [
            SymmetricAlgorithm::AES128,
            SymmetricAlgorithm::AES192,
            SymmetricAlgorithm::AES256,
        ] {
            // Small, one chunk; and large ones written in partial body lengths.
            for n in [0, 1, 191, 192, 8383, 8384, 70_000, 1 << 20] {
                let k = key(algo);
                let data = bytes(n);
                let sealed = encrypt(&cert, &k, &data, false);
                let quick = open(&sealed, algo, &k.key).expect("the quick path reads it");
                assert_eq!(quick, data, "{algo:?}, {n} bytes");
                let (slow, _) = decrypt_bytes_with(&cert, &sealed, None).unwrap();
                assert_eq!(slow, data);
            }
        }
    }

    #[test]
    fn leaves_to_sequoia_what_it_does_not_read() {
        let cert = generate_cert(&["<a@example.org>".into()]).unwrap();
        let k = key(SymmetricAlgorithm::AES256);
        let data = bytes(5000);
        // Compressed: not this path's layout, yet the message reads.
        let zipped = encrypt(&cert, &k, &data, true);
        assert!(open(&zipped, SymmetricAlgorithm::AES256, &k.key).is_none());
        let (plain, _) = decrypt_bytes_with(&cert, &zipped, Some(&k)).unwrap();
        assert_eq!(plain, data);
        // Another key, or the right key named as another algorithm.
        let sealed = encrypt(&cert, &k, &data, false);
        let other = key(SymmetricAlgorithm::AES256);
        assert!(open(&sealed, SymmetricAlgorithm::AES256, &other.key).is_none());
        assert!(open(&sealed, SymmetricAlgorithm::Twofish, &k.key).is_none());
        // Truncated or empty input.
        assert!(open(
            &sealed[..sealed.len() - 1],
            SymmetricAlgorithm::AES256,
            &k.key
        )
        .is_none());
        assert!(open(&[], SymmetricAlgorithm::AES256, &k.key).is_none());
    }

    #[test]
    fn cut_or_random_input_is_refused_without_panicking() {
        let cert = generate_cert(&["<a@example.org>".into()]).unwrap();
        let k = key(SymmetricAlgorithm::AES256);
        let sealed = encrypt(&cert, &k, &bytes(700), false);
        for end in 0..sealed.len() {
            assert!(open(&sealed[..end], SymmetricAlgorithm::AES256, &k.key).is_none());
        }
        // Random bytes after every packet header octet there is, and after
        // the real message's first bytes (its PKESK, then garbage).
        for i in 0..20_000u32 {
            let noise: Vec<u8> = (0..(i % 300)).map(|_| rand::random()).collect();
            let head = [(i % 256) as u8];
            let mut input = if i % 2 == 0 {
                head.to_vec()
            } else {
                sealed[..(i as usize % sealed.len())].to_vec()
            };
            input.extend_from_slice(&noise);
            assert!(open(&input, SymmetricAlgorithm::AES256, &k.key).is_none());
        }
    }

    #[test]
    fn a_changed_byte_is_never_given_out() {
        let cert = generate_cert(&["<a@example.org>".into()]).unwrap();
        let k = key(SymmetricAlgorithm::AES256);
        let data = bytes(3000);
        let sealed = encrypt(&cert, &k, &data, false);
        // Every position of the encrypted data, prefix, literal and MDC alike.
        // The encrypted part: prefix, literal packet (3 + 6 + 3000) and MDC.
        let encrypted = sealed.len() - (18 + 3009 + 22);
        for at in (encrypted..sealed.len())
            .step_by(97)
            .chain([sealed.len() - 1])
        {
            let mut bad = sealed.clone();
            bad[at] ^= 0x01;
            assert!(
                open(&bad, SymmetricAlgorithm::AES256, &k.key).is_none(),
                "a flipped bit at {at} of {} went through",
                sealed.len()
            );
            assert!(decrypt_bytes_with(&cert, &bad, Some(&k)).is_err());
        }
    }
}
