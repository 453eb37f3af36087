//! TLSA records (RFC 6698) as SMTP uses them (RFC 7672 §3): which records
//! are usable, and whether the certificate chain a server presented matches
//! one of them. Pure, no I/O.

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::RootCertStore;
use sha2::{Digest, Sha256, Sha512};
use std::sync::Arc;

/// Certificate usages (RFC 7218 §2.1).
pub const PKIX_TA: u8 = 0;
pub const PKIX_EE: u8 = 1;
pub const DANE_TA: u8 = 2;
pub const DANE_EE: u8 = 3;
/// Selectors (RFC 7218 §2.2): the whole certificate, or its public key.
pub const CERT: u8 = 0;
pub const SPKI: u8 = 1;
/// Matching types (RFC 7218 §2.3): the data itself, or its digest.
pub const FULL: u8 = 0;
pub const SHA2_256: u8 = 1;
pub const SHA2_512: u8 = 2;

/// One TLSA record's data.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tlsa {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    pub data: Vec<u8>,
}

impl Tlsa {
    /// Whether an SMTP client can use the record (RFC 7672 §3.1.3, RFC 7671
    /// §4): DANE-TA(2) or DANE-EE(3) — PKIX-TA(0) and PKIX-EE(1) are not
    /// used for SMTP — with a known selector and matching type, and a digest
    /// of the right length.
    pub fn usable(&self) -> bool {
        let usage = matches!(self.usage, DANE_TA | DANE_EE);
        let selector = matches!(self.selector, CERT | SPKI);
        let data = match self.matching {
            FULL => !self.data.is_empty(),
            SHA2_256 => self.data.len() == 32,
            SHA2_512 => self.data.len() == 64,
            _ => false,
        };
        usage && selector && data
    }

    /// Whether `cert` is the certificate (or carries the key) this record
    /// names (RFC 6698 §2.1.2-2.1.3).
    pub fn matches(&self, cert: &CertificateDer<'_>) -> bool {
        let selected = match self.selector {
            CERT => cert.as_ref().to_vec(),
            SPKI => match webpki::EndEntityCert::try_from(cert) {
                Ok(parsed) => parsed.subject_public_key_info().as_ref().to_vec(),
                Err(_) => return false,
            },
            _ => return false,
        };
        match self.matching {
            FULL => selected == self.data,
            SHA2_256 => Sha256::digest(&selected).as_slice() == self.data,
            SHA2_512 => Sha512::digest(&selected).as_slice() == self.data,
            _ => false,
        }
    }
}

/// The records of an RRset an SMTP client may use; the others are ignored
/// (RFC 7672 §2.2: with none left, TLS is still mandatory, unauthenticated).
pub fn usable(records: impl IntoIterator<Item = Tlsa>) -> Vec<Tlsa> {
    records.into_iter().filter(Tlsa::usable).collect()
}

/// Whether a server's chain (end entity first) matches one of `records`
/// (RFC 7672 §3.1, RFC 7671 §5):
/// - DANE-EE(3): the end-entity certificate matches; its names and validity
///   dates are not checked (RFC 7672 §3.1.1);
/// - DANE-TA(2): a certificate of the chain matches and, taken as the trust
///   anchor, validates the chain with the end entity valid now for one of
///   `names`, the reference identifiers: the MX host name and, when it is
///   an alias reached through a secure CNAME chain, the expanded name too
///   (RFC 7672 §3.1.2, §3.2.2, §3.2.3).
pub fn verify(
    records: &[Tlsa],
    chain: &[CertificateDer<'_>],
    names: &[ServerName<'_>],
    now: UnixTime,
    provider: &Arc<CryptoProvider>,
) -> Result<(), String> {
    let (end_entity, intermediates) = chain
        .split_first()
        .ok_or_else(|| "no certificate".to_string())?;
    if records
        .iter()
        .any(|r| r.usage == DANE_EE && r.usable() && r.matches(end_entity))
    {
        return Ok(());
    }
    let mut last = "no TLSA record matches the certificate".to_string();
    for anchor in chain {
        let matched = records
            .iter()
            .any(|r| r.usage == DANE_TA && r.usable() && r.matches(anchor));
        if !matched {
            continue;
        }
        let mut roots = RootCertStore::empty();
        let checked = roots
            .add(anchor.clone().into_owned())
            .map_err(|e| e.to_string())
            .and_then(|()| {
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| e.to_string())
            })
            .and_then(|verifier| {
                let mut last = "DANE-TA: no reference identifier to check".to_string();
                for name in names {
                    match verifier.verify_server_cert(end_entity, intermediates, name, &[], now) {
                        Ok(_) => return Ok(()),
                        Err(e) => last = format!("DANE-TA: {e}"),
                    }
                }
                Err(last)
            });
        match checked {
            Ok(_) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, PublicKeyData};

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn name(n: &str) -> ServerName<'static> {
        ServerName::try_from(n.to_string()).unwrap()
    }

    /// A self-signed certificate for `host`.
    fn self_signed(host: &str) -> (CertificateDer<'static>, Vec<u8>) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![host.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.der().clone(), key.subject_public_key_info())
    }

    /// A CA and an end-entity certificate it issued for `host`.
    fn issued(host: &str) -> Vec<CertificateDer<'static>> {
        issued_with_key(host).0
    }

    /// A certificate for `host` issued by a CA of its own: the chain (end
    /// entity first) and the end entity's key.
    pub(crate) fn issued_with_key(
        host: &str,
    ) -> (
        Vec<CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let ee = CertificateParams::new(vec![host.to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        (vec![ee.der().clone(), ca.der().clone()], key)
    }

    fn record(usage: u8, selector: u8, matching: u8, selected: &[u8]) -> Tlsa {
        let data = match matching {
            SHA2_256 => Sha256::digest(selected).to_vec(),
            SHA2_512 => Sha512::digest(selected).to_vec(),
            _ => selected.to_vec(),
        };
        Tlsa {
            usage,
            selector,
            matching,
            data,
        }
    }

    #[test]
    fn every_selector_and_matching_type_matches() {
        let (cert, spki) = self_signed("mx.example.org");
        let (other, other_spki) = self_signed("mx.example.org");
        for (selector, selected, wrong) in [
            (CERT, cert.to_vec(), other.to_vec()),
            (SPKI, spki, other_spki),
        ] {
            for matching in [FULL, SHA2_256, SHA2_512] {
                let good = record(DANE_EE, selector, matching, &selected);
                assert!(good.usable());
                assert!(good.matches(&cert), "{selector} {matching}");
                assert!(!good.matches(&other), "{selector} {matching}");
                let bad = record(DANE_EE, selector, matching, &wrong);
                assert!(!bad.matches(&cert), "{selector} {matching}");
            }
        }
    }

    #[test]
    fn only_dane_usages_and_known_parameters_are_usable() {
        let (cert, _) = self_signed("mx.example.org");
        let good = record(DANE_EE, CERT, SHA2_256, &cert);
        let records = vec![
            record(PKIX_TA, CERT, SHA2_256, &cert),
            record(PKIX_EE, CERT, SHA2_256, &cert),
            Tlsa {
                usage: 4,
                ..good.clone()
            },
            Tlsa {
                selector: 2,
                ..good.clone()
            },
            Tlsa {
                matching: 3,
                ..good.clone()
            },
            // A digest of the wrong length, and empty full data.
            Tlsa {
                data: vec![0; 31],
                ..good.clone()
            },
            Tlsa {
                matching: SHA2_512,
                ..good.clone()
            },
            Tlsa {
                matching: FULL,
                data: Vec::new(),
                ..good.clone()
            },
            good.clone(),
            record(DANE_TA, SPKI, SHA2_512, &[1, 2, 3]),
        ];
        let kept = usable(records);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0], good);
        assert_eq!(kept[1].usage, DANE_TA);
    }

    #[test]
    fn dane_ee_ignores_names_and_dates() {
        let (cert, _) = self_signed("some-other-name.example.net");
        let r = record(DANE_EE, CERT, SHA2_256, &cert);
        let now = UnixTime::now();
        let p = provider();
        assert_eq!(
            verify(
                std::slice::from_ref(&r),
                std::slice::from_ref(&cert),
                &[name("mx.example.org")],
                now,
                &p
            ),
            Ok(())
        );
        // Far in the future, past the certificate's end of validity.
        let later = UnixTime::since_unix_epoch(std::time::Duration::from_secs(1 << 40));
        assert_eq!(
            verify(
                &[r],
                std::slice::from_ref(&cert),
                &[name("mx.example.org")],
                later,
                &p
            ),
            Ok(())
        );
        // PKIX-EE with the same data is not used for SMTP.
        let pkix = record(PKIX_EE, CERT, SHA2_256, &cert);
        assert!(verify(&[pkix], &[cert], &[name("mx.example.org")], now, &p).is_err());
    }

    #[test]
    fn dane_ta_validates_the_chain_and_the_name() {
        let chain = issued("mx.example.org");
        let p = provider();
        let now = UnixTime::now();
        let spki = webpki::EndEntityCert::try_from(&chain[1])
            .unwrap()
            .subject_public_key_info()
            .as_ref()
            .to_vec();
        for r in [
            record(DANE_TA, CERT, SHA2_256, &chain[1]),
            record(DANE_TA, SPKI, SHA2_512, &spki),
        ] {
            assert_eq!(
                verify(
                    std::slice::from_ref(&r),
                    &chain,
                    &[name("mx.example.org")],
                    now,
                    &p
                ),
                Ok(())
            );
            // The name is checked under DANE-TA.
            let other_name = [name("other.example.org")];
            assert!(verify(std::slice::from_ref(&r), &chain, &other_name, now, &p).is_err());
            // The anchor must be in the chain the server sent.
            let mx = [name("mx.example.org")];
            assert!(verify(&[r], &chain[..1], &mx, now, &p).is_err());
        }
        // A DANE-TA record naming the end entity of another CA's chain.
        let other = issued("mx.example.org");
        let r = record(DANE_TA, CERT, SHA2_256, &other[1]);
        let mx = [name("mx.example.org")];
        assert!(verify(&[r], &chain, &mx, now, &p).is_err());
        // A DANE-EE record for the CA is not a match for the end entity.
        let r = record(DANE_EE, CERT, SHA2_256, &chain[1]);
        assert!(verify(&[r], &chain, &mx, now, &p).is_err());
    }

    #[test]
    fn dane_ta_takes_the_mx_host_name_or_its_expansion() {
        // The certificate names only the expanded name of an alias MX host
        // (RFC 7672 §3.2.2: either name is a reference identifier).
        let chain = issued("mx-final.example.org");
        let p = provider();
        let now = UnixTime::now();
        let r = record(DANE_TA, CERT, SHA2_256, &chain[1]);
        let both = [name("mx-alias.example.org"), name("mx-final.example.org")];
        assert_eq!(
            verify(std::slice::from_ref(&r), &chain, &both, now, &p),
            Ok(())
        );
        // The MX host name alone (no secure expansion) does not do.
        let alias = [name("mx-alias.example.org")];
        assert!(verify(std::slice::from_ref(&r), &chain, &alias, now, &p).is_err());
        // No name at all: nothing to match.
        assert!(verify(&[r], &chain, &[], now, &p).is_err());
    }
}
