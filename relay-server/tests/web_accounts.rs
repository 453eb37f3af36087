//! The relay's web front as a client sees it, over real HTTP on loopback, on
//! SQLite and on PostgreSQL (see `common/mod.rs`): the accounts API with its
//! handle rules, proof of work and per-client limit; WKD; the MTA-STS policy.

mod common;

use common::*;
use omb_relay::accounts::pow::{self, Challenge, Solution};
use omb_relay::config::{AccountsConfig, HttpConfig, RelayConfig, SmtpConfig, TunnelConfig};
use omb_relay::server::RunningRelay;
use omb_relay::web::wkd::wkd_hash;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

on_both_backends!(
    an_account_is_created_and_can_be_linked,
    taken_handles_are_refused_and_keep_the_proof_of_work,
    reserved_and_invalid_handles_are_refused,
    look_alikes_of_existing_handles_are_refused,
    bad_proofs_of_work_are_refused,
    signups_are_limited_per_client,
    behind_a_trusted_proxy_signups_count_per_forwarded_client,
    wkd_serves_certificates_holding_the_address,
    mta_sts_policy_is_served_for_the_relay_domain,
    operator_rules_and_aliases_switch,
);

// ---- a relay and an HTTP client ----------------------------------------------

struct TestRelay {
    relay: RunningRelay,
    http: SocketAddr,
    dir: PathBuf,
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        self.relay.tasks.abort_all();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A relay on loopback with its store at `url`; `accounts` as given.
async fn relay(url: &str, accounts: AccountsConfig) -> TestRelay {
    relay_with(url, accounts, vec![]).await
}

/// The same, believing `X-Forwarded-For` from `trusted_proxies`.
async fn relay_with(
    url: &str,
    accounts: AccountsConfig,
    trusted_proxies: Vec<std::net::IpAddr>,
) -> TestRelay {
    let dir = std::env::temp_dir().join(format!(
        "omb-web-test-{}",
        hex::encode(rand::random::<[u8; 6]>())
    ));
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let config = RelayConfig {
        domain: DOMAIN.to_string(),
        hostname: None,
        data_dir: dir.clone(),
        database: url.to_string(),
        smtp: SmtpConfig {
            listen: any,
            ..SmtpConfig::default()
        },
        tunnel: TunnelConfig {
            listen: any,
            ..TunnelConfig::default()
        },
        dns: Default::default(),
        accounts,
        http: HttpConfig {
            listen: Some(any),
            trusted_proxies,
        },
        passthrough: Default::default(),
        mta_sts: Default::default(),
    };
    let relay = omb_relay::server::start(config)
        .await
        .unwrap_or_else(|e| panic!("start the relay: {e:#}"));
    let http = relay.http.expect("the web front listens");
    TestRelay { relay, http, dir }
}

/// Fast proofs of work, a generous limit.
fn easy() -> AccountsConfig {
    AccountsConfig {
        pow_difficulty: 8,
        signups_per_ip: 1000,
        ..AccountsConfig::default()
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request (`Connection: close`), as any client sends it.
async fn request(
    to: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    body: Option<&str>,
) -> Reply {
    request_with(to, method, host, path, body, "").await
}

/// The same with `extra` header lines (each ending in CRLF).
async fn request_with(
    to: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    body: Option<&str>,
    extra: &str,
) -> Reply {
    let mut conn = tokio::net::TcpStream::connect(to).await.expect("connect");
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}");
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    conn.write_all(req.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).await.expect("read reply");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

impl TestRelay {
    async fn get(&self, host: &str, path: &str) -> Reply {
        request(self.http, "GET", host, path, None).await
    }

    async fn challenge(&self) -> Challenge {
        let reply = self.get(DOMAIN, "/api/v1/pow").await;
        assert_eq!(reply.status, 200, "GET /api/v1/pow: {}", reply.text());
        serde_json::from_slice(&reply.body).expect("a challenge")
    }

    async fn solved(&self) -> Solution {
        pow::solve(&self.challenge().await)
    }

    async fn post(&self, handle: &str, solution: &Solution) -> Reply {
        let body = json!({"handle": handle, "pow": solution}).to_string();
        request(self.http, "POST", DOMAIN, "/api/v1/accounts", Some(&body)).await
    }

    /// Signs up `handle` as a proxy forwarding for `xff` would.
    async fn signup_via_proxy(&self, handle: &str, xff: &str) -> Reply {
        let body = json!({"handle": handle, "pow": self.solved().await}).to_string();
        let extra = format!("X-Forwarded-For: {xff}\r\n");
        request_with(
            self.http,
            "POST",
            DOMAIN,
            "/api/v1/accounts",
            Some(&body),
            &extra,
        )
        .await
    }

    /// Signs up `handle` with a fresh proof of work; returns the reply.
    async fn signup(&self, handle: &str) -> Reply {
        let solution = self.solved().await;
        self.post(handle, &solution).await
    }
}

fn assert_error(reply: &Reply, status: u16, code: &str) -> String {
    let body = reply.json();
    assert_eq!(reply.status, status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    body["error"]
        .as_str()
        .expect("an error message")
        .to_string()
}

// ---- the accounts API -----------------------------------------------------------

async fn an_account_is_created_and_can_be_linked(url: String) {
    let t = relay(&url, easy()).await;
    let c = t.challenge().await;
    assert_eq!(c.difficulty, 8);
    assert_eq!(c.algorithm, "sha256-leading-zero-bits");
    let reply = t.post("Carol", &pow::solve(&c)).await;
    let body = reply.json();
    assert_eq!(reply.status, 201, "{body}");
    assert_eq!(body["handle"], "carol");
    assert_eq!(body["address"], "carol@sandbox.test");
    assert_eq!(body["aliases"], "*@carol.sandbox.test");
    assert_eq!(body["tunnel_pin"], t.relay.tunnel_pin.as_str());
    assert_eq!(
        body["tunnel"],
        format!("mx.sandbox.test:{}", t.relay.tunnel.port())
    );
    let store = &t.relay.store;
    let carol = store
        .recipient("carol@sandbox.test")
        .await
        .expect("recipient")
        .expect("carol's address exists");
    assert_eq!(carol.handle, "carol");
    let token = body["link_token"].as_str().expect("link_token");
    let linked = store
        .link_node(token, &key(3), b"cert", "fp")
        .await
        .expect("link_node");
    assert_eq!(linked, Ok("carol".to_string()), "the token links carol");
}

async fn taken_handles_are_refused_and_keep_the_proof_of_work(url: String) {
    let t = relay(&url, easy()).await;
    assert_eq!(t.signup("carol").await.status, 201);
    let solution = t.solved().await;
    for handle in ["carol", "CAROL", " carol "] {
        let msg = assert_error(&t.post(handle, &solution).await, 409, "handle_taken");
        assert!(msg.contains("choose another handle"), "{msg}");
    }
    // The refused attempts did not spend the proof of work.
    assert_eq!(t.post("dave", &solution).await.status, 201);
    assert_error(&t.post("erin", &solution).await, 400, "pow_replayed");
}

async fn reserved_and_invalid_handles_are_refused(url: String) {
    let t = relay(&url, easy()).await;
    let solution = t.solved().await;
    for handle in ["postmaster", "Abuse", "p0stmaster", "adm1n", "mta-sts"] {
        let msg = assert_error(&t.post(handle, &solution).await, 422, "handle_reserved");
        assert!(msg.contains("reserved"), "{msg}");
    }
    for (handle, says) in [
        ("ab", "3 to 32"),
        ("al.ice", "letters"),
        ("-alice", "hyphen"),
        ("12345", "letter"),
        ("", "3 to 32"),
    ] {
        let msg = assert_error(&t.post(handle, &solution).await, 422, "handle_invalid");
        assert!(msg.contains(says), "{handle:?}: {msg}");
    }
    let none = t
        .relay
        .store
        .recipient("postmaster@sandbox.test")
        .await
        .expect("recipient");
    assert!(none.is_none(), "no account was made");
}

async fn look_alikes_of_existing_handles_are_refused(url: String) {
    let t = relay(&url, easy()).await;
    assert_eq!(t.signup("alice").await.status, 201);
    assert_eq!(t.signup("william").await.status, 201);
    let solution = t.solved().await;
    for (handle, existing) in [
        ("a1ice", "alice"),
        ("aiice", "alice"),
        ("al-ice", "alice"),
        ("vvilliam", "william"),
        ("wi11iam", "william"),
    ] {
        let msg = assert_error(&t.post(handle, &solution).await, 409, "handle_look_alike");
        assert!(msg.contains(existing), "{handle}: {msg}");
    }
    // Different enough.
    assert_eq!(t.post("alicia", &solution).await.status, 201);
}

async fn bad_proofs_of_work_are_refused(url: String) {
    let t = relay(&url, easy()).await;
    let c = t.challenge().await;
    // A nonce that does not reach the difficulty.
    let unsolved = (0u64..)
        .map(|n| n.to_string())
        .find(|n| pow::leading_zero_bits(&pow::work(&c.challenge, n)) < 8)
        .expect("some nonce fails");
    let bad = Solution {
        challenge: c.challenge.clone(),
        nonce: unsolved,
    };
    let msg = assert_error(&t.post("carol", &bad).await, 400, "pow_unsolved");
    assert!(msg.contains("8 zero bits"), "{msg}");

    // A challenge signed by someone else, one with its difficulty lowered.
    let forged = pow::solve(&pow::Pow::new([1; 32], 8, 600).issue(now()));
    assert_error(&t.post("carol", &forged).await, 400, "pow_forged");
    let f: Vec<&str> = c.challenge.split('.').collect();
    let easier = pow::solve(&Challenge {
        challenge: format!("{}.{}.0.{}", f[0], f[1], f[3]),
        difficulty: 0,
        ..c.clone()
    });
    assert_error(&t.post("carol", &easier).await, 400, "pow_forged");

    // Spent once, refused after.
    let good = pow::solve(&c);
    assert_eq!(t.post("carol", &good).await.status, 201);
    assert_error(&t.post("dave", &good).await, 400, "pow_replayed");

    // Not JSON, or no proof of work at all.
    let reply = request(t.http, "POST", DOMAIN, "/api/v1/accounts", Some("{nope")).await;
    assert_error(&reply, 400, "bad_request");
    let reply = request(
        t.http,
        "POST",
        DOMAIN,
        "/api/v1/accounts",
        Some(r#"{"handle": "frank"}"#),
    )
    .await;
    assert_error(&reply, 400, "bad_request");
}

async fn signups_are_limited_per_client(url: String) {
    let t = relay(
        &url,
        AccountsConfig {
            pow_difficulty: 4,
            signups_per_ip: 3,
            signup_window_secs: 600,
            ..AccountsConfig::default()
        },
    )
    .await;
    assert_eq!(t.signup("carol").await.status, 201);
    // Refused attempts count too.
    assert_eq!(t.signup("carol").await.status, 409);
    assert_eq!(t.signup("dave").await.status, 201);
    let reply = t.signup("erin").await;
    let msg = assert_error(&reply, 429, "rate_limited");
    let retry: u64 = reply
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After in seconds: {:?}", reply.headers));
    assert!((590..=600).contains(&retry), "Retry-After {retry}");
    assert!(msg.contains("try again in"), "{msg}");
    assert!(t
        .relay
        .store
        .recipient("erin@sandbox.test")
        .await
        .expect("recipient")
        .is_none());
}

async fn behind_a_trusted_proxy_signups_count_per_forwarded_client(url: String) {
    let mut accounts = easy();
    accounts.signups_per_ip = 1;
    let t = relay_with(&url, accounts, vec!["127.0.0.1".parse().expect("ip")]).await;
    assert_eq!(
        t.signup_via_proxy("carol", "198.51.100.1").await.status,
        201
    );
    assert_eq!(t.signup_via_proxy("dave", "198.51.100.2").await.status, 201);
    // What the client claims before the proxy's entry does not help.
    let again = t
        .signup_via_proxy("erin", "203.0.113.5, 198.51.100.1")
        .await;
    assert_error(&again, 429, "rate_limited");
    // Without the header, the proxy is the client.
    assert_eq!(t.signup("frank").await.status, 201);
    assert_error(&t.signup("grace").await, 429, "rate_limited");
}

// ---- WKD and MTA-STS ------------------------------------------------------------

async fn wkd_serves_certificates_holding_the_address(url: String) {
    let t = relay(&url, easy()).await;
    let store = &t.relay.store;
    let alice_cert = omb_shared::pgp::generate_cert(&["<alice@sandbox.test>".to_string()])
        .expect("a certificate");
    let alice_bytes = omb_shared::pgp::public_bytes(&alice_cert).expect("serialise");
    // bob's node publishes a certificate without bob's address.
    let other = omb_shared::pgp::generate_cert(&["<someone@else.test>".to_string()])
        .expect("a certificate");
    let other_bytes = omb_shared::pgp::public_bytes(&other).expect("serialise");
    for (handle, n, cert) in [("alice", 1, &alice_bytes), ("bob", 2, &other_bytes)] {
        store
            .create_account(handle, DOMAIN, 1_000_000)
            .await
            .expect("account");
        assert_eq!(link(store, handle, &key(n), cert).await, Ok(handle.into()));
    }
    store
        .create_account("carol", DOMAIN, 1_000_000)
        .await
        .expect("carol");

    let hash = wkd_hash("alice");
    let direct = format!("/.well-known/openpgpkey/hu/{hash}?l=alice");
    let advanced = format!("/.well-known/openpgpkey/sandbox.test/hu/{hash}?l=alice");
    for (host, path) in [
        ("sandbox.test", direct.as_str()),
        ("Sandbox.Test:8080", direct.as_str()),
        ("openpgpkey.sandbox.test", advanced.as_str()),
    ] {
        let reply = t.get(host, path).await;
        assert_eq!(reply.status, 200, "{host}{path}: {}", reply.text());
        assert_eq!(
            reply.header("content-type"),
            Some("application/octet-stream")
        );
        let served = omb_shared::pgp::parse_cert(&reply.body).expect("a certificate");
        assert_eq!(served.fingerprint(), alice_cert.fingerprint());
        assert!(!served.is_tsk(), "no secret key material");
    }
    // The local part in any case (the hash is of the lower-cased one).
    let reply = t
        .get(
            "sandbox.test",
            &format!("/.well-known/openpgpkey/hu/{hash}?l=Alice"),
        )
        .await;
    assert_eq!(reply.status, 200);

    let bob = wkd_hash("bob");
    let carol = wkd_hash("carol");
    for (host, path, why) in [
        (
            "sandbox.test",
            format!("/.well-known/openpgpkey/hu/{bob}?l=bob"),
            "no User ID",
        ),
        (
            "sandbox.test",
            format!("/.well-known/openpgpkey/hu/{carol}?l=carol"),
            "no node linked",
        ),
        (
            "sandbox.test",
            format!("/.well-known/openpgpkey/hu/{hash}?l=bob"),
            "hash of another",
        ),
        (
            "sandbox.test",
            format!("/.well-known/openpgpkey/hu/{hash}"),
            "no l=",
        ),
        ("other.test", direct.clone(), "domain not hosted"),
        (
            "openpgpkey.other.test",
            format!("/.well-known/openpgpkey/other.test/hu/{hash}?l=alice"),
            "domain not hosted",
        ),
    ] {
        let reply = t.get(host, &path).await;
        assert_eq!(reply.status, 404, "{why}: {host}{path}: {}", reply.text());
    }

    for (host, path) in [
        ("sandbox.test", "/.well-known/openpgpkey/policy"),
        (
            "openpgpkey.sandbox.test",
            "/.well-known/openpgpkey/sandbox.test/policy",
        ),
    ] {
        let reply = t.get(host, path).await;
        assert_eq!(reply.status, 200, "{host}{path}");
    }
    let reply = t.get("other.test", "/.well-known/openpgpkey/policy").await;
    assert_eq!(reply.status, 404);
}

async fn mta_sts_policy_is_served_for_the_relay_domain(url: String) {
    let t = relay(&url, easy()).await;
    let reply = t
        .get("mta-sts.sandbox.test", "/.well-known/mta-sts.txt")
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("text/plain"));
    assert_eq!(
        reply.text(),
        "version: STSv1\nmode: enforce\nmx: mx.sandbox.test\nmax_age: 604800\n"
    );
    for host in [
        "sandbox.test",
        "mta-sts.other.test",
        "mta-sts.alice.sandbox.test",
    ] {
        let reply = t.get(host, "/.well-known/mta-sts.txt").await;
        assert_eq!(reply.status, 404, "{host}");
    }
}

// ---- what the operator CLI uses ------------------------------------------------

async fn operator_rules_and_aliases_switch(url: String) {
    use omb_relay::accounts::Handle;
    use omb_relay::store::StoreError;
    let t = relay(&url, easy()).await;
    let store = &t.relay.store;
    let h = |s: &str| Handle::parse(s).expect("valid syntax");
    store
        .create_account_checked(&h("alice"), DOMAIN, 1, false)
        .await
        .expect("alice");
    match store
        .create_account_checked(&h("a1ice"), DOMAIN, 1, false)
        .await
    {
        Err(StoreError::LookAlike { existing, .. }) => assert_eq!(existing, "alice"),
        other => panic!("a1ice: {other:?}"),
    }
    // --force: a look-alike and a reserved name.
    store
        .create_account_checked(&h("a1ice"), DOMAIN, 1, true)
        .await
        .expect("forced a1ice");
    store
        .create_account_checked(&h("postmaster"), DOMAIN, 1, true)
        .await
        .expect("forced postmaster");
    assert!(matches!(
        store
            .create_account_checked(&h("alice"), DOMAIN, 1, true)
            .await,
        Err(StoreError::AccountExists(_))
    ));
    // Accounts made without the rules (the sandbox's) have skeletons too.
    store.create_account("bob", DOMAIN, 1).await.expect("bob");
    assert_eq!(
        store.look_alike(&h("b0b")).await.expect("look_alike"),
        Some("bob".to_string())
    );

    assert_eq!(store.aliases("alice").await.expect("aliases"), Some(true));
    store.set_aliases("alice", false).await.expect("off");
    assert_eq!(store.aliases("alice").await.expect("aliases"), Some(false));
    store.set_aliases("alice", true).await.expect("on");
    assert_eq!(store.aliases("alice").await.expect("aliases"), Some(true));
    assert!(matches!(
        store.set_aliases("nobody", true).await,
        Err(StoreError::NoAccount(_))
    ));
    assert_eq!(store.aliases("nobody").await.expect("aliases"), None);
}

fn now() -> i64 {
    omb_relay::store::now()
}
