//! Real secondaries of the relay's zone: NSD and Knot (Debian's packages), each started
//! here with its own configuration folder on a free loopback port, transfer the signed
//! zone by AXFR, and after a new account (and the NOTIFY it causes) serve the new name
//! within a second. Skipped, with a printed reason, when the server is not installed.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use omb_relay::config::RelayConfig;
use omb_relay::server::RunningRelay;

const DOMAIN: &str = "sandbox.test";

/// A child process killed (by its own id) when the test ends.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("omb-{tag}-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

/// A loopback port free for both UDP and TCP right now.
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind udp");
        let port = udp.local_addr().expect("addr").port();
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
}

fn installed(program: &str) -> bool {
    let found = Path::new(program).exists();
    if !found {
        println!("skipped: {program} is not installed (Debian package nsd / knot)");
    }
    found
}

/// A relay (SQLite, signed zone) that lets loopback transfer its zone and notifies
/// `secondary`, with the account `alice`.
async fn relay(dir: &Path, secondary: SocketAddr) -> (RunningRelay, SocketAddr) {
    let config: RelayConfig = toml::from_str(&format!(
        r#"
        domain = "{DOMAIN}"
        data_dir = "{data}"
        [smtp]
        listen = "127.0.0.1:0"
        [tunnel]
        listen = "127.0.0.1:0"
        [dns]
        listen = "127.0.0.1:0"
        resolver = "127.0.0.1:0"
        addresses = ["127.0.0.1"]
        allow_transfer = ["127.0.0.1"]
        notify = ["{secondary}"]
        "#,
        data = dir.join("relay").display(),
    ))
    .expect("relay config");
    let relay = omb_relay::server::start(config)
        .await
        .expect("start the relay");
    let dns = relay.dns.expect("the relay serves DNS");
    relay
        .store
        .create_account("alice", DOMAIN, 1 << 20)
        .await
        .expect("create alice");
    (relay, dns)
}

/// Asks `server` over UDP; `None` when it does not answer in 200 ms.
fn ask(server: SocketAddr, name: &str, qtype: RecordType) -> Option<Message> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).ok()?;
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .ok()?;
    let mut request = Message::query();
    request.add_query(Query::query(Name::from_ascii(name).ok()?, qtype));
    socket.send_to(&request.to_vec().ok()?, server).ok()?;
    let mut buf = [0u8; 4096];
    let len = socket.recv(&mut buf).ok()?;
    Message::from_vec(&buf[..len]).ok()
}

fn answers(server: SocketAddr, name: &str, qtype: RecordType) -> bool {
    ask(server, name, qtype).is_some_and(|m| {
        m.response_code == ResponseCode::NoError
            && m.answers.iter().any(|r| r.record_type() == qtype)
    })
}

fn dig_short(server: SocketAddr, name: &str, qtype: &str) -> String {
    let output = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args([
            "-p",
            &server.port().to_string(),
            name,
            qtype,
            "+short",
            "+norec",
        ])
        .output();
    output
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The common part: the secondary got the zone by AXFR (dig sees alice's A and the
/// DNSKEY), then a new account reaches it within a second of its creation.
async fn follows_the_relay(
    kind: &str,
    relay: &RunningRelay,
    relay_dir: &Path,
    secondary: SocketAddr,
    log: &Path,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !answers(secondary, "alice.sandbox.test.", RecordType::A) {
        assert!(
            Instant::now() < deadline,
            "{kind} never served the zone; its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dig_short(secondary, "alice.sandbox.test", "A"), "127.0.0.1");
    let dnskey = dig_short(secondary, "sandbox.test", "DNSKEY");
    assert!(dnskey.starts_with("257 3 13 "), "{kind} DNSKEY: {dnskey}");
    let rrsig = dig_short(secondary, "alice.sandbox.test", "RRSIG");
    assert!(
        rrsig.contains("A 13 3 300"),
        "{kind} RRSIG of alice's A: {rrsig}"
    );

    // A new account: the relay's zone follows within milliseconds, NOTIFY goes out
    // after the 100 ms debounce, the secondary asks for the SOA and transfers.
    let created = Instant::now();
    relay
        .store
        .create_account("carol", DOMAIN, 1 << 20)
        .await
        .expect("create carol");
    while !answers(secondary, "carol.sandbox.test.", RecordType::A) {
        assert!(
            created.elapsed() < Duration::from_secs(1),
            "{kind} did not serve the new account within a second; its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "{kind}: new account served by the secondary {:?} after its creation",
        created.elapsed()
    );

    // The transferred zone validates as served by the secondary: signatures, and the
    // NSEC chain the relay computed (delv with the relay's key as trust anchor).
    let key = omb_relay::dns::ZoneKey::load_or_generate(&relay_dir.join("dnssec.key"))
        .expect("the relay's key");
    let anchors = relay_dir.join("anchors.conf");
    std::fs::write(
        &anchors,
        format!(
            "trust-anchors {{ \"{DOMAIN}.\" static-key 257 3 13 \"{}\"; }};\n",
            key.public_key_base64()
        ),
    )
    .expect("write anchors");
    for (name, qtype, expected) in [
        ("carol.sandbox.test", "A", "; fully validated"),
        (
            "nobody.sandbox.test",
            "A",
            "; negative response, fully validated",
        ),
    ] {
        let output = Command::new("delv")
            .arg(format!("@{}", secondary.ip()))
            .args(["-p", &secondary.port().to_string(), "-a"])
            .arg(&anchors)
            .args([&format!("+root={DOMAIN}"), name, qtype])
            .output();
        let Ok(output) = output else {
            println!("skipped the delv check: delv is not installed");
            return;
        };
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(
            text.contains(expected),
            "delv {name} {qtype} at {kind}:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nsd_as_secondary() {
    if !installed("/usr/sbin/nsd") {
        return;
    }
    let dir = scratch("nsd");
    let port = free_port();
    let secondary = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let (relay, primary) = relay(&dir, secondary).await;
    let d = dir.display();
    let conf = dir.join("nsd.conf");
    std::fs::write(
        &conf,
        format!(
            r#"server:
  ip-address: 127.0.0.1
  port: {port}
  server-count: 1
  username: ""
  chroot: ""
  zonesdir: "{d}"
  database: ""
  zonelistfile: "{d}/zone.list"
  xfrdfile: "{d}/xfrd.state"
  xfrdir: "{d}"
  pidfile: "{d}/nsd.pid"
  logfile: "{d}/nsd.log"
  verbosity: 2
  # Load a transferred zone at once (the default waits a second to batch reloads).
  xfrd-reload-timeout: 0
remote-control:
  control-enable: no
zone:
  name: {DOMAIN}
  zonefile: "{d}/{DOMAIN}.zone"
  allow-notify: 127.0.0.1 NOKEY
  request-xfr: 127.0.0.1@{} NOKEY
"#,
            primary.port()
        ),
    )
    .expect("write nsd.conf");
    let nsd = Command::new("/usr/sbin/nsd")
        .args(["-d", "-c"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Daemon)
        .expect("start nsd");
    follows_the_relay(
        "NSD",
        &relay,
        &dir.join("relay"),
        secondary,
        &dir.join("nsd.log"),
    )
    .await;
    drop(nsd);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knot_as_secondary() {
    if !installed("/usr/sbin/knotd") {
        return;
    }
    let dir = scratch("knot");
    let port = free_port();
    let secondary = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let (relay, primary) = relay(&dir, secondary).await;
    let d = dir.display();
    let conf = dir.join("knot.conf");
    std::fs::write(
        &conf,
        format!(
            r#"server:
  rundir: "{d}"
  listen: 127.0.0.1@{port}
database:
  storage: "{d}"
log:
  - target: "{d}/knot.log"
    any: info
remote:
  - id: relay
    address: 127.0.0.1@{}
acl:
  - id: notify_from_relay
    address: 127.0.0.1
    action: notify
template:
  - id: default
    storage: "{d}"
zone:
  - domain: {DOMAIN}
    master: relay
    acl: notify_from_relay
"#,
            primary.port()
        ),
    )
    .expect("write knot.conf");
    let knot = Command::new("/usr/sbin/knotd")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Daemon)
        .expect("start knotd");
    follows_the_relay(
        "Knot",
        &relay,
        &dir.join("relay"),
        secondary,
        &dir.join("knot.log"),
    )
    .await;
    drop(knot);
    let _ = std::fs::remove_dir_all(&dir);
}
