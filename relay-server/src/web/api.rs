//! The accounts API (JSON over HTTP):
//!
//! - `GET /api/v1/pow`: a proof-of-work challenge (see `accounts::pow`);
//! - `POST /api/v1/accounts` `{"handle": "...", "pow": {"challenge": "...",
//!   "nonce": "..."}}`: creates the account; `201` with its address and what a
//!   home node needs to link (`link_token`, `tunnel`, `tunnel_pin`) and an
//!   `api_token` for the custom-domain API (`web::domains`).
//!
//! Errors are `{"error": "what went wrong and what to do", "code": "..."}`:
//! `400` for a malformed request or proof of work, `409` for a handle that is
//! taken or looks like one that is, `422` for a handle the rules refuse, `429`
//! with `Retry-After` (RFC 9110 section 10.2.3) past the per-client limit.
//! Every `POST` counts against the limit, refused ones included, so guessing
//! handles costs as much as taking them. The proof of work is spent only once
//! the handle has passed every check, so a refused handle costs no new one.

use super::WebContext;
use crate::accounts::pow::Solution;
use crate::accounts::Handle;
use crate::store::{now, StoreError};
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

pub(super) fn routes() -> Router<Arc<WebContext>> {
    Router::new()
        .route("/api/v1/pow", get(challenge))
        .route("/api/v1/accounts", post(create))
}

#[derive(Debug, Deserialize)]
struct CreateRequest {
    handle: String,
    pow: Solution,
}

/// What a new account's owner gets (once: only the link token's hash is kept).
#[derive(Debug, Serialize)]
struct Created {
    handle: String,
    address: String,
    /// Where `ANYTHING@HANDLE.DOMAIN` also arrives.
    aliases: String,
    /// The node's `[relay]` settings: `link_token`, `tunnel`, `pin`.
    link_token: String,
    tunnel: String,
    tunnel_pin: String,
    /// For the custom-domain API (`Authorization: Bearer …`).
    api_token: String,
}

/// A JSON error reply.
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = serde_json::json!({"error": message.into(), "code": code});
    (status, Json(body)).into_response()
}

fn internal(e: &StoreError) -> Response {
    tracing::error!(error = %e, "account signup failed");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the relay cannot create accounts right now: try again in a few minutes",
    )
}

async fn challenge(State(ctx): State<Arc<WebContext>>) -> Response {
    let mut response = Json(ctx.signup.pow.issue(now())).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The client a request counts against: the peer, or for a request from a
/// trusted proxy, the last address of `X-Forwarded-For` (every proxy appends
/// the address it received from) that is not a trusted proxy itself.
fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|a| a.trim().parse::<IpAddr>())
        .collect::<Result<_, _>>()
        .unwrap_or_default();
    forwarded
        .into_iter()
        .rev()
        .find(|a| !trusted.contains(a))
        .unwrap_or(peer)
}

async fn create(
    State(ctx): State<Arc<WebContext>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<CreateRequest>, JsonRejection>,
) -> Response {
    let signup = &ctx.signup;
    let client = client_ip(peer.ip(), &headers, &signup.trusted_proxies);
    if let Err(wait) = signup.limiter.check(client, Instant::now()) {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many signups from your address: try again in {secs} seconds"),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        return response;
    }
    let request = match body {
        Ok(Json(r)) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("send JSON {{\"handle\": \"...\", \"pow\": {{\"challenge\": \"...\", \"nonce\": \"...\"}}}} with Content-Type: application/json ({e})"),
            )
        }
    };
    let handle = match Handle::parse_for_signup(&request.handle) {
        Ok(h) => h,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, e.code(), e.to_string()),
    };
    // Taken or look-alike: said before the proof of work is spent.
    match ctx.store.account_exists(handle.as_str()).await {
        Ok(false) => {}
        Ok(true) => return taken(&handle),
        Err(e) => return internal(&e),
    }
    match ctx.store.look_alike(&handle).await {
        Ok(None) => {}
        Ok(Some(existing)) => return look_alike(&handle, &existing),
        Err(e) => return internal(&e),
    }
    if let Err(e) = signup.pow.verify(&request.pow, now()) {
        return error(StatusCode::BAD_REQUEST, e.code(), e.to_string());
    }
    match ctx
        .store
        .create_account_checked(&handle, &signup.domain, signup.quota_bytes, false)
        .await
    {
        Ok(()) => {}
        Err(StoreError::AccountExists(_)) => return taken(&handle),
        Err(StoreError::LookAlike { existing, .. }) => return look_alike(&handle, &existing),
        Err(e) => return internal(&e),
    }
    let link_token = match ctx.store.create_link_token(handle.as_str()).await {
        Ok(t) => t,
        Err(e) => return internal(&e),
    };
    let api_token = match ctx.store.create_api_token(handle.as_str()).await {
        Ok(t) => t,
        Err(e) => return internal(&e),
    };
    tracing::info!(%handle, %client, "account created through the API");
    let created = Created {
        address: format!("{handle}@{}", signup.domain),
        aliases: format!("*@{handle}.{}", signup.domain),
        handle: handle.to_string(),
        link_token,
        tunnel: signup.tunnel.clone(),
        tunnel_pin: signup.tunnel_pin.clone(),
        api_token,
    };
    let mut response = (StatusCode::CREATED, Json(created)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn taken(handle: &Handle) -> Response {
    error(
        StatusCode::CONFLICT,
        "handle_taken",
        format!("{handle:?} is taken: choose another handle"),
    )
}

fn look_alike(handle: &Handle, existing: &str) -> Response {
    error(
        StatusCode::CONFLICT,
        "handle_look_alike",
        format!("{handle:?} looks too much like the existing address {existing:?}: choose another handle"),
    )
}

#[cfg(test)]
mod tests {
    use super::client_ip;
    use axum::http::{HeaderMap, HeaderValue};
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            let value = HeaderValue::from_str(v).unwrap_or_else(|e| panic!("{v}: {e}"));
            h.append("x-forwarded-for", value);
        }
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxy = ip("127.0.0.1");
        let trusted = [proxy, ip("10.0.0.2")];
        // Not from a proxy: the header is the client's own claim.
        assert_eq!(
            client_ip(ip("192.0.2.9"), &headers(&["198.51.100.1"]), &trusted),
            ip("192.0.2.9")
        );
        assert_eq!(
            client_ip(proxy, &headers(&["198.51.100.1"]), &trusted),
            ip("198.51.100.1")
        );
        // The client may put anything first; the proxies' own entries are last.
        assert_eq!(
            client_ip(
                proxy,
                &headers(&["203.0.113.66, 198.51.100.1, 10.0.0.2"]),
                &trusted
            ),
            ip("198.51.100.1")
        );
        assert_eq!(
            client_ip(proxy, &headers(&["203.0.113.66", "2001:db8::1"]), &trusted),
            ip("2001:db8::1")
        );
        // Missing or garbled: the proxy itself.
        assert_eq!(client_ip(proxy, &headers(&[]), &trusted), proxy);
        assert_eq!(client_ip(proxy, &headers(&["nonsense"]), &trusted), proxy);
        assert_eq!(client_ip(proxy, &headers(&["10.0.0.2"]), &trusted), proxy);
    }
}
