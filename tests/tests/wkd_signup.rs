//! The relay's public web front against real clients, on the sandbox:
//!
//! - a WKD client written here (Python, computing the z-base-32 SHA-1 path
//!   itself) fetches alice's certificate by the direct and the advanced
//!   method, and GnuPG imports it with the fingerprint of alice's node; the
//!   `policy` file is served at both places;
//! - a signup client solves the relay's proof of work and creates `carol`;
//!   the relay's DNS answers for `carol.sandbox.test` within a second, and
//!   the MX knows carol at once (450 "not active yet", not 550), a home node
//!   links with the token and pin the API returned, and then mail to carol is
//!   accepted with 250 and reaches her node.

use omb_tests::apps::{python, RunningSandbox};
use omb_tests::harness::{have_tool, wait_until, Node, TestDir};
use std::process::{Command, Stdio};
use std::time::Duration;

fn client(mode: &str, config: serde_json::Value) -> serde_json::Value {
    let out = python("wkd_signup.py", &[mode, &config.to_string()]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("wkd_signup.py {mode}: {e}: {out}"))
}

/// `gpg --import FILE` into a fresh home; the fingerprints it then lists.
fn gpg_import(home: &std::path::Path, file: &std::path::Path) -> Vec<String> {
    std::fs::create_dir_all(home).expect("gpg home");
    let import = Command::new("gpg")
        .arg("--homedir")
        .arg(home)
        .args(["--batch", "--import"])
        .arg(file)
        .output()
        .expect("run gpg");
    assert!(
        import.status.success(),
        "gpg --import: {}",
        String::from_utf8_lossy(&import.stderr)
    );
    let list = Command::new("gpg")
        .arg("--homedir")
        .arg(home)
        .args(["--batch", "--with-colons", "--list-keys"])
        .output()
        .expect("run gpg");
    let text = String::from_utf8_lossy(&list.stdout).into_owned();
    // The first `fpr` after each `pub` is the primary key's.
    let mut fprs = Vec::new();
    let mut want = false;
    for line in text.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.first() {
            Some(&"pub") => want = true,
            Some(&"fpr") if want => {
                fprs.push(fields.get(9).unwrap_or(&"").to_string());
                want = false;
            }
            _ => {}
        }
    }
    fprs
}

#[test]
fn gnupg_imports_alices_key_fetched_by_wkd() {
    if !have_tool("python3") || !have_tool("gpg") {
        return;
    }
    let sandbox = RunningSandbox::start("wkd", &["alice", "bob"]);
    let http = sandbox.relay("http");
    let alice = &sandbox.manifest["nodes"][0];
    assert_eq!(alice["name"], "alice");
    let fingerprint = alice["openpgp_fingerprint"]
        .as_str()
        .expect("openpgp_fingerprint")
        .to_ascii_uppercase();
    for method in ["direct", "advanced"] {
        let out = sandbox.path().join(format!("alice-{method}.pgp"));
        let got = client(
            "wkd",
            serde_json::json!({"http": http, "address": "alice@sandbox.test",
                               "method": method, "out": out}),
        );
        assert_eq!(got["status"], 200, "{method}: {got}");
        assert_eq!(got["content_type"], "application/octet-stream", "{got}");
        let home = sandbox.path().join(format!("gnupg-{method}"));
        let fprs = gpg_import(&home, &out);
        assert_eq!(
            fprs,
            vec![fingerprint.clone()],
            "{method}: GnuPG holds alice's key alone"
        );
        let policy = client(
            "policy",
            serde_json::json!({"http": http, "domain": "sandbox.test", "method": method}),
        );
        assert_eq!(policy["status"], 200, "{method} policy: {policy}");
    }
    // Nobody by that name: 404, and GnuPG gets nothing.
    let out = sandbox.path().join("nobody.pgp");
    let got = client(
        "wkd",
        serde_json::json!({"http": http, "address": "nobody@sandbox.test",
                           "method": "direct", "out": out}),
    );
    assert_eq!(got["status"], 404, "{got}");
}

/// `dig +short A NAME` at the relay's DNS (`IP:PORT`).
fn dig_a(dns: &str, name: &str) -> Vec<String> {
    let (ip, port) = dns.rsplit_once(':').expect("relay.dns is IP:PORT");
    let out = Command::new("dig")
        .args([
            &format!("@{ip}"),
            "-p",
            port,
            "+short",
            "+time=2",
            "+tries=1",
            "A",
            name,
        ])
        .output()
        .expect("run dig");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with(';'))
        .map(str::to_string)
        .collect()
}

/// swaks to `to` up to RCPT only; its transcript.
fn rcpt_only(smtp: &str, to: &str) -> String {
    let out = Command::new("swaks")
        .args(["--server", smtp, "--to", to, "--from", "sender@example.org"])
        .args(["--helo", "client.example.org", "--quit-after", "RCPT"])
        .stdin(Stdio::null())
        .output()
        .expect("run swaks");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The reply to RCPT TO in a swaks transcript, e.g. "250".
fn rcpt_code(transcript: &str) -> String {
    let mut after_rcpt = false;
    for line in transcript.lines() {
        if line.contains("RCPT TO:") {
            after_rcpt = true;
        } else if after_rcpt {
            // Replies are marked `<-` (or `<**` for errors), `<~` under TLS.
            let t = line.trim_start();
            if t.starts_with('<') {
                let reply = t.trim_start_matches(['<', '-', '*', '~', ' ']);
                return reply.chars().take(3).collect();
            }
        }
    }
    panic!("no reply to RCPT in:\n{transcript}");
}

#[test]
fn an_account_signed_up_through_the_api_receives_mail_once_linked() {
    if !have_tool("python3") || !have_tool("swaks") {
        return;
    }
    let sandbox = RunningSandbox::start("signup", &["alice"]);
    let http = sandbox.relay("http");
    let smtp = sandbox.relay("smtp");

    // Before signup, carol is unknown to the MX and to the DNS.
    assert_eq!(rcpt_code(&rcpt_only(&smtp, "carol@sandbox.test")), "550");
    let dns = sandbox.relay("dns");
    let check_dns = have_tool("dig");
    if check_dns {
        assert_eq!(dig_a(&dns, "carol.sandbox.test"), Vec::<String>::new());
    }

    let created = client(
        "signup",
        serde_json::json!({"http": http, "handle": "Carol"}),
    );
    assert_eq!(created["status"], 201, "{created}");
    let created_at = std::time::Instant::now();
    if check_dns {
        // The relay's DNS answers for the new account within a second.
        let mut answer = dig_a(&dns, "carol.sandbox.test");
        while answer.is_empty() && created_at.elapsed() < Duration::from_secs(1) {
            std::thread::sleep(Duration::from_millis(20));
            answer = dig_a(&dns, "carol.sandbox.test");
        }
        assert_eq!(
            answer,
            ["127.0.0.1"],
            "carol.sandbox.test A, {:?} after signup",
            created_at.elapsed()
        );
    }
    let body = &created["body"];
    assert_eq!(body["address"], "carol@sandbox.test", "{body}");
    let token = body["link_token"].as_str().expect("link_token");
    let pin = body["tunnel_pin"].as_str().expect("tunnel_pin");

    // The same handle again, and a look-alike: refused, and no account made.
    for handle in ["carol", "caro1"] {
        let again = client(
            "signup",
            serde_json::json!({"http": http, "handle": handle}),
        );
        assert_eq!(again["status"], 409, "{handle}: {again}");
    }
    assert_eq!(rcpt_code(&rcpt_only(&smtp, "caro1@sandbox.test")), "550");

    // Known at once; not active until a node links.
    assert_eq!(rcpt_code(&rcpt_only(&smtp, "carol@sandbox.test")), "450");

    // A home node links with what the API returned. (The API names the tunnel
    // by the relay's host name, which only the sandbox's DNS knows: the node
    // is given the address in sandbox.json.)
    let dir = TestDir::new("signup-node");
    let mut node = Node::with_tunnel(
        dir.path(),
        &sandbox.relay("tunnel"),
        pin,
        "carol",
        Some(token),
    );
    node.start();
    node.wait_tunnel_ups(1, Duration::from_secs(30));
    assert_eq!(rcpt_code(&rcpt_only(&smtp, "carol@sandbox.test")), "250");

    let smtp_addr = sandbox.relay_addr("smtp");
    omb_tests::harness::swaks(smtp_addr, "carol@sandbox.test", "Hello carol", &[]);
    wait_until(
        Duration::from_secs(10),
        "the message at carol's node",
        || !node.uids().is_empty(),
    );
    let uid = node.uids()[0];
    let message = String::from_utf8_lossy(&node.show(uid)).into_owned();
    assert!(message.contains("Hello carol"), "{message}");
}
