//! MTA-STS (RFC 8461) on the relay's outbound side, end to end with real
//! peers: a real Knot serves example.org's zone (MX records, `_mta-sts` TXT
//! records, addresses, all 127.0.0.1) as the relay's delivery resolver; a
//! Python HTTPS server serves the policies with a certificate from a CA made
//! for the test; a real Postfix is every domain's MX with STARTTLS and a
//! certificate from that CA for `mx.example.org` only. Four recipient domains:
//! - good.example.org, `enforce`, MX mx.example.org: delivered;
//! - mismatch.example.org, `enforce`, its policy naming another MX: deferred
//!   and retried, never delivered; once the policy (and its TXT id) name the
//!   MX, delivered;
//! - badcert.example.org, `enforce`, MX mail.badcert.example.org (a name
//!   Postfix's certificate lacks): deferred, never delivered, not in clear;
//! - testing.example.org, `testing`, the same bad certificate: delivered, the
//!   failure logged;
//! - v6.example.org, no policy, its MX with only an IPv6 address (AAAA ::1,
//!   where Postfix listens too): delivered over IPv6.

use omb_tests::harness::{free_port, have_tool, is_root, spawn_logged, wait_until, TestDir};
use omb_tests::knot::Knot;
use omb_tests::sandbox::TestCa;
use omb_tests::sending::{send_ok, started_node_with_access, Postfix};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

const SERVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mta_sts_server.py");
const DOMAINS: [&str; 4] = ["good", "mismatch", "badcert", "testing"];

/// The Python HTTPS policy server, stopped on drop.
struct PolicyServer(Child);

impl PolicyServer {
    fn start(dir: &Path, port: u16, cert: &Path, key: &Path, policies: &Path) -> Self {
        let mut cmd = Command::new("python3");
        cmd.arg(SERVER)
            .arg(port.to_string())
            .arg(cert)
            .arg(key)
            .arg(policies);
        let server = PolicyServer(spawn_logged(&mut cmd, &dir.join("https.log")));
        wait_until(Duration::from_secs(10), "the policy server", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        server
    }
}

impl Drop for PolicyServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn policy(mode: &str, mx: &[&str]) -> String {
    let mx: String = mx.iter().map(|m| format!("mx: {m}\r\n")).collect();
    format!("version: STSv1\r\nmode: {mode}\r\n{mx}max_age: 86400\r\n")
}

/// example.org's zone: every name at 127.0.0.1; `mismatch_id` is the id of
/// mismatch.example.org's TXT record.
fn zone(mismatch_id: u32) -> String {
    let mut z = String::from("mx A 127.0.0.1\nv6 MX 10 mx6.example.org.\nmx6 AAAA ::1\n");
    for d in DOMAINS {
        let mx = match d {
            "badcert" | "testing" => format!("mail.{d}.example.org."),
            _ => "mx.example.org.".to_string(),
        };
        let id = if d == "mismatch" { mismatch_id } else { 1 };
        z.push_str(&format!(
            "{d} MX 10 {mx}\nmail.{d} A 127.0.0.1\nmta-sts.{d} A 127.0.0.1\n\
             _mta-sts.{d} TXT \"v=STSv1; id={id};\"\n"
        ));
    }
    z
}

#[test]
fn mta_sts_policies_are_enforced_on_outbound_delivery() {
    if !is_root() || !have_tool("postfix") || !have_tool("python3") || !Knot::available() {
        eprintln!("skipped: needs root, postfix, python3 and knot (scripts/install-peers)");
        return;
    }
    let dir = TestDir::new("mta-sts");
    let ca = TestCa::in_folder(dir.path()).expect("test CA");
    let mx_cert = ca
        .issue(dir.path(), "mx", &["mx.example.org".into()])
        .expect("MX certificate");
    let names: Vec<String> = DOMAINS
        .iter()
        .map(|d| format!("mta-sts.{d}.example.org"))
        .collect();
    let (https_cert, https_key) = ca
        .issue(dir.path(), "https", &names)
        .expect("policy server certificate");
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).expect("policies folder");
    let write_policy = |domain: &str, text: String| {
        std::fs::write(
            policies.join(format!("mta-sts.{domain}.example.org.txt")),
            text,
        )
        .expect("policy file")
    };
    write_policy("good", policy("enforce", &["mx.example.org"]));
    write_policy("mismatch", policy("enforce", &["mx.example.net"]));
    write_policy("badcert", policy("enforce", &["*.badcert.example.org"]));
    write_policy("testing", policy("testing", &["*.testing.example.org"]));

    let mut knot = Knot::start(&dir.path().join("knot"), "example.org", &zone(1));
    let https_port = free_port();
    let _https = PolicyServer::start(dir.path(), https_port, &https_cert, &https_key, &policies);
    let postfix_port = free_port();
    let domains: Vec<String> = DOMAINS
        .iter()
        .chain(&["v6"])
        .map(|d| format!("{d}.example.org"))
        .collect();
    let domains: Vec<&str> = domains.iter().map(String::as_str).collect();
    let postfix = Postfix::new(
        dir.path(),
        postfix_port,
        &domains,
        Some((&mx_cert.0, &mx_cert.1)),
    );
    postfix.listen_on_ipv6_too(postfix_port);
    postfix.postfix("start");

    // The zone is unsigned and Knot serves no root: DNSSEC validation (DANE)
    // could only call it bogus, so it is off here (tests/tests/dane.rs).
    let extra = format!(
        "[outbound]\nresolver = \"{}\"\ntls_roots = \"{}\"\nmta_sts_port = {https_port}\n\
         mx_port = {postfix_port}\nretry_secs = [1, 1, 2]\npoll_ms = 200\ntimeout_secs = 10\n\
         dane = false\n",
        knot.addr,
        ca.cert.display()
    );
    let mut relay = omb_tests::harness::Relay::new(dir.path(), "sqlite", &extra);
    relay.start();
    let (alice, access) = started_node_with_access(dir.path(), &relay, "alice");
    let submit =
        |to: &str, subject: &str| send_ok(access.submission, "alice@sandbox.test", &[to], subject);

    // (1) enforce, the MX in the policy, a valid certificate: delivered.
    submit("bob@good.example.org", "enforced and valid");
    wait_until(
        Duration::from_secs(60),
        "delivery to good.example.org",
        || postfix.with_subject("enforced and valid").is_some(),
    );
    let received = postfix
        .with_subject("enforced and valid")
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&received);
    assert!(text.contains("using TLS"), "delivered over TLS: {text}");

    // No policy, and the MX has only an IPv6 address: delivered over IPv6.
    submit("bob@v6.example.org", "over ipv6");
    wait_until(Duration::from_secs(60), "delivery over IPv6", || {
        postfix.with_subject("over ipv6").is_some()
    });
    let received = postfix.with_subject("over ipv6").unwrap_or_default();
    let text = String::from_utf8_lossy(&received);
    assert!(text.contains("[IPv6:::1]"), "received from ::1: {text}");

    // (2) enforce, but the MX is not in the policy, or its certificate is not
    //     for its name: deferred and retried, never delivered.
    submit("bob@mismatch.example.org", "mx not in policy");
    submit("bob@badcert.example.org", "certificate not for the mx");
    let deferrals = |rcpt: &str| {
        relay
            .log_text()
            .lines()
            .filter(|l| l.contains("deferred") && l.contains(rcpt) && l.contains("4.7.5"))
            .count()
    };
    wait_until(Duration::from_secs(60), "retried deferrals", || {
        deferrals("bob@mismatch.example.org") >= 3 && deferrals("bob@badcert.example.org") >= 3
    });
    assert!(postfix.with_subject("mx not in policy").is_none());
    assert!(postfix.with_subject("certificate not for the mx").is_none());
    let log = relay.log_text();
    assert!(
        log.contains("no MX host of mismatch.example.org matches its policy"),
        "{log}"
    );
    assert!(log.contains("no TLS with a valid certificate"), "{log}");
    // The relay hung up in the TLS handshake: nothing went in clear.
    assert!(postfix
        .log_text()
        .contains("lost connection after STARTTLS"));

    // (3) testing, the same bad certificate: delivered, the failure logged.
    submit("bob@testing.example.org", "testing mode");
    wait_until(
        Duration::from_secs(60),
        "delivery to testing.example.org",
        || postfix.with_subject("testing mode").is_some(),
    );
    assert!(relay.log_text().contains("MTA-STS (testing)"));

    // Fixed: the policy names the MX, under a new TXT id; the waiting
    // message goes out at its next retry.
    write_policy(
        "mismatch",
        policy("enforce", &["mx.example.net", "*.example.org"]),
    );
    knot.set_records(&zone(2));
    wait_until(
        Duration::from_secs(60),
        "delivery once the policy is fixed",
        || postfix.with_subject("mx not in policy").is_some(),
    );
    // Policies are kept: fetched again only when the id changed.
    let fetches = relay
        .log_text()
        .lines()
        .filter(|l| l.contains("MTA-STS policy fetched") && l.contains("mismatch.example.org"))
        .count();
    assert_eq!(fetches, 2, "fetched once per id");
    assert!(postfix.with_subject("certificate not for the mx").is_none());
    drop(alice);
}
