//! DANE (RFC 7672) on the relay's outbound side, end to end with real peers:
//! a real Knot serves and signs (DNSSEC, its own key) the zone dane.example
//! and serves, unsigned, the zone plain.dane.example delegated from it
//! without a DS record (insecure). The relay's delivery resolver is that
//! Knot, its DNSSEC trust anchor dane.example's DNSKEYs as dig printed them.
//! A real Postfix is every domain's MX with STARTTLS and a certificate made
//! for the test (for mx.example.org: DANE-EE does not look at names); the
//! TLSA data of its key is computed by openssl. Three recipient domains:
//! - dane.example, MX mx.dane.example, `3 1 1` of Postfix's key: delivered
//!   over TLS;
//! - bad.dane.example, MX mx-bad.dane.example, `3 1 1` of another key:
//!   deferred and retried, never delivered, nothing sent in clear;
//! - plain.dane.example (insecure), MX mx.plain.dane.example, the same wrong
//!   TLSA record: the record is ignored and the mail delivered;
//! - bogus.dane.example, delegated with a DS record but served unsigned: its
//!   MX records fail validation (bogus), the mail waits;
//! - nomx.dane.example and nomx-bad.dane.example, no MX records, a secure A
//!   record and a `3 1 1` record of Postfix's key or another: each is its
//!   own host under DANE (RFC 7672 §2.2.1), delivered over TLS or waiting;
//! - MX hosts that are aliases (RFC 7672 §2.2.2, RFC 7671 §7), each a
//!   secure CNAME to a name with a secure A record: cname.dane.example,
//!   Postfix's `3 1 1` only at the expanded name's `_PORT._tcp.` (delivered
//!   under DANE, that name the TLSA base domain); cname-bad.dane.example,
//!   another key's record at the expanded name and Postfix's at the MX
//!   host name (the expanded name's records win: the mail waits);
//!   cname-orig.dane.example, no TLSA records at the expanded name and
//!   Postfix's at the MX host name (delivered under DANE, through the
//!   original name).

use omb_tests::harness::{free_port, have_tool, is_root, wait_until, Relay, TestDir};
use omb_tests::knot::{Knot, Zone};
use omb_tests::sandbox::TestCa;
use omb_tests::sending::{send_ok, started_node_with_access, Postfix};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The SHA-256 digest of the certificate's public key (SubjectPublicKeyInfo),
/// in hex, as openssl computes it: the data of a `3 1 1` TLSA record.
fn spki_sha256(cert: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -in '{}' -noout -pubkey | openssl pkey -pubin -outform DER | openssl dgst -sha256 -r",
            cert.display()
        ))
        .output()
        .expect("run openssl");
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(hex.len(), 64, "openssl: {text}");
    hex
}

#[test]
fn dane_tlsa_records_are_enforced_on_outbound_delivery() {
    let tools = ["postfix", "python3", "openssl", "dig"];
    if !is_root() || !tools.iter().all(|t| have_tool(t)) || !Knot::available() {
        eprintln!(
            "skipped: needs root, postfix, python3, openssl, dig and knot (scripts/install-peers)"
        );
        return;
    }
    let dir = TestDir::new("dane");
    let ca = TestCa::in_folder(dir.path()).expect("test CA");
    let (cert, key) = ca
        .issue(dir.path(), "mx", &["mx.example.org".into()])
        .expect("MX certificate");
    let (other, _) = ca
        .issue(dir.path(), "other", &["mx.example.org".into()])
        .expect("another certificate");
    let postfix_port = free_port();
    let good = spki_sha256(&cert);
    let wrong = spki_sha256(&other);
    assert_ne!(good, wrong);

    let signed = format!(
        "@ MX 10 mx\nmx A 127.0.0.1\n_{postfix_port}._tcp.mx TLSA 3 1 1 {good}\n\
         bad MX 10 mx-bad\nmx-bad A 127.0.0.1\n_{postfix_port}._tcp.mx-bad TLSA 3 1 1 {wrong}\n\
         plain NS ns1.plain\nns1.plain A 127.0.0.1\n\
         bogus NS ns1.bogus\nns1.bogus A 127.0.0.1\nbogus DS 4242 13 2 {good}\n\
         nomx A 127.0.0.1\n_{postfix_port}._tcp.nomx TLSA 3 1 1 {good}\n\
         nomx-bad A 127.0.0.1\n_{postfix_port}._tcp.nomx-bad TLSA 3 1 1 {wrong}\n\
         cname MX 10 mx-alias\nmx-alias CNAME mx-final\nmx-final A 127.0.0.1\n\
         _{postfix_port}._tcp.mx-final TLSA 3 1 1 {good}\n\
         cname-bad MX 10 mx-alias-bad\nmx-alias-bad CNAME mx-final-bad\nmx-final-bad A 127.0.0.1\n\
         _{postfix_port}._tcp.mx-final-bad TLSA 3 1 1 {wrong}\n\
         _{postfix_port}._tcp.mx-alias-bad TLSA 3 1 1 {good}\n\
         cname-orig MX 10 mx-alias-orig\nmx-alias-orig CNAME mx-final-orig\n\
         mx-final-orig A 127.0.0.1\n_{postfix_port}._tcp.mx-alias-orig TLSA 3 1 1 {good}\n"
    );
    let plain = format!("@ MX 10 mx\nmx A 127.0.0.1\n_{postfix_port}._tcp.mx TLSA 3 1 1 {wrong}\n");
    let knot = Knot::start_zones(
        &dir.path().join("knot"),
        &[
            Zone {
                name: "dane.example",
                records: &signed,
                signed: true,
            },
            Zone {
                name: "plain.dane.example",
                records: &plain,
                signed: false,
            },
            Zone {
                name: "bogus.dane.example",
                records: "@ MX 10 mx\nmx A 127.0.0.1\n",
                signed: false,
            },
        ],
    );
    let anchor = dir.path().join("trust-anchor.keys");
    let dnskeys = knot.dnskeys("dane.example");
    assert!(dnskeys.contains("DNSKEY"), "dig DNSKEY: {dnskeys}");
    std::fs::write(&anchor, &dnskeys).expect("trust anchor file");

    let domains = [
        "dane.example",
        "bad.dane.example",
        "plain.dane.example",
        "bogus.dane.example",
        "nomx.dane.example",
        "nomx-bad.dane.example",
        "cname.dane.example",
        "cname-bad.dane.example",
        "cname-orig.dane.example",
    ];
    let postfix = Postfix::new(dir.path(), postfix_port, &domains, Some((&cert, &key)));
    postfix.postfix("start");

    let extra = format!(
        "[outbound]\nresolver = \"{}\"\ndnssec_trust_anchor = \"{}\"\nmx_port = {postfix_port}\n\
         retry_secs = [1, 1, 2]\npoll_ms = 200\ntimeout_secs = 10\n",
        knot.addr,
        anchor.display()
    );
    let mut relay = Relay::new(dir.path(), "sqlite", &extra);
    relay.start();
    let (alice, access) = started_node_with_access(dir.path(), &relay, "alice");
    let submit =
        |to: &str, subject: &str| send_ok(access.submission, "alice@sandbox.test", &[to], subject);

    // (1) A secure MX and a TLSA record matching Postfix's key: delivered
    //     over TLS, though the certificate names another host.
    submit("bob@dane.example", "dane matching");
    wait_until(Duration::from_secs(60), "delivery to dane.example", || {
        postfix.with_subject("dane matching").is_some()
    });
    let received = postfix.with_subject("dane matching").unwrap_or_default();
    let text = String::from_utf8_lossy(&received);
    assert!(text.contains("using TLS"), "delivered over TLS: {text}");
    let log = relay.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("connected") && l.contains("dane=true")),
        "{log}"
    );

    // (2) A secure TLSA record that does not match: deferred and retried,
    //     never delivered, not in clear.
    submit("bob@bad.dane.example", "dane mismatch");
    let deferrals = || {
        relay
            .log_text()
            .lines()
            .filter(|l| {
                l.contains("deferred") && l.contains("bob@bad.dane.example") && l.contains("4.7.5")
            })
            .count()
    };
    wait_until(Duration::from_secs(60), "retried deferrals", || {
        deferrals() >= 3
    });
    assert!(postfix.with_subject("dane mismatch").is_none());
    let log = relay.log_text();
    assert!(log.contains("as DANE requires"), "{log}");
    assert!(postfix
        .log_text()
        .contains("lost connection after STARTTLS"));

    // (3) The insecure zone's TLSA record (as wrong) is not used: delivered,
    //     opportunistically.
    submit("carol@plain.dane.example", "insecure zone");
    wait_until(
        Duration::from_secs(60),
        "delivery to plain.dane.example",
        || postfix.with_subject("insecure zone").is_some(),
    );
    assert!(postfix.with_subject("dane mismatch").is_none());

    // (4) Bogus MX records: the mail waits, retried.
    submit("dave@bogus.dane.example", "bogus zone");
    wait_until(Duration::from_secs(60), "bogus deferrals", || {
        relay
            .log_text()
            .lines()
            .filter(|l| {
                l.contains("deferred")
                    && l.contains("dave@bogus.dane.example")
                    && l.contains("4.7.5 DNSSEC")
            })
            .count()
            >= 2
    });
    assert!(postfix.with_subject("bogus zone").is_none());

    // (5) No MX, secure address records: the domain is its own host, and
    //     its TLSA records apply.
    submit("erin@nomx.dane.example", "no mx matching");
    wait_until(
        Duration::from_secs(60),
        "delivery to nomx.dane.example",
        || postfix.with_subject("no mx matching").is_some(),
    );
    let log = relay.log_text();
    assert!(
        log.lines().any(|l| l.contains("connected")
            && l.contains("host=nomx.dane.example")
            && l.contains("dane=true")),
        "{log}"
    );
    submit("erin@nomx-bad.dane.example", "no mx mismatch");
    wait_until(Duration::from_secs(60), "nomx-bad deferrals", || {
        relay
            .log_text()
            .lines()
            .filter(|l| {
                l.contains("deferred")
                    && l.contains("erin@nomx-bad.dane.example")
                    && l.contains("4.7.5")
            })
            .count()
            >= 2
    });
    assert!(postfix.with_subject("no mx mismatch").is_none());

    // (6) An MX host that is an alias, by a secure CNAME: its TLSA records
    //     are looked up at the expanded name first (RFC 7672 §2.2.2), and
    //     found there, that name is the TLSA base domain.
    submit("frank@cname.dane.example", "cname matching");
    wait_until(
        Duration::from_secs(60),
        "delivery to cname.dane.example",
        || postfix.with_subject("cname matching").is_some(),
    );
    let log = relay.log_text();
    assert!(
        log.lines().any(|l| l.contains("connected")
            && l.contains("host=mx-alias.dane.example")
            && l.contains("dane=true")
            && l.contains("tlsa_base=mx-final.dane.example")),
        "{log}"
    );

    // (7) The expanded name's records do not match (the MX host name's
    //     would): they are the ones used, and the mail waits.
    submit("frank@cname-bad.dane.example", "cname mismatch");
    wait_until(Duration::from_secs(60), "cname-bad deferrals", || {
        relay
            .log_text()
            .lines()
            .filter(|l| {
                l.contains("deferred")
                    && l.contains("frank@cname-bad.dane.example")
                    && l.contains("4.7.5")
            })
            .count()
            >= 2
    });
    assert!(postfix.with_subject("cname mismatch").is_none());

    // (8) No TLSA records at the expanded name: those of the MX host name
    //     apply (RFC 7671 §7).
    submit("frank@cname-orig.dane.example", "cname original");
    wait_until(
        Duration::from_secs(60),
        "delivery to cname-orig.dane.example",
        || postfix.with_subject("cname original").is_some(),
    );
    let log = relay.log_text();
    assert!(
        log.lines().any(|l| l.contains("connected")
            && l.contains("host=mx-alias-orig.dane.example")
            && l.contains("dane=true")
            && l.contains("tlsa_base=mx-alias-orig.dane.example")),
        "{log}"
    );
    assert!(postfix.with_subject("cname mismatch").is_none());
    drop(alice);
}
