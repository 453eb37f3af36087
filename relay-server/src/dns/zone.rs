//! The relay's own zone, built in memory from a [`ZoneConfig`].

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{SystemTime, UNIX_EPOCH};

use hickory_proto::op::Query;
use hickory_proto::rr::rdata::{HINFO, MX, NS, SOA, SRV, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use super::{Answer, ZoneSource};

/// Time to live of every record of the zone, in seconds.
const TTL: u32 = 300;
/// SOA MINIMUM: how long resolvers cache a negative answer (RFC 2308 §4).
const NEGATIVE_TTL: u32 = 300;
/// Time to live of the HINFO that answers ANY queries (RFC 8482 §4.2).
const ANY_TTL: u32 = 3600;
/// SOA REFRESH, RETRY and EXPIRE (RFC 1035 §3.3.13); there are no secondaries yet.
const SOA_REFRESH: i32 = 3600;
const SOA_RETRY: i32 = 600;
const SOA_EXPIRE: i32 = 1_209_600;
/// The longest `<character-string>` in a TXT record (RFC 1035 §3.3).
const MAX_CHARACTER_STRING: usize = 255;

/// What the relay's zone holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneConfig {
    /// The zone apex, e.g. `sandbox.test`.
    pub domain: String,
    /// The host named by the zone's MX record, e.g. `mx.sandbox.test`. It gets the relay's
    /// addresses when it is inside the zone.
    pub mx_host: String,
    /// The relay's IPv4 addresses (A records).
    pub ipv4: Vec<Ipv4Addr>,
    /// The relay's IPv6 addresses (AAAA records).
    pub ipv6: Vec<Ipv6Addr>,
    /// The SPF policy published at the apex and at every handle name, e.g.
    /// `v=spf1 ip4:127.0.0.1 -all`.
    pub spf: String,
    /// The DMARC policy published at `_dmarc.DOMAIN`, e.g. `v=DMARC1; p=reject`.
    pub dmarc: String,
    /// More A/AAAA names, absolute and inside the zone.
    pub extra_hosts: Vec<(String, IpAddr)>,
    /// The RFC 6186 services published for every `HANDLE.DOMAIN`, as
    /// `_SERVICE._tcp.HANDLE.DOMAIN` SRV records: the service label (e.g.
    /// `_imaps`) and the relay's port for it, or `None` for "not offered"
    /// (target `.`, RFC 6186 §4).
    pub handle_services: Vec<(String, Option<u16>)>,
}

/// A [`ZoneConfig`] that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    /// A name of the configuration is not a domain name.
    #[error("`{name}` is not a valid domain name ({reason}); fix it in the relay's DNS settings")]
    BadName {
        /// The name as configured.
        name: String,
        /// Why it was rejected.
        reason: String,
    },
    /// An extra host lies outside the zone, so this server cannot answer for it.
    #[error(
        "extra host `{name}` is outside the zone `{zone}`; list only names ending in `.{zone}`"
    )]
    OutOfZone {
        /// The extra host as configured.
        name: String,
        /// The zone apex.
        zone: String,
    },
    /// The relay has no address, so its MX and handle names would lead nowhere.
    #[error("the DNS zone has no IPv4 or IPv6 address for the relay; configure at least one")]
    NoAddress,
}

/// The relay's zone: SOA, NS, MX, SPF, DMARC and addresses at fixed names, plus the
/// one-level `*.DOMAIN` names of hosted accounts (`HANDLE.DOMAIN`).
#[derive(Debug, Clone)]
pub struct RelayZone {
    origin: Name,
    /// Every name of the zone (lower case, absolute) and its records. Empty non-terminals
    /// are present with no records, so they answer NODATA, not NXDOMAIN (RFC 8020).
    nodes: HashMap<Name, Vec<Record>>,
    /// The records of `*.DOMAIN`, synthesized for `HANDLE.DOMAIN` (RFC 4592 §3.3).
    handle: Vec<Record>,
    /// RFC 6186 services under every `HANDLE.DOMAIN` (lower-case labels).
    handle_services: Vec<(String, Option<u16>)>,
}

impl RelayZone {
    /// Builds the zone. The SOA serial is the current Unix time (RFC 1982 arithmetic
    /// makes its wrap in 2106 harmless).
    pub fn new(config: &ZoneConfig) -> Result<Self, ZoneError> {
        if config.ipv4.is_empty() && config.ipv6.is_empty() {
            return Err(ZoneError::NoAddress);
        }
        let origin = parse_name(&config.domain)?;
        let below = |label: &str| {
            origin
                .prepend_label(label)
                .map_err(|e| bad(&config.domain, e))
        };
        let (ns1, hostmaster, mta_sts) = (below("ns1")?, below("hostmaster")?, below("mta-sts")?);
        let (dmarc, wildcard) = (below("_dmarc")?, below("*")?);
        let mx_host = parse_name(&config.mx_host)?;

        let mut zone = Self {
            origin: origin.clone(),
            nodes: HashMap::new(),
            handle: Vec::new(),
            handle_services: config
                .handle_services
                .iter()
                .map(|(label, port)| (label.to_ascii_lowercase(), *port))
                .collect(),
        };
        let serial = unix_serial();
        let soa = SOA::new(
            ns1.clone(),
            hostmaster,
            serial,
            SOA_REFRESH,
            SOA_RETRY,
            SOA_EXPIRE,
            NEGATIVE_TTL,
        );
        zone.put(&origin, RData::SOA(soa));
        zone.put(&origin, RData::NS(NS(ns1.clone())));
        for owner in [&origin, &wildcard] {
            zone.put(owner, RData::MX(MX::new(10, mx_host.clone())));
            zone.put(owner, RData::TXT(txt(&config.spf)));
        }
        zone.put(&dmarc, RData::TXT(txt(&config.dmarc)));

        let mut hosts = vec![origin.clone(), ns1, mta_sts, wildcard.clone()];
        if origin.zone_of(&mx_host) {
            hosts.push(mx_host);
        }
        for host in &hosts {
            for ip in &config.ipv4 {
                zone.put(host, RData::A((*ip).into()));
            }
            for ip in &config.ipv6 {
                zone.put(host, RData::AAAA((*ip).into()));
            }
        }
        for (name, ip) in &config.extra_hosts {
            let host = parse_name(name)?;
            if !origin.zone_of(&host) {
                let zone = config.domain.trim_end_matches('.').to_owned();
                return Err(ZoneError::OutOfZone {
                    name: name.clone(),
                    zone,
                });
            }
            zone.put(&host, RData::from(*ip));
        }

        // `*.DOMAIN` answers only through synthesis for names that do not exist
        // (RFC 4592 §2.2.1), so it leaves the table of existing names.
        zone.handle = zone.nodes.remove(&wildcard).unwrap_or_default();
        Ok(zone)
    }

    /// The SOA serial of this zone.
    pub fn serial(&self) -> u32 {
        self.nodes
            .get(&self.origin)
            .into_iter()
            .flatten()
            .find_map(|record| match &record.data {
                RData::SOA(soa) => Some(soa.serial),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// Adds a record (once) and the empty non-terminals between its owner and the apex.
    fn put(&mut self, owner: &Name, data: RData) {
        let record = Record::from_rdata(owner.clone(), TTL, data);
        let mut parent = record.name.base_name();
        while self.origin.zone_of(&parent) && parent != self.origin {
            self.nodes.entry(parent.clone()).or_default();
            parent = parent.base_name();
        }
        let records = self.nodes.entry(record.name.clone()).or_default();
        if !records.contains(&record) {
            records.push(record);
        }
    }

    /// Whether `name` is a per-account name `HANDLE.DOMAIN` that `*.DOMAIN` covers: one
    /// label below the apex, and a host name label (letters, digits, hyphens; RFC 1123
    /// §2.1), so that `_service` labels (RFC 8552) are not covered.
    fn is_handle(&self, name: &Name) -> bool {
        let depth = self.origin.iter().count() + 1;
        if name.iter().count() != depth || !self.origin.zone_of(name) {
            return false;
        }
        name.iter()
            .next()
            .is_some_and(|label| is_host_label(label) || label == b"*")
    }

    /// The answer for a name below `HANDLE.DOMAIN`: `_SERVICE._tcp.HANDLE.DOMAIN`
    /// holds the SRV record telling mail apps where that account's node is
    /// reached (RFC 6186 §3; the relay passes the TLS connection through), and
    /// `_tcp.HANDLE.DOMAIN` is an empty non-terminal. `None`: no such name.
    fn handle_service(&self, name: &Name, query_type: RecordType) -> Option<Answer> {
        let apex_depth = self.origin.iter().count();
        let depth = name.iter().count();
        if !(apex_depth + 2..=apex_depth + 3).contains(&depth) || self.handle_services.is_empty() {
            return None;
        }
        let labels: Vec<&[u8]> = name.iter().collect();
        let (proto, handle) = (
            labels[depth - apex_depth - 2],
            labels[depth - apex_depth - 1],
        );
        if !proto.eq_ignore_ascii_case(b"_tcp") || !is_host_label(handle) {
            return None;
        }
        if depth == apex_depth + 2 {
            return Some(Answer::NoData);
        }
        let service = String::from_utf8_lossy(labels[0]).to_ascii_lowercase();
        let (_, port) = self.handle_services.iter().find(|(s, _)| *s == service)?;
        let srv = match port {
            Some(port) => SRV::new(0, 1, *port, name.trim_to(apex_depth + 1).to_lowercase()),
            None => SRV::new(0, 0, 0, Name::root()),
        };
        let records = [Record::from_rdata(name.clone(), TTL, RData::SRV(srv))];
        Some(select(&records, query_type, name))
    }
}

impl ZoneSource for RelayZone {
    fn answer(&self, query: &Query) -> Answer {
        let mut name = query.name().clone();
        name.set_fqdn(true);
        if query.query_class() != DNSClass::IN || !self.origin.zone_of(&name) {
            return Answer::Refused;
        }
        let records = match self.nodes.get(&name) {
            Some(records) => records,
            None if self.is_handle(&name) => &self.handle,
            None => {
                return self
                    .handle_service(&name, query.query_type())
                    .unwrap_or(Answer::NxDomain)
            }
        };
        select(records, query.query_type(), &name)
    }

    fn origin(&self) -> &Name {
        &self.origin
    }
}

/// The records of one type at a node, renamed to the query name (which carries the
/// query's letter case and replaces `*` for synthesized answers).
fn select(records: &[Record], query_type: RecordType, name: &Name) -> Answer {
    if records.is_empty() {
        return Answer::NoData;
    }
    if query_type == RecordType::ANY {
        // RFC 8482 §4.2: one synthesized HINFO record instead of everything.
        let hinfo = HINFO::new("RFC8482".to_owned(), String::new());
        return Answer::Records(vec![Record::from_rdata(
            name.clone(),
            ANY_TTL,
            RData::HINFO(hinfo),
        )]);
    }
    let found: Vec<Record> = records
        .iter()
        .filter(|record| record.record_type() == query_type)
        .map(|record| Record::from_rdata(name.clone(), record.ttl, record.data.clone()))
        .collect();
    if found.is_empty() {
        Answer::NoData
    } else {
        Answer::Records(found)
    }
}

/// A TXT record holding `text`, split into `<character-string>`s of at most 255 bytes
/// (RFC 1035 §3.3.14; RFC 7208 §3.3 joins them back without spaces).
fn txt(text: &str) -> TXT {
    TXT::from_bytes(text.as_bytes().chunks(MAX_CHARACTER_STRING).collect())
}

/// A configured name as an absolute, lower-case [`Name`].
fn parse_name(text: &str) -> Result<Name, ZoneError> {
    let mut name = Name::from_ascii(text)
        .map_err(|e| bad(text, e))?
        .to_lowercase();
    if name.is_root() {
        return Err(bad(text, "the root is not a host or zone name"));
    }
    name.set_fqdn(true);
    Ok(name)
}

fn bad(name: &str, reason: impl ToString) -> ZoneError {
    ZoneError::BadName {
        name: name.to_owned(),
        reason: reason.to_string(),
    }
}

/// A letter-digit-hyphen label of 1 to 63 bytes, not starting or ending with a hyphen.
fn is_host_label(label: &[u8]) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        && label.first() != Some(&b'-')
        && label.last() != Some(&b'-')
}

/// The current Unix time, as a 32-bit serial number (RFC 1982).
fn unix_serial() -> u32 {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(1);
    u32::try_from(seconds % (1 << 32)).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::RelayZone;
    use crate::dns::tests::sandbox_config;

    #[test]
    fn bad_configs_are_refused_with_a_reason() {
        let mut outside = sandbox_config();
        outside
            .extra_hosts
            .push(("www.example.com".into(), IpAddr::V4(Ipv4Addr::LOCALHOST)));
        let error = RelayZone::new(&outside).expect_err("out of zone");
        assert!(error.to_string().contains("www.example.com"), "{error}");

        let mut empty = sandbox_config();
        empty.ipv4.clear();
        empty.ipv6.clear();
        assert!(RelayZone::new(&empty).is_err());
    }
}
