//! The zone as a master file (RFC 1035 §5), for standard DNS servers: a
//! secondary's first copy, a benchmark peer, or an operator's eyes.

use std::fmt::Write as _;

use hickory_proto::rr::{RData, Record};

use super::ZoneData;

/// Every record of the zone, one per line, SOA first, owners absolute.
pub fn zone_file(zone: &ZoneData) -> String {
    let mut out = format!("$ORIGIN {}\n", zone.origin());
    let (soa, rest): (Vec<&Record>, Vec<&Record>) = zone
        .records()
        .partition(|r| matches!(r.data, RData::SOA(_)));
    for record in soa.into_iter().chain(rest) {
        let _ = writeln!(
            out,
            "{} {} IN {} {}",
            record.name,
            record.ttl,
            record.record_type(),
            presentation(&record.data)
        );
    }
    out
}

/// Record data as a master file writes it: TXT strings quoted and escaped
/// (RFC 1035 §5.1), everything else as hickory displays it.
fn presentation(data: &RData) -> String {
    match data {
        RData::TXT(txt) => txt
            .txt_data
            .iter()
            .map(|s| {
                let mut quoted = String::from("\"");
                for &b in s.iter() {
                    match b {
                        b'"' | b'\\' => {
                            quoted.push('\\');
                            quoted.push(char::from(b));
                        }
                        0x20..=0x7e => quoted.push(char::from(b)),
                        _ => {
                            let _ = write!(quoted, "\\{b:03}");
                        }
                    }
                }
                quoted.push('"');
                quoted
            })
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::zone_file;
    use crate::dns::tests::sandbox_relay_zone;

    #[test]
    fn a_master_file_with_the_soa_first() {
        let zone = sandbox_relay_zone();
        let text = zone_file(&zone.read());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "$ORIGIN sandbox.test.");
        assert!(
            lines[1].starts_with(
                "sandbox.test. 300 IN SOA ns1.sandbox.test. hostmaster.sandbox.test. "
            ),
            "{}",
            lines[1]
        );
        assert!(
            text.contains("alice.sandbox.test. 300 IN MX 10 mx.sandbox.test.\n"),
            "{text}"
        );
        assert!(
            text.contains("_dmarc.sandbox.test. 300 IN TXT \"v=DMARC1; p=reject\"\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "._openpgpkey.sandbox.test. 300 IN OPENPGPKEY bm90IHJlYWxseSBhIGNlcnRpZmljYXRl\n"
            ),
            "{text}"
        );
        assert_eq!(text.matches(" IN SOA ").count(), 1);
    }
}
