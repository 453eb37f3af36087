//! The Web Key Directory (draft-koch-openpgp-webkey-service, section 3.1):
//! every hosted address's OpenPGP certificate, as its node published it.
//!
//! - direct method: `https://DOMAIN/.well-known/openpgpkey/hu/HASH?l=LOCAL`;
//! - advanced method: `https://openpgpkey.DOMAIN/.well-known/openpgpkey/DOMAIN/hu/HASH?l=LOCAL`;
//! - the `policy` file at `/.well-known/openpgpkey/policy` and
//!   `/.well-known/openpgpkey/DOMAIN/policy` (section 4.5; empty: no options).
//!
//! HASH is the z-base-32 (RFC 6189 section 5.1.6) of the SHA-1 of the local part
//! in lower case. The relay needs `l` (every WKD client sends it) to find the
//! address and checks that HASH matches it. The direct method takes DOMAIN
//! from the `Host`, the advanced one from the path. A certificate is served only
//! if one of its User IDs holds the address (section 3.1: "The key needs to
//! carry a User ID packet with that mail address"); otherwise `404`.

use super::{hosts_domain, request_host, WebContext};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use omb_shared::pgp;
use serde::Deserialize;
use sha1::{Digest, Sha1};
use std::sync::Arc;

pub(super) fn routes() -> Router<Arc<WebContext>> {
    Router::new()
        .route("/.well-known/openpgpkey/hu/{hash}", get(direct))
        .route("/.well-known/openpgpkey/policy", get(direct_policy))
        .route("/.well-known/openpgpkey/{domain}/hu/{hash}", get(advanced))
        .route(
            "/.well-known/openpgpkey/{domain}/policy",
            get(advanced_policy),
        )
}

/// The z-base-32 alphabet (RFC 6189 section 5.1.6).
const ZBASE32: &[u8; 32] = b"ybndrfg8ejkmcpqxot1uwisza345h769";

/// z-base-32 of `bytes`, five bits at a time from the most significant; a
/// last group of fewer than five bits is padded with zero bits.
pub fn zbase32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let (mut acc, mut bits) = (0u32, 0u32);
    for byte in bytes {
        acc = (acc << 8) | u32::from(*byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ZBASE32[((acc >> bits) & 31) as usize]));
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(char::from(ZBASE32[((acc << (5 - bits)) & 31) as usize]));
    }
    out
}

/// The WKD hash of a local part: z-base-32 of SHA-1 of it with ASCII upper
/// case mapped to lower case (section 3.1).
pub fn wkd_hash(local: &str) -> String {
    zbase32(&Sha1::digest(local.to_ascii_lowercase().as_bytes()))
}

#[derive(Debug, Deserialize)]
struct LocalQuery {
    l: Option<String>,
}

fn not_found(why: &str) -> Response {
    (StatusCode::NOT_FOUND, format!("{why}\n")).into_response()
}

async fn direct(
    State(ctx): State<Arc<WebContext>>,
    Path(hash): Path<String>,
    Query(q): Query<LocalQuery>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let Some(domain) = request_host(&headers, &uri) else {
        return not_found("the direct method needs a Host: the mail domain");
    };
    key(&ctx, &domain, &hash, q.l.as_deref()).await
}

async fn advanced(
    State(ctx): State<Arc<WebContext>>,
    Path((domain, hash)): Path<(String, String)>,
    Query(q): Query<LocalQuery>,
) -> Response {
    key(&ctx, &domain.to_ascii_lowercase(), &hash, q.l.as_deref()).await
}

async fn direct_policy(
    State(ctx): State<Arc<WebContext>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let Some(domain) = request_host(&headers, &uri) else {
        return not_found("the direct method needs a Host: the mail domain");
    };
    policy(&ctx, &domain).await
}

async fn advanced_policy(
    State(ctx): State<Arc<WebContext>>,
    Path(domain): Path<String>,
) -> Response {
    policy(&ctx, &domain.to_ascii_lowercase()).await
}

async fn policy(ctx: &WebContext, domain: &str) -> Response {
    match hosts_domain(&ctx.store, &ctx.signup.domain, domain).await {
        Ok(true) => (
            [
                (header::CONTENT_TYPE, "text/plain"),
                (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            ],
            "",
        )
            .into_response(),
        Ok(false) => not_found("this relay hosts no mail for that domain"),
        Err(e) => unavailable(&e),
    }
}

fn unavailable(e: &crate::store::StoreError) -> Response {
    tracing::error!(error = %e, "WKD look-up failed");
    (StatusCode::SERVICE_UNAVAILABLE, "try again later\n").into_response()
}

/// The certificate of `local@domain`, if `hash` is its WKD hash.
async fn key(ctx: &WebContext, domain: &str, hash: &str, local: Option<&str>) -> Response {
    let Some(local) = local.filter(|l| !l.is_empty()) else {
        return not_found("add ?l=LOCAL-PART (the address's local part) to the request");
    };
    if !wkd_hash(local).eq_ignore_ascii_case(hash) {
        return not_found("the hash is not that of the local part given in ?l=");
    }
    let address = format!("{local}@{domain}").to_lowercase();
    let cert = match ctx.store.recipient(&address).await {
        Ok(Some(r)) => r.cert,
        Ok(None) => None,
        Err(e) => return unavailable(&e),
    };
    let Some(cert) = cert else {
        return not_found("no key for that address here");
    };
    let cert = match pgp::parse_cert(&cert) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(%address, error = %e, "a stored certificate does not parse");
            return not_found("no key for that address here");
        }
    };
    let has_address = cert.userids().any(|u| {
        u.userid()
            .email()
            .ok()
            .flatten()
            .is_some_and(|e| e.eq_ignore_ascii_case(&address))
    });
    if !has_address {
        return not_found("the key linked to that address has no User ID for it");
    }
    // Public parts only, whatever was stored.
    match pgp::public_bytes(&cert) {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(%address, error = %e, "cannot serialise a certificate");
            not_found("no key for that address here")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drafts_example_hash() {
        // draft-koch-openpgp-webkey-service section 3.1.
        assert_eq!(wkd_hash("Joe.Doe"), "iy9q119eutrkn8s1mk4r39qejnbu3n5q");
        assert_eq!(wkd_hash("joe.doe"), "iy9q119eutrkn8s1mk4r39qejnbu3n5q");
    }

    #[test]
    fn zbase32_of_known_values() {
        // RFC 6189 section 5.1.6 gives the alphabet; these follow from it.
        assert_eq!(zbase32(&[]), "");
        assert_eq!(zbase32(&[0x00]), "yy");
        assert_eq!(zbase32(&[0xff]), "9h");
        assert_eq!(zbase32(&[0xf0, 0xbf, 0xc7]), "6n9hq");
        assert_eq!(zbase32(&[0xd4, 0x7a, 0x04]), "4t7ye");
        // 160 bits are 32 characters exactly.
        assert_eq!(zbase32(&[0xaa; 20]).len(), 32);
    }
}
