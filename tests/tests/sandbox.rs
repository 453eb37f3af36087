//! The sandbox binary keeps its contract (DESIGN.md): it starts a relay and the
//! nodes, writes `DIR/sandbox.json` once every part answers, and mail sent to
//! the listed MX reaches the listed nodes. GnuPG reads the node's key.

use omb_tests::harness::{have_tool, swaks, token, wait_until, TestDir};
use std::process::{Command, Stdio};
use std::time::Duration;

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sandbox_starts_and_delivers_to_alice_and_bob() {
    if !have_tool("swaks") || !have_tool("gpg") || !have_tool("dig") {
        return;
    }
    let dir = TestDir::new("sandbox");
    let log = std::fs::File::create(dir.path().join("sandbox.log")).expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_omb-sandbox"))
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start omb-sandbox");
    let _guard = Kill(child);
    let json_path = dir.path().join("sandbox.json");
    wait_until(Duration::from_secs(60), "sandbox.json", || {
        json_path.exists()
    });
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).expect("read")).expect("valid JSON");

    assert_eq!(manifest["relay"]["domain"], "sandbox.test");
    let smtp: std::net::SocketAddr = manifest["relay"]["smtp"]
        .as_str()
        .expect("smtp")
        .parse()
        .expect("addr");
    let dns = manifest["relay"]["dns"].as_str().expect("dns").to_string();
    for key in ["tunnel", "data_dir", "imaps"] {
        assert!(manifest["relay"][key].is_string(), "relay.{key} missing");
    }
    // The imaps passthrough listens (tests/tests/passthrough.rs tests it).
    let imaps = manifest["relay"]["imaps"].as_str().expect("imaps");
    std::net::TcpStream::connect(imaps).expect("the imaps passthrough listens");
    assert!(std::path::Path::new(manifest["ca_cert"].as_str().expect("ca_cert")).exists());
    let nodes = manifest["nodes"].as_array().expect("nodes");
    assert_eq!(
        nodes
            .iter()
            .map(|n| n["name"].as_str().unwrap_or(""))
            .collect::<Vec<_>>(),
        vec!["alice", "bob"]
    );

    // The relay's own DNS answers for the zone (nothing uses the system resolver).
    let (host, port) = dns.rsplit_once(':').expect("dns host:port");
    let mx = Command::new("dig")
        .args([
            &format!("@{host}"),
            "-p",
            port,
            "+short",
            "MX",
            "sandbox.test",
        ])
        .output()
        .expect("dig");
    assert_eq!(
        String::from_utf8_lossy(&mx.stdout).trim(),
        "10 mx.sandbox.test."
    );

    for node in nodes {
        let address = node["address"].as_str().expect("address");
        let data_dir = std::path::PathBuf::from(node["data_dir"].as_str().expect("data_dir"));
        let fingerprint = node["openpgp_fingerprint"].as_str().expect("fingerprint");
        let tok = token();
        swaks(smtp, address, &format!("to {address}: {tok}"), &["--tls"]);

        // Read the stored message straight from the node's store and decrypt it
        // with GnuPG and the node's own key: GnuPG 2.2 reads the v4 key, and the
        // message is a real OpenPGP message.
        let db = data_dir.join("mail.db");
        let gnupg = dir
            .path()
            .join(format!("gnupg-{}", node["name"].as_str().unwrap_or("x")));
        std::fs::create_dir_all(&gnupg).expect("gnupg home");
        let import = Command::new("gpg")
            .arg("--homedir")
            .arg(&gnupg)
            .args(["--batch", "--import"])
            .arg(data_dir.join("openpgp-key.asc"))
            .output()
            .expect("gpg import");
        assert!(
            import.status.success(),
            "gpg --import: {}",
            String::from_utf8_lossy(&import.stderr)
        );
        let list = Command::new("gpg")
            .arg("--homedir")
            .arg(&gnupg)
            .args(["--batch", "--with-colons", "--list-secret-keys"])
            .output()
            .expect("gpg list");
        assert!(
            String::from_utf8_lossy(&list.stdout).contains(fingerprint),
            "GnuPG sees another fingerprint"
        );

        let stored = wait_for_row(&db);
        let ciphertext = openpgp_part(&stored);
        let out = Command::new("gpg")
            .arg("--homedir")
            .arg(&gnupg)
            .args(["--batch", "--decrypt"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().expect("stdin").write_all(ciphertext)?;
                c.wait_with_output()
            })
            .expect("gpg --decrypt");
        assert!(
            out.status.success(),
            "gpg --decrypt: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let plain = String::from_utf8_lossy(&out.stdout);
        assert!(
            plain.contains(&tok),
            "decrypted message lacks the token: {plain}"
        );
        assert!(plain.contains(&format!("To: {address}")), "{plain}");
    }
}

/// The OpenPGP message in a stored row: the armoured block of a row kept as
/// it came, or the binary message at the end of a packed row (the node's
/// `store::packed`: a magic, then the MIME text before and after the block,
/// each with a 4-byte little-endian length).
fn openpgp_part(stored: &[u8]) -> &[u8] {
    const MAGIC: &[u8] = b"\0omb-packed-pgp-1\0";
    fn skip(b: &[u8]) -> &[u8] {
        let len = u32::from_le_bytes(b[..4].try_into().expect("length")) as usize;
        &b[4 + len..]
    }
    match stored.strip_prefix(MAGIC) {
        Some(packed) => skip(skip(packed)),
        None => {
            let start = stored
                .windows(5)
                .position(|w| w == b"-----")
                .expect("armour");
            &stored[start..]
        }
    }
}

/// The data of the first message in a node's store, read with Python's sqlite3
/// (a reader independent of the node).
fn wait_for_row(db: &std::path::Path) -> Vec<u8> {
    let script = "import sqlite3,sys\nc=sqlite3.connect('file:'+sys.argv[1]+'?mode=ro',uri=True)\nr=c.execute('select data from messages order by uid limit 1').fetchone()\nsys.stdout.buffer.write(r[0] if r else b'')";
    let mut data = Vec::new();
    wait_until(
        Duration::from_secs(10),
        "a message in the node's store",
        || {
            data = Command::new("python3")
                .arg("-c")
                .arg(script)
                .arg(db)
                .output()
                .map(|o| o.stdout)
                .unwrap_or_default();
            !data.is_empty()
        },
    );
    data
}
