//! SNI passthrough end to end, with the real binaries: a TLS client connects to
//! the relay's `imaps` port with SNI `alice.sandbox.test`; the relay passes the
//! bytes through alice's tunnel to the TLS server alice's node points at, where
//! TLS ends. A capturing proxy between client and relay shows the relay gets
//! only ciphertext; Python's `ssl` module, trusting only the test CA, shows the
//! certificate that answers is the node's.

use omb_tests::harness::{free_port, have_tool, swaks, token, wait_until, Node, Relay, TestDir};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// A test CA and the nodes' TLS servers
// ---------------------------------------------------------------------------

/// A CA made for the test; the only trust anchor of the clients.
struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    pem_path: PathBuf,
}

impl TestCa {
    fn new(dir: &Path) -> Self {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "passthrough test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).expect("CA cert");
        let pem_path = dir.join("test-ca.pem");
        std::fs::write(&pem_path, issuer.pem()).expect("write CA");
        TestCa { issuer, pem_path }
    }

    /// A server certificate for `name`, signed by this CA.
    fn issue(&self, name: &str) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let key = rcgen::KeyPair::generate().expect("server key");
        let params = rcgen::CertificateParams::new(vec![name.to_string()]).expect("params");
        let cert = params.signed_by(&key, &self.issuer).expect("server cert");
        (
            cert.der().clone(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).expect("add root");
        roots
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS echo server on loopback standing in for a node's IMAP server: it
/// answers every byte with the same byte, and remembers what it saw in clear.
struct EchoServer {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    /// The first 64 KiB of plaintext each connection sent.
    seen: Arc<Mutex<Vec<u8>>>,
}

impl EchoServer {
    fn start(ca: &TestCa, name: &str) -> Self {
        let (cert, key) = ca.issue(name);
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_no_client_auth()
                .with_single_cert(vec![cert], key)
                .expect("server config"),
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind echo server");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (c, s) = (connections.clone(), seen.clone());
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                c.fetch_add(1, Ordering::SeqCst);
                let (config, seen) = (config.clone(), s.clone());
                std::thread::spawn(move || echo(config, tcp, &seen));
            }
        });
        EchoServer {
            addr,
            connections,
            seen,
        }
    }

    fn saw(&self, needle: &str) -> bool {
        contains(&self.seen.lock().expect("lock"), needle.as_bytes())
    }
}

fn echo(config: Arc<rustls::ServerConfig>, tcp: TcpStream, seen: &Mutex<Vec<u8>>) {
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut buf = vec![0u8; 64 * 1024];
    let mut recorded = 0;
    loop {
        let n = match tls.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if recorded < buf.len() {
            let take = n.min(buf.len() - recorded);
            seen.lock().expect("lock").extend_from_slice(&buf[..take]);
            recorded += take;
        }
        if tls.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------
// A capturing TCP proxy between the client and the relay
// ---------------------------------------------------------------------------

/// Forwards loopback connections to `target` and keeps every byte, each way.
struct CapturingProxy {
    addr: SocketAddr,
    to_relay: Arc<Mutex<Vec<u8>>>,
    from_relay: Arc<Mutex<Vec<u8>>>,
}

impl CapturingProxy {
    fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let to_relay = Arc::new(Mutex::new(Vec::new()));
        let from_relay = Arc::new(Mutex::new(Vec::new()));
        let (up, down) = (to_relay.clone(), from_relay.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(relay) = TcpStream::connect(target) else {
                    continue;
                };
                let (c2, r2) = (
                    client.try_clone().expect("clone"),
                    relay.try_clone().expect("clone"),
                );
                let (up, down) = (up.clone(), down.clone());
                std::thread::spawn(move || copy_capturing(client, relay, &up));
                std::thread::spawn(move || copy_capturing(r2, c2, &down));
            }
        });
        CapturingProxy {
            addr,
            to_relay,
            from_relay,
        }
    }
}

fn copy_capturing(mut from: TcpStream, mut to: TcpStream, log: &Mutex<Vec<u8>>) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                log.lock().expect("lock").extend_from_slice(&buf[..n]);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

/// Python's `ssl`: the test CA as the only trust anchor, `server_hostname`
/// set (so the certificate must verify for that name), one line sent and its
/// echo read back.
const PYTHON_CLIENT: &str = r#"
import socket, ssl, sys
host, port, sni, cafile, line = sys.argv[1:6]
ctx = ssl.create_default_context(cafile=cafile)
try:
    with socket.create_connection((host, int(port)), timeout=30) as s:
        with ctx.wrap_socket(s, server_hostname=sni) as t:
            t.sendall(line.encode() + b"\n")
            got = b""
            while not got.endswith(b"\n"):
                chunk = t.recv(4096)
                if not chunk:
                    break
                got += chunk
            print("ECHO", got.decode().strip())
            print("VERSION", t.version())
            print("SAN", t.getpeercert()["subjectAltName"])
except Exception as e:
    print("ERROR", type(e).__name__, e)
    sys.exit(2)
"#;

struct PyResult {
    ok: bool,
    out: String,
    took: Duration,
}

fn python_client(addr: SocketAddr, sni: &str, ca: &Path, line: &str) -> PyResult {
    let started = Instant::now();
    let out = Command::new("python3")
        .arg("-c")
        .arg(PYTHON_CLIENT)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg(sni)
        .arg(ca)
        .arg(line)
        .output()
        .expect("run python3");
    PyResult {
        ok: out.status.success(),
        out: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        took: started.elapsed(),
    }
}

type TlsClient = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A rustls client (for many at once): handshake done when it returns.
fn tls_client(addr: SocketAddr, sni: &str, ca: &TestCa) -> std::io::Result<TlsClient> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    let name = ServerName::try_from(sni.to_string()).expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// Writes `data` and reads the same number of bytes back.
fn round_trip(tls: &mut TlsClient, data: &[u8]) -> std::io::Result<Vec<u8>> {
    tls.write_all(data)?;
    tls.flush()?;
    let mut back = vec![0u8; data.len()];
    tls.read_exact(&mut back)?;
    Ok(back)
}

// ---------------------------------------------------------------------------
// Set-up
// ---------------------------------------------------------------------------

struct Setup {
    dir: TestDir,
    relay: Relay,
    imaps: SocketAddr,
    ca: TestCa,
}

/// A relay with an imaps passthrough listener; `settings` are more
/// `[passthrough]` keys.
fn relay(name: &str, settings: &str) -> Setup {
    let dir = TestDir::new(name);
    let imaps = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut relay = Relay::new(
        dir.path(),
        "sqlite",
        &format!("[passthrough]\nimaps = \"{imaps}\"\n{settings}\n"),
    );
    relay.start();
    wait_until(Duration::from_secs(10), "the imaps listener", || {
        TcpStream::connect(imaps).is_ok()
    });
    let ca = TestCa::new(dir.path());
    Setup {
        dir,
        relay,
        imaps,
        ca,
    }
}

impl Setup {
    /// Links a node for `handle` whose imaps passthrough goes to `target`
    /// (none: no target configured), and waits for its tunnel.
    fn node(&self, handle: &str, target: Option<SocketAddr>) -> Node {
        let token = self.relay.add_account(handle);
        let mut node = Node::new(self.dir.path(), &self.relay, handle, Some(&token));
        if let Some(target) = target {
            node.set_passthrough(&[("imaps", target)]);
        }
        node.start();
        node.wait_tunnel_ups(1, Duration::from_secs(30));
        node
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn tls_ends_on_the_node_and_the_relay_sees_only_ciphertext() {
    if !have_tool("python3") {
        return;
    }
    let s = relay("passthrough-basic", "");
    let alice_server = EchoServer::start(&s.ca, "alice.sandbox.test");
    let bob_server = EchoServer::start(&s.ca, "bob.sandbox.test");
    let _alice = s.node("alice", Some(alice_server.addr));
    let _bob = s.node("bob", Some(bob_server.addr));
    let proxy = CapturingProxy::start(s.imaps);

    let tok = token();
    let r = python_client(proxy.addr, "alice.sandbox.test", &s.ca.pem_path, &tok);
    assert!(r.ok, "{}", r.out);
    assert!(r.out.contains(&format!("ECHO {tok}")), "{}", r.out);
    assert!(r.out.contains("alice.sandbox.test"), "{}", r.out);
    eprintln!("through the relay: {:?}\n{}", r.took, r.out);

    // TLS ended at alice's server, which read the token in clear; bob's
    // server was never reached by alice's name.
    assert!(alice_server.saw(&tok));
    assert!(!bob_server.saw(&tok));
    assert_eq!(bob_server.connections.load(Ordering::SeqCst), 0);

    // Between the client and the relay: the name in clear, the token never.
    let up = proxy.to_relay.lock().expect("lock").clone();
    let down = proxy.from_relay.lock().expect("lock").clone();
    assert!(contains(&up, b"alice.sandbox.test"), "the capture works");
    assert!(
        up.len() > 200 && down.len() > 200,
        "{} / {}",
        up.len(),
        down.len()
    );
    assert!(
        !contains(&up, tok.as_bytes()),
        "token in clear towards the relay"
    );
    assert!(
        !contains(&down, tok.as_bytes()),
        "token in clear from the relay"
    );

    // Bob's name reaches bob's server (and its certificate verifies for bob).
    let tok_b = token();
    let r = python_client(s.imaps, "bob.sandbox.test", &s.ca.pem_path, &tok_b);
    assert!(
        r.ok && r.out.contains(&format!("ECHO {tok_b}")),
        "{}",
        r.out
    );
    assert!(bob_server.saw(&tok_b) && !alice_server.saw(&tok_b));

    // Neither the relay's log nor its disk holds the token; the log has one
    // line per connection with the handle and the bytes each way.
    wait_until(
        Duration::from_secs(10),
        "the relay's passthrough log",
        || s.relay.log_text().matches("passthrough closed").count() >= 2,
    );
    let log = s.relay.log_text();
    assert!(!log.contains(&tok) && !log.contains(&tok_b));
    assert!(
        omb_tests::harness::files_containing(&s.relay.dir, tok.as_bytes()).is_empty(),
        "token on the relay's disk"
    );
    let line = log
        .lines()
        .find(|l| l.contains("passthrough closed") && l.contains("handle=alice"))
        .unwrap_or_else(|| panic!("no passthrough line for alice:\n{log}"));
    assert!(
        line.contains("service=imaps") && line.contains("up=") && line.contains("down="),
        "{line}"
    );
}

#[test]
fn unknown_names_offline_and_unserved_nodes_are_closed() {
    if !have_tool("python3") {
        return;
    }
    let s = relay("passthrough-refusals", "");
    let alice_server = EchoServer::start(&s.ca, "alice.sandbox.test");
    let mut alice = s.node("alice", Some(alice_server.addr));
    // Bob's node is up but serves no imaps.
    let bob = s.node("bob", None);
    // Dave has an account but no node has ever connected.
    s.relay.add_account("dave");

    let closed = |sni: &str| {
        let r = python_client(s.imaps, sni, &s.ca.pem_path, "hello");
        assert!(!r.ok, "{sni} was passed through: {}", r.out);
        assert!(r.out.contains("ERROR"), "{}", r.out);
        assert!(!r.out.contains("ECHO"), "{}", r.out);
        r
    };
    // Unknown handle, another domain, a deeper name: a TLS alert, then closed.
    for sni in [
        "carol.sandbox.test",
        "alice.other.test",
        "x.alice.sandbox.test",
    ] {
        let r = closed(sni);
        assert!(r.out.contains("UNRECOGNIZED_NAME"), "{sni}: {}", r.out);
    }
    // An account whose node is offline, and a node with no local imaps server.
    closed("dave.sandbox.test");
    let r = closed("bob.sandbox.test");
    assert!(r.took < Duration::from_secs(5), "{:?}", r.took);
    wait_until(Duration::from_secs(5), "bob's refusal in its log", || {
        bob.log_text().contains("passthrough refused")
    });

    // Not TLS at all, and a client that never finishes its ClientHello.
    let mut raw = TcpStream::connect(s.imaps).expect("connect");
    raw.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    raw.write_all(b"a001 CAPABILITY\r\n").expect("write");
    let mut buf = Vec::new();
    assert_eq!(raw.read_to_end(&mut buf).expect("closed cleanly"), 0);

    // Alice still works after all that.
    let tok = token();
    let r = python_client(s.imaps, "alice.sandbox.test", &s.ca.pem_path, &tok);
    assert!(r.ok && r.out.contains(&tok), "{}", r.out);

    // Alice's node dies without a word: its tunnel is not yet timed out on the
    // relay, but the relay gives up on the node within its deadline.
    alice.kill9();
    let r = closed("alice.sandbox.test");
    assert!(r.took < Duration::from_secs(15), "{:?}", r.took);
    eprintln!("closed for a silently dead node after {:?}", r.took);
}

#[test]
fn a_client_that_never_sends_its_hello_is_closed_at_the_deadline() {
    let s = relay("passthrough-slow-hello", "hello_timeout_secs = 1");
    let mut raw = TcpStream::connect(s.imaps).expect("connect");
    raw.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    // Half a record header, then silence.
    raw.write_all(&[0x16, 0x03]).expect("write");
    let started = Instant::now();
    let mut buf = Vec::new();
    assert_eq!(raw.read_to_end(&mut buf).expect("closed"), 0);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(10),
        "{took:?}"
    );
}

#[test]
fn the_per_address_limit_holds() {
    let s = relay("passthrough-limit", "max_connections_per_ip = 2");
    let server = EchoServer::start(&s.ca, "alice.sandbox.test");
    let _alice = s.node("alice", Some(server.addr));
    let mut first = tls_client(s.imaps, "alice.sandbox.test", &s.ca).expect("first");
    let _second = tls_client(s.imaps, "alice.sandbox.test", &s.ca).expect("second");
    assert!(
        tls_client(s.imaps, "alice.sandbox.test", &s.ca).is_err(),
        "a third connection from one address must be closed"
    );
    assert_eq!(
        round_trip(&mut first, b"still here").expect("echo"),
        b"still here"
    );
    drop(first);
    wait_until(Duration::from_secs(10), "room for one more", || {
        tls_client(s.imaps, "alice.sandbox.test", &s.ca)
            .and_then(|mut c| round_trip(&mut c, b"x"))
            .is_ok()
    });
}

#[test]
fn many_concurrent_connections_while_mail_arrives() {
    if !have_tool("swaks") {
        return;
    }
    let s = relay("passthrough-many", "max_connections_per_ip = 200");
    let server = EchoServer::start(&s.ca, "alice.sandbox.test");
    let alice = s.node("alice", Some(server.addr));
    let ca = Arc::new(s.ca);
    let clients = 48;
    let rounds = 20;
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|i| {
            let (ca, imaps) = (ca.clone(), s.imaps);
            std::thread::spawn(move || {
                let mut tls = tls_client(imaps, "alice.sandbox.test", &ca).expect("connect");
                for r in 0..rounds {
                    // From a few bytes to 64 KiB.
                    let data: Vec<u8> = (0..(1usize << (r % 17)))
                        .map(|k| (k * 31 + i + r) as u8)
                        .collect();
                    let back = round_trip(&mut tls, &data).expect("echo");
                    assert_eq!(back, data, "client {i} round {r}");
                }
            })
        })
        .collect();
    let mails = 5;
    for k in 0..mails {
        swaks(
            s.relay.smtp,
            "alice@sandbox.test",
            &format!("during passthrough {k}"),
            &[],
        );
    }
    for t in threads {
        t.join().expect("client thread");
    }
    eprintln!(
        "{clients} concurrent passthrough clients x {rounds} round trips: {:?}",
        started.elapsed()
    );
    wait_until(Duration::from_secs(20), "the mail", || {
        alice.uids().len() == mails
    });
    assert!(server.connections.load(Ordering::SeqCst) >= clients);
}

#[test]
fn stalled_passthrough_readers_do_not_hold_up_mail() {
    if !have_tool("swaks") {
        return;
    }
    let s = relay("passthrough-stalled", "");
    let server = EchoServer::start(&s.ca, "alice.sandbox.test");
    let alice = s.node("alice", Some(server.addr));
    // Clients that send and never read: the echoes back up through the relay,
    // the tunnel and the node until every buffer on the way is full.
    let ca = Arc::new(s.ca);
    let stalled: Vec<_> = (0..4)
        .map(|_| {
            let (ca, imaps) = (ca.clone(), s.imaps);
            std::thread::spawn(move || {
                let mut tls = tls_client(imaps, "alice.sandbox.test", &ca).expect("connect");
                tls.sock
                    .set_write_timeout(Some(Duration::from_secs(3)))
                    .expect("timeout");
                let chunk = vec![0x5a; 256 * 1024];
                let mut sent = 0usize;
                while sent < 96 * 1024 * 1024 {
                    if tls.write_all(&chunk).is_err() {
                        break;
                    }
                    sent += chunk.len();
                }
                // Keep the connection open, unread, while the mail goes.
                (tls, sent)
            })
        })
        .collect();
    let stalled: Vec<_> = stalled
        .into_iter()
        .map(|t| t.join().expect("stalled client"))
        .collect();
    let sent: Vec<_> = stalled.iter().map(|(_, n)| n >> 20).collect();
    eprintln!("MiB written by each stalled client before it blocked: {sent:?}");

    let started = Instant::now();
    swaks(
        s.relay.smtp,
        "alice@sandbox.test",
        "past the stalled streams",
        &[],
    );
    wait_until(
        Duration::from_secs(10),
        "the mail past stalled streams",
        || alice.uids().len() == 1,
    );
    eprintln!("delivered past stalled streams in {:?}", started.elapsed());
    wait_until(
        Duration::from_secs(10),
        "the node's ack at the relay",
        || s.relay.log_text().contains("delivered to node"),
    );
    drop(stalled);
}
