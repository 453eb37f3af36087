//! The node's keys, made at first start and never sent anywhere but their public
//! halves: the OpenPGP key (mail is encrypted to it) and the tunnel identity.

use anyhow::Context;
use omb_shared::identity::Identity;
use omb_shared::pgp;
use sequoia_openpgp::Cert;
use std::path::Path;

pub struct Keys {
    /// The OpenPGP key with its secret parts.
    pub openpgp: Cert,
    pub tunnel: Identity,
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
        Ok(Keys { openpgp, tunnel })
    }
}
