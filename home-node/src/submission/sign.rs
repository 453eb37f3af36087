//! What the node does to a submitted message before it leaves: checks that the
//! header From is the account's (RFC 6409 §6.1), adds a missing `Date` and
//! `Message-ID` (RFC 6409 §8.2, §8.3), and signs it with DKIM (RFC 6376,
//! relaxed/relaxed, `d=` the From domain).

use mail_auth::common::crypto::{RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer};
use std::collections::HashMap;
use std::sync::Arc;

use super::session::Senders;

/// The header fields signed, when present (RFC 6376 §5.4.1's list, less the
/// ones that relays commonly rewrite).
const SIGNED_HEADERS: &[&str] = &[
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Autocrypt",
];

/// The DKIM selector a node's key is published under when the From domain is
/// a custom one: the user CNAMEs `omb._domainkey.THEIRDOMAIN` to the relay.
pub const CUSTOM_DOMAIN_SELECTOR: &str = "omb";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    #[error("5.6.0 The message has no readable header")]
    NoHeader,
    #[error("5.7.1 The From header must name exactly one of this account's addresses")]
    ForeignFrom,
    #[error("4.3.0 Cannot sign the message: {0}")]
    Signer(String),
}

/// The From domain of a message whose From is one of the account's `senders`, or
/// why not.
pub fn check_from(data: &[u8], senders: &Senders) -> Result<String, SignError> {
    let message = mail_parser::MessageParser::new()
        .parse_headers(data)
        .ok_or(SignError::NoHeader)?;
    let from: Vec<String> = message
        .from()
        .map(|f| {
            f.iter()
                .filter_map(|a| a.address().map(str::to_lowercase))
                .collect()
        })
        .unwrap_or_default();
    match from.as_slice() {
        [one] if senders.owns(one) => one
            .rsplit_once('@')
            .map(|(_, d)| d.to_string())
            .ok_or(SignError::ForeignFrom),
        _ => Err(SignError::ForeignFrom),
    }
}

/// The `Date` and `Message-ID` fields a message lacks, to put before it.
pub fn missing_fields(data: &[u8], domain: &str) -> String {
    let Some(message) = mail_parser::MessageParser::new().parse_headers(data) else {
        return String::new();
    };
    let mut out = String::new();
    if message.date().is_none() {
        out.push_str(&format!("Date: {}\r\n", chrono::Utc::now().to_rfc2822()));
    }
    if message.message_id().is_none() {
        out.push_str(&format!(
            "Message-ID: <{}@{domain}>\r\n",
            hex::encode(rand::random::<[u8; 16]>())
        ));
    }
    out
}

/// The selector for mail from `from_domain` signed by account `handle` of the
/// relay `relay_domain`.
pub fn selector(from_domain: &str, relay_domain: &str, handle: &str) -> String {
    if from_domain.eq_ignore_ascii_case(relay_domain) {
        handle.to_lowercase()
    } else {
        CUSTOM_DOMAIN_SELECTOR.to_string()
    }
}

type Signer = DkimSigner<RsaKey<Sha256>, Done>;

/// The node's DKIM signers, one per From domain and selector, each made once:
/// encoding the RSA key for ring and ring's parsing and checking of it cost a
/// sixth of what the signature itself costs, when done for every message
/// (bench/outbound, perf).
pub struct Signers {
    key_pkcs1_der: Vec<u8>,
    made: std::sync::Mutex<HashMap<(String, String), Arc<Signer>>>,
}

/// Signers kept at most; an account has a handful of domains.
const SIGNERS_KEPT: usize = 64;

impl Signers {
    /// Signers with the node's key, in PKCS#1 DER.
    pub fn new(key_pkcs1_der: Vec<u8>) -> Self {
        Signers {
            key_pkcs1_der,
            made: Default::default(),
        }
    }

    /// The message with its `DKIM-Signature` field first.
    pub fn sign(&self, domain: &str, selector: &str, message: &[u8]) -> Result<Vec<u8>, SignError> {
        let signer = self.signer(domain, selector)?;
        let signature = signer
            .sign(message)
            .map_err(|e| SignError::Signer(e.to_string()))?;
        let header = signature.to_header();
        let mut out = Vec::with_capacity(header.len() + message.len());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(message);
        Ok(out)
    }

    fn signer(&self, domain: &str, selector: &str) -> Result<Arc<Signer>, SignError> {
        let id = (domain.to_ascii_lowercase(), selector.to_string());
        if let Some(s) = self.made.lock().ok().and_then(|m| m.get(&id).cloned()) {
            return Ok(s);
        }
        let der = PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(self.key_pkcs1_der.clone()));
        let key =
            RsaKey::<Sha256>::from_key_der(der).map_err(|e| SignError::Signer(e.to_string()))?;
        let signer = Arc::new(
            DkimSigner::from_key(key)
                .domain(domain)
                .selector(selector)
                .headers(SIGNED_HEADERS.iter().copied())
                .header_canonicalization(Canonicalization::Relaxed)
                .body_canonicalization(Canonicalization::Relaxed),
        );
        if let Ok(mut made) = self.made.lock() {
            if made.len() >= SIGNERS_KEPT {
                made.clear();
            }
            made.insert(id, signer.clone());
        }
        Ok(signer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_must_be_the_accounts() {
        let addresses = Senders {
            addresses: vec!["alice@sandbox.test".to_string()],
            domains: vec!["alice.example".to_string()],
        };
        assert_eq!(
            check_from(
                b"From: Alice <ALICE@sandbox.test>\r\n\r\nhi\r\n",
                &addresses
            ),
            Ok("sandbox.test".into())
        );
        assert_eq!(
            check_from(b"From: bob@sandbox.test\r\n\r\nhi\r\n", &addresses),
            Err(SignError::ForeignFrom)
        );
        assert_eq!(
            check_from(
                b"From: alice@sandbox.test, bob@sandbox.test\r\n\r\n",
                &addresses
            ),
            Err(SignError::ForeignFrom)
        );
        assert_eq!(
            check_from(b"Subject: x\r\n\r\n", &addresses),
            Err(SignError::ForeignFrom)
        );
        // Any address of a domain of the account's own.
        assert_eq!(
            check_from(b"From: Shop <Shop@Alice.Example>\r\n\r\n", &addresses),
            Ok("alice.example".into())
        );
        assert_eq!(
            check_from(b"From: x@sub.alice.example\r\n\r\n", &addresses),
            Err(SignError::ForeignFrom)
        );
        assert_eq!(selector("Sandbox.test", "sandbox.test", "Alice"), "alice");
        assert_eq!(selector("alice.example", "sandbox.test", "alice"), "omb");
    }

    #[test]
    fn signs_with_the_nodes_key() {
        let dir = std::env::temp_dir().join(format!("omb-dkim-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = crate::keys::DkimKey::load_or_create(&dir).unwrap();
        let again = crate::keys::DkimKey::load_or_create(&dir).unwrap();
        assert_eq!(key.record().unwrap(), again.record().unwrap());
        assert!(key
            .record()
            .unwrap()
            .starts_with("v=DKIM1; k=rsa; p=MIIBIjAN"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("dkim-rsa.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let signers = Signers::new(key.pkcs1_der().unwrap());
        let message = b"From: alice@sandbox.test\r\nSubject: hi\r\n\r\nbody\r\n";
        let signed = signers.sign("sandbox.test", "alice", message).unwrap();
        let text = String::from_utf8(signed).unwrap();
        assert!(
            text.starts_with(
                "DKIM-Signature: v=1; a=rsa-sha256; s=alice; d=sandbox.test; c=relaxed/relaxed;"
            ),
            "{text}"
        );
        assert!(text.ends_with("From: alice@sandbox.test\r\nSubject: hi\r\n\r\nbody\r\n"));
        // A kept signer serves the next message; another domain gets its own.
        let again = signers.sign("sandbox.test", "alice", message).unwrap();
        assert!(String::from_utf8(again)
            .unwrap()
            .contains("s=alice; d=sandbox.test;"));
        let other = signers.sign("alice.example", "omb", message).unwrap();
        assert!(String::from_utf8(other)
            .unwrap()
            .contains("s=omb; d=alice.example;"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn adds_date_and_message_id_only_when_missing() {
        let added = missing_fields(b"From: a@b.test\r\n\r\n", "b.test");
        assert!(added.starts_with("Date: "), "{added}");
        assert!(added.contains("Message-ID: <") && added.ends_with("@b.test>\r\n"));
        assert_eq!(
            missing_fields(
                b"Date: Thu, 1 Jan 2026 00:00:00 +0000\r\nMessage-ID: <x@y>\r\n\r\n",
                "b.test"
            ),
            ""
        );
    }
}
