//! A user's own domain, end to end: the API says what to publish, a real Knot
//! serves the user's zone, verification reports each record precisely, mail
//! for the domain is accepted only while it is verified, and the domain moves
//! to another relay.

use std::net::SocketAddr;
use std::time::Duration;

use omb_tests::harness::{
    free_port, have_tool, is_root, relay_with_alice, swaks, wait_until, Relay, TestDir,
};
use omb_tests::http::{request, Response};
use omb_tests::knot::Knot;
use omb_tests::sending::{client, send, started_node_with_access, Postfix};
use omb_tests::unbound::Unbound;
use serde_json::{json, Value};

const DOMAIN: &str = "example.org";

/// A relay's web front and an account's API token.
struct Api {
    http: SocketAddr,
    token: String,
}

impl Api {
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Response {
        let auth = format!("Authorization: Bearer {}", self.token);
        request(self.http, method, "relay", path, &[&auth], body)
    }

    fn verify(&self) -> Value {
        let r = self.call("POST", &format!("/api/v1/domains/{DOMAIN}/verify"), None);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()
    }

    fn state(&self) -> String {
        let r = self.call("GET", &format!("/api/v1/domains/{DOMAIN}"), None);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()["state"].as_str().unwrap_or_default().to_string()
    }
}

/// The check of one record in a verify report, by type and name.
fn check<'a>(report: &'a Value, rtype: &str, name: &str, value_start: &str) -> &'a Value {
    report["records"]
        .as_array()
        .and_then(|all| {
            all.iter().find(|r| {
                r["type"] == rtype
                    && r["name"] == name
                    && r["value"]
                        .as_str()
                        .is_some_and(|v| v.starts_with(value_start))
            })
        })
        .unwrap_or_else(|| panic!("no {rtype} {name} {value_start}… in {report:#}"))
}

/// The API's records as zone-file lines.
fn zone_lines(records: &Value) -> String {
    let mut out = String::new();
    for r in records.as_array().expect("records") {
        let (name, rtype, value) = (
            r["name"].as_str().unwrap_or_default(),
            r["type"].as_str().unwrap_or_default(),
            r["value"].as_str().unwrap_or_default(),
        );
        let value = if rtype == "TXT" {
            format!("\"{value}\"")
        } else {
            value.to_string()
        };
        out.push_str(&format!("{name}. {rtype} {value}\n"));
    }
    out
}

fn relay_extra(http: SocketAddr, knot: SocketAddr) -> String {
    format!(
        "[accounts]\noperator = \"alice\"\n\n[domains]\nresolver = \"{knot}\"\nrecheck_secs = 1\n\n[http]\nlisten = \"{http}\"\n"
    )
}

/// `dig +short` (kdig when installed: Knot's own client) at `server`.
fn dig_short(server: SocketAddr, name: &str, rtype: &str) -> Vec<String> {
    let tool = if have_tool("kdig") { "kdig" } else { "dig" };
    let out = std::process::Command::new(tool)
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), name, rtype, "+short"])
        .output()
        .expect("run dig");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The reply code swaks got to `RCPT TO:<to>` (the session stops there).
fn rcpt_code(smtp: SocketAddr, to: &str) -> String {
    let out = std::process::Command::new("swaks")
        .args(["--server", &smtp.to_string(), "--to", to])
        .args(["--from", "sender@example.net", "--quit-after", "RCPT"])
        .output()
        .expect("run swaks");
    let transcript = String::from_utf8_lossy(&out.stdout).into_owned();
    let after_rcpt = transcript
        .split_once("RCPT TO:")
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    after_rcpt
        .lines()
        .find_map(|l| {
            let l = l.trim_start_matches(['<', '*', '~', '-', ' ']);
            (l.len() >= 3 && l[..3].bytes().all(|b| b.is_ascii_digit())).then(|| l[..3].to_string())
        })
        .unwrap_or_else(|| panic!("no RCPT reply in:\n{transcript}"))
}

#[test]
fn a_custom_domain_is_verified_receives_mail_is_suspended_and_moves() {
    if !have_tool("swaks") || !Knot::available() {
        return;
    }
    let dir = TestDir::new("custom-domain");
    let mut knot = Knot::start(
        &dir.path().join("knot"),
        DOMAIN,
        "@ MX 10 mail.example.org.\n@ TXT \"v=spf1 -all\"\n",
    );
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (_relay_dir, relay, node) =
        relay_with_alice("custom-domain-a", &relay_extra(http, knot.addr));
    let api = Api {
        http,
        token: relay.api_token("alice"),
    };

    // No token, no access.
    let anonymous = request(http, "GET", "relay", "/api/v1/domains", &[], None);
    assert_eq!(anonymous.status, 401);

    let added = api.call(
        "POST",
        "/api/v1/domains",
        Some(&json!({"domain": "Example.ORG"})),
    );
    assert_eq!(
        added.status,
        201,
        "{}",
        String::from_utf8_lossy(&added.body)
    );
    let added = added.json();
    assert_eq!(added["state"], "pending");
    let records = added["records"].clone();
    let verify_txt = check(&added, "TXT", DOMAIN, "omb-verify=")["value"]
        .as_str()
        .expect("token")
        .to_string();
    assert_eq!(
        check(&added, "MX", DOMAIN, "10 ")["value"],
        "10 mx.sandbox.test."
    );
    assert_eq!(
        check(&added, "CNAME", "omb._domainkey.example.org", "")["value"],
        "alice._domainkey.sandbox.test."
    );
    // Nobody else can take it.
    let again = api.call("POST", "/api/v1/domains", Some(&json!({"domain": DOMAIN})));
    assert_eq!(again.status, 409);

    // Pending: mail is refused.
    assert_eq!(rcpt_code(relay.smtp, "someone@example.org"), "550");

    // The zone as the user has it: each record's state, precisely.
    let report = api.verify();
    assert_eq!(report["state"], "pending", "{report:#}");
    let txt = check(&report, "TXT", DOMAIN, "omb-verify=");
    assert_eq!(txt["status"], "missing", "{txt:#}");
    let mx = check(&report, "MX", DOMAIN, "10 ");
    assert_eq!(mx["status"], "wrong", "{mx:#}");
    assert_eq!(mx["found"], json!(["10 mail.example.org."]));
    let spf = check(&report, "TXT", DOMAIN, "v=spf1");
    assert_eq!(spf["status"], "wrong", "{spf:#}");
    assert_eq!(spf["found"], json!(["v=spf1 -all"]));
    assert_eq!(
        check(&report, "CNAME", "omb._domainkey.example.org", "")["status"],
        "missing"
    );
    assert_eq!(
        check(&report, "TXT", "_dmarc.example.org", "v=DMARC1")["status"],
        "missing"
    );

    // The user publishes exactly what the API said.
    knot.set_records(&zone_lines(&records));
    let report = api.verify();
    assert_eq!(report["state"], "verified", "{report:#}");
    for r in report["records"].as_array().expect("records") {
        assert_eq!(r["status"], "ok", "{r:#}");
    }
    // What a resolver sees: the user's zone (Knot) points at the relay's
    // names, and the relay's DNS answers them.
    let cname = dig_short(knot.addr, "_mta-sts.example.org", "CNAME");
    assert_eq!(cname, ["_mta-sts.sandbox.test."]);
    let sts = dig_short(relay.dns, "_mta-sts.sandbox.test", "TXT");
    assert!(sts[0].starts_with("\"v=STSv1; id="), "{sts:?}");
    // Published exactly when the relay offers IMAPS passthrough and so asked
    // for it.
    let srv = dig_short(knot.addr, "_imaps._tcp.example.org", "SRV");
    let asked: Vec<String> = records
        .as_array()
        .expect("records")
        .iter()
        .filter(|r| r["type"] == "SRV")
        .filter_map(|r| r["value"].as_str().map(str::to_string))
        .collect();
    assert_eq!(srv, asked);
    assert_eq!(
        dig_short(relay.dns, "alice.sandbox.test", "A"),
        ["127.0.0.1"]
    );

    // Verified: mail for any address of the domain reaches alice's node;
    // postmaster@ reaches the operator (alice here too).
    let before = node.uids().len();
    let transcript = swaks(
        relay.smtp,
        "someone@example.org",
        "hello custom domain\n",
        &[],
    );
    assert!(transcript.contains("250 2.0.0"), "{transcript}");
    wait_until(
        Duration::from_secs(10),
        "the message in alice's store",
        || node.uids().len() == before + 1,
    );
    assert_eq!(rcpt_code(relay.smtp, "postmaster@example.org"), "250");

    // The records disappear: the periodic re-check suspends the domain.
    knot.set_records("@ TXT \"v=spf1 -all\"\n");
    wait_until(
        Duration::from_secs(10),
        "the domain to be suspended",
        || api.state() == "suspended",
    );
    assert_eq!(rcpt_code(relay.smtp, "someone@example.org"), "550");
    // They come back: so does the domain.
    knot.set_records(&zone_lines(&records));
    wait_until(
        Duration::from_secs(10),
        "the domain to be verified again",
        || api.state() == "verified",
    );

    // Moving to another relay, as ops/custom-domains.md says: add it there,
    // point the records there, verify there, then remove it here.
    let http_b = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (_dir_b, relay_b, node_b) =
        relay_with_alice("custom-domain-b", &relay_extra(http_b, knot.addr));
    let api_b = Api {
        http: http_b,
        token: relay_b.api_token("alice"),
    };
    let added_b = api_b.call("POST", "/api/v1/domains", Some(&json!({"domain": DOMAIN})));
    assert_eq!(added_b.status, 201);
    let added_b = added_b.json();
    let new_txt = check(&added_b, "TXT", DOMAIN, "omb-verify=")["value"].clone();
    assert_ne!(new_txt, json!(verify_txt), "each relay has its own token");
    // Still the old relay's token in the zone: reported wrong, not verified.
    let report = api_b.verify();
    assert_eq!(
        check(&report, "TXT", DOMAIN, "omb-verify=")["status"],
        "wrong"
    );
    knot.set_records(&zone_lines(&added_b["records"]));
    assert_eq!(api_b.verify()["state"], "verified");
    let before_b = node_b.uids().len();
    let transcript = swaks(relay_b.smtp, "someone@example.org", "after the move\n", &[]);
    assert!(transcript.contains("250 2.0.0"), "{transcript}");
    wait_until(
        Duration::from_secs(10),
        "the message at the new relay's node",
        || node_b.uids().len() == before_b + 1,
    );

    // Removed here: refused at once.
    let removed = api.call("DELETE", &format!("/api/v1/domains/{DOMAIN}"), None);
    assert_eq!(removed.status, 204);
    assert_eq!(rcpt_code(relay.smtp, "someone@example.org"), "550");
    assert_eq!(rcpt_code(relay_b.smtp, "someone@example.org"), "250");
}

/// Mail from the user's own domain, as the Internet judges it: the node signs for that
/// domain with the `omb` selector, whose key the user's zone CNAMEs to the relay; the
/// relay checks it through a real recursive resolver (Unbound) that knows the user's
/// zone (Knot) and the relay's own, and so does the receiving side after Postfix got
/// the message: DKIM (dkimpy), SPF (pyspf) through the user's `include:` of the relay,
/// and DMARC alignment under the user's own policy.
#[test]
fn mail_from_a_custom_domain_passes_dkim_spf_and_dmarc() {
    if !is_root() || !have_tool("postfix") || !Knot::available() || !Unbound::available() {
        eprintln!("skipped: needs root, postfix, knot and unbound (scripts/install-peers)");
        return;
    }
    let dir = TestDir::new("custom-domain-send");
    let mut knot = Knot::start(&dir.path().join("knot"), DOMAIN, "@ TXT \"v=spf1 -all\"\n");
    let (http, postfix_port) = (SocketAddr::from(([127, 0, 0, 1], free_port())), free_port());
    let extra = format!(
        "{}\n[outbound]\nroutes = {{ \"dest.test\" = \"127.0.0.1:{postfix_port}\" }}\n",
        relay_extra(http, knot.addr)
    );
    let mut relay = Relay::new(dir.path(), "sqlite", &extra);
    let unbound = Unbound::start(
        &dir.path().join("unbound"),
        &[("sandbox.test", relay.dns), (DOMAIN, knot.addr)],
    );
    relay.use_resolver(unbound.addr);
    relay.start();
    let (alice, access) = started_node_with_access(dir.path(), &relay, "alice");
    let postfix = Postfix::new(dir.path(), postfix_port, &["dest.test"], None);
    postfix.postfix("start");

    let api = Api {
        http,
        token: relay.api_token("alice"),
    };
    let added = api.call("POST", "/api/v1/domains", Some(&json!({"domain": DOMAIN})));
    assert_eq!(
        added.status,
        201,
        "{}",
        String::from_utf8_lossy(&added.body)
    );
    knot.set_records(&zone_lines(&added.json()["records"]));
    assert_eq!(api.verify()["state"], "verified");

    let from = "alice@example.org";
    let to = ["bob@dest.test"];
    let reply = send(
        access.submission,
        "alice@sandbox.test",
        from,
        from,
        &to,
        "from my domain",
    );
    assert!(reply.starts_with("250"), "{reply}");
    wait_until(Duration::from_secs(30), "Postfix receives it", || {
        postfix.with_subject("from my domain").is_some()
    });
    let received = postfix.with_subject("from my domain").unwrap_or_default();
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.contains("d=example.org;") && text.contains("s=omb;"),
        "signed for the user's domain with the omb selector: {text}"
    );
    let file = dir.path().join("from-my-domain.eml");
    std::fs::write(&file, &received).expect("write");
    let (ok, out) = client(
        "auth",
        &json!({"file": file, "dns": unbound.addr.to_string()}),
    );
    assert!(ok, "auth check: {out}");
    let verdict: Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(verdict["return_path"], from, "{verdict}");
    assert_eq!(verdict["dkim"], "pass", "{verdict}");
    assert_eq!(verdict["dkim_aligned"], true, "{verdict}");
    assert_eq!(verdict["spf"], "pass", "{verdict}");
    assert_eq!(verdict["spf_aligned"], true, "{verdict}");
    assert_eq!(verdict["dmarc"], "pass", "{verdict}");
    drop(alice);
}
