//! The relay's DNS as resolvers see it: `dig` (BIND) and `kdig` (Knot) ask the
//! sandbox relay's server for every record type it publishes, for the relay's
//! own zone and for an account; a node publishes an ACME challenge through
//! its tunnel and it is served at once; OPENPGPKEY holds the node's key.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use omb_tests::apps::RunningSandbox;
use omb_tests::harness::{bin, have_tool, wait_until, TestDir};
use sha2::{Digest, Sha256};

/// `TOOL @server -p port NAME TYPE +short` as lines.
fn short(tool: &str, server: SocketAddr, name: &str, rtype: &str) -> Vec<String> {
    let out = query(tool, server, name, rtype, &["+short"]);
    out.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with(';'))
        .map(str::to_string)
        .collect()
}

/// The response code (`NOERROR`, `NXDOMAIN`, …) and whether AA is set.
fn status(tool: &str, server: SocketAddr, name: &str, rtype: &str) -> (String, bool) {
    let out = query(tool, server, name, rtype, &[]);
    let code = out
        .split("status: ")
        .nth(1)
        .and_then(|rest| rest.split([',', ';']).next())
        .unwrap_or_else(|| panic!("no status in {tool} output:\n{out}"))
        .trim()
        .to_string();
    // dig writes `flags:`, kdig `Flags:`.
    let flags = out
        .to_ascii_lowercase()
        .split("flags: ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_default()
        .to_string();
    (code, flags.split_whitespace().any(|f| f == "aa"))
}

fn query(tool: &str, server: SocketAddr, name: &str, rtype: &str, extra: &[&str]) -> String {
    let out = Command::new(tool)
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), name, rtype])
        .args(if tool == "kdig" {
            ["+timeout=2", "+retry=0"]
        } else {
            ["+time=2", "+tries=1"]
        })
        .args(extra)
        .output()
        .unwrap_or_else(|e| panic!("run {tool}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn dig_and_kdig_read_every_published_record() {
    if !have_tool("dig") {
        return;
    }
    let tools: Vec<&str> = ["dig", "kdig"]
        .into_iter()
        .filter(|t| have_tool(t))
        .collect();
    let sandbox = RunningSandbox::start("dns-records", &["alice", "bob"]);
    let dns = sandbox.relay_addr("dns");
    let imaps = sandbox.relay_addr("imaps").port();
    for tool in tools {
        let get = |name: &str, rtype: &str| short(tool, dns, name, rtype);
        // The relay's zone.
        assert_eq!(get("sandbox.test", "MX"), ["10 mx.sandbox.test."], "{tool}");
        assert_eq!(get("sandbox.test", "NS"), ["ns1.sandbox.test."], "{tool}");
        assert!(get("sandbox.test", "SOA")[0]
            .starts_with("ns1.sandbox.test. hostmaster.sandbox.test. "));
        assert_eq!(
            get("sandbox.test", "TXT"),
            ["\"v=spf1 ip4:127.0.0.1 -all\""],
            "{tool}"
        );
        for host in [
            "sandbox.test",
            "mx.sandbox.test",
            "ns1.sandbox.test",
            "mta-sts.sandbox.test",
            "autoconfig.sandbox.test",
        ] {
            assert_eq!(get(host, "A"), ["127.0.0.1"], "{tool} {host}");
        }
        assert!(
            get("_dmarc.sandbox.test", "TXT")[0].starts_with("\"v=DMARC1; p=reject"),
            "{tool}"
        );
        assert!(
            get("_mta-sts.sandbox.test", "TXT")[0].starts_with("\"v=STSv1; id="),
            "{tool}"
        );
        assert_eq!(
            get("_smtp._tls.sandbox.test", "TXT"),
            ["\"v=TLSRPTv1; rua=mailto:tlsrpt@sandbox.test\""],
            "{tool}"
        );

        // An account's names, in any letter case.
        assert_eq!(get("Alice.Sandbox.TEST", "A"), ["127.0.0.1"], "{tool}");
        assert_eq!(
            get("alice.sandbox.test", "MX"),
            ["10 mx.sandbox.test."],
            "{tool}"
        );
        assert_eq!(
            get("alice.sandbox.test", "TXT"),
            ["\"v=spf1 ip4:127.0.0.1 -all\""],
            "{tool}"
        );
        assert_eq!(
            get("autoconfig.bob.sandbox.test", "A"),
            ["127.0.0.1"],
            "{tool}"
        );
        assert_eq!(
            get("_imaps._tcp.alice.sandbox.test", "SRV"),
            [format!("0 1 {imaps} alice.sandbox.test.")],
            "{tool}"
        );

        // Negative answers: NXDOMAIN for names that do not exist, NODATA for
        // types that do not, both authoritative.
        assert_eq!(
            status(tool, dns, "carol.sandbox.test", "A"),
            ("NXDOMAIN".into(), true),
            "{tool}"
        );
        assert_eq!(
            status(tool, dns, "www.alice.sandbox.test", "A"),
            ("NXDOMAIN".into(), true),
            "{tool}"
        );
        assert_eq!(
            status(tool, dns, "alice.sandbox.test", "AAAA"),
            ("NOERROR".into(), true),
            "{tool}"
        );
        assert!(get("alice.sandbox.test", "AAAA").is_empty(), "{tool}");
        assert_eq!(
            status(tool, dns, "_openpgpkey.sandbox.test", "TXT"),
            ("NOERROR".into(), true),
            "{tool}"
        );
        assert_eq!(
            status(tool, dns, "example.com", "A"),
            ("REFUSED".into(), false),
            "{tool}"
        );
        // ANY is answered minimally (RFC 8482).
        assert!(get("sandbox.test", "ANY")[0].contains("RFC8482"), "{tool}");
    }
}

#[test]
fn openpgpkey_holds_the_nodes_key_and_acme_challenges_go_through_the_tunnel() {
    if !have_tool("dig") || !have_tool("gpg") {
        return;
    }
    let sandbox = RunningSandbox::start("dns-node", &["alice"]);
    let dns = sandbox.relay_addr("dns");
    let alice = sandbox.node("alice");

    // RFC 7929 §3: SHA2-256 of the local part, 28 octets, hex.
    let owner = format!(
        "{}._openpgpkey.sandbox.test",
        hex::encode(&Sha256::digest(b"alice")[..28])
    );
    let out = query("dig", dns, &owner, "OPENPGPKEY", &["+short"]);
    let base64: String = out.split_whitespace().collect();
    assert!(!base64.is_empty(), "no OPENPGPKEY at {owner}");
    let key = base64_decode(&base64);
    let gpg_home = TestDir::new("dns-gpg");
    let cert = gpg_home.path().join("alice.pgp");
    std::fs::write(&cert, key).expect("write key");
    let shown = Command::new("gpg")
        .arg("--homedir")
        .arg(gpg_home.path())
        .args(["--batch", "--with-colons", "--show-keys"])
        .arg(&cert)
        .output()
        .expect("gpg");
    let listing = String::from_utf8_lossy(&shown.stdout);
    let fingerprint = sandbox.manifest["nodes"][0]["openpgp_fingerprint"]
        .as_str()
        .expect("fingerprint in sandbox.json")
        .to_uppercase();
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("fpr:") && l.contains(&fingerprint)),
        "gpg sees {listing}, expected {fingerprint}"
    );
    assert!(listing.contains("alice@sandbox.test"), "{listing}");

    // The node publishes a DNS-01 challenge through its tunnel; the relay's
    // DNS serves it by the time the command returns.
    let config = alice.data_dir.with_extension("toml");
    let acme = |values: &[&str]| {
        let out = Command::new(bin("omb-node"))
            .arg("-c")
            .arg(&config)
            .args(["dns", "acme-challenge"])
            .args(values)
            .output()
            .expect("omb-node dns");
        assert!(
            out.status.success(),
            "omb-node dns acme-challenge: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let name = "_acme-challenge.alice.sandbox.test";
    let started = Instant::now();
    acme(&["tok-one", "tok-two"]);
    let mut served = short("dig", dns, name, "TXT");
    served.sort();
    assert_eq!(served, ["\"tok-one\"", "\"tok-two\""]);
    eprintln!(
        "ACME challenge published and served in {:?}",
        started.elapsed()
    );
    acme(&[]);
    wait_until(
        Duration::from_secs(1),
        "the challenge to be removed",
        || short("dig", dns, name, "TXT").is_empty(),
    );
    // Garbage is refused by the node before it reaches the relay.
    let out = Command::new(bin("omb-node"))
        .arg("-c")
        .arg(&config)
        .args(["dns", "acme-challenge", "bad\u{7f}value"])
        .output()
        .expect("omb-node dns");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("printable ASCII"));
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap_or_else(|e| panic!("OPENPGPKEY is not base64 ({e}): {text}"))
}
