//! The relay's configuration file (TOML). Every key is documented in
//! `ops/relay.example.toml`.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// The relay's mail domain: accounts get `handle@domain`.
    pub domain: String,
    /// This host's name, used in the SMTP greeting, `Received` and
    /// `Authentication-Results`. Defaults to `mx.DOMAIN`.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Where the relay keeps its database (SQLite) and keys.
    pub data_dir: PathBuf,
    /// `sqlite` (the default: `DATA_DIR/relay.db`) or a `postgres://` URL.
    #[serde(default = "default_database")]
    pub database: String,
    #[serde(default)]
    pub smtp: SmtpConfig,
    #[serde(default)]
    pub tunnel: TunnelConfig,
    #[serde(default)]
    pub dns: DnsConfig,
    #[serde(default)]
    pub accounts: AccountsConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub passthrough: PassthroughConfig,
    #[serde(default)]
    pub mta_sts: MtaStsConfig,
    #[serde(default)]
    pub domains: DomainsConfig,
    #[serde(default)]
    pub outbound: OutboundConfig,
}

/// Mail that nodes send: the outbound queue, its routes and its limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundConfig {
    /// Static routes, `"domain" = "host:port"` (like Postfix transport maps):
    /// mail for the domain goes there instead of to its MX.
    pub routes: std::collections::BTreeMap<String, String>,
    /// The port of the hosts an MX lookup names (25; tests use another).
    pub mx_port: u16,
    /// The DNS server for deliveries (MX, addresses, MTA-STS records);
    /// `[dns] resolver` when unset. Never the system resolver.
    pub resolver: Option<SocketAddr>,
    /// A PEM file of CA certificates trusted besides the Mozilla roots
    /// (webpki-roots), for MTA-STS policy servers and MX certificates.
    pub tls_roots: Option<PathBuf>,
    /// The HTTPS port of `mta-sts.DOMAIN` policy servers (443; tests use
    /// another).
    pub mta_sts_port: u16,
    /// DANE (RFC 7672) for MX deliveries: MX and TLSA records validated with
    /// DNSSEC through `resolver`, which must then return DNSSEC records.
    pub dane: bool,
    /// DNSKEY records (zone-file syntax) the DNSSEC validation of DANE
    /// starts from; the IANA root's KSKs (built in) when unset.
    pub dnssec_trust_anchor: Option<PathBuf>,
    /// Seconds before each retry after a temporary failure; the last one
    /// repeats until `expire_secs`.
    pub retry_secs: Vec<u64>,
    /// Seconds after submission when a message still not delivered is given
    /// up and a DSN is sent back (5 days, RFC 5321 §4.5.4.1 suggests 4-5).
    pub expire_secs: u64,
    /// Milliseconds between looks at the queue for due messages.
    pub poll_ms: u64,
    /// Destinations delivered to at once.
    pub concurrency: usize,
    /// Seconds to connect to a destination and for each of its replies.
    pub timeout_secs: u64,
    /// Seconds a connection that ended a delivery pass waits, idle, for the
    /// next pass to the same host (0: a connection per pass).
    pub connection_cache_secs: u64,
    /// Messages one account may submit per minute (a burst of this many,
    /// then one every 60/N seconds); `451 4.7.1` beyond.
    pub per_minute: u32,
    /// Messages one account may submit per UTC day.
    pub per_day: i64,
    /// The daily cap for accounts younger than `new_account_days`.
    pub new_account_per_day: i64,
    pub new_account_days: i64,
    /// Recipients of one submitted message, at most.
    pub max_recipients: usize,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        OutboundConfig {
            routes: Default::default(),
            mx_port: 25,
            resolver: None,
            tls_roots: None,
            mta_sts_port: 443,
            dane: true,
            dnssec_trust_anchor: None,
            retry_secs: vec![120, 600, 1800, 3600, 7200, 14400, 28800],
            expire_secs: 5 * 86_400,
            poll_ms: 1000,
            concurrency: 16,
            timeout_secs: 120,
            connection_cache_secs: 5,
            per_minute: 20,
            per_day: 500,
            new_account_per_day: 50,
            new_account_days: 7,
            max_recipients: 50,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Where the web front listens (HTTP), e.g. `0.0.0.0:80`; none when unset.
    pub listen: Option<SocketAddr>,
    /// Reverse proxies (e.g. the TLS front) whose `X-Forwarded-For` names the
    /// client; requests from anywhere else count by their own address.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    pub listen: SocketAddr,
    /// Largest message accepted, in bytes (advertised with SIZE, RFC 1870).
    pub max_message_size: usize,
    pub max_recipients: usize,
    /// Simultaneous connections from one IP address.
    pub max_connections_per_ip: usize,
    /// Simultaneous connections in all.
    pub max_connections: usize,
    /// Seconds to wait for a command (RFC 5321 section 4.5.3.2.7 asks for 5 min).
    pub command_timeout_secs: u64,
    /// Seconds a whole DATA transfer may take.
    pub data_timeout_secs: u64,
    /// PEM certificate chain and key for STARTTLS; a self-signed pair is made in
    /// the data folder when unset.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 25)),
            max_message_size: 50 * 1024 * 1024,
            max_recipients: 100,
            max_connections_per_ip: 20,
            max_connections: 1000,
            command_timeout_secs: 300,
            data_timeout_secs: 600,
            tls_cert: None,
            tls_key: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TunnelConfig {
    /// UDP address of the QUIC tunnel endpoint that nodes dial.
    pub listen: SocketAddr,
    /// Messages sent to a node before waiting for acknowledgements. Larger
    /// than the node's batch (64), so the next batch arrives while one is
    /// being stored.
    pub window: usize,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        TunnelConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 4433)),
            window: 128,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Where the relay's authoritative DNS server listens (UDP and TCP); off when unset.
    pub listen: Option<SocketAddr>,
    /// The one DNS server the relay asks (SPF, DKIM, DMARC). Never the system resolver.
    pub resolver: SocketAddr,
    /// Public IPv4/IPv6 addresses of this relay, published in its zone.
    pub addresses: Vec<std::net::IpAddr>,
    /// Sign the zone online (DNSSEC); the key is made on first start in
    /// `DATA_DIR/dnssec.key`.
    pub dnssec: bool,
    /// Addresses (`IP` or `IP/PREFIX`) allowed to transfer the zone (AXFR over TCP).
    pub allow_transfer: Vec<String>,
    /// Secondaries (`IP:PORT`) sent a NOTIFY on every change of the zone.
    pub notify: Vec<SocketAddr>,
    /// Response-rate limiting of UDP answers.
    pub rrl: crate::dns::RrlConfig,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            listen: None,
            resolver: SocketAddr::from(([127, 0, 0, 1], 53)),
            addresses: vec![],
            dnssec: true,
            allow_transfer: vec![],
            notify: vec![],
            rrl: crate::dns::RrlConfig::default(),
        }
    }
}

impl DnsConfig {
    /// Where the zone's DNSSEC key is kept.
    pub fn key_path(&self, data_dir: &Path) -> PathBuf {
        data_dir.join("dnssec.key")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccountsConfig {
    /// Bytes of mail an account may have waiting in the spool; `452` beyond.
    pub quota_bytes: i64,
    /// Leading zero bits a signup's proof of work must reach: each bit doubles
    /// the client's work (18: about 260,000 SHA-256 on average, ~1 s in a browser).
    pub pow_difficulty: u8,
    /// Seconds a proof-of-work challenge stays valid after it is issued.
    pub pow_ttl_secs: u64,
    /// Signups one client (an IPv4 address, an IPv6 /64) may attempt per
    /// `signup_window_secs`; 0 turns the limit off.
    pub signups_per_ip: u32,
    pub signup_window_secs: u64,
    /// The account (handle) that receives `postmaster@` and `abuse@` of every
    /// hosted domain (RFC 5321 §4.5.1, RFC 2142); refused when unset.
    pub operator: Option<String>,
}

impl Default for AccountsConfig {
    fn default() -> Self {
        AccountsConfig {
            quota_bytes: 1024 * 1024 * 1024,
            pow_difficulty: 18,
            pow_ttl_secs: 600,
            signups_per_ip: 5,
            signup_window_secs: 3600,
            operator: None,
        }
    }
}

/// The MTA-STS policy (RFC 8461) served at `mta-sts.DOMAIN/.well-known/mta-sts.txt`
/// for the relay's domain and every verified custom domain.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MtaStsConfig {
    /// `enforce`, `testing` (the default, until the MX has a certificate from a
    /// public CA) or `none` (RFC 8461 section 5).
    pub mode: MtaStsMode,
    /// Seconds senders may cache the policy (RFC 8461 section 3.2; at most 31557600).
    pub max_age_secs: u64,
}

impl Default for MtaStsConfig {
    fn default() -> Self {
        MtaStsConfig {
            mode: MtaStsMode::Testing,
            max_age_secs: 604_800,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MtaStsMode {
    Enforce,
    Testing,
    None,
}

impl MtaStsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MtaStsMode::Enforce => "enforce",
            MtaStsMode::Testing => "testing",
            MtaStsMode::None => "none",
        }
    }
}

/// Users' own domains.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DomainsConfig {
    /// The DNS server that checks users' records (a recursive resolver).
    /// Defaults to `[dns] resolver`.
    pub resolver: Option<SocketAddr>,
    /// Seconds between re-checks of verified domains; a domain whose records
    /// are gone is suspended.
    pub recheck_secs: u64,
}

impl Default for DomainsConfig {
    fn default() -> Self {
        DomainsConfig {
            resolver: None,
            recheck_secs: 3600,
        }
    }
}

/// TLS connections for `HANDLE.DOMAIN` passed through to the account's node by
/// SNI, as raw bytes: TLS ends on the node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PassthroughConfig {
    /// TCP address for IMAP over implicit TLS (993); off when unset.
    pub imaps: Option<SocketAddr>,
    /// TCP address for HTTPS, the nodes' webmail (443); off when unset.
    pub https: Option<SocketAddr>,
    /// Simultaneous passthrough connections from one IP address.
    pub max_connections_per_ip: usize,
    /// Simultaneous passthrough connections in all.
    pub max_connections: usize,
    /// Seconds a client has to send its whole TLS ClientHello.
    pub hello_timeout_secs: u64,
}

impl Default for PassthroughConfig {
    fn default() -> Self {
        PassthroughConfig {
            imaps: None,
            https: None,
            max_connections_per_ip: 20,
            max_connections: 4096,
            hello_timeout_secs: 10,
        }
    }
}

fn default_database() -> String {
    "sqlite".to_string()
}

impl RelayConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the relay configuration {}", path.display()))?;
        let config: RelayConfig = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid relay configuration", path.display()))?;
        Ok(config)
    }

    pub fn hostname(&self) -> String {
        self.hostname
            .clone()
            .unwrap_or_else(|| format!("mx.{}", self.domain))
    }

    /// The database URL sqlx opens.
    pub fn database_url(&self) -> String {
        if self.database == "sqlite" {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("relay.db").display()
            )
        } else {
            self.database.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ops/relay.example.toml` is the operators' manual: it must parse, and
    /// the values it shows must be the defaults.
    #[test]
    fn the_example_configuration_shows_the_defaults() {
        let example: RelayConfig = toml::from_str(include_str!("../../ops/relay.example.toml"))
            .unwrap_or_else(|e| panic!("ops/relay.example.toml: {e}"));
        let (a, d) = (&example.accounts, AccountsConfig::default());
        assert_eq!(a.quota_bytes, d.quota_bytes);
        assert_eq!(a.pow_difficulty, d.pow_difficulty);
        assert_eq!(a.pow_ttl_secs, d.pow_ttl_secs);
        assert_eq!(a.signups_per_ip, d.signups_per_ip);
        assert_eq!(a.signup_window_secs, d.signup_window_secs);
        let (o, d) = (&example.outbound, OutboundConfig::default());
        assert_eq!(o.retry_secs, d.retry_secs);
        assert_eq!(o.expire_secs, d.expire_secs);
        assert_eq!(o.per_minute, d.per_minute);
        assert_eq!(o.per_day, d.per_day);
        assert_eq!(o.new_account_per_day, d.new_account_per_day);
        assert_eq!(o.max_recipients, d.max_recipients);
        assert_eq!(o.mta_sts_port, d.mta_sts_port);
        assert_eq!(o.dane, d.dane);
        assert_eq!(o.dnssec_trust_anchor, d.dnssec_trust_anchor);
        let (m, d) = (&example.mta_sts, MtaStsConfig::default());
        assert_eq!(m.mode, d.mode);
        assert_eq!(m.max_age_secs, d.max_age_secs);
        let mode: MtaStsConfig =
            toml::from_str("mode = \"testing\"").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(mode.mode.as_str(), "testing");
        assert!(toml::from_str::<MtaStsConfig>("mode = \"strict\"").is_err());
    }
}
