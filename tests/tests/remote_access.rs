//! "An address and a password are enough": a mail app away from home finds
//! and reads alice's mailbox from only her address and password and the
//! relay's public services (the autoconfig web server and the DNS), through
//! the relay's SNI passthrough to her node, where TLS ends and the node's
//! certificate is verified against the sandbox CA. bob's name reaches bob's
//! node. And IDLE through the passthrough announces a message delivered
//! through the relay within a second.

use omb_tests::apps::{
    assert_same_message, python, scripts_dir, sent_data, swaks_command, test_message,
    RunningSandbox,
};
use omb_tests::harness::{have_tool, token};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

/// Runs `remote_access.py MODE CONFIG` and parses its JSON answer.
fn app(mode: &str, config: serde_json::Value) -> serde_json::Value {
    let out = python("remote_access.py", &[mode, &config.to_string()]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("remote_access.py {mode}: {e}: {out}"))
}

/// `dig @RELAY-DNS +short TYPE NAME`: the answer's records.
fn dig(dns: &str, rtype: &str, name: &str) -> Vec<String> {
    let (ip, port) = dns.rsplit_once(':').expect("relay.dns is IP:PORT");
    let out = Command::new("dig")
        .args([
            &format!("@{ip}"),
            "-p",
            port,
            "+short",
            "+time=5",
            "+tries=1",
        ])
        .args([rtype, name])
        .output()
        .expect("run dig");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "dig {rtype} {name}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines().map(str::to_string).collect()
}

/// Where an app connects for `address`, as it learns it: the IMAP server of
/// the autoconfig XML, checked against the RFC 6186 SRV record, its name
/// resolved at the relay's DNS. Returns (host name, IP, port).
fn discover(sandbox: &RunningSandbox, address: &str) -> (String, String, u16) {
    let http = sandbox.relay("http");
    let dns = sandbox.relay("dns");
    let imap = app(
        "autoconfig",
        serde_json::json!({"http": http, "address": address}),
    );
    assert_eq!(
        imap["socketType"], "SSL",
        "autoconfig offers IMAP in TLS: {imap}"
    );
    assert_eq!(imap["username"], address, "the user name is the address");
    assert_eq!(imap["authentication"], "password-cleartext", "{imap}");
    let host = imap["hostname"].as_str().expect("hostname").to_string();
    let port: u16 = imap["port"]
        .as_str()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("autoconfig port: {imap}"));

    // RFC 6186: `_imaps._tcp.NAME` names the same host and port.
    let srv = dig(&dns, "SRV", &format!("_imaps._tcp.{host}"));
    assert_eq!(srv.len(), 1, "one _imaps SRV record for {host}: {srv:?}");
    let fields: Vec<&str> = srv[0].split_whitespace().collect();
    assert_eq!(fields.len(), 4, "SRV record: {srv:?}");
    assert_eq!(
        fields[2],
        port.to_string(),
        "SRV port vs autoconfig: {srv:?}"
    );
    assert_eq!(
        fields[3].trim_end_matches('.'),
        host,
        "SRV target vs autoconfig: {srv:?}"
    );

    let a = dig(&dns, "A", &host);
    assert_eq!(a.len(), 1, "one address for {host}: {a:?}");
    (host, a[0].clone(), port)
}

#[test]
fn an_address_and_a_password_are_enough() {
    if !have_tool("python3") || !have_tool("dig") || !have_tool("swaks") {
        return;
    }
    let sandbox = RunningSandbox::start("remote-access", &["alice", "bob"]);
    let (alice, bob) = (sandbox.node("alice"), sandbox.node("bob"));
    let ca = sandbox.ca();
    let tok = token();
    let sent = sandbox.deliver(
        "alice",
        &test_message(&alice.address, "Away from home", &tok),
    );

    // alice's app, knowing only her address and password.
    let (host, ip, port) = discover(&sandbox, &alice.address);
    assert_eq!(
        port,
        sandbox.relay_addr("imaps").port(),
        "apps are sent to the relay's passthrough"
    );
    let got = app(
        "fetch",
        serde_json::json!({
            "ip": ip, "port": port, "host": host, "ca": ca,
            "user": alice.address, "password": alice.password, "token": tok,
        }),
    );
    let names: Vec<&str> = got["names"]
        .as_array()
        .expect("names")
        .iter()
        .filter_map(|n| n.as_str())
        .collect();
    assert!(
        names.contains(&host.as_str()),
        "the certificate that answered is not for {host}: {names:?}"
    );
    assert_same_message(
        got["message"].as_str().expect("message"),
        &sent,
        &[],
        "read through the relay",
    );

    // bob's name reaches bob's node, not alice's: bob's certificate answers,
    // alice's password does not open it, bob's does.
    let (bob_host, bob_ip, bob_port) = discover(&sandbox, &bob.address);
    assert_ne!(bob_host, host, "alice and bob share a host name");
    let connect = |user: &str, password: &str| {
        app(
            "login",
            serde_json::json!({
                "ip": bob_ip, "port": bob_port, "host": bob_host, "ca": ca,
                "user": user, "password": password,
            }),
        )
    };
    let as_alice = connect(&alice.address, &alice.password);
    let names = as_alice["names"].to_string();
    assert!(
        names.contains(&format!("\"{bob_host}\"")) && !names.contains(&format!("\"{host}\"")),
        "bob's name is answered by another certificate: {names}"
    );
    assert_eq!(
        as_alice["ok"], false,
        "alice's password opened the mailbox behind bob's name: {as_alice}"
    );
    let refusal = as_alice["reply"].as_str().unwrap_or_default();
    assert!(
        refusal.contains("AUTHENTICATIONFAILED"),
        "alice's login behind bob's name was not refused as a failed authentication: {refusal}"
    );
    let as_bob = connect(&bob.address, &bob.password);
    assert_eq!(
        as_bob["ok"], true,
        "bob cannot log in behind his name: {as_bob}"
    );

    // The Apple profile names the same server.
    let profile = app(
        "mobileconfig",
        serde_json::json!({"http": sandbox.relay("http"), "address": alice.address}),
    );
    assert_eq!(
        profile["content_type"], "application/x-apple-aspen-config",
        "{profile}"
    );
    assert_eq!(profile["EmailAccountType"], "EmailTypeIMAP", "{profile}");
    assert_eq!(profile["EmailAddress"], alice.address.as_str());
    assert_eq!(profile["IncomingMailServerHostName"], host.as_str());
    assert_eq!(profile["IncomingMailServerPortNumber"], port);
    assert_eq!(profile["IncomingMailServerUseSSL"], true);
    assert_eq!(
        profile["IncomingMailServerUsername"],
        alice.address.as_str()
    );
    let uuids = profile["uuids"].as_array().expect("uuids");
    assert!(
        uuids[0] != uuids[1]
            && uuids
                .iter()
                .all(|u| u.as_str().is_some_and(|u| u.len() == 36)),
        "payload UUIDs: {uuids:?}"
    );
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn idle_through_the_relay_sees_new_mail_within_a_second() {
    if !have_tool("python3") || !have_tool("swaks") {
        return;
    }
    let sandbox = RunningSandbox::start("remote-idle", &["alice"]);
    let alice = sandbox.node("alice");
    let relay_imaps = sandbox.relay_addr("imaps");
    let config = serde_json::json!({
        "ip": relay_imaps.ip().to_string(), "port": relay_imaps.port(),
        "host": "alice.sandbox.test", "ca": sandbox.ca(),
        "user": alice.address, "password": alice.password,
    });
    let mut idle = Kill(
        Command::new("python3")
            .arg(scripts_dir().join("remote_access.py"))
            .arg("idle")
            .arg(config.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run python3"),
    );
    let mut idle_out = BufReader::new(idle.0.stdout.take().expect("stdout")).lines();
    let mut next = |what: &str| {
        idle_out
            .next()
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("the IDLE client stopped before {what}"))
    };
    assert_eq!(next("IDLE"), "IDLING");

    // swaks through the relay's MX; the time its message is accepted (the 250
    // after the data) is read from its transcript as it happens.
    let tok = token();
    let message = test_message(&alice.address, "While idling", &tok);
    let mut swaks = swaks_command(sandbox.relay_addr("smtp"), &alice.address, &message)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run swaks");
    let mut transcript = String::new();
    let mut accepted_at = None;
    let mut after_data = false;
    for line in BufReader::new(swaks.stdout.take().expect("stdout")).lines() {
        let line = line.expect("swaks output");
        if after_data && accepted_at.is_none() && line.starts_with("<~  250") {
            accepted_at = Some(unix_now());
        }
        after_data |= line.trim() == "~> .";
        transcript.push_str(&line);
        transcript.push('\n');
    }
    assert!(
        swaks.wait().expect("swaks").success(),
        "swaks:\n{transcript}"
    );
    let accepted_at =
        accepted_at.unwrap_or_else(|| panic!("no 250 for the message:\n{transcript}"));

    let exists = next("EXISTS");
    let announced_at: f64 = exists
        .strip_prefix("EXISTS ")
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("expected EXISTS from IDLE, got {exists:?}"));
    let delay = announced_at - accepted_at;
    eprintln!("IDLE through the relay announced the message {delay:.3} s after the 250");
    assert!(
        delay < 1.0,
        "IDLE through the relay announced the message {delay:.3} s after the 250"
    );

    let body = next("the message");
    let body = hex::decode(body.strip_prefix("MESSAGE ").unwrap_or("")).expect("hex");
    assert_same_message(
        &String::from_utf8_lossy(&body),
        &sent_data(&transcript),
        &[],
        "announced by IDLE",
    );
}
