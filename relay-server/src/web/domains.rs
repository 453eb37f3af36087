//! The custom-domain API (JSON): an account adds its own domain, learns
//! exactly which records to publish, asks for a check, and removes it.
//!
//! Every call carries the account's API token as `Authorization: Bearer …`.
//!
//! | call | answer |
//! | --- | --- |
//! | `POST /api/v1/domains` `{"domain": "example.org"}` | `201` the domain, its state and the records to publish |
//! | `GET /api/v1/domains` | the account's domains |
//! | `GET /api/v1/domains/{domain}` | the records to publish and the last check |
//! | `POST /api/v1/domains/{domain}/verify` | a check now: each record ok, missing or wrong |
//! | `DELETE /api/v1/domains/{domain}` | `204`; its mail is refused from then on |

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::WebContext;
use crate::domains::Domains;
use crate::store::{Domain, StoreError};

pub(super) fn routes() -> Router<Arc<WebContext>> {
    Router::new()
        .route("/api/v1/domains", post(add).get(list))
        .route("/api/v1/domains/{domain}", get(show).delete(remove))
        .route("/api/v1/domains/{domain}/verify", post(verify))
}

#[derive(Deserialize)]
struct AddDomain {
    domain: String,
}

/// A JSON error with a machine-readable code and a sentence for people.
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into(), "code": code}))).into_response()
}

fn internal(e: StoreError) -> Response {
    tracing::error!(error = %e, "domain API: store failure");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the relay cannot reach its database; try again shortly",
    )
}

/// The account of the request's bearer token; a handler that takes it answers
/// `401` by itself to requests without a valid one.
struct Account(String);

impl FromRequestParts<Arc<WebContext>> for Account {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        ctx: &Arc<WebContext>,
    ) -> Result<Self, Response> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let unauthorized = |message: &str| {
            let mut response = error(StatusCode::UNAUTHORIZED, "unauthorized", message);
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            response
        };
        let Some(token) = token else {
            return Err(unauthorized(
                "send your account's API token as `Authorization: Bearer TOKEN`",
            ));
        };
        match ctx.store.api_token_account(token).await {
            Ok(Some(handle)) => Ok(Account(handle)),
            Ok(None) => Err(unauthorized("unknown API token")),
            Err(e) => Err(internal(e)),
        }
    }
}

/// The account's domain `name`, or the `404` to send (also for another
/// account's domain: its existence is not told).
async fn own_domain(ctx: &WebContext, handle: &str, name: &str) -> Result<Domain, Response> {
    match ctx.store.domain(name).await {
        Ok(Some(domain)) if domain.handle == handle => Ok(domain),
        Ok(_) => Err(error(
            StatusCode::NOT_FOUND,
            "no_such_domain",
            format!("your account has no domain {name:?}"),
        )),
        Err(e) => Err(internal(e)),
    }
}

fn describe(domains: &Domains, domain: &Domain) -> Value {
    let report = domain
        .report
        .as_deref()
        .and_then(|r| serde_json::from_str::<Value>(r).ok());
    json!({
        "domain": domain.domain,
        "state": domain.state,
        "records": domains.expected(domain),
        "verified_at": domain.verified_at,
        "checked_at": domain.checked_at,
        "last_check": report,
    })
}

async fn add(
    State(ctx): State<Arc<WebContext>>,
    Account(handle): Account,
    Json(body): Json<AddDomain>,
) -> Response {
    let name = match check_domain_name(&body.domain, &ctx.domains.settings().relay_domain) {
        Ok(name) => name,
        Err(why) => return error(StatusCode::UNPROCESSABLE_ENTITY, "bad_domain", why),
    };
    match ctx.store.add_domain(&handle, &name).await {
        Ok(domain) => (StatusCode::CREATED, Json(describe(&ctx.domains, &domain))).into_response(),
        Err(e @ StoreError::DomainTaken(_)) => {
            error(StatusCode::CONFLICT, "domain_taken", e.to_string())
        }
        Err(e) => internal(e),
    }
}

async fn list(State(ctx): State<Arc<WebContext>>, Account(handle): Account) -> Response {
    match ctx.store.domains(Some(&handle)).await {
        Ok(domains) => {
            let all: Vec<Value> = domains
                .iter()
                .map(|d| json!({"domain": d.domain, "state": d.state}))
                .collect();
            Json(json!({ "domains": all })).into_response()
        }
        Err(e) => internal(e),
    }
}

async fn show(
    State(ctx): State<Arc<WebContext>>,
    Account(handle): Account,
    Path(name): Path<String>,
) -> Response {
    match own_domain(&ctx, &handle, &name).await {
        Ok(domain) => Json(describe(&ctx.domains, &domain)).into_response(),
        Err(r) => r,
    }
}

async fn verify(
    State(ctx): State<Arc<WebContext>>,
    Account(handle): Account,
    Path(name): Path<String>,
) -> Response {
    let domain = match own_domain(&ctx, &handle, &name).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    match ctx.domains.verify(&domain).await {
        Ok(report) => Json(report).into_response(),
        Err(e) => internal(e),
    }
}

async fn remove(
    State(ctx): State<Arc<WebContext>>,
    Account(handle): Account,
    Path(name): Path<String>,
) -> Response {
    match ctx.store.remove_domain(&handle, &name).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            "no_such_domain",
            format!("your account has no domain {name:?}"),
        ),
        Err(e) => internal(e),
    }
}

/// A domain a user may add: an ASCII (or punycode) host name of at least two
/// labels, not the relay's own domain or a name under it.
pub fn check_domain_name(given: &str, relay_domain: &str) -> Result<String, String> {
    let name = given.trim().trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = name.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() > 253 || labels.len() < 2 || !labels.iter().all(label_ok) {
        return Err(format!(
            "{given:?} is not a domain name; give it like example.org (internationalized names in their xn-- form)"
        ));
    }
    if labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("{given:?} is an IP address, not a domain name"));
    }
    let relay = relay_domain.trim_end_matches('.').to_ascii_lowercase();
    if name == relay || name.ends_with(&format!(".{relay}")) {
        return Err(format!(
            "{name} belongs to this relay already; add a domain of your own"
        ));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::check_domain_name;

    #[test]
    fn domain_names() {
        assert_eq!(
            check_domain_name(" Example.ORG. ", "sandbox.test").as_deref(),
            Ok("example.org")
        );
        for bad in [
            "localhost",
            "exa mple.org",
            "-a.org",
            "a..org",
            "10.0.0.1",
            "sandbox.test",
            "alice.sandbox.test",
            "bücher.de",
        ] {
            assert!(check_domain_name(bad, "sandbox.test").is_err(), "{bad}");
        }
    }
}
