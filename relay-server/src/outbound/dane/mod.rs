//! DANE for outbound delivery (RFC 7672): a recipient domain's MX hosts
//! whose TLSA records are secure under DNSSEC get STARTTLS with a
//! certificate matching those records, or no mail.
//!
//! - this file: the DNSSEC-validating look-ups (hickory-resolver's
//!   validator, trust anchored at the IANA root or at the operator's
//!   DNSKEYs): the MX RRset and each host's TLSA RRset, each secure,
//!   insecure, or bogus;
//! - `tlsa`: which records are usable and how a certificate matches.
//!
//! The queue applies them (`queue.rs`): DANE applies only when the MX RRset
//! is secure (§2.2.1), or when the domain has no MX records and its own
//! address records are secure (it is then its own host); a host's TLSA
//! records count only when its address records are secure (§2.2.2). Then a
//! host with usable TLSA records is delivered to
//! over authenticated TLS, one with only unusable records over mandatory
//! TLS (§2.2), one whose TLSA look-up fails not at all (a temporary
//! failure); a bogus MX RRset is a temporary failure. Where DANE applies,
//! MTA-STS does not (RFC 8461 §2).

pub mod tlsa;

pub use tlsa::Tlsa;

use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::dnssec::{Proof, TrustAnchors};
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

/// Why the validating resolver cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum DaneError {
    #[error("cannot read the DNSSEC trust anchor {path}: {reason}; check [outbound] dnssec_trust_anchor (DNSKEY records in zone-file syntax)")]
    TrustAnchor { path: String, reason: String },
    #[error("cannot set up the DNSSEC-validating resolver for {0}: {1}")]
    Resolver(SocketAddr, String),
}

/// A domain's MX RRset as DNSSEC sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecureMx {
    /// Signed and validated: the host names by preference, as the
    /// validator returned them.
    Secure(Vec<String>),
    /// Unsigned: DANE does not apply.
    Insecure,
    /// No MX RRset: the domain itself is the host (RFC 5321 §5.1), under
    /// DANE if its own address records are secure.
    Absent,
}

/// What DANE asks of the connection to one MX host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostDane {
    /// No secure TLSA records: as without DANE.
    None,
    /// Secure TLSA records, the usable ones: STARTTLS with a matching
    /// certificate.
    Authenticated(Vec<Tlsa>),
    /// Secure TLSA records, none usable: STARTTLS, any certificate
    /// (RFC 7672 §2.2).
    Encrypted,
    /// The look-up failed or was bogus: the host is not used now.
    Failed(String),
}

/// The outcome of one validated look-up.
enum Answer {
    Secure(Vec<RData>),
    Insecure,
    /// No such records (a proven or unproven denial: either way nothing to use).
    Empty,
}

/// The DNSSEC-validating resolver of deliveries.
pub struct Dane {
    resolver: TokioResolver,
}

impl Dane {
    /// Asks `nameserver` (which must return DNSSEC records: a recursive
    /// resolver, or an authoritative server in tests) and validates against
    /// the DNSKEY records of `trust_anchor`, or the IANA root's KSKs.
    pub fn new(nameserver: SocketAddr, trust_anchor: Option<&Path>) -> Result<Self, DaneError> {
        let anchors = match trust_anchor {
            Some(path) => TrustAnchors::from_file(path).map_err(|e| DaneError::TrustAnchor {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?,
            None => TrustAnchors::default(),
        };
        let (config, options) = crate::auth::resolver_setup(nameserver);
        let resolver = Resolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(options)
            .with_trust_anchor(Arc::new(anchors))
            .build()
            .map_err(|e| DaneError::Resolver(nameserver, e.to_string()))?;
        Ok(Dane { resolver })
    }

    /// `domain`'s MX RRset, if secure (RFC 7672 §2.2.1); `Err` when bogus or
    /// the look-up failed: the delivery waits.
    pub async fn mx(&self, domain: &str) -> Result<SecureMx, String> {
        let mut mx: Vec<(u16, String)> = match self.lookup(domain, RecordType::MX).await? {
            Answer::Secure(data) => data
                .into_iter()
                .filter_map(|d| match d {
                    RData::MX(mx) => Some((
                        mx.preference,
                        mx.exchange
                            .to_ascii()
                            .trim_end_matches('.')
                            .to_ascii_lowercase(),
                    )),
                    _ => None,
                })
                .collect(),
            Answer::Insecure => return Ok(SecureMx::Insecure),
            Answer::Empty => return Ok(SecureMx::Absent),
        };
        mx.sort();
        Ok(SecureMx::Secure(mx.into_iter().map(|(_, n)| n).collect()))
    }

    /// Whether `host`'s address records (A, else AAAA) are secure: only then
    /// are its TLSA records looked up (RFC 7672 §2.2.2); `Err` when bogus.
    pub async fn addresses_secure(&self, host: &str) -> Result<bool, String> {
        match self.lookup(host, RecordType::A).await? {
            Answer::Secure(_) => return Ok(true),
            Answer::Insecure => return Ok(false),
            Answer::Empty => {}
        }
        Ok(matches!(
            self.lookup(host, RecordType::AAAA).await?,
            Answer::Secure(_)
        ))
    }

    /// What DANE asks of `host` on `port`: its `_PORT._tcp.HOST` TLSA RRset
    /// (RFC 7672 §2.2.3), used only when secure and when the host's address
    /// records are secure too.
    pub async fn host(&self, host: &str, port: u16) -> HostDane {
        match self.addresses_secure(host).await {
            Ok(true) => {}
            Ok(false) => return HostDane::None,
            Err(e) => return HostDane::Failed(format!("address look-up of {host}: {e}")),
        }
        let name = format!("_{port}._tcp.{host}");
        match self.lookup(&name, RecordType::TLSA).await {
            Ok(Answer::Secure(data)) => {
                let records = data.into_iter().filter_map(|d| match d {
                    RData::TLSA(t) => Some(Tlsa {
                        usage: t.cert_usage.into(),
                        selector: t.selector.into(),
                        matching: t.matching.into(),
                        data: t.cert_data,
                    }),
                    _ => None,
                });
                match tlsa::usable(records) {
                    usable if usable.is_empty() => HostDane::Encrypted,
                    usable => HostDane::Authenticated(usable),
                }
            }
            Ok(Answer::Insecure | Answer::Empty) => HostDane::None,
            Err(e) => HostDane::Failed(format!("TLSA look-up of {name}: {e}")),
        }
    }

    /// One validated look-up: the records of `rtype` at `name` (fully
    /// qualified) and whether all of them are secure.
    async fn lookup(&self, name: &str, rtype: RecordType) -> Result<Answer, String> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        match self.resolver.lookup(fqdn.as_str(), rtype).await {
            Ok(lookup) => {
                let records: Vec<_> = lookup
                    .answers()
                    .iter()
                    .filter(|r| r.record_type() == rtype)
                    .collect();
                if records.is_empty() {
                    return Ok(Answer::Empty);
                }
                if records.iter().any(|r| r.proof == Proof::Bogus) {
                    return Err("DNSSEC validation failed (bogus)".into());
                }
                if records.iter().all(|r| r.proof == Proof::Secure) {
                    Ok(Answer::Secure(
                        records.into_iter().map(|r| r.data.clone()).collect(),
                    ))
                } else {
                    Ok(Answer::Insecure)
                }
            }
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(Answer::Empty),
            Err(NetError::Dns(DnsError::Nsec { proof, .. })) if proof != Proof::Bogus => {
                Ok(Answer::Empty)
            }
            Err(NetError::Dns(DnsError::DnssecBogus))
            | Err(NetError::Dns(DnsError::Nsec { .. })) => {
                Err("DNSSEC validation failed (bogus)".into())
            }
            Err(e) => Err(e.to_string()),
        }
    }
}
