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
//! records count only when its address records are secure (§2.2.2). An MX
//! host that is an alias has its TLSA records looked up first at the
//! expanded name, when the CNAME chain to it is secure, then at its own
//! ([`tlsa_bases`]). Then a host with usable TLSA records is delivered to
//! over authenticated TLS, one with only unusable records over mandatory
//! TLS (§2.2), one whose TLSA look-up fails not at all (a temporary
//! failure); a bogus MX RRset is a temporary failure. Where DANE applies,
//! MTA-STS does not (RFC 8461 §2).

pub mod tlsa;

pub use tlsa::Tlsa;

use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::dnssec::{Proof, TrustAnchors};
use hickory_resolver::proto::rr::{RData, Record, RecordType};
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
    Authenticated(DaneTls),
    /// Secure TLSA records, none usable: STARTTLS, any certificate
    /// (RFC 7672 §2.2).
    Encrypted,
    /// The look-up failed or was bogus: the host is not used now.
    Failed(String),
}

/// An authenticated DANE connection's parameters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DaneTls {
    /// The usable TLSA records.
    pub records: Vec<Tlsa>,
    /// The TLSA base domain, the name the records were found at: the name
    /// sent in SNI (RFC 7672 §8.1, RFC 7671 §7).
    pub base: String,
    /// The reference identifiers a DANE-TA(2) certificate must carry one
    /// of (RFC 7672 §3.2.2).
    pub names: Vec<String>,
}

/// What the address look-up of an MX host said, as DANE needs it (RFC 7672
/// §2.2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addresses {
    /// Where the CNAME chain from the host name ends: the name the address
    /// records are at (the host name itself when it is no alias).
    pub expanded: String,
    /// Whether every CNAME record of the chain was secure (true with no
    /// chain).
    pub chain_secure: bool,
    /// Whether the address records were all secure.
    pub secure: bool,
}

/// Where to look for an MX host's TLSA records, in order, and the names a
/// DANE-TA certificate may carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsaBases {
    /// Candidate TLSA base domains, the first with secure TLSA records
    /// winning.
    pub bases: Vec<String>,
    /// The reference identifiers (RFC 7672 §3.2.2).
    pub names: Vec<String>,
}

/// Where `host`'s TLSA records are looked up, given what its address
/// look-up said (`None`: no address records); `None` when DANE does not
/// apply to the host. Pure.
///
/// - Its address records must be secure (RFC 7672 §2.2.2), else no DANE.
/// - An alias reached through a CNAME chain secure all the way: the
///   expanded name first, then the host name (RFC 7672 §2.2.2, RFC 7671
///   §7); both are reference identifiers (§3.2.2).
/// - A chain not secure throughout: the host name alone, the expansion
///   being untrusted.
pub fn tlsa_bases(host: &str, addresses: Option<&Addresses>) -> Option<TlsaBases> {
    let addresses = addresses.filter(|a| a.secure)?;
    let host = normal(host);
    let expanded = normal(&addresses.expanded);
    let names = match addresses.chain_secure && expanded != host {
        true => vec![expanded, host],
        false => vec![host],
    };
    Some(TlsaBases {
        bases: names.clone(),
        names,
    })
}

/// What the validated answer to an address query (`rtype`, A or AAAA) for
/// `host` says: the CNAME chain from `host` in `records`, and the address
/// records at its end; `Ok(None)` with no address records, `Err` when any
/// record is bogus. Pure.
pub fn addresses(
    host: &str,
    rtype: RecordType,
    records: &[Record],
) -> Result<Option<Addresses>, String> {
    if records.iter().any(|r| r.proof == Proof::Bogus) {
        return Err("DNSSEC validation failed (bogus)".into());
    }
    let mut expanded = normal(host);
    let mut chain_secure = true;
    // A chain longer than the records given is a loop.
    for _ in 0..records.len() {
        let next = records.iter().find_map(|r| match &r.data {
            RData::CNAME(target) if normal(&r.name.to_ascii()) == expanded => {
                Some((normal(&target.0.to_ascii()), r.proof == Proof::Secure))
            }
            _ => None,
        });
        let Some((target, secure)) = next else { break };
        chain_secure &= secure;
        expanded = target;
    }
    let found: Vec<&Record> = records
        .iter()
        .filter(|r| r.record_type() == rtype)
        .collect();
    if found.is_empty() {
        return Ok(None);
    }
    // Address records elsewhere than at the chain's end: the expansion
    // cannot be told, so it is not trusted.
    if found.iter().any(|r| normal(&r.name.to_ascii()) != expanded) {
        chain_secure = false;
    }
    Ok(Some(Addresses {
        expanded,
        chain_secure,
        secure: found.iter().all(|r| r.proof == Proof::Secure),
    }))
}

/// A host name as compared: lower case, without the final dot.
fn normal(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
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
        Ok(self.addresses(host).await?.is_some_and(|a| a.secure))
    }

    /// `host`'s address records (A, else AAAA) and the CNAME chain to them,
    /// as DNSSEC sees them; `Ok(None)` with none, `Err` when bogus.
    async fn addresses(&self, host: &str) -> Result<Option<Addresses>, String> {
        for rtype in [RecordType::A, RecordType::AAAA] {
            let records = self.query(host, rtype).await?;
            if let Some(found) = addresses(host, rtype, &records)? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// What DANE asks of `host` on `port`: the `_PORT._tcp.BASE` TLSA RRset
    /// (RFC 7672 §2.2.3) of the first of its TLSA base domains
    /// ([`tlsa_bases`]) that has one secure, used only when the host's
    /// address records are secure too.
    pub async fn host(&self, host: &str, port: u16) -> HostDane {
        let found = match self.addresses(host).await {
            Ok(found) => found,
            Err(e) => return HostDane::Failed(format!("address look-up of {host}: {e}")),
        };
        let Some(TlsaBases { bases, names }) = tlsa_bases(host, found.as_ref()) else {
            return HostDane::None;
        };
        for base in bases {
            let name = format!("_{port}._tcp.{base}");
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
                    return match tlsa::usable(records) {
                        usable if usable.is_empty() => HostDane::Encrypted,
                        records => HostDane::Authenticated(DaneTls {
                            records,
                            base,
                            names,
                        }),
                    };
                }
                // None here, securely or not: the next base domain
                // (RFC 7671 §7).
                Ok(Answer::Insecure | Answer::Empty) => {}
                Err(e) => return HostDane::Failed(format!("TLSA look-up of {name}: {e}")),
            }
        }
        HostDane::None
    }

    /// One validated look-up: the records of `rtype` at `name` (fully
    /// qualified) and whether all of them, and the CNAME records of the
    /// way to them, are secure.
    async fn lookup(&self, name: &str, rtype: RecordType) -> Result<Answer, String> {
        let answer = self.query(name, rtype).await?;
        if !answer.iter().any(|r| r.record_type() == rtype) {
            return Ok(Answer::Empty);
        }
        if answer.iter().any(|r| r.proof == Proof::Bogus) {
            return Err("DNSSEC validation failed (bogus)".into());
        }
        if !answer.iter().all(|r| r.proof == Proof::Secure) {
            return Ok(Answer::Insecure);
        }
        Ok(Answer::Secure(
            answer
                .into_iter()
                .filter(|r| r.record_type() == rtype)
                .map(|r| r.data)
                .collect(),
        ))
    }

    /// One validated query: the answer's records of `rtype`, CNAMEs of the
    /// way included, each with its proof; none for a (proven or unproven)
    /// denial.
    async fn query(&self, name: &str, rtype: RecordType) -> Result<Vec<Record>, String> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        match self.resolver.lookup(fqdn.as_str(), rtype).await {
            // The RRSIGs, if the answer carries them, were the validator's.
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter(|r| r.record_type() == rtype || r.record_type() == RecordType::CNAME)
                .cloned()
                .collect()),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(Vec::new()),
            Err(NetError::Dns(DnsError::Nsec { proof, .. })) if proof != Proof::Bogus => {
                Ok(Vec::new())
            }
            Err(NetError::Dns(DnsError::DnssecBogus))
            | Err(NetError::Dns(DnsError::Nsec { .. })) => {
                Err("DNSSEC validation failed (bogus)".into())
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::rr::rdata::{A, CNAME};
    use hickory_resolver::proto::rr::Name;
    use std::str::FromStr;

    fn record(name: &str, data: RData, proof: Proof) -> Record {
        let mut r = Record::from_rdata(Name::from_str(name).unwrap(), 300, data);
        r.proof = proof;
        r
    }

    fn cname(name: &str, target: &str, proof: Proof) -> Record {
        let target = Name::from_str(target).unwrap();
        record(name, RData::CNAME(CNAME(target)), proof)
    }

    fn a(name: &str, proof: Proof) -> Record {
        record(name, RData::A(A::new(127, 0, 0, 1)), proof)
    }

    fn found(expanded: &str, chain_secure: bool, secure: bool) -> Addresses {
        Addresses {
            expanded: expanded.into(),
            chain_secure,
            secure,
        }
    }

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_host_without_alias_is_its_own_base() {
        let records = [a("mx.example.org.", Proof::Secure)];
        let got = addresses("mx.example.org", RecordType::A, &records).unwrap();
        assert_eq!(got, Some(found("mx.example.org", true, true)));
        let bases = tlsa_bases("mx.example.org", got.as_ref()).unwrap();
        assert_eq!(bases.bases, strings(&["mx.example.org"]));
        assert_eq!(bases.names, strings(&["mx.example.org"]));
    }

    #[test]
    fn a_secure_chain_puts_the_expanded_name_first() {
        // The MX host name as written in the MX record: any case, a final dot.
        let records = [
            cname("MX-Alias.Example.", "mid.example.", Proof::Secure),
            cname("mid.example.", "mx-final.example.", Proof::Secure),
            a("mx-final.example.", Proof::Secure),
        ];
        let got = addresses("mx-alias.example.", RecordType::A, &records).unwrap();
        assert_eq!(got, Some(found("mx-final.example", true, true)));
        let bases = tlsa_bases("mx-alias.example.", got.as_ref()).unwrap();
        // RFC 7672 §2.2.2: the expanded name, then the original one; a
        // DANE-TA certificate may name either (§3.2.2).
        let both = strings(&["mx-final.example", "mx-alias.example"]);
        assert_eq!(bases.bases, both);
        assert_eq!(bases.names, both);
    }

    #[test]
    fn an_insecure_link_leaves_only_the_original_name() {
        let records = [
            cname("mx-alias.example.", "mid.example.", Proof::Secure),
            cname("mid.example.", "mx-final.example.", Proof::Insecure),
            a("mx-final.example.", Proof::Secure),
        ];
        let got = addresses("mx-alias.example", RecordType::A, &records).unwrap();
        assert_eq!(got, Some(found("mx-final.example", false, true)));
        let bases = tlsa_bases("mx-alias.example", got.as_ref()).unwrap();
        assert_eq!(bases.bases, strings(&["mx-alias.example"]));
        assert_eq!(bases.names, strings(&["mx-alias.example"]));
    }

    #[test]
    fn insecure_or_missing_addresses_mean_no_dane() {
        // A secure chain to insecure address records.
        let records = [
            cname("mx-alias.example.", "mx.example.", Proof::Secure),
            a("mx.example.", Proof::Insecure),
        ];
        let got = addresses("mx-alias.example", RecordType::A, &records).unwrap();
        assert_eq!(got, Some(found("mx.example", true, false)));
        assert_eq!(tlsa_bases("mx-alias.example", got.as_ref()), None);
        // A chain to no address records.
        let records = [cname("mx-alias.example.", "gone.example.", Proof::Secure)];
        let got = addresses("mx-alias.example", RecordType::A, &records).unwrap();
        assert_eq!(got, None);
        assert_eq!(tlsa_bases("mx-alias.example", None), None);
    }

    #[test]
    fn a_bogus_record_anywhere_is_an_error() {
        let records = [
            cname("mx-alias.example.", "mx.example.", Proof::Bogus),
            a("mx.example.", Proof::Secure),
        ];
        assert!(addresses("mx-alias.example", RecordType::A, &records).is_err());
    }

    #[test]
    fn addresses_off_the_chain_do_not_trust_the_expansion() {
        // The resolver dropped the CNAME records: the A records' owner is not
        // where a chain from the host name leads.
        let records = [a("mx-final.example.", Proof::Secure)];
        let got = addresses("mx-alias.example", RecordType::A, &records).unwrap();
        assert_eq!(got, Some(found("mx-alias.example", false, true)));
        let bases = tlsa_bases("mx-alias.example", got.as_ref()).unwrap();
        assert_eq!(bases.bases, strings(&["mx-alias.example"]));
    }

    #[test]
    fn a_cname_loop_ends() {
        let records = [
            cname("a.example.org.", "b.example.org.", Proof::Secure),
            cname("b.example.org.", "a.example.org.", Proof::Secure),
        ];
        assert_eq!(
            addresses("a.example.org", RecordType::A, &records).unwrap(),
            None
        );
    }
}
