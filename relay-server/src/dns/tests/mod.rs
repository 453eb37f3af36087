//! The server on real loopback sockets, queried with hickory-proto messages and `dig`.
//! DNSSEC (with `delv` and `kdig`) in `signed`, rate limiting in `flood`.

mod flood;
mod signed;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use super::{Answer, DnsServer, RelayZone, ServerOptions, ZoneConfig, ZoneSource};
use crate::store::AccountDns;

const WAIT: Duration = Duration::from_secs(5);

pub(super) fn sandbox_config() -> ZoneConfig {
    ZoneConfig {
        domain: "sandbox.test".into(),
        mx_host: "mx.sandbox.test".into(),
        ipv4: vec![Ipv4Addr::LOCALHOST],
        ipv6: vec![Ipv6Addr::LOCALHOST],
        spf: "v=spf1 ip4:127.0.0.1 -all".into(),
        dmarc: "v=DMARC1; p=reject".into(),
        mta_sts_id: "t1".into(),
        tlsrpt_rua: "mailto:tlsrpt@sandbox.test".into(),
        extra_hosts: vec![(
            "smtp.out.sandbox.test".into(),
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
        )],
        handle_services: vec![("_imaps".into(), Some(993)), ("_imap".into(), None)],
    }
}

/// The sandbox zone with accounts `alice` (linked, with a certificate, DKIM
/// and ACME records) and `bob` (no node yet).
pub(super) fn sandbox_zone() -> Arc<dyn ZoneSource> {
    Arc::new(sandbox_relay_zone())
}

pub(super) fn sandbox_relay_zone() -> RelayZone {
    let zone = match RelayZone::new(&sandbox_config()) {
        Ok(zone) => zone,
        Err(e) => panic!("sandbox zone: {e}"),
    };
    zone.set_account(&alice());
    zone.set_account(&AccountDns {
        handle: "bob".into(),
        addresses: vec!["bob@sandbox.test".into()],
        ..AccountDns::default()
    });
    zone
}

pub(super) fn alice() -> AccountDns {
    AccountDns {
        handle: "alice".into(),
        version: 0,
        addresses: vec!["alice@sandbox.test".into()],
        cert: Some(b"not really a certificate".to_vec()),
        dkim: vec!["v=DKIM1; k=ed25519; p=AAAA".into()],
        acme: vec!["challenge-one".into()],
    }
}

/// A running server and the task that runs it (aborted on drop).
pub(super) struct Running {
    pub(super) addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(super) async fn start(zone: Arc<dyn ZoneSource>) -> Running {
    start_with(zone, &ServerOptions::default()).await
}

pub(super) async fn start_with(zone: Arc<dyn ZoneSource>, options: &ServerOptions) -> Running {
    let localhost = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let server = DnsServer::bind(localhost, zone)
        .await
        .expect("bind the dns server")
        .with_options(options)
        .expect("valid options");
    let addr = server.local_addr();
    Running {
        addr,
        task: tokio::spawn(server.run()),
    }
}

pub(super) fn name(text: &str) -> Name {
    Name::from_ascii(text).expect("test name")
}

/// A query message; `payload` adds an EDNS(0) OPT record advertising that size.
pub(super) fn query(qname: &str, qtype: RecordType, payload: Option<u16>) -> Message {
    let mut message = Message::query();
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(name(qname), qtype));
    if let Some(payload) = payload {
        let mut edns = Edns::new();
        edns.set_max_payload(payload);
        message.set_edns(edns);
    }
    message
}

pub(super) async fn exchange_udp(addr: SocketAddr, request: &Message) -> Message {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("client socket");
    socket
        .send_to(&request.to_vec().expect("encode"), addr)
        .await
        .expect("send");
    let mut buf = vec![0u8; 65535];
    let len = timeout(WAIT, socket.recv(&mut buf))
        .await
        .expect("udp answer in time")
        .expect("recv");
    let response = Message::from_vec(&buf[..len]).expect("decode");
    assert_eq!(response.id, request.id);
    response
}

async fn udp(addr: SocketAddr, qname: &str, qtype: RecordType) -> Message {
    exchange_udp(addr, &query(qname, qtype, Some(1232))).await
}

pub(super) async fn send_tcp(stream: &mut TcpStream, request: &[u8]) {
    let len = u16::try_from(request.len()).expect("short message");
    stream
        .write_all(&len.to_be_bytes())
        .await
        .expect("write length");
    stream.write_all(request).await.expect("write message");
}

pub(super) async fn read_tcp(stream: &mut TcpStream) -> Message {
    let mut prefix = [0u8; 2];
    timeout(WAIT, stream.read_exact(&mut prefix))
        .await
        .expect("tcp answer in time")
        .expect("read");
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
    stream.read_exact(&mut body).await.expect("read body");
    Message::from_vec(&body).expect("decode")
}

fn is_soa(record: &Record) -> bool {
    matches!(record.data, RData::SOA(_))
}

fn txt_of(record: &Record) -> String {
    match &record.data {
        RData::TXT(txt) => txt
            .txt_data
            .iter()
            .map(|s| String::from_utf8_lossy(s))
            .collect(),
        other => panic!("not a TXT record: {other:?}"),
    }
}

#[tokio::test]
async fn mx_a_aaaa_and_txt_over_udp() {
    let server = start(sandbox_zone()).await;

    let mx = udp(server.addr, "sandbox.test.", RecordType::MX).await;
    assert_eq!(mx.response_code, ResponseCode::NoError);
    assert!(mx.authoritative);
    assert_eq!(mx.answers.len(), 1);
    let RData::MX(data) = &mx.answers[0].data else {
        panic!("not MX: {:?}", mx.answers)
    };
    assert_eq!(
        (data.preference, data.exchange.clone()),
        (10, name("mx.sandbox.test."))
    );
    assert!(mx.edns.is_some(), "OPT echoed (RFC 6891 §6.1.1)");

    // Case-insensitive, and the owner keeps the query's case.
    let a = udp(server.addr, "MX.Sandbox.TEST.", RecordType::A).await;
    assert_eq!(a.answers.len(), 1);
    assert_eq!(a.answers[0].data, RData::A(Ipv4Addr::LOCALHOST.into()));
    assert_eq!(a.answers[0].name.to_ascii(), "MX.Sandbox.TEST.");

    let aaaa = udp(server.addr, "ns1.sandbox.test.", RecordType::AAAA).await;
    assert_eq!(
        aaaa.answers[0].data,
        RData::AAAA(Ipv6Addr::LOCALHOST.into())
    );

    let spf = udp(server.addr, "sandbox.test.", RecordType::TXT).await;
    assert_eq!(txt_of(&spf.answers[0]), "v=spf1 ip4:127.0.0.1 -all");
    let dmarc = udp(server.addr, "_dmarc.sandbox.test.", RecordType::TXT).await;
    assert_eq!(txt_of(&dmarc.answers[0]), "v=DMARC1; p=reject");

    let extra = udp(server.addr, "smtp.out.sandbox.test.", RecordType::A).await;
    assert_eq!(
        extra.answers[0].data,
        RData::A(Ipv4Addr::new(127, 0, 0, 2).into())
    );
}

#[tokio::test]
async fn negative_answers_and_refused() {
    let server = start(sandbox_zone()).await;

    let nx = udp(server.addr, "nobody.home.sandbox.test.", RecordType::A).await;
    assert_eq!(nx.response_code, ResponseCode::NXDomain);
    assert!(nx.authoritative && nx.answers.is_empty());
    assert!(
        nx.authorities.iter().any(is_soa),
        "SOA in authority (RFC 2308)"
    );

    // The name exists but has no MX: NODATA.
    let nodata = udp(server.addr, "mx.sandbox.test.", RecordType::MX).await;
    assert_eq!(nodata.response_code, ResponseCode::NoError);
    assert!(nodata.authoritative && nodata.answers.is_empty());
    assert!(nodata.authorities.iter().any(is_soa));

    // An empty non-terminal is NODATA too (RFC 8020), not a handle.
    let ent = udp(server.addr, "out.sandbox.test.", RecordType::A).await;
    assert_eq!(ent.response_code, ResponseCode::NoError);
    assert!(ent.answers.is_empty());

    let refused = udp(server.addr, "example.com.", RecordType::A).await;
    assert_eq!(refused.response_code, ResponseCode::Refused);
    assert!(!refused.authoritative);
    let axfr = udp(server.addr, "sandbox.test.", RecordType::AXFR).await;
    assert_eq!(axfr.response_code, ResponseCode::Refused);
}

#[tokio::test]
async fn handle_names_and_any() {
    let server = start(sandbox_zone()).await;

    let a = udp(server.addr, "Alice.sandbox.test.", RecordType::A).await;
    assert_eq!(a.answers.len(), 1);
    assert_eq!(a.answers[0].name.to_ascii(), "Alice.sandbox.test.");
    let mx = udp(server.addr, "alice.sandbox.test.", RecordType::MX).await;
    assert!(matches!(&mx.answers[0].data, RData::MX(m) if m.exchange == name("mx.sandbox.test.")));
    let spf = udp(server.addr, "bob.sandbox.test.", RecordType::TXT).await;
    assert_eq!(txt_of(&spf.answers[0]), "v=spf1 ip4:127.0.0.1 -all");

    // Only accounts that exist; no wildcard below them.
    for missing in ["carol.sandbox.test.", "www.alice.sandbox.test."] {
        let nx = udp(server.addr, missing, RecordType::TXT).await;
        assert_eq!(nx.response_code, ResponseCode::NXDomain, "{missing}");
    }
    let autoconfig = udp(server.addr, "autoconfig.alice.sandbox.test.", RecordType::A).await;
    assert_eq!(autoconfig.answers.len(), 1);

    // RFC 8482: ANY gets one HINFO record.
    let any = udp(server.addr, "sandbox.test.", RecordType::ANY).await;
    assert_eq!(any.answers.len(), 1);
    assert!(matches!(&any.answers[0].data, RData::HINFO(h) if &*h.cpu == b"RFC8482"));
}

#[tokio::test]
async fn rfc6186_services_under_handle_names() {
    let server = start(sandbox_zone()).await;

    let imaps = udp(
        server.addr,
        "_IMAPS._tcp.Alice.sandbox.test.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(imaps.response_code, ResponseCode::NoError);
    match &imaps.answers[..] {
        [record] => match &record.data {
            RData::SRV(srv) => {
                assert_eq!(srv.port, 993);
                assert_eq!(srv.target, name("alice.sandbox.test."));
            }
            other => panic!("not an SRV: {other:?}"),
        },
        other => panic!("one SRV expected, got {other:?}"),
    }
    // Plain IMAP is not offered: target "." (RFC 6186 §4).
    let imap = udp(server.addr, "_imap._tcp.bob.sandbox.test.", RecordType::SRV).await;
    assert!(matches!(&imap.answers[0].data, RData::SRV(s) if s.target.is_root()));
    // The name exists, with no other type; its parent is an empty non-terminal.
    for (qname, qtype) in [
        ("_imaps._tcp.alice.sandbox.test.", RecordType::A),
        ("_tcp.alice.sandbox.test.", RecordType::SRV),
    ] {
        let nodata = udp(server.addr, qname, qtype).await;
        assert_eq!(nodata.response_code, ResponseCode::NoError, "{qname}");
        assert!(nodata.answers.is_empty(), "{qname}");
    }
    for missing in [
        "_pop3s._tcp.alice.sandbox.test.",
        "_imaps._udp.alice.sandbox.test.",
        "_imaps._tcp.sandbox.test.",
    ] {
        let nx = udp(server.addr, missing, RecordType::SRV).await;
        assert_eq!(nx.response_code, ResponseCode::NXDomain, "{missing}");
    }
}

#[tokio::test]
async fn several_queries_on_one_tcp_connection() {
    let server = start(sandbox_zone()).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let first = query("sandbox.test.", RecordType::MX, None);
    let second = query("sandbox.test.", RecordType::TXT, None);
    // Pipelined: both sent before either answer is read (RFC 7766 §6.2.1.1).
    send_tcp(&mut stream, &first.to_vec().expect("encode")).await;
    send_tcp(&mut stream, &second.to_vec().expect("encode")).await;
    let a = read_tcp(&mut stream).await;
    let b = read_tcp(&mut stream).await;
    assert_eq!((a.id, b.id), (first.id, second.id));
    assert_eq!(a.answers[0].record_type(), RecordType::MX);
    assert_eq!(b.answers[0].record_type(), RecordType::TXT);
    assert!(a.edns.is_none(), "no OPT without one in the query");

    // A length announcing 64 KiB that never come: the connection waits (until its
    // timeout), and everyone else is answered meanwhile, over UDP and TCP.
    stream
        .write_all(&u16::MAX.to_be_bytes())
        .await
        .expect("write");
    let other = udp(server.addr, "sandbox.test.", RecordType::MX).await;
    assert_eq!(other.answers[0].record_type(), RecordType::MX);
    let mut fresh = TcpStream::connect(server.addr).await.expect("connect");
    send_tcp(&mut fresh, &first.to_vec().expect("encode")).await;
    assert_eq!(read_tcp(&mut fresh).await.id, first.id);
}

/// A zone whose apex TXT set is about 900 bytes.
struct BigZone(Name);

impl ZoneSource for BigZone {
    fn answer(&self, query: &Query, _dnssec_ok: bool) -> Answer {
        let text = "x".repeat(80);
        let record = |_| {
            Record::from_rdata(
                query.name().clone(),
                60,
                RData::TXT(TXT::new(vec![text.clone()])),
            )
        };
        Answer::Records((0..10).map(record).collect())
    }
    fn origin(&self) -> &Name {
        &self.0
    }
}

#[tokio::test]
async fn truncation_follows_the_advertised_size() {
    let server = start(Arc::new(BigZone(name("big.test.")))).await;

    let classic = exchange_udp(server.addr, &query("big.test.", RecordType::TXT, None)).await;
    assert!(
        classic.truncation && classic.answers.is_empty(),
        "512 bytes without EDNS"
    );
    let small = exchange_udp(server.addr, &query("big.test.", RecordType::TXT, Some(512))).await;
    assert!(small.truncation && small.edns.is_some());
    let large = exchange_udp(
        server.addr,
        &query("big.test.", RecordType::TXT, Some(4096)),
    )
    .await;
    assert!(!large.truncation);
    assert_eq!(large.answers.len(), 10);
    assert_eq!(
        large.edns.as_ref().map(Edns::max_payload),
        Some(super::wire::MAX_UDP_PAYLOAD)
    );

    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    send_tcp(
        &mut stream,
        &query("big.test.", RecordType::TXT, None)
            .to_vec()
            .expect("encode"),
    )
    .await;
    let over_tcp = read_tcp(&mut stream).await;
    assert!(!over_tcp.truncation);
    assert_eq!(over_tcp.answers.len(), 10);
}

#[tokio::test]
async fn garbage_does_not_stop_the_server() {
    let server = start(sandbox_zone()).await;
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("client socket");
    let mut rng = StdRng::seed_from_u64(8482);
    for size in [0usize, 1, 5, 11, 12, 40, 512, 3000] {
        let junk: Vec<u8> = (0..size).map(|_| rng.gen()).collect();
        socket.send_to(&junk, server.addr).await.expect("send junk");
    }
    // A header that says "one question" followed by a broken name: FORMERR, same id.
    let formerr = [0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0x3f, b'a'];
    let mut buf = vec![0u8; 65535];
    socket.send_to(&formerr, server.addr).await.expect("send");
    let answer = loop {
        let len = timeout(WAIT, socket.recv(&mut buf))
            .await
            .expect("in time")
            .expect("recv");
        let message = Message::from_vec(&buf[..len]).expect("decode");
        if message.id == 0xbeef {
            break message;
        }
    };
    assert_eq!(answer.response_code, ResponseCode::FormErr);

    // Junk over TCP closes that connection only.
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let junk: Vec<u8> = (0..300).map(|_| rng.gen()).collect();
    send_tcp(&mut stream, &junk).await;

    let good = udp(server.addr, "sandbox.test.", RecordType::MX).await;
    assert_eq!(good.answers.len(), 1);
}

#[tokio::test]
async fn dig_reads_the_mx() {
    let dig = tokio::process::Command::new("dig").arg("-v").output().await;
    if dig.is_err() {
        println!("skipped: dig not installed");
        return;
    }
    let server = start(sandbox_zone()).await;
    let output = tokio::process::Command::new("dig")
        .arg(format!("@{}", server.addr.ip()))
        .args(["-p", &server.addr.port().to_string()])
        .args(["MX", "sandbox.test", "+short", "+time=3", "+tries=1"])
        .output()
        .await
        .expect("run dig");
    assert!(output.status.success(), "dig failed: {output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "10 mx.sandbox.test."
    );
}

#[tokio::test]
async fn records_published_for_accounts_and_the_relay() {
    let zone = sandbox_relay_zone();
    let server = start(Arc::new(sandbox_relay_zone())).await;

    let dkim = udp(
        server.addr,
        "alice._domainkey.sandbox.test.",
        RecordType::TXT,
    )
    .await;
    assert_eq!(txt_of(&dkim.answers[0]), "v=DKIM1; k=ed25519; p=AAAA");
    let acme = udp(
        server.addr,
        "_acme-challenge.alice.sandbox.test.",
        RecordType::TXT,
    )
    .await;
    assert_eq!(txt_of(&acme.answers[0]), "challenge-one");
    // bob has no node: no key, no DKIM, but his names exist.
    let nx = udp(server.addr, "bob._domainkey.sandbox.test.", RecordType::TXT).await;
    assert_eq!(nx.response_code, ResponseCode::NXDomain);

    // RFC 7929 §3: SHA2-256 of the local part, 28 octets, hex.
    let owner = zone
        .read()
        .openpgpkey_name("alice@sandbox.test")
        .expect("an owner name");
    assert_eq!(
        owner.to_ascii(),
        "2bd806c97f0e00af1a1fc3328fa763a9269723c8db8fac4f93af71db._openpgpkey.sandbox.test."
    );
    let key = udp(server.addr, &owner.to_ascii(), RecordType::OPENPGPKEY).await;
    assert!(
        matches!(&key.answers[..], [r] if matches!(&r.data, RData::OPENPGPKEY(k) if k.public_key == b"not really a certificate")),
        "{:?}",
        key.answers
    );
    // `_openpgpkey` and `_domainkey` are empty non-terminals.
    let ent = udp(server.addr, "_openpgpkey.sandbox.test.", RecordType::TXT).await;
    assert_eq!(
        (ent.response_code, ent.answers.len()),
        (ResponseCode::NoError, 0)
    );

    let sts = udp(server.addr, "_mta-sts.sandbox.test.", RecordType::TXT).await;
    assert_eq!(txt_of(&sts.answers[0]), "v=STSv1; id=t1");
    let tlsrpt = udp(server.addr, "_smtp._tls.sandbox.test.", RecordType::TXT).await;
    assert_eq!(
        txt_of(&tlsrpt.answers[0]),
        "v=TLSRPTv1; rua=mailto:tlsrpt@sandbox.test"
    );
    let policy_host = udp(server.addr, "mta-sts.sandbox.test.", RecordType::A).await;
    assert_eq!(policy_host.answers.len(), 1);
}

#[tokio::test]
async fn changes_bump_the_serial_and_are_answered_at_once() {
    let zone = Arc::new(sandbox_relay_zone());
    let server = start(zone.clone()).await;
    let before = zone.serial();
    // The same data again changes nothing.
    zone.set_account(&alice());
    assert_eq!(zone.serial(), before);

    zone.set_account(&AccountDns {
        handle: "carol".into(),
        ..AccountDns::default()
    });
    assert!(zone.serial() > before);
    let a = udp(server.addr, "carol.sandbox.test.", RecordType::A).await;
    assert_eq!(a.answers.len(), 1);

    zone.remove_account("carol");
    let gone = udp(server.addr, "carol.sandbox.test.", RecordType::A).await;
    assert_eq!(gone.response_code, ResponseCode::NXDomain);
    let soa = udp(server.addr, "sandbox.test.", RecordType::SOA).await;
    assert!(matches!(&soa.answers[0].data, RData::SOA(s) if s.serial > before + 1));
}

#[tokio::test]
async fn an_older_snapshot_never_replaces_newer_data() {
    let zone = sandbox_relay_zone();
    let newer = AccountDns {
        version: 7,
        acme: vec!["new".into()],
        ..alice()
    };
    zone.set_account(&newer);
    let serial = zone.serial();
    // A reconcile that read the database before the change comes late.
    zone.set_account(&AccountDns {
        version: 6,
        acme: vec!["old".into()],
        ..alice()
    });
    assert_eq!(zone.serial(), serial);
    let server = start(Arc::new(zone)).await;
    let acme = udp(
        server.addr,
        "_acme-challenge.alice.sandbox.test.",
        RecordType::TXT,
    )
    .await;
    assert_eq!(txt_of(&acme.answers[0]), "new");
}

/// A change made by another process (another store on the same database, as
/// the operator CLI is) reaches the zone through the version poll.
#[tokio::test]
async fn changes_from_another_process_are_followed() {
    let dir = std::env::temp_dir().join(format!("omb-dns-follow-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = format!("sqlite://{}?mode=rwc", dir.join("relay.db").display());
    let ours = crate::store::Store::open(&url).await.expect("open");
    let theirs = crate::store::Store::open(&url).await.expect("open again");
    let zone = Arc::new(sandbox_relay_zone());
    let loaded = zone.load(&ours).await.expect("load");
    let follower = tokio::spawn(zone.clone().follow(ours.clone(), loaded));
    let server = start(zone.clone()).await;
    theirs
        .create_account("dave", "sandbox.test", 1)
        .await
        .expect("create");
    let started = std::time::Instant::now();
    loop {
        let a = udp(server.addr, "dave.sandbox.test.", RecordType::A).await;
        if a.response_code == ResponseCode::NoError && !a.answers.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "dave not served 3 s after another process created him"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The sandbox accounts are not in this database: the load took them out.
    let alice = udp(server.addr, "alice.sandbox.test.", RecordType::A).await;
    assert_eq!(alice.response_code, ResponseCode::NXDomain);
    follower.abort();
    ours.close().await;
    theirs.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The periodic comparison adds what the zone missed and drops what is gone,
/// reading only those accounts.
#[tokio::test]
async fn reconcile_repairs_what_was_missed() {
    let dir = std::env::temp_dir().join(format!("omb-dns-reconcile-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = format!("sqlite://{}?mode=rwc", dir.join("relay.db").display());
    let store = crate::store::Store::open(&url).await.expect("open");
    store
        .create_account("alice", "sandbox.test", 1)
        .await
        .expect("create");
    // The zone has bob (gone from the database) and not alice.
    let zone = sandbox_relay_zone();
    zone.remove_account("alice");
    zone.reconcile(&store).await.expect("reconcile");
    let handles: Vec<String> = zone.read().handles().map(str::to_string).collect();
    assert_eq!(handles, ["alice"]);
    assert!(zone.read().account_version("alice").is_some_and(|v| v > 0));
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}
