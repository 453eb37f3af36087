//! The outbound side's TLS clients and trust roots: opportunistic STARTTLS
//! that takes any certificate (RFC 7435), and PKIX validation against the
//! Mozilla roots (webpki-roots) plus the operator's own CAs, for MTA-STS
//! (RFC 8461 §4.2) and for fetching MTA-STS policies (§3.3), and DANE:
//! the certificate matched against the MX host's TLSA records (RFC 7672 §3).

use super::dane::{tlsa, Tlsa};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::TlsConnector;

/// Why the trust roots could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the CA certificates {path}: {reason}; check [outbound] tls_roots")]
    Roots { path: String, reason: String },
    #[error("cannot set up TLS: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot set up certificate validation: {0}")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
}

/// The TLS clients of outbound delivery.
#[derive(Clone)]
pub struct Trust {
    /// Takes any certificate: encryption against passive listeners only.
    pub opportunistic: TlsConnector,
    /// Validates the certificate chain and the host name (PKIX).
    pub verified: TlsConnector,
    verifier: Arc<WebPkiServerVerifier>,
    provider: Arc<CryptoProvider>,
}

impl Trust {
    /// webpki-roots plus every certificate in the PEM file `extra`.
    pub fn new(extra: Option<&Path>) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = extra {
            let fail = |reason: String| TlsError::Roots {
                path: path.display().to_string(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
            let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
                .collect::<Result<_, _>>()
                .map_err(|e| fail(e.to_string()))?;
            if certs.is_empty() {
                return Err(fail("no certificate in the file".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| fail(e.to_string()))?;
            }
        }
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()?;
        let verified = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_webpki_verifier(verifier.clone())
            .with_no_client_auth();
        let opportunistic = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider.clone())))
            .with_no_client_auth();
        Ok(Trust {
            opportunistic: TlsConnector::from(Arc::new(opportunistic)),
            verified: TlsConnector::from(Arc::new(verified)),
            verifier,
            provider,
        })
    }

    /// A client that takes only a certificate matching one of `records`
    /// (usable TLSA records of the host, RFC 7672 §3.1); under DANE-TA, one
    /// valid for one of `names`, the reference identifiers (§3.2.2), not
    /// for the name sent in SNI alone.
    pub fn dane(&self, records: &[Tlsa], names: &[String]) -> Result<TlsConnector, TlsError> {
        let names = names
            .iter()
            .filter_map(|n| ServerName::try_from(n.clone()).ok())
            .collect();
        let config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(DaneCert {
                records: records.to_vec(),
                names,
                any: AnyCert(self.provider.clone()),
            }))
            .with_no_client_auth();
        Ok(TlsConnector::from(Arc::new(config)))
    }

    /// Whether a chain a server presented is valid for `name` (PKIX), after
    /// an opportunistic handshake: for logging what MTA-STS `testing` would
    /// have refused.
    pub fn check(&self, chain: &[CertificateDer<'_>], name: &ServerName<'_>) -> Result<(), String> {
        let (end_entity, intermediates) = chain
            .split_first()
            .ok_or_else(|| "no certificate".to_string())?;
        self.verifier
            .verify_server_cert(end_entity, intermediates, name, &[], UnixTime::now())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// Accepts a certificate that matches a TLSA record (under DANE-TA, valid
/// for one of `names`); the handshake signature as [`AnyCert`].
#[derive(Debug)]
struct DaneCert {
    records: Vec<Tlsa>,
    names: Vec<ServerName<'static>>,
    any: AnyCert,
}

impl ServerCertVerifier for DaneCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.clone()];
        chain.extend(intermediates.iter().cloned());
        tlsa::verify(&self.records, &chain, &self.names, now, &self.any.0)
            .map(|()| ServerCertVerified::assertion())
            .map_err(|e| rustls::Error::General(format!("DANE: {e}")))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.any.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.any.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.any.supported_verify_schemes()
    }
}

/// Accepts any certificate, but still checks that the server holds its key
/// (the handshake signature).
#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
