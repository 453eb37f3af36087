//! TLS server set-up shared by the relay's MX and the node's mail-access
//! servers: the operator's PEM files, or a self-signed pair made once.

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a server's certificate comes from.
#[derive(Debug, Clone)]
pub enum CertSource {
    /// The operator's certificate chain and private key, both PEM.
    Files { cert: PathBuf, key: PathBuf },
    /// A self-signed certificate for these names, made once and kept as
    /// `PREFIX-cert.pem` / `PREFIX-key.pem` (mode 0600) in the folder.
    SelfSigned {
        dir: PathBuf,
        prefix: String,
        names: Vec<String>,
    },
}

impl CertSource {
    /// The configured files when both are given, else a self-signed pair.
    pub fn from_config(
        cert: Option<&Path>,
        key: Option<&Path>,
        dir: &Path,
        prefix: &str,
        names: Vec<String>,
    ) -> Self {
        match (cert, key) {
            (Some(cert), Some(key)) => CertSource::Files {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            },
            _ => CertSource::SelfSigned {
                dir: dir.to_path_buf(),
                prefix: prefix.to_string(),
                names,
            },
        }
    }

    fn paths(&self) -> anyhow::Result<(PathBuf, PathBuf)> {
        match self {
            CertSource::Files { cert, key } => Ok((cert.clone(), key.clone())),
            CertSource::SelfSigned { dir, prefix, names } => {
                let cert = dir.join(format!("{prefix}-cert.pem"));
                let key = dir.join(format!("{prefix}-key.pem"));
                if !cert.exists() || !key.exists() {
                    let pair = rcgen::KeyPair::generate()?;
                    let made = rcgen::CertificateParams::new(names.clone())?.self_signed(&pair)?;
                    crate::pgp::write_private_file(&key, pair.serialize_pem().as_bytes())
                        .with_context(|| format!("cannot write {}", key.display()))?;
                    std::fs::write(&cert, made.pem())
                        .with_context(|| format!("cannot write {}", cert.display()))?;
                }
                Ok((cert, key))
            }
        }
    }
}

/// A rustls server configuration (ring provider, TLS 1.2 and 1.3) for `source`.
pub fn server_config(source: &CertSource) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let (cert_path, key_path) = source.paths()?;
    let certs = load_certs(&cert_path)?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{} holds no PEM certificate",
        cert_path.display()
    );
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(&key_path)
            .with_context(|| format!("cannot open {}", key_path.display()))?,
    ))?
    .with_context(|| format!("no private key in {}", key_path.display()))?;
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .with_context(|| {
        format!(
            "{} and {} are not a matching certificate and key",
            cert_path.display(),
            key_path.display()
        )
    })?;
    Ok(Arc::new(tls))
}

fn load_certs(path: &Path) -> anyhow::Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    let mut reader = std::io::BufReader::new(
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
    );
    Ok(rustls_pemfile::certs(&mut reader).collect::<Result<Vec<_>, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_pair_is_made_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("omb-tls-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let source =
            CertSource::from_config(None, None, &dir, "imap", vec!["localhost".to_string()]);
        server_config(&source).unwrap();
        let first = std::fs::read(dir.join("imap-cert.pem")).unwrap();
        server_config(&source).unwrap();
        assert_eq!(std::fs::read(dir.join("imap-cert.pem")).unwrap(), first);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
