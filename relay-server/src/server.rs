//! Starts every part of the relay from its configuration.

use crate::accounts::limit::SignupLimiter;
use crate::accounts::pow::Pow;
use crate::auth::Authenticator;
use crate::config::RelayConfig;
use crate::dns::{
    notify_secondaries, DnsServer, RelayZone, ServerOptions, TransferAcl, ZoneConfig, ZoneKey,
};
use crate::domains::{DomainSettings, Domains};
use crate::mx::accept::{Acceptor, Routing};
use crate::mx::MxServer;
use crate::outbound::Outbound;
use crate::passthrough::PassthroughServer;
use crate::store::Store;
use crate::tunnel::{Hub, TunnelContext};
use crate::web::{ClientSettings, MtaStsPolicy, Signup, WebContext};
use anyhow::Context;
use omb_shared::protocol::Service;
use omb_shared::tls::CertSource;
use omb_shared::transport::quic::{QuicListener, RelayTlsIdentity};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// The id of the MTA-STS policy the web front serves (RFC 8461 §3.1): change it
/// whenever the policy changes.
const MTA_STS_ID: &str = "omb1";

/// A running relay: where each part listens, and the tasks serving them.
pub struct RunningRelay {
    pub smtp: SocketAddr,
    pub tunnel: SocketAddr,
    pub dns: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    /// The SNI passthrough listeners, where configured.
    pub imaps: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    /// SHA-256 of the tunnel certificate, which nodes pin.
    pub tunnel_pin: String,
    pub store: Store,
    pub hub: Arc<Hub>,
    pub tasks: JoinSet<()>,
}

impl RunningRelay {
    /// Runs until one of the servers stops (which is an error).
    pub async fn wait(mut self) -> anyhow::Result<()> {
        self.tasks.join_next().await;
        anyhow::bail!("a relay server stopped unexpectedly")
    }
}

/// Opens the relay's store (creating it on first start).
pub async fn open_store(config: &RelayConfig) -> anyhow::Result<Store> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "cannot create the data folder {}",
            config.data_dir.display()
        )
    })?;
    Store::open(&config.database_url()).await.with_context(|| {
        format!(
            "cannot open the relay database {}",
            redact(&config.database)
        )
    })
}

fn redact(url: &str) -> String {
    match url.split_once('@') {
        Some((_, host)) => format!("postgres://…@{host}"),
        None => url.to_string(),
    }
}

/// The tunnel certificate's pin, creating the certificate on first use.
pub fn tunnel_pin(config: &RelayConfig) -> anyhow::Result<String> {
    std::fs::create_dir_all(&config.data_dir)?;
    Ok(RelayTlsIdentity::load_or_create(&config.data_dir)?.pin())
}

/// Binds every listener and starts serving.
pub async fn start(config: RelayConfig) -> anyhow::Result<RunningRelay> {
    let store = open_store(&config).await?;
    let identity = RelayTlsIdentity::load_or_create(&config.data_dir)
        .context("cannot load or create the tunnel certificate")?;
    let hostname = config.hostname();
    let hub = Arc::new(Hub::new());
    let mut tasks = JoinSet::new();

    // The passthrough listeners before DNS: the zone's SRV records and the
    // autoconfig name their ports.
    let passthrough = PassthroughServer::new(
        hub.clone(),
        store.clone(),
        &config.domain,
        &config.passthrough,
    );
    let imaps = listen_passthrough(
        config.passthrough.imaps,
        Service::Imaps,
        &passthrough,
        &mut tasks,
    )
    .await?;
    let https = listen_passthrough(
        config.passthrough.https,
        Service::Https,
        &passthrough,
        &mut tasks,
    )
    .await?;
    let clients = client_settings(&config, imaps.map(|a| a.port()));

    // DNS first: the authenticator may ask it.
    let dns = match config.dns.listen {
        Some(addr) => {
            let zone = RelayZone::new(&zone_config(&config, &clients))
                .context("cannot build the relay's DNS zone")?;
            let zone = if config.dns.dnssec {
                let path = config.dns.key_path(&config.data_dir);
                zone.signed(ZoneKey::load_or_generate(&path)?)
            } else {
                zone
            };
            let zone = Arc::new(zone);
            let loaded = zone
                .load(&store)
                .await
                .context("cannot load the accounts into the DNS zone")?;
            tasks.spawn(zone.clone().follow(store.clone(), loaded));
            // Every task of the set must run for ever: `wait` treats an end as a failure.
            if !config.dns.notify.is_empty() {
                tasks.spawn(notify_secondaries(zone.clone(), config.dns.notify.clone()));
            }
            let options = ServerOptions {
                allow_transfer: TransferAcl::parse(&config.dns.allow_transfer)
                    .map_err(anyhow::Error::msg)
                    .context("bad [dns] allow_transfer")?,
                rrl: config.dns.rrl.clone(),
            };
            let server = DnsServer::bind(addr, zone)
                .await
                .with_context(|| format!("cannot listen for DNS on {addr}"))?
                .with_options(&options)
                .map_err(anyhow::Error::msg)
                .context("bad [dns.rrl]")?;
            let local = server.local_addr();
            tasks.spawn(server.run());
            Some(local)
        }
        None => None,
    };
    let resolver = match (config.dns.listen, dns) {
        // A relay serving DNS on an unspecified port asks itself.
        (Some(l), Some(d)) if l.port() == 0 && config.dns.resolver == l => d,
        _ => config.dns.resolver,
    };
    let auth =
        Authenticator::new(resolver, &hostname).context("cannot set up SPF/DKIM/DMARC checks")?;

    let routing = Routing {
        relay_domain: config.domain.clone(),
        operator: config.accounts.operator.clone(),
    };
    if routing.operator.is_none() {
        tracing::warn!("no [accounts] operator: postmaster@ and abuse@ addresses are refused");
    }
    let acceptor = Arc::new(Acceptor::new(
        store.clone(),
        auth.clone(),
        hub.clone(),
        hostname.clone(),
        routing,
    ));
    let outbound = Outbound::new(
        store.clone(),
        auth,
        acceptor.clone(),
        config.outbound.clone(),
        &config.domain,
        &hostname,
        config.smtp.max_message_size,
    )
    .context("cannot set up outbound delivery")?;
    tasks.spawn(outbound.clone().run());
    let tls = mx_tls(&config, &hostname).context("cannot set up STARTTLS for the MX")?;
    let listener = tokio::net::TcpListener::bind(config.smtp.listen)
        .await
        .with_context(|| format!("cannot listen for SMTP on {}", config.smtp.listen))?;
    let smtp = listener.local_addr()?;
    let mx = MxServer::new(acceptor, config.smtp.clone(), hostname, Some(tls));
    tasks.spawn(crate::mx::serve(listener, mx));

    let quic = QuicListener::bind(config.tunnel.listen, &identity)
        .with_context(|| format!("cannot listen for the tunnel on {}", config.tunnel.listen))?;
    let tunnel = quic.local_addr()?;
    let ctx = Arc::new(TunnelContext {
        store: store.clone(),
        hub: hub.clone(),
        window: config.tunnel.window.max(1),
        outbound,
    });
    tasks.spawn(crate::tunnel::serve(quic, ctx));

    let domains = Domains::new(
        store.clone(),
        DomainSettings {
            relay_domain: config.domain.clone(),
            mx_host: config.hostname(),
            resolver: config.domains.resolver.unwrap_or(resolver),
            imaps_port: imaps.map(|a| a.port()),
            recheck: std::time::Duration::from_secs(config.domains.recheck_secs.max(1)),
        },
    );
    tasks.spawn(domains.clone().recheck_loop());

    let http = match config.http.listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for HTTP on {addr}"))?;
            let local = listener.local_addr()?;
            let accounts = &config.accounts;
            let pow = Pow::load_or_create(
                &config.data_dir,
                accounts.pow_difficulty,
                accounts.pow_ttl_secs,
            )
            .context("cannot load or create the proof-of-work secret")?;
            let ctx = Arc::new(WebContext {
                store: store.clone(),
                clients: clients.clone(),
                signup: Signup {
                    trusted_proxies: config.http.trusted_proxies.clone(),
                    domain: config.domain.to_ascii_lowercase(),
                    quota_bytes: accounts.quota_bytes,
                    pow,
                    limiter: SignupLimiter::new(
                        accounts.signups_per_ip,
                        Duration::from_secs(accounts.signup_window_secs),
                    ),
                    tunnel: format!("{}:{}", config.hostname(), tunnel.port()),
                    tunnel_pin: identity.pin(),
                },
                mta_sts: MtaStsPolicy {
                    domain: config.domain.to_ascii_lowercase(),
                    mx: config.hostname(),
                    config: config.mta_sts.clone(),
                },
                domains: domains.clone(),
            });
            tasks.spawn(crate::web::serve(listener, ctx));
            Some(local)
        }
        None => None,
    };

    Ok(RunningRelay {
        smtp,
        tunnel,
        dns,
        http,
        imaps,
        https,
        tunnel_pin: identity.pin(),
        store,
        hub,
        tasks,
    })
}

/// What the relay's zone publishes besides its accounts, from the configuration.
pub fn zone_config(config: &RelayConfig, clients: &ClientSettings) -> ZoneConfig {
    let addresses = if config.dns.addresses.is_empty() {
        vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]
    } else {
        config.dns.addresses.clone()
    };
    let mut spf = "v=spf1".to_string();
    let (mut ipv4, mut ipv6) = (Vec::new(), Vec::new());
    for address in addresses {
        match address {
            IpAddr::V4(v4) => {
                spf.push_str(&format!(" ip4:{v4}"));
                ipv4.push(v4);
            }
            IpAddr::V6(v6) => {
                spf.push_str(&format!(" ip6:{v6}"));
                ipv6.push(v6);
            }
        }
    }
    spf.push_str(" -all");
    ZoneConfig {
        domain: config.domain.clone(),
        mx_host: config.hostname(),
        ipv4,
        ipv6,
        spf,
        dmarc: "v=DMARC1; p=reject; adkim=s; aspf=r".to_string(),
        mta_sts_id: MTA_STS_ID.to_string(),
        tlsrpt_rua: format!("mailto:tlsrpt@{}", config.domain),
        extra_hosts: vec![],
        handle_services: clients.rfc6186_services(),
    }
}

/// The settings mail apps are given, from the configuration and the
/// passthrough ports actually bound.
pub fn client_settings(config: &RelayConfig, imaps: Option<u16>) -> ClientSettings {
    ClientSettings {
        domain: config.domain.clone(),
        imaps,
        pop3s: None,
        submissions: None,
    }
}

/// Starts the passthrough listener of `service` if it has an address.
async fn listen_passthrough(
    addr: Option<SocketAddr>,
    service: Service,
    server: &Arc<PassthroughServer>,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<Option<SocketAddr>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for {service} passthrough on {addr}"))?;
    let local = listener.local_addr()?;
    tasks.spawn(crate::passthrough::serve(listener, service, server.clone()));
    Ok(Some(local))
}

/// The MX's TLS: the configured PEM files, or a self-signed pair made once in
/// the data folder (senders on the Internet use opportunistic TLS and accept it).
fn mx_tls(config: &RelayConfig, hostname: &str) -> anyhow::Result<TlsAcceptor> {
    let source = CertSource::from_config(
        config.smtp.tls_cert.as_deref(),
        config.smtp.tls_key.as_deref(),
        &config.data_dir,
        "mx",
        vec![hostname.to_string()],
    );
    Ok(TlsAcceptor::from(omb_shared::tls::server_config(&source)?))
}
