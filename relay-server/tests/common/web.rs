//! A relay on loopback with its web front, and a minimal HTTP/1.1 client, for
//! the web tests.

use super::DOMAIN;
use omb_relay::accounts::pow::{self, Challenge, Solution};
use omb_relay::config::{AccountsConfig, HttpConfig, RelayConfig, SmtpConfig, TunnelConfig};
use omb_relay::server::RunningRelay;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct TestRelay {
    pub relay: RunningRelay,
    pub http: SocketAddr,
    dir: PathBuf,
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        self.relay.tasks.abort_all();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A relay on loopback with its store at `url`; `accounts` as given.
pub async fn relay(url: &str, accounts: AccountsConfig) -> TestRelay {
    relay_with(url, accounts, vec![]).await
}

/// The same, believing `X-Forwarded-For` from `trusted_proxies`.
pub async fn relay_with(
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
        outbound: Default::default(),
        domains: Default::default(),
    };
    let relay = omb_relay::server::start(config)
        .await
        .unwrap_or_else(|e| panic!("start the relay: {e:#}"));
    let http = relay.http.expect("the web front listens");
    TestRelay { relay, http, dir }
}

/// Fast proofs of work, a generous limit.
pub fn easy() -> AccountsConfig {
    AccountsConfig {
        pow_difficulty: 8,
        signups_per_ip: 1000,
        ..AccountsConfig::default()
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request (`Connection: close`), as any client sends it.
pub async fn request(
    to: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    body: Option<&str>,
) -> Reply {
    request_with(to, method, host, path, body, "").await
}

/// The same with `extra` header lines (each ending in CRLF).
pub async fn request_with(
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
    pub async fn get(&self, host: &str, path: &str) -> Reply {
        request(self.http, "GET", host, path, None).await
    }

    pub async fn challenge(&self) -> Challenge {
        let reply = self.get(DOMAIN, "/api/v1/pow").await;
        assert_eq!(reply.status, 200, "GET /api/v1/pow: {}", reply.text());
        serde_json::from_slice(&reply.body).expect("a challenge")
    }

    pub async fn solved(&self) -> Solution {
        pow::solve(&self.challenge().await)
    }

    pub async fn post(&self, handle: &str, solution: &Solution) -> Reply {
        let body = json!({"handle": handle, "pow": solution}).to_string();
        request(self.http, "POST", DOMAIN, "/api/v1/accounts", Some(&body)).await
    }

    /// Signs up `handle` as a proxy forwarding for `xff` would.
    pub async fn signup_via_proxy(&self, handle: &str, xff: &str) -> Reply {
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
    pub async fn signup(&self, handle: &str) -> Reply {
        let solution = self.solved().await;
        self.post(handle, &solution).await
    }
}

pub fn assert_error(reply: &Reply, status: u16, code: &str) -> String {
    let body = reply.json();
    assert_eq!(reply.status, status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    body["error"]
        .as_str()
        .expect("an error message")
        .to_string()
}
