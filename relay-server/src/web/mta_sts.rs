//! The MTA-STS policy (RFC 8461 section 3.2), at
//! `https://mta-sts.DOMAIN/.well-known/mta-sts.txt` for the relay's domain and
//! for every verified custom domain (their MX is the relay's too). The DNS
//! side (`_mta-sts.DOMAIN` TXT with the policy id) is in `dns`.
//!
//! `mode: enforce` tells senders to refuse an MX whose certificate does not
//! verify (section 4.2): give the MX a certificate from a public CA
//! (`[smtp] tls_cert`) before enforcing, or use `testing`.

use super::{hosts_domain, request_host, WebContext};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

pub(super) fn routes() -> Router<Arc<WebContext>> {
    Router::new().route("/.well-known/mta-sts.txt", get(policy))
}

/// The policy text: one `mx:` line, the relay's MX host.
pub fn policy_text(mode: &str, mx: &str, max_age: u64) -> String {
    format!("version: STSv1\nmode: {mode}\nmx: {mx}\nmax_age: {max_age}\n")
}

async fn policy(State(ctx): State<Arc<WebContext>>, headers: HeaderMap, uri: Uri) -> Response {
    let not_found = || (StatusCode::NOT_FOUND, "no MTA-STS policy here\n").into_response();
    // Section 3.3: the policy host is `mta-sts.` + the mail domain.
    let Some(domain) =
        request_host(&headers, &uri).and_then(|h| h.strip_prefix("mta-sts.").map(str::to_string))
    else {
        return not_found();
    };
    let policy = &ctx.mta_sts;
    match hosts_domain(&ctx.store, &policy.domain, &domain).await {
        Ok(true) => (
            [(header::CONTENT_TYPE, "text/plain")],
            policy_text(
                policy.config.mode.as_str(),
                &policy.mx,
                policy.config.max_age_secs.min(31_557_600),
            ),
        )
            .into_response(),
        Ok(false) => not_found(),
        Err(e) => {
            tracing::error!(error = %e, "MTA-STS look-up failed");
            (StatusCode::SERVICE_UNAVAILABLE, "try again later\n").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::policy_text;

    #[test]
    fn the_policy_reads_as_rfc_8461_asks() {
        assert_eq!(
            policy_text("enforce", "mx.example.net", 604800),
            "version: STSv1\nmode: enforce\nmx: mx.example.net\nmax_age: 604800\n"
        );
    }
}
