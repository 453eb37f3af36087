//! The relay's DNS query path (`omb_relay::dns::fuzzing::respond`: hickory-server's
//! request parsing, the relay's `wire::reply` and the encoding the server does, with no
//! I/O and no panic guard) on arbitrary messages, against a signed zone with two
//! accounts.
//!
//! Input layout: byte 0 picks the transport (bit 0: TCP) ; the rest is the message.
//!
//! Invariants checked:
//! - no panics (the server's guard would turn one into SERVFAIL; here it fails);
//! - a reply is a DNS message that parses, with the query's id, the QR bit set;
//! - over UDP a reply is at most 1232 bytes (or 512 without EDNS), else TC is set.

#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use omb_relay::dns::{fuzzing, RelayZone, ZoneConfig, ZoneKey};
use omb_relay::store::AccountDns;

fn zone() -> &'static RelayZone {
    static ZONE: OnceLock<RelayZone> = OnceLock::new();
    ZONE.get_or_init(|| {
        let config = ZoneConfig {
            domain: "sandbox.test".into(),
            mx_host: "mx.sandbox.test".into(),
            ipv4: vec![Ipv4Addr::LOCALHOST],
            ipv6: vec![Ipv6Addr::LOCALHOST],
            spf: "v=spf1 ip4:127.0.0.1 -all".into(),
            dmarc: "v=DMARC1; p=reject".into(),
            mta_sts_id: "f1".into(),
            tlsrpt_rua: "mailto:tlsrpt@sandbox.test".into(),
            extra_hosts: vec![],
            handle_services: vec![("_imaps".into(), Some(993))],
        };
        let key = ZoneKey::generate().expect("a key");
        let zone = RelayZone::new(&config).expect("a zone").signed(key);
        zone.set_account(&AccountDns {
            handle: "alice".into(),
            addresses: vec!["alice@sandbox.test".into()],
            cert: Some(vec![0x99; 64]),
            dkim: vec!["v=DKIM1; k=ed25519; p=AAAA".into()],
            acme: vec!["token".into()],
            version: 1,
        });
        zone.set_account(&AccountDns {
            handle: "bob".into(),
            ..AccountDns::default()
        });
        zone
    })
}

fuzz_target!(|data: &[u8]| {
    let [mode, packet @ ..] = data else { return };
    let tcp = mode & 1 == 1;
    let Some(reply) = fuzzing::respond(packet, tcp, zone()) else {
        return;
    };
    assert!(reply.len() >= 12, "a reply has a whole header");
    assert_eq!(reply[..2], packet[..2], "the reply carries the query's id");
    assert!(reply[2] & 0x80 != 0, "QR is set");
    if !tcp {
        let truncated = reply[2] & 0x02 != 0;
        assert!(reply.len() <= 1232 || truncated, "{} bytes over UDP", reply.len());
    }
});
