//! The node's configuration file (TOML); every key is documented in
//! `ops/node.example.toml`.

use omb_shared::protocol::Service;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The account's address, e.g. `alice@example.net`; the user id of the
    /// OpenPGP key made at first start.
    pub address: String,
    /// Where the node keeps its keys and its mail store.
    pub data_dir: PathBuf,
    pub relay: RelayLink,
    /// Where mail apps reach the node (IMAP, POP3) and how.
    #[serde(default)]
    pub access: AccessConfig,
    #[serde(default)]
    pub passthrough: PassthroughTargets,
}

/// The mail-access servers. Each listener is optional; none is started when
/// the section is absent.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    /// IMAP with STARTTLS (RFC 3501 / 9051), e.g. `127.0.0.1:143`.
    pub imap: Option<SocketAddr>,
    /// IMAP in implicit TLS (RFC 8314), e.g. `0.0.0.0:993`.
    pub imaps: Option<SocketAddr>,
    /// POP3 with STLS (RFC 1939, 2595), e.g. `127.0.0.1:110`.
    pub pop3: Option<SocketAddr>,
    /// POP3 in implicit TLS, e.g. `0.0.0.0:995`.
    pub pop3s: Option<SocketAddr>,
    /// Message submission with STARTTLS (RFC 6409), e.g. `0.0.0.0:587`.
    pub submission: Option<SocketAddr>,
    /// Message submission in implicit TLS (RFC 8314 §3.3), e.g. `0.0.0.0:465`.
    pub submissions: Option<SocketAddr>,
    /// The largest message the submission server takes, in bytes (SIZE,
    /// RFC 1870); 25 MiB when unset.
    pub submission_max_size: Option<usize>,
    /// Recipients of one submitted message, at most; 100 when unset.
    pub submission_max_recipients: Option<usize>,
    /// Submission connections open at once from one address; 10 when unset.
    pub submission_connections_per_address: Option<usize>,
    /// The TLS certificate chain (PEM) for the names apps use; with `tls_key`.
    /// Without them the node makes a self-signed one (apps will warn).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Hand apps the stored OpenPGP ciphertext (PGP/MIME) instead of the
    /// decrypted message, for apps that decrypt themselves.
    #[serde(default)]
    pub ciphertext_to_apps: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RelayLink {
    /// The relay's tunnel endpoint, `host:port` (UDP, QUIC).
    pub tunnel: String,
    /// SHA-256 of the relay's tunnel certificate, hex (`omb-relay pin` prints it).
    pub pin: String,
    /// The one-time link token (`omb-relay account add` prints it); used once,
    /// at the first connection, then ignored.
    #[serde(default)]
    pub link_token: Option<String>,
}

/// Where the node connects the TLS connections the relay passes through to it
/// by SNI; a service with no address here is refused.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PassthroughTargets {
    /// The node's IMAP server with implicit TLS.
    #[serde(default)]
    pub imaps: Option<SocketAddr>,
    /// The node's webmail (HTTPS).
    #[serde(default)]
    pub https: Option<SocketAddr>,
}

impl PassthroughTargets {
    pub fn target(&self, service: Service) -> Option<SocketAddr> {
        match service {
            Service::Imaps => self.imaps,
            Service::Https => self.https,
        }
    }
}

impl NodeConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the node configuration {}", path.display()))?;
        toml::from_str(&text)
            .with_context(|| format!("{} is not a valid node configuration", path.display()))
    }
}
