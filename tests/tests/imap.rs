//! The node's IMAP server with a real client: Python's imaplib (standard
//! library only) over STARTTLS and IMAPS, trusting the sandbox CA; IDLE sees a
//! message delivered through the relay at once; bad input gets BAD/NO while
//! other clients go on; with `ciphertext_to_apps` apps get PGP/MIME that GnuPG
//! decrypts.

use omb_tests::harness::{have_tool, relay_with_alice, swaks, token, wait_until, TestDir};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/imap_client.py");

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the client script in `mode`; panics with its output unless it succeeds.
fn client(mode: &str, config: &serde_json::Value) -> String {
    let out = Command::new("python3")
        .arg(CLIENT)
        .arg(mode)
        .arg(config.to_string())
        .stdin(Stdio::null())
        .output()
        .expect("run python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "imap_client.py {mode} failed:\n{text}");
    text
}

/// Starts `omb-sandbox` with one node (alice); its manifest.
fn sandbox(dir: &TestDir) -> (Kill, serde_json::Value) {
    let log = std::fs::File::create(dir.path().join("sandbox.log")).expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_omb-sandbox"))
        .arg("--dir")
        .arg(dir.path())
        .args(["--nodes", "alice"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start omb-sandbox");
    let guard = Kill(child);
    let json = dir.path().join("sandbox.json");
    wait_until(Duration::from_secs(90), "sandbox.json", || json.exists());
    let manifest = serde_json::from_slice(&std::fs::read(&json).expect("read")).expect("JSON");
    (guard, manifest)
}

fn client_config(manifest: &serde_json::Value) -> serde_json::Value {
    let node = &manifest["nodes"][0];
    serde_json::json!({
        "imap": node["imap"], "imaps": node["imaps"], "ca": manifest["ca_cert"],
        "user": node["address"], "password": node["password"],
    })
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[test]
fn imaplib_against_the_sandbox_node() {
    if !have_tool("python3") || !have_tool("swaks") {
        return;
    }
    let dir = TestDir::new("imap");
    let (_sandbox, manifest) = sandbox(&dir);
    let config = client_config(&manifest);

    // Every command, over IMAPS and STARTTLS.
    let out = client("main", &config);
    assert!(out.contains("ALL OK"), "{out}");

    // Bad input while another client is being served.
    let out = client("bad", &config);
    assert!(out.contains("ALL OK"), "{out}");

    // IDLE sees a message delivered through the relay within a second, and
    // BODY[] is what was sent, after the headers the relay prepends.
    let mut idle = Command::new("python3")
        .arg(CLIENT)
        .arg("idle")
        .arg(config.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 idle");
    let mut lines = BufReader::new(idle.stdout.take().expect("stdout")).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(first, "IDLING");
    let tok = token();
    let sent = format!(
        "From: Sender <sender@example.org>\nTo: alice@sandbox.test\nSubject: idle test {tok}\nMessage-ID: <{tok}@example.org>\n\nHello Alice,\nÜnïcødé body {tok}  \n.a dot line\n"
    );
    let smtp: std::net::SocketAddr = manifest["relay"]["smtp"]
        .as_str()
        .expect("smtp")
        .parse()
        .expect("addr");
    let transcript = swaks(smtp, "alice@sandbox.test", "", &["--data", &sent, "--tls"]);
    let sent_at = now();
    assert!(transcript.contains("250 2.0.0"), "{transcript}");
    let exists = lines.next().and_then(Result::ok).unwrap_or_default();
    let at: f64 = exists
        .strip_prefix("EXISTS ")
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no EXISTS from IDLE: {exists:?}"));
    eprintln!("IDLE saw the delivery {:.3} s after swaks returned", at - sent_at);
    assert!(at - sent_at < 1.0, "IDLE reported the message {:.3} s late", at - sent_at);
    let body_line = lines.next().and_then(Result::ok).unwrap_or_default();
    let body = hex::decode(body_line.strip_prefix("BODY ").unwrap_or("")).expect("hex");
    let _ = Kill(idle);
    let expected = sent.replace('\n', "\r\n");
    let text = String::from_utf8_lossy(&body).into_owned();
    let at = text.find("From: Sender").unwrap_or_else(|| panic!("sent message not in BODY[]: {text}"));
    assert_eq!(&text[at..], expected.as_str(), "BODY[] differs from what was sent");
    for line in text[..at].split("\r\n").filter(|l| !l.is_empty()) {
        assert!(
            line.starts_with("Received:") || line.starts_with("Authentication-Results:") || line.starts_with([' ', '\t']),
            "unexpected header added before the message: {line:?}"
        );
    }
}

#[test]
fn ciphertext_to_apps_hands_out_pgp_mime_that_gnupg_decrypts() {
    if !have_tool("python3") || !have_tool("swaks") || !have_tool("gpg") {
        return;
    }
    let (dir, relay, mut node) = relay_with_alice("imap-ciphertext", "");
    node.kill9();
    let port = omb_tests::harness::free_port();
    let mut config = std::fs::read_to_string(&node.config).expect("node config");
    config.push_str(&format!("\n[access]\nimap = \"127.0.0.1:{port}\"\nciphertext_to_apps = true\n"));
    std::fs::write(&node.config, config).expect("write config");
    let password = "correct horse battery";
    let mut set = Command::new(omb_tests::harness::bin("omb-node"))
        .arg("-c")
        .arg(&node.config)
        .arg("password")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("omb-node password");
    {
        use std::io::Write;
        let mut stdin = set.stdin.take().expect("stdin");
        writeln!(stdin, "{password}").expect("write password");
    }
    assert!(set.wait().expect("wait").success());
    node.start();
    node.wait_tunnel_ups(2, Duration::from_secs(30));
    let tok = token();
    swaks(relay.smtp, "alice@sandbox.test", &format!("secret {tok}"), &["--tls"]);
    wait_until(Duration::from_secs(10), "the message in the store", || !node.uids().is_empty());

    let cfg = serde_json::json!({
        "imap": format!("127.0.0.1:{port}"), "ca": "", "user": "alice@sandbox.test", "password": password,
    });
    let out = client("body", &cfg);
    let hex_body = out.lines().find_map(|l| l.strip_prefix("BODY ")).expect("BODY line");
    let body = hex::decode(hex_body).expect("hex");
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("multipart/encrypted"), "not PGP/MIME: {text}");
    assert!(!text.contains(&tok), "the plaintext reached the app");

    let gnupg = dir.path().join("gnupg");
    std::fs::create_dir_all(&gnupg).expect("gnupg home");
    let import = Command::new("gpg")
        .arg("--homedir")
        .arg(&gnupg)
        .args(["--batch", "--import"])
        .arg(node.dir.join("openpgp-key.asc"))
        .output()
        .expect("gpg import");
    assert!(import.status.success(), "{}", String::from_utf8_lossy(&import.stderr));
    let start = text.find("-----BEGIN PGP MESSAGE-----").expect("armour");
    let end = text.find("-----END PGP MESSAGE-----").expect("armour end") + 25;
    let mut gpg = Command::new("gpg")
        .arg("--homedir")
        .arg(&gnupg)
        .args(["--batch", "--decrypt"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gpg --decrypt");
    {
        use std::io::Write;
        gpg.stdin.take().expect("stdin").write_all(text[start..end].as_bytes()).expect("write");
    }
    let out = gpg.wait_with_output().expect("gpg");
    assert!(out.status.success(), "gpg: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&tok));
}
