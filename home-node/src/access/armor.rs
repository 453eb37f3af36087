//! ASCII armour removal (RFC 9580 6.2) for reading stored messages. The store
//! keeps each message as a PGP/MIME part whose OpenPGP message is armoured;
//! sequoia's armour reader filters the base64 a byte at a time and was a fifth
//! of the node's CPU time per `BODY[]` fetch (bench/imap, perf). Here the
//! armour is taken apart line by line and the base64 decoded in one call; the
//! binary message then goes to sequoia. Anything unusual gives None, and the
//! caller hands the armoured text to sequoia as before.

use base64::alphabet::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;

const BEGIN: &[u8] = b"-----BEGIN PGP MESSAGE-----";
const END: &[u8] = b"-----END PGP MESSAGE-----";

/// Base64 with or without the final padding.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The binary OpenPGP message of the first armoured `PGP MESSAGE` block in
/// `message` (a MIME message holding one), or None when there is no such block
/// or it is not laid out as RFC 9580 6.2 says.
pub fn dearmor(message: &[u8]) -> Option<Vec<u8>> {
    let start = message.windows(BEGIN.len()).position(|w| w == BEGIN)?;
    let mut lines = message[start + BEGIN.len()..].split(|&b| b == b'\n');
    // The rest of the header line: nothing but the line end.
    if !lines.next()?.trim_ascii().is_empty() {
        return None;
    }
    // Armour headers ("Key: Value"), then an empty line.
    loop {
        let line = lines.next()?.trim_ascii();
        if line.is_empty() {
            break;
        }
        if !line.contains(&b':') {
            return None;
        }
    }
    let mut data = Vec::with_capacity(message.len() - start);
    for line in lines {
        let line = line.trim_ascii();
        if line.starts_with(END) {
            return BASE64.decode(&data).ok();
        }
        // The optional CRC-24 ("=" and four base64 digits): RFC 9580 6.1
        // has receivers ignore it; the encrypted packet carries its own
        // integrity check.
        if line.len() == 5 && line[0] == b'=' {
            continue;
        }
        data.extend_from_slice(line);
    }
    // No tail line: let sequoia judge.
    None
}

#[cfg(test)]
mod tests {
    use super::dearmor;
    use omb_shared::pgp;

    #[test]
    fn dearmoured_message_decrypts_like_the_armoured_one() {
        let cert = pgp::generate_cert(&["t@example.org".into()]).unwrap();
        let plain = b"Subject: hi\r\n\r\nhello\r\n".repeat(300);
        let stored = pgp::encrypt_whole_message(&cert, &plain).unwrap();
        let binary = dearmor(&stored).unwrap();
        assert_ne!(binary.first(), Some(&b'-'));
        let (got, key) = pgp::decrypt_bytes_with(&cert, &binary, None).unwrap();
        assert_eq!(got, plain);
        let (again, _) = pgp::decrypt_bytes_with(&cert, &binary, key.as_ref()).unwrap();
        assert_eq!(again, plain);
    }

    #[test]
    fn a_sealed_message_reads_back_with_the_key_it_was_sealed_under() {
        let cert = pgp::generate_cert(&["t@example.org".into()]).unwrap();
        let plain = b"Subject: appended\r\n\r\nbody\r\n".to_vec();
        let (stored, key) = pgp::encrypt_whole_message_keyed(&cert, &plain).unwrap();
        let binary = dearmor(&stored).unwrap();
        // A certificate without the secret keys: only the kept key opens it.
        let public = pgp::parse_cert(&pgp::public_bytes(&cert).unwrap()).unwrap();
        let (got, used) = pgp::decrypt_bytes_with(&public, &binary, Some(&key)).unwrap();
        assert_eq!(got, plain);
        assert_eq!(used.unwrap().to_bytes(), key.to_bytes());
        assert_eq!(pgp::decrypt_message(&cert, &stored).unwrap(), plain);
    }

    #[test]
    fn odd_armour_is_left_to_sequoia() {
        assert!(dearmor(b"no armour here").is_none());
        let no_blank = b"-----BEGIN PGP MESSAGE-----\r\nhQEMA\r\n-----END PGP MESSAGE-----\r\n";
        assert!(dearmor(no_blank).is_none());
        let no_tail = b"-----BEGIN PGP MESSAGE-----\r\n\r\naGVsbG8=\r\n";
        assert!(dearmor(no_tail).is_none());
        let bad = b"-----BEGIN PGP MESSAGE-----\r\n\r\na*b\r\n-----END PGP MESSAGE-----\r\n";
        assert!(dearmor(bad).is_none());
    }

    #[test]
    fn headers_checksum_and_missing_padding() {
        let armoured = b"x\r\n-----BEGIN PGP MESSAGE-----\r\nComment: c\r\n\r\naGVs\r\nbG8\r\n=AAAA\r\n-----END PGP MESSAGE-----\r\n";
        assert_eq!(dearmor(armoured).unwrap(), b"hello");
    }
}
