//! The node's keys, made at first start and never sent anywhere but their public
//! halves: the OpenPGP key (mail is encrypted to it), the tunnel identity and
//! the DKIM key (outgoing mail is signed with it, RFC 6376).

use anyhow::Context;
use omb_shared::identity::Identity;
use omb_shared::pgp;
use sequoia_openpgp::Cert;
use std::path::Path;

pub struct Keys {
    /// The OpenPGP key with its secret parts.
    pub openpgp: Cert,
    pub tunnel: Identity,
    pub dkim: DkimKey,
}

/// The node's DKIM key: RSA-2048 with SHA-256 (RFC 8301 §3.2), the one
/// algorithm every verifier knows.
pub struct DkimKey {
    key: rsa::RsaPrivateKey,
}

/// The file of the DKIM private key (PKCS#1 PEM, mode 0600) in the data folder.
const DKIM_FILE: &str = "dkim-rsa.pem";

impl DkimKey {
    /// Loads the key from `data_dir`, or makes and keeps a new one.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Self> {
        use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey, LineEnding};
        let path = data_dir.join(DKIM_FILE);
        match std::fs::read_to_string(&path) {
            Ok(pem) => {
                let key = rsa::RsaPrivateKey::from_pkcs1_pem(&pem).map_err(|e| {
                    anyhow::anyhow!("the DKIM key in {} does not parse: {e}", path.display())
                })?;
                Ok(DkimKey { key })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048)
                    .map_err(|e| anyhow::anyhow!("cannot make a DKIM key: {e}"))?;
                let pem = key
                    .to_pkcs1_pem(LineEnding::LF)
                    .map_err(|e| anyhow::anyhow!("cannot encode the DKIM key: {e}"))?;
                pgp::write_private_file(&path, pem.as_bytes())
                    .with_context(|| format!("cannot write {}", path.display()))?;
                tracing::info!("made a new DKIM key");
                Ok(DkimKey { key })
            }
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// The DNS record that publishes the public half (RFC 6376 §3.6.1), with
    /// the key as a DER SubjectPublicKeyInfo, as OpenDKIM and others expect.
    pub fn record(&self) -> anyhow::Result<String> {
        use base64::Engine;
        use rsa::pkcs8::EncodePublicKey;
        let der = rsa::RsaPublicKey::from(&self.key)
            .to_public_key_der()
            .map_err(|e| anyhow::anyhow!("cannot encode the DKIM public key: {e}"))?;
        let p = base64::engine::general_purpose::STANDARD.encode(der.as_bytes());
        Ok(format!("v=DKIM1; k=rsa; p={p}"))
    }

    /// The private key in PKCS#1 DER, for the signer.
    pub fn pkcs1_der(&self) -> anyhow::Result<Vec<u8>> {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        Ok(self
            .key
            .to_pkcs1_der()
            .map_err(|e| anyhow::anyhow!("cannot encode the DKIM key: {e}"))?
            .as_bytes()
            .to_vec())
    }
}

impl Keys {
    pub fn load_or_create(data_dir: &Path, address: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create the data folder {}", data_dir.display()))?;
        let key_path = data_dir.join("openpgp-key.asc");
        let openpgp = match std::fs::read(&key_path) {
            Ok(bytes) => pgp::parse_cert(&bytes).with_context(|| {
                format!("the OpenPGP key in {} does not parse", key_path.display())
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let cert = pgp::generate_cert(&[format!("<{address}>")])?;
                pgp::write_private_file(&key_path, &pgp::secret_armored(&cert)?)
                    .with_context(|| format!("cannot write {}", key_path.display()))?;
                std::fs::write(
                    data_dir.join("openpgp-cert.asc"),
                    pgp::public_armored(&cert)?,
                )?;
                tracing::info!(fingerprint = %pgp::fingerprint(&cert), "made a new OpenPGP key");
                cert
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", key_path.display())),
        };
        anyhow::ensure!(
            openpgp.is_tsk(),
            "{} holds no secret key",
            key_path.display()
        );
        let tunnel = Identity::load_or_create(&data_dir.join("tunnel-key.hex"))?;
        let dkim = DkimKey::load_or_create(data_dir)?;
        Ok(Keys {
            openpgp,
            tunnel,
            dkim,
        })
    }
}
