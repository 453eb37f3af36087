//! Fetching a policy file over HTTPS (RFC 8461 §3.3): `GET
//! https://mta-sts.DOMAIN/.well-known/mta-sts.txt`, the certificate valid
//! for that name (PKIX), no redirects, status 200, `text/plain`, at most
//! 64 KiB, within a time limit.

use super::policy::MAX_POLICY_BYTES;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

pub const POLICY_PATH: &str = "/.well-known/mta-sts.txt";

/// Why no policy file came.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0} has no address")]
    NoAddress(String),
    #[error("{host}: {reason}")]
    Failed { host: String, reason: String },
    #[error("{0} timed out")]
    Timeout(String),
}

/// Fetches the policy text of `host` (`mta-sts.DOMAIN`) from the first of
/// `addrs` that answers.
pub async fn fetch(
    host: &str,
    addrs: &[SocketAddr],
    tls: &TlsConnector,
    timeout: Duration,
) -> Result<String, FetchError> {
    let mut last = FetchError::NoAddress(host.to_string());
    for addr in addrs {
        match tokio::time::timeout(timeout, fetch_from(host, *addr, tls)).await {
            Ok(Ok(text)) => return Ok(text),
            Ok(Err(reason)) => {
                last = FetchError::Failed {
                    host: host.to_string(),
                    reason,
                }
            }
            Err(_) => last = FetchError::Timeout(format!("{host} at {addr}")),
        }
    }
    Err(last)
}

async fn fetch_from(host: &str, addr: SocketAddr, tls: &TlsConnector) -> Result<String, String> {
    let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let stream = tls
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {addr}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(connection);
    let request = Request::get(POLICY_PATH)
        .header(HOST, host)
        .header("User-Agent", "omb-relay")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        // §3.3: redirects are not followed; only 200 is a policy.
        if response.status() != StatusCode::OK {
            return Err(format!("HTTP status {}", response.status()));
        }
        let media_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase());
        if media_type.as_deref() != Some("text/plain") {
            return Err(format!("media type {media_type:?}, not text/plain"));
        }
        let body = Limited::new(response.into_body(), MAX_POLICY_BYTES)
            .collect()
            .await
            .map_err(|e| format!("body: {e} (at most {MAX_POLICY_BYTES} bytes)"))?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| "the policy is not UTF-8".to_string())
    }
    .await;
    driver.abort();
    result
}
