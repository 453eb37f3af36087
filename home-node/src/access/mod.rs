//! What mail apps talk to, and the parts the IMAP and POP3 servers share: TLS,
//! logging in, and the decrypted view of the stored (encrypted) mail.

pub mod armor;
pub mod login;
pub mod view;

use crate::config::NodeConfig;
use omb_shared::tls::CertSource;
use std::sync::Arc;

/// The TLS server configuration of the mail-access servers: the configured
/// certificate, or a self-signed one for the account's host name, made once.
pub fn tls_config(config: &NodeConfig) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let mut names = vec!["localhost".to_string()];
    if let Some((local, domain)) = config.address.rsplit_once('@') {
        names.insert(
            0,
            format!("{}.{}", local.to_lowercase(), domain.to_lowercase()),
        );
    }
    let source = CertSource::from_config(
        config.access.tls_cert.as_deref(),
        config.access.tls_key.as_deref(),
        &config.data_dir,
        "access",
        names,
    );
    omb_shared::tls::server_config(&source)
}

/// What every mail-access session needs.
#[derive(Clone)]
pub struct AccessContext {
    pub store: crate::store::MailStore,
    pub login: Arc<login::Login>,
    pub view: view::MailView,
    pub tls: Arc<rustls::ServerConfig>,
}

impl AccessContext {
    pub fn new(
        config: &NodeConfig,
        keys: Arc<crate::keys::Keys>,
        store: crate::store::MailStore,
    ) -> anyhow::Result<Self> {
        Ok(AccessContext {
            store,
            login: Arc::new(login::Login::new(&config.data_dir, &config.address)),
            view: view::MailView::new(keys, config.access.ciphertext_to_apps),
            tls: tls_config(config)?,
        })
    }
}
