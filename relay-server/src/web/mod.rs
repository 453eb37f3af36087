//! The relay's web front (HTTP, axum): mail-app auto-configuration
//! (`autoconfig`), the accounts API with its abuse limits (`api`), custom
//! domains (`domains`), the Web Key Directory (`wkd`) and the MTA-STS policy
//! (`mta_sts`).
//!
//! WKD and MTA-STS must be fetched over HTTPS (draft-koch-openpgp-webkey-service
//! section 3.1, RFC 8461 section 3.3): the relay speaks plain HTTP, so put a TLS
//! front (a reverse proxy holding certificates for `DOMAIN`, `openpgpkey.DOMAIN`
//! and `mta-sts.DOMAIN`) before it; requests are told apart by their `Host`.

mod api;
mod autoconfig;
mod domains;
pub(crate) mod mta_sts;
pub mod wkd;

pub use autoconfig::ClientSettings;
pub use domains::check_domain_name;

use crate::accounts::limit::SignupLimiter;
use crate::accounts::pow::Pow;
use crate::config::MtaStsConfig;
use crate::domains::Domains;
use crate::store::Store;
use axum::http::{HeaderMap, Uri};
use axum::Router;
use std::net::SocketAddr;
use std::sync::Arc;

/// What the handlers share.
pub struct WebContext {
    pub store: Store,
    pub clients: ClientSettings,
    pub signup: Signup,
    pub mta_sts: MtaStsPolicy,
    pub domains: Domains,
}

/// What creating an account needs.
pub struct Signup {
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// The relay's mail domain: accounts get `HANDLE@domain`.
    pub domain: String,
    pub quota_bytes: i64,
    pub pow: Pow,
    pub limiter: SignupLimiter,
    /// The tunnel endpoint (`host:port`) and certificate pin a node configures
    /// to link with the token it is given.
    pub tunnel: String,
    pub tunnel_pin: String,
}

/// The MTA-STS policy's settings.
pub struct MtaStsPolicy {
    /// The relay's mail domain (its policy is always served).
    pub domain: String,
    /// The relay's MX host name, the policy's one `mx:` line.
    pub mx: String,
    pub config: MtaStsConfig,
}

/// The relay's routes.
pub fn router(ctx: Arc<WebContext>) -> Router {
    autoconfig::routes()
        .merge(api::routes())
        .merge(wkd::routes())
        .merge(mta_sts::routes())
        .merge(domains::routes())
        .with_state(ctx)
}

/// Serves `router` on `listener` until the task is dropped. Handlers see the
/// client's address (the signup limit counts by it).
pub async fn serve(listener: tokio::net::TcpListener, ctx: Arc<WebContext>) {
    let app = router(ctx).into_make_service_with_connect_info::<SocketAddr>();
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "the web server stopped");
    }
}

/// The host a request is for, in lower case, without port or final dot: from
/// the request line's absolute form, else the `Host` header (RFC 9112
/// section 3.2).
fn request_host(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    let raw = match uri.host() {
        Some(h) => h.to_string(),
        None => {
            let value = headers.get(axum::http::header::HOST)?.to_str().ok()?;
            let authority: axum::http::uri::Authority = value.parse().ok()?;
            authority.host().to_string()
        }
    };
    let host = raw.trim_end_matches('.').to_ascii_lowercase();
    (!host.is_empty()).then_some(host)
}

/// Whether the relay hosts mail for `domain`: its own domain, or a custom
/// domain whose records are verified.
async fn hosts_domain(
    store: &Store,
    relay_domain: &str,
    domain: &str,
) -> Result<bool, crate::store::StoreError> {
    if domain.eq_ignore_ascii_case(relay_domain) {
        return Ok(true);
    }
    store.domain_verified(domain).await
}

#[cfg(test)]
mod tests {
    use super::request_host;
    use axum::http::{HeaderMap, HeaderValue, Uri};

    fn host(header: Option<&str>, uri: &str) -> Option<String> {
        let mut headers = HeaderMap::new();
        if let Some(h) = header {
            headers.insert(
                "host",
                HeaderValue::from_str(h).unwrap_or_else(|e| panic!("{e}")),
            );
        }
        let uri: Uri = uri.parse().unwrap_or_else(|e| panic!("{e}"));
        request_host(&headers, &uri)
    }

    #[test]
    fn the_host_is_normalised() {
        assert_eq!(
            host(Some("Example.ORG"), "/x").as_deref(),
            Some("example.org")
        );
        assert_eq!(
            host(Some("mta-sts.example.org:8080"), "/x").as_deref(),
            Some("mta-sts.example.org")
        );
        assert_eq!(
            host(Some("example.org."), "/x").as_deref(),
            Some("example.org")
        );
        assert_eq!(
            host(Some("other"), "http://Example.org/x").as_deref(),
            Some("example.org")
        );
        assert_eq!(host(None, "/x"), None);
        assert_eq!(host(Some("bad host"), "/x"), None);
    }
}
