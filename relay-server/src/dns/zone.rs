//! The relay's zone as data: the fixed names built from a [`ZoneConfig`], and the
//! names of every account (from the store's [`AccountDns`]), kept in canonical
//! order (RFC 4034 §6.1) so that a name's descendants follow it.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Bound;
use std::time::{SystemTime, UNIX_EPOCH};

use hickory_proto::op::Query;
use hickory_proto::rr::rdata::{HINFO, MX, NS, OPENPGPKEY, SOA, SRV, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use rustc_hash::FxHashMap;
use sha2::{Digest, Sha256};

use super::Answer;
use crate::store::AccountDns;

/// Time to live of every record of the zone, in seconds.
const TTL: u32 = 300;
/// SOA MINIMUM: how long resolvers cache a negative answer (RFC 2308 §4).
const NEGATIVE_TTL: u32 = 300;
/// Time to live of the HINFO that answers ANY queries (RFC 8482 §4.2).
const ANY_TTL: u32 = 3600;
/// SOA REFRESH, RETRY and EXPIRE (RFC 1035 §3.3.13): what secondaries use when
/// a NOTIFY is lost.
const SOA_REFRESH: i32 = 3600;
const SOA_RETRY: i32 = 600;
const SOA_EXPIRE: i32 = 1_209_600;
/// The longest `<character-string>` in a TXT record (RFC 1035 §3.3).
const MAX_CHARACTER_STRING: usize = 255;

/// What the relay's zone holds besides its accounts.
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
    /// The MTA-STS policy id published at `_mta-sts.DOMAIN` (RFC 8461 §3.1); it
    /// must change whenever the policy served over HTTPS does.
    pub mta_sts_id: String,
    /// Where TLS reports go, published at `_smtp._tls.DOMAIN` (RFC 8460 §3),
    /// e.g. `mailto:tlsrpt@sandbox.test`.
    pub tlsrpt_rua: String,
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

/// Every record of the zone, by owner name in canonical order.
///
/// A name with no records of its own but with names below it is an empty
/// non-terminal: it answers NODATA, not NXDOMAIN (RFC 8020).
#[derive(Debug, Clone)]
pub struct ZoneData {
    origin: Name,
    /// Lower case, absolute names and their records, hashed: a query costs
    /// one hash and one comparison, not a walk of 100,000 names.
    nodes: FxHashMap<Name, Vec<Record>>,
    /// The same names in canonical order, for empty non-terminals, NSEC
    /// chains and zone transfers.
    order: BTreeSet<Name>,
    /// The zone version and records of each account, so that a change replaces
    /// exactly them and an older snapshot never replaces a newer one.
    accounts: HashMap<String, (i64, Vec<Record>)>,
    /// What every account gets: the relay's addresses, the MX, SPF, services.
    relay_ips: Vec<IpAddr>,
    mx_host: Name,
    spf: String,
    /// RFC 6186 services under every `HANDLE.DOMAIN` (lower-case labels).
    handle_services: Vec<(String, Option<u16>)>,
}

impl ZoneData {
    /// The zone with its fixed names and no account. The SOA serial starts at
    /// the current Unix time and grows by one with every change (RFC 1982
    /// arithmetic makes its wrap in 2106 harmless).
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
        let ns1 = below("ns1")?;
        let mx_host = parse_name(&config.mx_host)?;
        let relay_ips: Vec<IpAddr> = config
            .ipv4
            .iter()
            .map(|ip| IpAddr::V4(*ip))
            .chain(config.ipv6.iter().map(|ip| IpAddr::V6(*ip)))
            .collect();
        let mut zone = Self {
            origin: origin.clone(),
            nodes: FxHashMap::default(),
            order: BTreeSet::new(),
            accounts: HashMap::new(),
            relay_ips,
            mx_host: mx_host.clone(),
            spf: config.spf.clone(),
            handle_services: config
                .handle_services
                .iter()
                .map(|(label, port)| (label.to_ascii_lowercase(), *port))
                .collect(),
        };
        let soa = SOA::new(
            ns1.clone(),
            below("hostmaster")?,
            unix_serial(),
            SOA_REFRESH,
            SOA_RETRY,
            SOA_EXPIRE,
            NEGATIVE_TTL,
        );
        let mut records = vec![
            record(&origin, RData::SOA(soa)),
            record(&origin, RData::NS(NS(ns1.clone()))),
            record(&origin, RData::MX(MX::new(10, mx_host.clone()))),
            record(&origin, RData::TXT(txt(&config.spf))),
            record(&below("_dmarc")?, RData::TXT(txt(&config.dmarc))),
            record(
                &below("_mta-sts")?,
                RData::TXT(txt(&format!("v=STSv1; id={}", config.mta_sts_id))),
            ),
            record(
                &below("_tls")?
                    .prepend_label("_smtp")
                    .map_err(|e| bad(&config.domain, e))?,
                RData::TXT(txt(&format!("v=TLSRPTv1; rua={}", config.tlsrpt_rua))),
            ),
        ];
        let mut hosts = vec![
            origin.clone(),
            ns1,
            below("mta-sts")?,
            below("autoconfig")?,
            below("openpgpkey")?,
        ];
        if origin.zone_of(&mx_host) {
            hosts.push(mx_host);
        }
        for host in &hosts {
            records.extend(zone.addresses(host));
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
            records.push(record(&host, RData::from(*ip)));
        }
        for record in records {
            zone.insert(record);
        }
        Ok(zone)
    }

    /// The zone apex.
    pub fn origin(&self) -> &Name {
        &self.origin
    }

    /// The TTL of negative answers and NSEC records (RFC 2308 §5, RFC 4034 §4).
    pub fn negative_ttl(&self) -> u32 {
        NEGATIVE_TTL
    }

    /// The SOA serial of this zone.
    pub fn serial(&self) -> u32 {
        self.soa().map(|soa| soa.serial).unwrap_or_default()
    }

    fn soa(&self) -> Option<&SOA> {
        self.nodes
            .get(&self.origin)?
            .iter()
            .find_map(|record| match &record.data {
                RData::SOA(soa) => Some(soa),
                _ => None,
            })
    }

    /// Puts an account's names in the zone, replacing what it had before, and
    /// bumps the serial; returns whether anything changed. Data older than
    /// what the zone has (a lower [`AccountDns::version`]) is ignored.
    pub fn set_account(&mut self, account: &AccountDns) -> bool {
        let records = self.account_records(account);
        self.apply_account(&account.handle, account.version, records)
    }

    /// Whether `records` at `version` would change what the zone has for
    /// `handle` (see [`ZoneData::set_account`]).
    pub fn account_differs(&self, handle: &str, version: i64, records: &[Record]) -> bool {
        match self.accounts.get(handle) {
            Some((current, have)) => version > *current || (version == *current && have != records),
            None => true,
        }
    }

    /// [`ZoneData::set_account`] with the records already computed (by
    /// [`ZoneData::account_records`], possibly under a read lock only).
    pub fn apply_account(&mut self, handle: &str, version: i64, records: Vec<Record>) -> bool {
        if !self.account_differs(handle, version, &records) {
            return false;
        }
        self.drop_account(handle);
        for record in &records {
            self.insert(record.clone());
        }
        self.accounts.insert(handle.to_string(), (version, records));
        self.bump_serial();
        true
    }

    /// Publishes the zone's signing key at the apex (RFC 4034 §2), replacing any other
    /// DNSKEY, and bumps the serial.
    pub fn set_dnskey(&mut self, dnskey: Record) {
        if let Some(apex) = self.nodes.get_mut(&self.origin) {
            apex.retain(|r| r.record_type() != RecordType::DNSKEY);
        }
        self.insert(Record::from_rdata(self.origin.clone(), TTL, dnskey.data));
        self.bump_serial();
    }

    /// Bumps the serial with no other change, so that secondaries transfer the zone
    /// again and get fresh signatures before theirs expire.
    pub fn touch(&mut self) {
        self.bump_serial();
    }

    /// Takes an account's names out of the zone and bumps the serial.
    pub fn remove_account(&mut self, handle: &str) {
        if self.drop_account(handle) {
            self.bump_serial();
        }
    }

    /// The zone version of an account's data in the zone.
    pub fn account_version(&self, handle: &str) -> Option<i64> {
        self.accounts.get(handle).map(|(version, _)| *version)
    }

    /// The handles of the accounts in the zone.
    pub fn handles(&self) -> impl Iterator<Item = &str> {
        self.accounts.keys().map(String::as_str)
    }

    fn drop_account(&mut self, handle: &str) -> bool {
        let Some((_, records)) = self.accounts.remove(handle) else {
            return false;
        };
        for record in records {
            if let Some(at) = self.nodes.get_mut(&record.name) {
                at.retain(|r| *r != record);
                if at.is_empty() {
                    self.nodes.remove(&record.name);
                    self.order.remove(&record.name);
                }
            }
        }
        true
    }

    fn bump_serial(&mut self) {
        let Some(records) = self.nodes.get_mut(&self.origin) else {
            return;
        };
        for record in records {
            if let RData::SOA(soa) = &mut record.data {
                soa.serial = soa.serial.wrapping_add(1).max(unix_serial());
            }
        }
    }

    /// What the zone publishes for one account:
    /// - `HANDLE.DOMAIN`: the relay's addresses (SNI passthrough to the node),
    ///   MX and SPF, so that `ANYTHING@HANDLE.DOMAIN` is deliverable;
    /// - `autoconfig.HANDLE.DOMAIN`: the relay's addresses (Thunderbird's lookup);
    /// - `_SERVICE._tcp.HANDLE.DOMAIN`: RFC 6186 SRV records;
    /// - `_acme-challenge.HANDLE.DOMAIN`: the node's DNS-01 values (RFC 8555 §8.4);
    /// - `HANDLE._domainkey.DOMAIN`: the node's DKIM key (RFC 6376 §3.6.2);
    /// - `HASH._openpgpkey.DOMAIN`: the node's certificate for each address of
    ///   the zone's domain (RFC 7929 §3).
    pub fn account_records(&self, account: &AccountDns) -> Vec<Record> {
        let Ok(host) = self.origin.prepend_label(account.handle.as_str()) else {
            return Vec::new();
        };
        let mut out = self.addresses(&host);
        out.push(record(&host, RData::MX(MX::new(10, self.mx_host.clone()))));
        out.push(record(&host, RData::TXT(txt(&self.spf))));
        if let Ok(autoconfig) = host.prepend_label("autoconfig") {
            out.extend(self.addresses(&autoconfig));
        }
        for (service, port) in &self.handle_services {
            let Ok(owner) = host
                .prepend_label("_tcp")
                .and_then(|n| n.prepend_label(service.as_str()))
            else {
                continue;
            };
            let srv = match port {
                Some(port) => SRV::new(0, 1, *port, host.clone()),
                None => SRV::new(0, 0, 0, Name::root()),
            };
            out.push(record(&owner, RData::SRV(srv)));
        }
        if let Ok(acme) = host.prepend_label("_acme-challenge") {
            out.extend(
                account
                    .acme
                    .iter()
                    .map(|value| record(&acme, RData::TXT(txt(value)))),
            );
        }
        if let Ok(dkim) = self
            .origin
            .prepend_label("_domainkey")
            .and_then(|n| n.prepend_label(account.handle.as_str()))
        {
            out.extend(
                account
                    .dkim
                    .iter()
                    .map(|value| record(&dkim, RData::TXT(txt(value)))),
            );
        }
        if let Some(cert) = &account.cert {
            for address in &account.addresses {
                if let Some(owner) = self.openpgpkey_name(address) {
                    out.push(record(
                        &owner,
                        RData::OPENPGPKEY(OPENPGPKEY::new(cert.clone())),
                    ));
                }
            }
        }
        out
    }

    /// `HASH._openpgpkey.DOMAIN` for an address of this zone's domain: the
    /// SHA2-256 of the local part, truncated to 28 octets, in hex (RFC 7929 §3).
    /// Local parts are lower-cased first, as the relay stores addresses.
    pub fn openpgpkey_name(&self, address: &str) -> Option<Name> {
        let (local, domain) = address.rsplit_once('@')?;
        let mut domain = Name::from_utf8(domain).ok()?;
        domain.set_fqdn(true);
        if domain != self.origin {
            return None;
        }
        let hash = Sha256::digest(local.to_lowercase().as_bytes());
        self.origin
            .prepend_label("_openpgpkey")
            .and_then(|n| n.prepend_label(hex::encode(&hash[..28])))
            .ok()
    }

    /// A and AAAA records of the relay at `host`.
    fn addresses(&self, host: &Name) -> Vec<Record> {
        self.relay_ips
            .iter()
            .map(|ip| record(host, RData::from(*ip)))
            .collect()
    }

    fn insert(&mut self, record: Record) {
        if !self.nodes.contains_key(&record.name) {
            self.order.insert(record.name.clone());
        }
        let records = self.nodes.entry(record.name.clone()).or_default();
        if !records.contains(&record) {
            records.push(record);
        }
    }

    /// The records at `name` (lower case, absolute), or `None` if the name does
    /// not exist; `Some(&[])` for an empty non-terminal.
    pub fn node(&self, name: &Name) -> Option<&[Record]> {
        if let Some(records) = self.nodes.get(name) {
            return Some(records);
        }
        // In canonical order every descendant of `name` comes right after it.
        let next = self
            .order
            .range::<Name, _>((Bound::Excluded(name), Bound::Unbounded))
            .next()?;
        (name.zone_of(next) && self.origin.zone_of(name)).then_some(&[])
    }

    /// Every record, in canonical order of owner names.
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.order
            .iter()
            .filter_map(|name| self.nodes.get(name))
            .flatten()
    }

    /// The owner names that exist (with records), in canonical order, starting
    /// after `name` (for NSEC chains).
    pub fn names_after<'a>(&'a self, name: &Name) -> impl Iterator<Item = &'a Name> + 'a {
        self.order
            .range::<Name, _>((Bound::Excluded(name), Bound::Unbounded))
    }

    /// The owner names that exist, in reverse canonical order, ending before
    /// or at `name` (for NSEC chains).
    pub fn names_up_to<'a>(&'a self, name: &Name) -> impl Iterator<Item = &'a Name> + 'a {
        self.order
            .range::<Name, _>((Bound::Unbounded, Bound::Included(name)))
            .rev()
    }

    /// Answers one question (RFC 1034 §4.3.2, without delegations or aliases,
    /// which this zone has none of). Names compare case-insensitively and
    /// answers carry the query's own letter case (RFC 4343).
    pub fn answer(&self, query: &Query) -> Answer {
        let mut name = query.name().clone();
        name.set_fqdn(true);
        if query.query_class() != DNSClass::IN || !self.origin.zone_of(&name) {
            return Answer::Refused;
        }
        match self.node(&name.to_lowercase()) {
            Some(records) => select(records, query.query_type(), &name),
            None => Answer::NxDomain(Vec::new()),
        }
    }
}

/// The records of one type at a node, renamed to the query name (which carries the
/// query's letter case).
fn select(records: &[Record], query_type: RecordType, name: &Name) -> Answer {
    if records.is_empty() {
        return Answer::NoData(Vec::new());
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
        Answer::NoData(Vec::new())
    } else {
        Answer::Records(found)
    }
}

fn record(owner: &Name, data: RData) -> Record {
    Record::from_rdata(owner.to_lowercase(), TTL, data)
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

    use super::ZoneData;
    use crate::dns::tests::sandbox_config;

    #[test]
    fn bad_configs_are_refused_with_a_reason() {
        let mut outside = sandbox_config();
        outside
            .extra_hosts
            .push(("www.example.com".into(), IpAddr::V4(Ipv4Addr::LOCALHOST)));
        let error = ZoneData::new(&outside).expect_err("out of zone");
        assert!(error.to_string().contains("www.example.com"), "{error}");

        let mut empty = sandbox_config();
        empty.ipv4.clear();
        empty.ipv6.clear();
        assert!(ZoneData::new(&empty).is_err());
    }
}
