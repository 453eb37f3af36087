//! NSEC denial of existence (RFC 4034 §4, RFC 4035 §3.1.3), computed from the zone's
//! canonical order instead of stored: the NSEC owned by a name points to the next name
//! with records (the apex after the last) and lists the types at the name.
//!
//! Empty non-terminals have no NSEC of their own (RFC 4035 §2.3 chains only names with
//! authoritative data); they are proven empty by the NSEC that covers them, whose next
//! name lies below them.

use hickory_proto::dnssec::rdata::{DNSSECRData, NSEC};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::zone::ZoneData;

/// The NSEC owned by `name`, a name with records, or `None` if it has none.
pub(super) fn nsec_at(zone: &ZoneData, name: &Name) -> Option<Record> {
    let records = zone.node(name).filter(|records| !records.is_empty())?;
    let next = zone
        .names_after(name)
        .next()
        .unwrap_or_else(|| zone.origin())
        .clone();
    let mut types: Vec<RecordType> = records.iter().map(Record::record_type).collect();
    // RFC 4034 §4.1.2: the NSEC's own type and that of its RRSIG are in the bitmap.
    types.extend([RecordType::NSEC, RecordType::RRSIG]);
    Some(Record::from_rdata(
        name.clone(),
        zone.negative_ttl(),
        RData::DNSSEC(DNSSECRData::NSEC(NSEC::new(next, types))),
    ))
}

/// The NSEC that covers `name`, a name with no records: the one owned by the last name
/// with records before it in canonical order (the apex is first, so there is one).
pub(super) fn covering(zone: &ZoneData, name: &Name) -> Option<Record> {
    let before = zone.names_up_to(name).find(|n| *n != name)?;
    nsec_at(zone, before)
}

/// The proof for NODATA at `qname` (lower case): its own NSEC, whose bitmap lacks the
/// type (RFC 4035 §3.1.3.1), or, for an empty non-terminal, the NSEC that covers it.
pub(super) fn nodata(zone: &ZoneData, qname: &Name) -> Vec<Record> {
    nsec_at(zone, qname)
        .or_else(|| covering(zone, qname))
        .into_iter()
        .collect()
}

/// The proof for NXDOMAIN at `qname` (lower case, RFC 4035 §3.1.3.2): an NSEC covering
/// the name, and one covering the wildcard at the closest encloser (the longest existing
/// ancestor), which shows no wildcard could have answered. One record when both are the
/// same.
pub(super) fn nxdomain(zone: &ZoneData, qname: &Name) -> Vec<Record> {
    let mut proof: Vec<Record> = covering(zone, qname).into_iter().collect();
    let encloser = closest_encloser(zone, qname);
    if let Some(wildcard) = encloser.and_then(|e| e.prepend_label("*").ok()) {
        if let Some(nsec) = covering(zone, &wildcard) {
            if !proof.contains(&nsec) {
                proof.push(nsec);
            }
        }
    }
    proof
}

/// The longest ancestor of `qname` that exists in the zone (RFC 5155 §1.3's term, as
/// RFC 4592 §3.3.1 finds it for NSEC).
pub(super) fn closest_encloser(zone: &ZoneData, qname: &Name) -> Option<Name> {
    let mut name = qname.base_name();
    loop {
        if !zone.origin().zone_of(&name) {
            return None;
        }
        if zone.node(&name).is_some() {
            return Some(name);
        }
        name = name.base_name();
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::dnssec::rdata::DNSSECRData;
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    use super::{closest_encloser, nodata, nxdomain};
    use crate::dns::tests::sandbox_relay_zone;

    fn name(text: &str) -> Name {
        Name::from_ascii(text).expect("test name")
    }

    /// (owner, next, types) of an NSEC record.
    fn parts(record: &Record) -> (String, String, Vec<RecordType>) {
        match &record.data {
            RData::DNSSEC(DNSSECRData::NSEC(nsec)) => (
                record.name.to_ascii(),
                nsec.next_domain_name().to_ascii(),
                nsec.type_bit_maps().collect(),
            ),
            other => panic!("not an NSEC: {other:?}"),
        }
    }

    #[test]
    fn nodata_at_a_name_lists_its_types() {
        let zone = sandbox_relay_zone();
        let data = zone.read();
        let proof = nodata(&data, &name("mx.sandbox.test."));
        let [nsec] = &proof[..] else {
            panic!("one NSEC: {proof:?}")
        };
        let (owner, next, types) = parts(nsec);
        assert_eq!(owner, "mx.sandbox.test.");
        assert!(name(&next) > name("mx.sandbox.test."), "{next}");
        assert!(types.contains(&RecordType::A) && types.contains(&RecordType::AAAA));
        assert!(types.contains(&RecordType::NSEC) && types.contains(&RecordType::RRSIG));
        assert!(!types.contains(&RecordType::MX));
    }

    #[test]
    fn an_empty_non_terminal_is_covered_by_its_predecessor() {
        let zone = sandbox_relay_zone();
        let data = zone.read();
        // `_openpgpkey.sandbox.test` has only names below it.
        let ent = name("_openpgpkey.sandbox.test.");
        let proof = nodata(&data, &ent);
        let [nsec] = &proof[..] else {
            panic!("one NSEC: {proof:?}")
        };
        let (owner, next, _) = parts(nsec);
        assert!(name(&owner) < ent, "{owner} before the ENT");
        assert!(ent.zone_of(&name(&next)), "{next} is below the ENT");
    }

    #[test]
    fn nxdomain_covers_the_name_and_the_wildcard() {
        let zone = sandbox_relay_zone();
        let data = zone.read();
        let qname = name("carol.sandbox.test.");
        assert_eq!(
            closest_encloser(&data, &qname).map(|n| n.to_ascii()),
            Some("sandbox.test.".into())
        );
        let proof = nxdomain(&data, &qname);
        assert_eq!(proof.len(), 2, "{proof:?}");
        let covers = |record: &Record, n: &Name| {
            let (owner, next, _) = parts(record);
            let (owner, next) = (name(&owner), name(&next));
            owner < *n && (*n < next || next == name("sandbox.test."))
        };
        assert!(proof.iter().any(|r| covers(r, &qname)));
        let wildcard = name("*.sandbox.test.");
        assert!(proof.iter().any(|r| covers(r, &wildcard)));

        // Below an account: the closest encloser is the account's name.
        let deep = name("www.alice.sandbox.test.");
        assert_eq!(
            closest_encloser(&data, &deep).map(|n| n.to_ascii()),
            Some("alice.sandbox.test.".into())
        );
        let proof = nxdomain(&data, &deep);
        assert!(proof.iter().any(|r| covers(r, &deep)));
        assert!(proof
            .iter()
            .any(|r| covers(r, &name("*.alice.sandbox.test."))));
    }

    #[test]
    fn the_last_name_points_back_to_the_apex() {
        let zone = sandbox_relay_zone();
        let data = zone.read();
        let last = data
            .names_up_to(&name("zzzz.sandbox.test."))
            .next()
            .cloned();
        let last = last.expect("a last name");
        let proof = nodata(&data, &last);
        let (_, next, _) = parts(&proof[0]);
        assert_eq!(next, "sandbox.test.");
    }
}
