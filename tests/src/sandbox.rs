//! The sandbox: a whole Own-Mailbox system on loopback (one relay with its own
//! DNS zone `sandbox.test`, and linked home nodes), for trying it out and for
//! tests. The contract is in DESIGN.md ("The sandbox contract").

use anyhow::Context;
use omb_node::config::{AccessConfig, NodeConfig, PassthroughTargets, RelayLink};
use omb_node::tunnel::TunnelState;
use omb_relay::config::{DnsConfig, PassthroughConfig, RelayConfig, SmtpConfig, TunnelConfig};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DOMAIN: &str = "sandbox.test";

#[derive(Debug, Clone)]
pub struct SandboxOptions {
    pub dir: PathBuf,
    pub nodes: Vec<String>,
    /// Static outbound routes `DOMAIN=HOST:PORT`: mail the nodes send to DOMAIN
    /// goes there instead of to its MX (there is no other DNS in the sandbox).
    pub routes: Vec<(String, String)>,
    pub tor: bool,
}

#[derive(Debug, Serialize)]
pub struct Manifest {
    pub relay: RelayManifest,
    pub ca_cert: PathBuf,
    pub nodes: Vec<NodeManifest>,
}

#[derive(Debug, Serialize)]
pub struct RelayManifest {
    pub domain: String,
    pub smtp: SocketAddr,
    pub http: String,
    pub dns: SocketAddr,
    pub tunnel: SocketAddr,
    pub data_dir: PathBuf,
    /// SNI passthrough of IMAP over TLS: `NAME.sandbox.test` reaches node NAME.
    pub imaps: SocketAddr,
}

#[derive(Debug, Serialize)]
pub struct NodeManifest {
    pub name: String,
    pub address: String,
    pub password: String,
    /// IMAP with STARTTLS, and in implicit TLS (certificate signed by `ca_cert`).
    pub imap: Option<SocketAddr>,
    pub imaps: Option<SocketAddr>,
    /// POP3 with STLS, and in implicit TLS.
    pub pop3: Option<SocketAddr>,
    pub pop3s: Option<SocketAddr>,
    /// Message submission (RFC 6409) with STARTTLS, and in implicit TLS
    /// (RFC 8314); AUTH with the node's password.
    pub submission: Option<SocketAddr>,
    pub submissions: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub openpgp_fingerprint: String,
}

/// A running sandbox; dropping it stops everything.
pub struct Sandbox {
    pub manifest: Manifest,
    pub relay: omb_relay::server::RunningRelay,
    pub nodes: Vec<omb_node::node::RunningNode>,
}

/// Starts the relay and the nodes, links each node (first run) and waits until
/// every tunnel is up; then writes `DIR/sandbox.json`.
pub async fn start(opts: &SandboxOptions) -> anyhow::Result<Sandbox> {
    let dir = std::path::absolute(&opts.dir)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let _ = std::fs::remove_file(dir.join("sandbox.json"));
    let ca = write_ca(&dir)?;

    let relay_dir = dir.join("relay");
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let config = RelayConfig {
        domain: DOMAIN.to_string(),
        hostname: Some(format!("mx.{DOMAIN}")),
        data_dir: relay_dir.clone(),
        database: "sqlite".to_string(),
        smtp: SmtpConfig {
            listen: any,
            ..SmtpConfig::default()
        },
        tunnel: TunnelConfig {
            listen: any,
            ..TunnelConfig::default()
        },
        // The relay's own DNS server on a free loopback port, and the relay asks
        // only it: nothing in the sandbox uses the system resolver.
        dns: DnsConfig {
            listen: Some(any),
            resolver: any,
            addresses: vec![std::net::IpAddr::from([127, 0, 0, 1])],
            ..DnsConfig::default()
        },
        // postmaster@ and abuse@ reach the first node's owner, standing in for
        // the relay's operator.
        accounts: omb_relay::config::AccountsConfig {
            operator: opts.nodes.first().map(|n| n.to_lowercase()),
            ..Default::default()
        },
        http: omb_relay::config::HttpConfig {
            listen: Some(any),
            ..Default::default()
        },
        mta_sts: Default::default(),
        outbound: omb_relay::config::OutboundConfig {
            routes: opts.routes.iter().cloned().collect(),
            ..Default::default()
        },
        // Custom domains are checked through the relay's own DNS, the only
        // one in the sandbox.
        domains: Default::default(),
        // `NAME.sandbox.test` (the zone has each account's name, with the
        // relay's address) on this port reaches node NAME, TLS and all.
        passthrough: PassthroughConfig {
            imaps: Some(any),
            ..PassthroughConfig::default()
        },
    };
    let quota = config.accounts.quota_bytes;
    let relay = omb_relay::server::start(config).await?;
    let dns = relay.dns.context("the relay's DNS server did not start")?;
    let imaps = relay
        .imaps
        .context("the relay's imaps passthrough did not start")?;

    let mut nodes = Vec::new();
    let mut node_manifests = Vec::new();
    for name in &opts.nodes {
        let handle = name.to_lowercase();
        let node_dir = dir.join("nodes").join(&handle);
        std::fs::create_dir_all(&node_dir)?;
        let linked = node_dir.join("linked").exists();
        let link_token = if linked {
            None
        } else {
            match relay.store.create_account(&handle, DOMAIN, quota).await {
                Ok(()) | Err(omb_relay::store::StoreError::AccountExists(_)) => {}
                Err(e) => return Err(e.into()),
            }
            Some(relay.store.create_link_token(&handle).await?)
        };
        let address = format!("{handle}@{DOMAIN}");
        let (tls_cert, tls_key) = ca.node_cert(&node_dir, &handle)?;
        // Port 0: the node binds and reports the ports the system chose.
        let access = AccessConfig {
            imap: Some(any),
            imaps: Some(any),
            pop3: Some(any),
            pop3s: Some(any),
            submission: Some(any),
            submissions: Some(any),
            submission_max_size: None,
            submission_max_recipients: None,
            submission_connections_per_address: None,
            tls_cert: Some(tls_cert),
            tls_key: Some(tls_key),
            ciphertext_to_apps: false,
        };
        let password = password(&node_dir)?;
        let node_config = NodeConfig {
            address: address.clone(),
            data_dir: node_dir.clone(),
            relay: RelayLink {
                tunnel: relay.tunnel.to_string(),
                pin: relay.tunnel_pin.clone(),
                link_token,
            },
            access: access.clone(),
            // `NAME.sandbox.test` at the relay's imaps port reaches this.
            passthrough: PassthroughTargets {
                imaps: access.imaps,
                https: None,
            },
        };
        let node = omb_node::node::start(node_config.clone())
            .await
            .with_context(|| format!("cannot start node {handle}"))?;
        let bound = node.listening;
        // The node's configuration beside its folder, with the ports it got
        // and without the spent link token, so `omb-node -c DIR/nodes/NAME.toml
        // mail list` reads its mail while or after the sandbox runs, and
        // `... run` runs it on its own.
        let mut on_disk = node_config;
        on_disk.relay.link_token = None;
        on_disk.access.imap = bound.imap;
        on_disk.access.imaps = bound.imaps;
        on_disk.access.pop3 = bound.pop3;
        on_disk.access.pop3s = bound.pop3s;
        on_disk.access.submission = bound.submission;
        on_disk.access.submissions = bound.submissions;
        on_disk.passthrough.imaps = bound.imaps;
        std::fs::write(
            dir.join("nodes").join(format!("{handle}.toml")),
            toml::to_string(&on_disk)?,
        )?;
        node_manifests.push(NodeManifest {
            name: handle.clone(),
            address,
            password,
            imap: bound.imap,
            imaps: bound.imaps,
            pop3: bound.pop3,
            pop3s: bound.pop3s,
            submission: bound.submission,
            submissions: bound.submissions,
            data_dir: node_dir,
            openpgp_fingerprint: omb_shared::pgp::fingerprint(&node.keys.openpgp).0,
        });
        nodes.push(node);
    }
    for (node, m) in nodes.iter_mut().zip(&node_manifests) {
        let wait = node
            .tunnel_state
            .wait_for(|s| !matches!(s, TunnelState::Connecting));
        match tokio::time::timeout(Duration::from_secs(30), wait).await {
            Ok(Ok(state)) => {
                if let TunnelState::Refused(reason) = &*state {
                    anyhow::bail!("the relay refused node {}: {reason}", m.name);
                }
            }
            _ => anyhow::bail!("node {}'s tunnel did not come up in 30 s", m.name),
        }
    }

    let manifest = Manifest {
        relay: RelayManifest {
            domain: DOMAIN.to_string(),
            smtp: relay.smtp,
            http: relay
                .http
                .map(|a| format!("http://{a}"))
                .unwrap_or_default(),
            dns,
            tunnel: relay.tunnel,
            data_dir: relay_dir,
            imaps,
        },
        ca_cert: ca.cert.clone(),
        nodes: node_manifests,
    };
    let json = serde_json::to_vec_pretty(&manifest)?;
    let tmp = dir.join("sandbox.json.tmp");
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, dir.join("sandbox.json"))?;
    Ok(Sandbox {
        manifest,
        relay,
        nodes,
    })
}

/// A certificate authority made once per folder (`ca.pem`; its key
/// `ca-key.pem`): the sandbox's, which signs the nodes' TLS certificates, and
/// the test CAs of peers that must present valid certificates.
pub struct TestCa {
    pub cert: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

fn ca_params() -> anyhow::Result<rcgen::CertificateParams> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Own-Mailbox sandbox CA");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    Ok(params)
}

/// The sandbox's CA for the sandbox folder `dir`.
fn write_ca(dir: &Path) -> anyhow::Result<TestCa> {
    TestCa::in_folder(dir)
}

impl TestCa {
    /// The CA of `dir`, made there unless it is there already.
    pub fn in_folder(dir: &Path) -> anyhow::Result<TestCa> {
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca-key.pem");
        if !cert_path.exists() || !key_path.exists() {
            let key = rcgen::KeyPair::generate()?;
            let cert = ca_params()?.self_signed(&key)?;
            omb_shared::pgp::write_private_file(&key_path, key.serialize_pem().as_bytes())?;
            std::fs::write(&cert_path, cert.pem())?;
        }
        let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(&key_path)?)?;
        Ok(TestCa {
            cert: cert_path,
            issuer: rcgen::Issuer::new(ca_params()?, key),
        })
    }

    /// A certificate for `names` (the first also its common name) and
    /// 127.0.0.1, made once as `dir/STEM-cert.pem` and `dir/STEM-key.pem`.
    pub fn issue(
        &self,
        dir: &Path,
        stem: &str,
        names: &[String],
    ) -> anyhow::Result<(PathBuf, PathBuf)> {
        let cert_path = dir.join(format!("{stem}-cert.pem"));
        let key_path = dir.join(format!("{stem}-key.pem"));
        if !cert_path.exists() || !key_path.exists() {
            let key = rcgen::KeyPair::generate()?;
            let mut params = rcgen::CertificateParams::new(names.to_vec())?;
            params
                .subject_alt_names
                .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
            if let Some(first) = names.first() {
                params
                    .distinguished_name
                    .push(rcgen::DnType::CommonName, first.clone());
            }
            let cert = params.signed_by(&key, &self.issuer)?;
            omb_shared::pgp::write_private_file(&key_path, key.serialize_pem().as_bytes())?;
            std::fs::write(&cert_path, cert.pem())?;
        }
        Ok((cert_path, key_path))
    }

    /// A certificate for a node's mail-access servers, for `HANDLE.sandbox.test`,
    /// `localhost` and 127.0.0.1, made once in the node's folder.
    fn node_cert(&self, node_dir: &Path, handle: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        self.issue(
            node_dir,
            "access",
            &[format!("{handle}.{DOMAIN}"), "localhost".to_string()],
        )
    }
}

/// The node's mail-access password, made once; the node keeps its hash.
fn password(node_dir: &Path) -> anyhow::Result<String> {
    let path = node_dir.join("password");
    if let Ok(p) = std::fs::read_to_string(&path) {
        return Ok(p.trim().to_string());
    }
    let p = hex::encode(rand::random::<[u8; 12]>());
    omb_node::access::login::set_password(node_dir, &p)?;
    omb_shared::pgp::write_private_file(&path, p.as_bytes())?;
    Ok(p)
}
