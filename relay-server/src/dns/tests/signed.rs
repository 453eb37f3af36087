//! The signed zone: what `delv` and `kdig` see, the signature cache, and AXFR.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use hickory_proto::dnssec::rdata::DNSSECRData;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::net::TcpStream;
use tokio::process::Command;

use super::{exchange_udp, name, query, read_tcp, sandbox_relay_zone, send_tcp, start, start_with};
use crate::dns::dnssec::Signer;
use crate::dns::{RelayZone, ServerOptions, TransferAcl, ZoneKey, ZoneSource};
use crate::store::AccountDns;

fn signed_zone() -> Arc<RelayZone> {
    let key = ZoneKey::generate().expect("a key");
    Arc::new(sandbox_relay_zone().signed(key))
}

fn is_type(record: &Record, wanted: RecordType) -> bool {
    record.record_type() == wanted
}

fn rrsig_covers(record: &Record, covered: RecordType) -> bool {
    matches!(&record.data, RData::DNSSEC(DNSSECRData::RRSIG(sig)) if sig.input().type_covered == covered)
}

async fn udp_do(addr: SocketAddr, qname: &str, qtype: RecordType) -> Message {
    let mut request = query(qname, qtype, Some(1232));
    if let Some(edns) = request.edns.as_mut() {
        edns.set_dnssec_ok(true);
    }
    exchange_udp(addr, &request).await
}

#[tokio::test]
async fn do_bit_adds_signatures_and_nsec_and_nothing_without_it() {
    let zone = signed_zone();
    let server = start(zone.clone()).await;

    let plain = exchange_udp(
        server.addr,
        &query("alice.sandbox.test.", RecordType::A, Some(1232)),
    )
    .await;
    assert!(plain.answers.iter().all(|r| is_type(r, RecordType::A)));
    let signed = udp_do(server.addr, "Alice.sandbox.test.", RecordType::A).await;
    assert!(signed.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok));
    assert!(signed
        .answers
        .iter()
        .any(|r| rrsig_covers(r, RecordType::A)));
    assert!(signed
        .answers
        .iter()
        .all(|r| r.name.to_ascii() == "Alice.sandbox.test."));

    let dnskey = udp_do(server.addr, "sandbox.test.", RecordType::DNSKEY).await;
    assert!(dnskey
        .answers
        .iter()
        .any(|r| is_type(r, RecordType::DNSKEY)));
    assert!(dnskey
        .answers
        .iter()
        .any(|r| rrsig_covers(r, RecordType::DNSKEY)));

    let nx = udp_do(server.addr, "carol.sandbox.test.", RecordType::A).await;
    assert_eq!(nx.response_code, ResponseCode::NXDomain);
    let nsecs = nx
        .authorities
        .iter()
        .filter(|r| is_type(r, RecordType::NSEC))
        .count();
    assert_eq!(nsecs, 2, "{:?}", nx.authorities);
    assert!(nx
        .authorities
        .iter()
        .any(|r| rrsig_covers(r, RecordType::SOA)));
    assert!(nx
        .authorities
        .iter()
        .any(|r| rrsig_covers(r, RecordType::NSEC)));
    let nodata = udp_do(server.addr, "mx.sandbox.test.", RecordType::MX).await;
    assert!(nodata.answers.is_empty());
    assert!(nodata
        .authorities
        .iter()
        .any(|r| is_type(r, RecordType::NSEC) && r.name.to_ascii() == "mx.sandbox.test."));
    let unsigned_nx = exchange_udp(
        server.addr,
        &query("carol.sandbox.test.", RecordType::A, Some(1232)),
    )
    .await;
    assert!(unsigned_nx
        .authorities
        .iter()
        .all(|r| is_type(r, RecordType::SOA)));
}

#[test]
fn signatures_are_cached_per_rrset_and_remade_when_it_changes() {
    let zone = sandbox_relay_zone();
    let signer = Signer::new(ZoneKey::generate().expect("a key"), name("sandbox.test."));
    let a_records = |zone: &RelayZone| match zone.answer(
        &hickory_proto::op::Query::query(name("alice.sandbox.test."), RecordType::A),
        false,
    ) {
        crate::dns::Answer::Records(records) => records,
        other => panic!("{other:?}"),
    };
    let soa = |zone: &RelayZone| {
        zone.read()
            .records()
            .filter(|r| is_type(r, RecordType::SOA))
            .cloned()
            .collect::<Vec<_>>()
    };
    let first = signer.sign(&a_records(&zone)).expect("signed");
    let soa_sig = signer.sign(&soa(&zone)).expect("signed");
    // ECDSA signatures are randomised: an equal one comes from the cache.
    assert_eq!(signer.sign(&a_records(&zone)), Some(first.clone()));
    assert_eq!(signer.cached(), 2);

    // A new serial: the SOA is signed again, alice's A is not.
    zone.set_account(&AccountDns {
        handle: "carol".into(),
        ..AccountDns::default()
    });
    assert_ne!(signer.sign(&soa(&zone)), Some(soa_sig));
    assert_eq!(signer.sign(&a_records(&zone)), Some(first.clone()));
    // Another letter case of the owner shares the signature.
    let mut upper = a_records(&zone);
    for record in &mut upper {
        record.name = name("ALICE.sandbox.test.");
    }
    let renamed = signer.sign(&upper).expect("signed");
    assert_eq!(renamed.data, first.data);
    assert_eq!(renamed.name.to_ascii(), "ALICE.sandbox.test.");
    // Changed data: a new signature.
    let mut changed = a_records(&zone);
    changed[0].ttl += 1;
    assert_ne!(signer.sign(&changed).map(|r| r.data), Some(first.data));
}

/// A trust-anchor file for delv with the zone's key.
fn anchors(zone: &RelayZone, dir: &std::path::Path) -> PathBuf {
    let key = zone.key().expect("signed");
    let path = dir.join("anchors.conf");
    let text = format!(
        "trust-anchors {{ \"sandbox.test.\" static-key 257 3 13 \"{}\"; }};\n",
        key.public_key_base64()
    );
    std::fs::write(&path, text).expect("write anchors");
    path
}

async fn installed(program: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .await
        .is_ok_and(|o| o.status.success());
    if !found {
        println!("skipped: {program} is not installed (Debian: bind9-dnsutils / knot-dnsutils)");
    }
    found
}

#[tokio::test]
async fn delv_fully_validates_answers_and_denials() {
    if !installed("delv").await {
        return;
    }
    let zone = signed_zone();
    let server = start(zone.clone()).await;
    let dir = std::env::temp_dir().join(format!("omb-delv-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).expect("scratch folder");
    let anchors = anchors(&zone, &dir);
    let openpgpkey = zone
        .read()
        .openpgpkey_name("alice@sandbox.test")
        .expect("owner")
        .to_ascii();
    let cases = [
        ("alice.sandbox.test", "A", "; fully validated"),
        ("alice.sandbox.test", "MX", "; fully validated"),
        ("alice.sandbox.test", "TXT", "; fully validated"),
        (&*openpgpkey, "OPENPGPKEY", "; fully validated"),
        ("sandbox.test", "DNSKEY", "; fully validated"),
        (
            "nobody.sandbox.test",
            "A",
            "; negative response, fully validated",
        ),
        (
            "a.b.alice.sandbox.test",
            "TXT",
            "; negative response, fully validated",
        ),
        (
            "mx.sandbox.test",
            "MX",
            "; negative response, fully validated",
        ),
        (
            "_openpgpkey.sandbox.test",
            "TXT",
            "; negative response, fully validated",
        ),
        (
            "zzzz.sandbox.test",
            "A",
            "; negative response, fully validated",
        ),
    ];
    for (qname, qtype, expected) in cases {
        let output = Command::new("delv")
            .arg(format!("@{}", server.addr.ip()))
            .args(["-p", &server.addr.port().to_string()])
            .arg("-a")
            .arg(&anchors)
            .args(["+root=sandbox.test", qname, qtype])
            .output()
            .await
            .expect("run delv");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        println!("delv {qname} {qtype}:\n{stdout}{stderr}");
        assert!(
            stdout.contains(expected) || stderr.contains(expected),
            "delv {qname} {qtype}: expected {expected:?}\n{stdout}\n{stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn kdig_shows_rrsig_and_nsec() {
    if !installed("kdig").await {
        return;
    }
    let server = start(signed_zone()).await;
    let output = Command::new("kdig")
        .arg(format!("@{}", server.addr.ip()))
        .args(["-p", &server.addr.port().to_string()])
        .args(["+dnssec", "+norec", "nobody.sandbox.test", "A"])
        .output()
        .await
        .expect("run kdig");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("NXDOMAIN"), "{text}");
    assert!(text.contains("NSEC") && text.contains("RRSIG"), "{text}");
    assert!(text.contains("Flags: qr aa"), "{text}");
}

#[tokio::test]
async fn axfr_to_allowed_addresses_only() {
    let zone = signed_zone();
    let allowed = ServerOptions {
        allow_transfer: TransferAcl::parse(&["127.0.0.1".into()]).expect("valid"),
        ..ServerOptions::default()
    };
    let server = start_with(zone.clone(), &allowed).await;
    let request = query("sandbox.test.", RecordType::AXFR, None);
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    send_tcp(&mut stream, &request.to_vec().expect("encode")).await;
    let mut records = Vec::new();
    loop {
        let message = read_tcp(&mut stream).await;
        assert_eq!(
            (message.id, message.response_code),
            (request.id, ResponseCode::NoError)
        );
        records.extend(message.answers.iter().cloned());
        if records.len() > 1 && records.last().is_some_and(|r| is_type(r, RecordType::SOA)) {
            break;
        }
    }
    assert!(is_type(&records[0], RecordType::SOA));
    let soas = records
        .iter()
        .filter(|r| is_type(r, RecordType::SOA))
        .count();
    assert_eq!(soas, 2, "SOA first and last only");
    for wanted in [
        RecordType::DNSKEY,
        RecordType::NSEC,
        RecordType::RRSIG,
        RecordType::OPENPGPKEY,
    ] {
        assert!(
            records.iter().any(|r| is_type(r, wanted)),
            "{wanted} in the transfer"
        );
    }
    // Every name with records has one NSEC, every RRset one RRSIG.
    let nsecs = records
        .iter()
        .filter(|r| is_type(r, RecordType::NSEC))
        .count();
    assert_eq!(
        nsecs,
        zone.read().names_after(&name("sandbox.test.")).count() + 1
    );
    // The connection stays usable for queries.
    send_tcp(
        &mut stream,
        &query("sandbox.test.", RecordType::MX, None)
            .to_vec()
            .expect("encode"),
    )
    .await;
    assert_eq!(read_tcp(&mut stream).await.answers.len(), 1);

    // Not allowed: REFUSED.
    let refusing = start(zone).await;
    let mut stream = TcpStream::connect(refusing.addr).await.expect("connect");
    send_tcp(&mut stream, &request.to_vec().expect("encode")).await;
    assert_eq!(
        read_tcp(&mut stream).await.response_code,
        ResponseCode::Refused
    );
}

/// A transfer far larger than what hickory-server queues for one connection (64
/// replies), read by a secondary that starts late: every record arrives, in order.
#[tokio::test]
async fn a_large_transfer_waits_for_a_slow_secondary() {
    const ACCOUNTS: usize = 6_000;
    let zone = sandbox_relay_zone();
    for i in 0..ACCOUNTS {
        zone.set_account(&AccountDns {
            handle: format!("user{i}"),
            addresses: vec![format!("user{i}@sandbox.test")],
            cert: Some(vec![b'k'; 1_000]),
            ..AccountDns::default()
        });
    }
    let allowed = ServerOptions {
        allow_transfer: TransferAcl::parse(&["127.0.0.1".into()]).expect("valid"),
        ..ServerOptions::default()
    };
    let server = start_with(Arc::new(zone), &allowed).await;
    let request = query("sandbox.test.", RecordType::AXFR, None);
    // A small receive buffer, so that the kernel cannot take the whole zone at once.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(8192).expect("buffer size");
    let mut stream = socket.connect(server.addr).await.expect("connect");
    send_tcp(&mut stream, &request.to_vec().expect("encode")).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (mut messages, mut soas, mut keys) = (0usize, 0usize, 0usize);
    while soas < 2 {
        let message = read_tcp(&mut stream).await;
        assert_eq!(message.id, request.id);
        messages += 1;
        for record in &message.answers {
            soas += usize::from(is_type(record, RecordType::SOA));
            keys += usize::from(is_type(record, RecordType::OPENPGPKEY));
        }
    }
    assert!(messages > 64, "{messages} messages");
    assert_eq!(keys, ACCOUNTS + 1, "alice's and every user's key");
}
