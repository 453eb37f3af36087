//! The node's configuration file (TOML); every key is documented in
//! `ops/node.example.toml`.

use omb_shared::protocol::Service;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The account's address, e.g. `alice@example.net`; the user id of the
    /// OpenPGP key made at first start.
    pub address: String,
    /// Where the node keeps its keys and its mail store.
    pub data_dir: PathBuf,
    pub relay: RelayLink,
    #[serde(default)]
    pub passthrough: PassthroughTargets,
}

#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Default, Deserialize)]
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
