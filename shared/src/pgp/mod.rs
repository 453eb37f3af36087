//! OpenPGP helpers (sequoia-openpgp): the node's key, whole-message encryption as
//! PGP/MIME (RFC 3156) and its reversal.

use crate::types::Fingerprint;
use openpgp::cert::prelude::*;
use openpgp::crypto::SessionKey;
use openpgp::packet::{PKESK, SKESK};
use openpgp::parse::stream::{
    DecryptionHelper, DecryptorBuilder, MessageStructure, VerificationHelper,
};
use openpgp::parse::Parse;
use openpgp::policy::StandardPolicy;
use openpgp::serialize::stream::{Armorer, Encryptor, LiteralWriter, Message};
use openpgp::serialize::{Serialize as _, SerializeInto as _};
use openpgp::types::{Features, KeyFlags, SymmetricAlgorithm};
use sequoia_openpgp as openpgp;
use std::io::Write;
use std::path::Path;

mod seipd;

#[derive(Debug, thiserror::Error)]
pub enum PgpError {
    #[error("OpenPGP: {0}")]
    OpenPgp(#[from] openpgp::anyhow::Error),
    #[error("the certificate has no usable encryption key")]
    NoEncryptionKey,
    #[error("the message holds no OpenPGP armoured block")]
    NotEncrypted,
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Generates the node's key: an Ed25519 primary for certification and signing,
/// an Ed25519 signing subkey and a Cv25519 encryption subkey, as a v4 key that
/// GnuPG 2.2 reads. No expiry: the node is the only holder and rotates it itself.
///
/// The certificate advertises only SEIPDv1 (RFC 4880's MDC packets): a sender
/// honouring a SEIPDv2 (RFC 9580) feature flag would produce v6 PKESKs that
/// GnuPG 2.2 — and most mail apps' OpenPGP — can't read.
pub fn generate_cert(userids: &[String]) -> Result<Cert, PgpError> {
    let mut builder = CertBuilder::new()
        .set_features(Features::empty().set_seipdv1())?
        .set_cipher_suite(CipherSuite::Cv25519)
        .set_primary_key_flags(KeyFlags::empty().set_certification())
        .add_signing_subkey()
        .add_subkey(
            KeyFlags::empty()
                .set_transport_encryption()
                .set_storage_encryption(),
            None,
            None,
        );
    for u in userids {
        builder = builder.add_userid(u.as_str());
    }
    let (cert, _revocation) = builder.generate()?;
    Ok(cert)
}

pub fn fingerprint(cert: &Cert) -> Fingerprint {
    Fingerprint(cert.fingerprint().to_hex())
}

/// The public certificate, binary (what the node registers with the relay).
pub fn public_bytes(cert: &Cert) -> Result<Vec<u8>, PgpError> {
    Ok(cert.to_vec()?)
}

/// The full key with secrets, ASCII-armoured, for the node's key file.
pub fn secret_armored(cert: &Cert) -> Result<Vec<u8>, PgpError> {
    Ok(cert.as_tsk().armored().to_vec()?)
}

pub fn parse_cert(bytes: &[u8]) -> Result<Cert, PgpError> {
    Ok(Cert::from_bytes(bytes)?)
}

/// Checks that a certificate can receive encrypted mail under the standard policy.
pub fn can_encrypt_to(cert: &Cert) -> bool {
    let p = StandardPolicy::new();
    cert.keys()
        .with_policy(&p, None)
        .supported()
        .alive()
        .revoked(false)
        .for_transport_encryption()
        .next()
        .is_some()
}

/// Encrypts `data` to `cert`, ASCII-armoured with CRLF line ends.
pub fn encrypt_armored(cert: &Cert, data: &[u8]) -> Result<Vec<u8>, PgpError> {
    encrypt_armored_with(cert, data, None)
}

/// Like [`encrypt_armored`], under the given session key when there is one.
fn encrypt_armored_with(
    cert: &Cert,
    data: &[u8],
    key: Option<&MessageKey>,
) -> Result<Vec<u8>, PgpError> {
    Ok(to_crlf(&encrypt_with(cert, data, key, true)?))
}

/// `data` encrypted to `cert`'s encryption keys, armoured or binary.
fn encrypt_with(
    cert: &Cert,
    data: &[u8],
    key: Option<&MessageKey>,
    armoured: bool,
) -> Result<Vec<u8>, PgpError> {
    let p = StandardPolicy::new();
    let recipients: Vec<_> = cert
        .keys()
        .with_policy(&p, None)
        .supported()
        .alive()
        .revoked(false)
        .for_transport_encryption()
        .collect();
    if recipients.is_empty() {
        return Err(PgpError::NoEncryptionKey);
    }
    let mut sink = Vec::with_capacity(data.len() * 4 / 3 + 1024);
    {
        let message = Message::new(&mut sink);
        let message = match armoured {
            true => Armorer::new(message).build()?,
            false => message,
        };
        let message = match key {
            Some(MessageKey {
                algo: Some(algo),
                key,
            }) => Encryptor::with_session_key(message, *algo, key.clone())?
                .add_recipients(recipients)
                .build()?,
            _ => Encryptor::for_recipients(message, recipients).build()?,
        };
        let mut message = LiteralWriter::new(message).build()?;
        message.write_all(data)?;
        message.finalize()?;
    }
    Ok(sink)
}

fn to_crlf(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 60 + 2);
    let mut prev = 0u8;
    for &b in text {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}

/// Wraps a whole message — headers and body — into a PGP/MIME message (RFC 3156
/// section 4) encrypted to `cert`. The outer header carries nothing of the
/// original: no From, To, Subject or Date; only the envelope, kept apart, is clear.
pub fn encrypt_whole_message(cert: &Cert, message: &[u8]) -> Result<Vec<u8>, PgpError> {
    encrypt_whole_message_with(cert, message, None)
}

/// Like [`encrypt_whole_message`], also giving the message's session key (a
/// new random AES-256 key), so that its writer can keep it and read the
/// message again without the public-key step ([`decrypt_message_with`]).
pub fn encrypt_whole_message_keyed(
    cert: &Cert,
    message: &[u8],
) -> Result<(Vec<u8>, MessageKey), PgpError> {
    let algo = SymmetricAlgorithm::AES256;
    let key = MessageKey {
        algo: Some(algo),
        key: SessionKey::new(algo.key_size()?)?,
    };
    let sealed = encrypt_whole_message_with(cert, message, Some(&key))?;
    Ok((sealed, key))
}

fn encrypt_whole_message_with(
    cert: &Cert,
    message: &[u8],
    key: Option<&MessageKey>,
) -> Result<Vec<u8>, PgpError> {
    let armored = encrypt_armored_with(cert, message, key)?;
    let boundary = new_boundary();
    let head = pgp_mime_head(&boundary);
    let mut out = Vec::with_capacity(head.len() + armored.len() + 64);
    out.extend_from_slice(&head);
    out.extend_from_slice(&armored);
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(pgp_mime_end(&boundary).as_bytes());
    Ok(out)
}

/// A message encrypted whole, as [`encrypt_whole_message_keyed`] makes it,
/// in three parts: the PGP/MIME text before the armoured OpenPGP block, the
/// OpenPGP message in binary, and the text after the block's END marker.
/// `binary` armoured as sequoia armours (64-column lines, the CRC-24 line,
/// CRLF line ends), between `head` and `tail`, is the message.
pub struct WholeMessageParts {
    pub head: Vec<u8>,
    pub binary: Vec<u8>,
    pub tail: Vec<u8>,
}

/// Like [`encrypt_whole_message_keyed`], in parts: for a store that keeps the
/// OpenPGP message in binary, it saves armouring the message only to take the
/// armour off again.
pub fn encrypt_whole_message_parts(
    cert: &Cert,
    message: &[u8],
) -> Result<(WholeMessageParts, MessageKey), PgpError> {
    let algo = SymmetricAlgorithm::AES256;
    let key = MessageKey {
        algo: Some(algo),
        key: SessionKey::new(algo.key_size()?)?,
    };
    let binary = encrypt_with(cert, message, Some(&key), false)?;
    let boundary = new_boundary();
    let parts = WholeMessageParts {
        head: pgp_mime_head(&boundary),
        binary,
        // The armour's own last line end, then the closing boundary.
        tail: format!("\r\n{}", pgp_mime_end(&boundary)).into_bytes(),
    };
    Ok((parts, key))
}

fn new_boundary() -> String {
    format!(
        "omb-{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

/// The PGP/MIME (RFC 3156) text before the armoured block.
fn pgp_mime_head(boundary: &str) -> Vec<u8> {
    format!(
        "MIME-Version: 1.0\r\n\
         Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\";\r\n\
         \tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\r\n\
         --{boundary}\r\n\
         Content-Type: application/pgp-encrypted\r\n\
         Content-Description: PGP/MIME version identification\r\n\
         \r\n\
         Version: 1\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: application/octet-stream; name=\"encrypted.asc\"\r\n\
         Content-Description: OpenPGP encrypted message\r\n\
         Content-Disposition: inline; filename=\"encrypted.asc\"\r\n\
         \r\n"
    )
    .into_bytes()
}

/// The PGP/MIME text after the armoured block's last line.
fn pgp_mime_end(boundary: &str) -> String {
    format!("\r\n--{boundary}--\r\n")
}

/// Finds the first armoured OpenPGP message in `message` and decrypts it with the
/// secret keys of `key`. For a PGP/MIME message made by
/// [`encrypt_whole_message`] this gives back the original message, byte for byte.
pub fn decrypt_message(key: &Cert, message: &[u8]) -> Result<Vec<u8>, PgpError> {
    decrypt_message_with(key, message, None).map(|(plain, _)| plain)
}

/// Like [`decrypt_message`], and also gives the message's session key; with
/// `known` (that key, kept from an earlier decryption) the public-key step
/// (ECDH and key unwrapping, most of the work for a small message) is skipped.
/// A `known` key that does not fit falls back to the secret keys of `key`.
pub fn decrypt_message_with(
    key: &Cert,
    message: &[u8],
    known: Option<&MessageKey>,
) -> Result<(Vec<u8>, Option<MessageKey>), PgpError> {
    const BEGIN: &[u8] = b"-----BEGIN PGP MESSAGE-----";
    const END: &[u8] = b"-----END PGP MESSAGE-----";
    let start = find(message, BEGIN).ok_or(PgpError::NotEncrypted)?;
    let end = find(&message[start..], END)
        .map(|e| start + e + END.len())
        .ok_or(PgpError::NotEncrypted)?;
    decrypt_bytes_with(key, &message[start..end], known)
}

/// Decrypts one OpenPGP message (armoured or binary).
pub fn decrypt_bytes(key: &Cert, ciphertext: &[u8]) -> Result<Vec<u8>, PgpError> {
    decrypt_bytes_with(key, ciphertext, None).map(|(plain, _)| plain)
}

/// Like [`decrypt_bytes`], with a session key kept from an earlier reading
/// (see [`decrypt_message_with`]), giving the key back. With a known key, the
/// layout the relay writes is read by a quick path of its own (`seipd`);
/// sequoia reads everything else.
pub fn decrypt_bytes_with(
    key: &Cert,
    ciphertext: &[u8],
    known: Option<&MessageKey>,
) -> Result<(Vec<u8>, Option<MessageKey>), PgpError> {
    if let Some(MessageKey {
        algo: Some(algo),
        key: session,
    }) = known
    {
        if let Some(plain) = seipd::open(ciphertext, *algo, session) {
            return Ok((plain, known.cloned()));
        }
    }
    let p = StandardPolicy::new();
    let helper = Helper {
        key,
        policy: &p,
        known,
        used: None,
    };
    // No signature is checked here, so there is no need to hold the plaintext
    // back: sequoia's default buffer (25 MiB) would make every decryption a
    // huge allocation that the allocator keeps around afterwards.
    let mut decryptor = DecryptorBuilder::from_bytes(ciphertext)?
        .buffer_size(64 * 1024)
        .with_policy(&p, None, helper)?;
    let mut out = Vec::with_capacity(ciphertext.len());
    std::io::copy(&mut decryptor, &mut out)?;
    Ok((out, decryptor.into_helper().used))
}

/// A message's session key (RFC 9580 5.1) with its algorithm, to decrypt the
/// same message again cheaply. As secret as the message: keep it encrypted.
#[derive(Clone)]
pub struct MessageKey {
    algo: Option<SymmetricAlgorithm>,
    key: SessionKey,
}

impl MessageKey {
    /// The algorithm's number (0 when the packet names it, as in SEIPDv2),
    /// then the key.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.key.len());
        out.push(self.algo.map_or(0, u8::from));
        out.extend_from_slice(&self.key);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<MessageKey> {
        let (&algo, key) = bytes.split_first()?;
        if key.is_empty() {
            return None;
        }
        Some(MessageKey {
            algo: (algo != 0).then(|| SymmetricAlgorithm::from(algo)),
            key: SessionKey::from(key),
        })
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

struct Helper<'a> {
    key: &'a Cert,
    policy: &'a StandardPolicy<'a>,
    known: Option<&'a MessageKey>,
    /// The session key that opened the message.
    used: Option<MessageKey>,
}

impl VerificationHelper for Helper<'_> {
    fn get_certs(&mut self, _ids: &[openpgp::KeyHandle]) -> openpgp::Result<Vec<Cert>> {
        Ok(Vec::new())
    }
    fn check(&mut self, _structure: MessageStructure) -> openpgp::Result<()> {
        Ok(())
    }
}

impl DecryptionHelper for Helper<'_> {
    fn decrypt(
        &mut self,
        pkesks: &[PKESK],
        _skesks: &[SKESK],
        sym_algo: Option<SymmetricAlgorithm>,
        decrypt: &mut dyn FnMut(Option<SymmetricAlgorithm>, &SessionKey) -> bool,
    ) -> openpgp::Result<Option<Cert>> {
        if let Some(k) = self.known {
            if decrypt(k.algo, &k.key) {
                self.used = Some(k.clone());
                return Ok(None);
            }
        }
        for ka in self
            .key
            .keys()
            .unencrypted_secret()
            .with_policy(self.policy, None)
            .for_transport_encryption()
            .for_storage_encryption()
        {
            let mut pair = ka.key().clone().into_keypair()?;
            for pkesk in pkesks {
                if let Some((algo, sk)) = pkesk.decrypt(&mut pair, sym_algo) {
                    if decrypt(algo, &sk) {
                        self.used = Some(MessageKey { algo, key: sk });
                        return Ok(None);
                    }
                }
            }
        }
        Err(openpgp::anyhow::anyhow!(
            "no secret key of this node decrypts the message"
        ))
    }
}

/// Writes a file readable by its owner only (0600), durably: a temporary file,
/// fsync, then rename over the target.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("{}.tmp", rand::random::<u32>()));
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Serialises a certificate, armoured, public parts only.
pub fn public_armored(cert: &Cert) -> Result<Vec<u8>, PgpError> {
    let mut out = Vec::new();
    {
        let mut w = openpgp::armor::Writer::new(&mut out, openpgp::armor::Kind::PublicKey)?;
        cert.serialize(&mut w)?;
        w.finalize()?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_message_round_trip() {
        let cert = generate_cert(&["alice@sandbox.test".to_string()]).unwrap();
        assert!(can_encrypt_to(&cert));
        let msg = b"From: a@b.test\r\nSubject: secret subject\r\n\r\nbody token-XYZ\r\n.\r\n";
        let public = parse_cert(&public_bytes(&cert).unwrap()).unwrap();
        let wrapped = encrypt_whole_message(&public, msg).unwrap();
        let hay = String::from_utf8_lossy(&wrapped);
        assert!(!hay.contains("secret subject"));
        assert!(!hay.contains("token-XYZ"));
        assert!(hay.contains("multipart/encrypted"));
        assert_eq!(decrypt_message(&cert, &wrapped).unwrap(), msg);
        // Its session key decrypts it again, even with only the public key.
        let (_, k) = decrypt_message_with(&cert, &wrapped, None).unwrap();
        let k = MessageKey::from_bytes(&k.unwrap().to_bytes()).unwrap();
        let (plain, _) = decrypt_message_with(&public, &wrapped, Some(&k)).unwrap();
        assert_eq!(plain, msg);
        // The public certificate alone can't decrypt.
        assert!(decrypt_message(&public, &wrapped).is_err());
        // A secret key round-trips through its armoured file form.
        let again = parse_cert(&secret_armored(&cert).unwrap()).unwrap();
        assert_eq!(decrypt_message(&again, &wrapped).unwrap(), msg);
    }
}
