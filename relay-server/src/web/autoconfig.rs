//! Mail-app auto-configuration: an address and a password are enough.
//!
//! - Thunderbird's autoconfig (the `clientConfig` v1.1 format), at
//!   `autoconfig.DOMAIN/mail/config-v1.1.xml?emailaddress=…` and
//!   `DOMAIN/.well-known/autoconfig/mail/config-v1.1.xml`;
//! - an Apple configuration profile (`com.apple.mail.managed` payload) at
//!   `/apple/mail.mobileconfig?emailaddress=…`, for iOS and macOS Mail;
//! - RFC 6186 SRV records are in the DNS zone (`dns::zone`).
//!
//! Every server named is `HANDLE.DOMAIN`: the relay passes those TLS
//! connections through to the account's home node, where TLS ends.

use super::WebContext;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use omb_shared::types::Address;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// How mail apps reach an account's node through the relay: the relay's
/// domain and its passthrough ports (`None`: not offered).
#[derive(Debug, Clone, Default)]
pub struct ClientSettings {
    pub domain: String,
    pub imaps: Option<u16>,
    pub pop3s: Option<u16>,
    pub submissions: Option<u16>,
}

impl ClientSettings {
    /// The RFC 6186 services for every `HANDLE.DOMAIN`: those passed through
    /// with their port, and "not offered" for the rest (plain-text IMAP and
    /// POP3 are never passed through: TLS must end on the node).
    pub fn rfc6186_services(&self) -> Vec<(String, Option<u16>)> {
        vec![
            ("_imap".to_string(), None),
            ("_imaps".to_string(), self.imaps),
            ("_pop3".to_string(), None),
            ("_pop3s".to_string(), self.pop3s),
            ("_submission".to_string(), None),
            ("_submissions".to_string(), self.submissions),
        ]
    }
}

#[derive(Debug, Deserialize)]
struct AddressQuery {
    emailaddress: Option<String>,
}

pub(super) fn routes() -> Router<Arc<WebContext>> {
    Router::new()
        .route("/mail/config-v1.1.xml", get(thunderbird))
        .route(
            "/.well-known/autoconfig/mail/config-v1.1.xml",
            get(thunderbird),
        )
        .route("/apple/mail.mobileconfig", get(apple))
}

/// The account an address belongs to, and the host its apps connect to.
struct Target {
    address: String,
    host: String,
}

async fn target(ctx: &WebContext, query: &AddressQuery) -> Result<Target, Response> {
    let not_found = |why: &str| (StatusCode::NOT_FOUND, why.to_string()).into_response();
    let Some(given) = query.emailaddress.as_deref() else {
        return Err((
            StatusCode::BAD_REQUEST,
            "add ?emailaddress=you@example.net".to_string(),
        )
            .into_response());
    };
    let address = Address::parse(given).map_err(|e| not_found(&e.to_string()))?;
    let recipient = ctx
        .store
        .recipient(&address.canonical())
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "autoconfig lookup failed");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        })?;
    let recipient = recipient.ok_or_else(|| not_found("no account has this address here"))?;
    if ctx.clients.imaps.is_none() && ctx.clients.pop3s.is_none() {
        return Err(not_found("this relay offers no remote mail access"));
    }
    Ok(Target {
        address: address.canonical(),
        host: format!("{}.{}", recipient.handle, ctx.clients.domain),
    })
}

async fn thunderbird(
    State(ctx): State<Arc<WebContext>>,
    Query(query): Query<AddressQuery>,
) -> Response {
    match target(&ctx, &query).await {
        Ok(t) => (
            [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
            thunderbird_xml(&ctx.clients, &t),
        )
            .into_response(),
        Err(r) => r,
    }
}

async fn apple(State(ctx): State<Arc<WebContext>>, Query(query): Query<AddressQuery>) -> Response {
    match target(&ctx, &query).await {
        Ok(t) => (
            [
                (header::CONTENT_TYPE, "application/x-apple-aspen-config"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"mail.mobileconfig\"",
                ),
            ],
            apple_profile(&ctx.clients, &t),
        )
            .into_response(),
        Err(r) => r,
    }
}

fn thunderbird_xml(clients: &ClientSettings, t: &Target) -> String {
    let (domain, host, address) = (xml(&clients.domain), xml(&t.host), xml(&t.address));
    let mut servers = String::new();
    for (kind, port) in [("imap", clients.imaps), ("pop3", clients.pop3s)] {
        if let Some(port) = port {
            servers.push_str(&format!(
                "    <incomingServer type=\"{kind}\">\n      <hostname>{host}</hostname>\n      <port>{port}</port>\n      <socketType>SSL</socketType>\n      <username>{address}</username>\n      <authentication>password-cleartext</authentication>\n    </incomingServer>\n"
            ));
        }
    }
    if let Some(port) = clients.submissions {
        servers.push_str(&format!(
            "    <outgoingServer type=\"smtp\">\n      <hostname>{host}</hostname>\n      <port>{port}</port>\n      <socketType>SSL</socketType>\n      <username>{address}</username>\n      <authentication>password-cleartext</authentication>\n    </outgoingServer>\n"
        ));
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<clientConfig version=\"1.1\">\n  <emailProvider id=\"{domain}\">\n    <domain>{domain}</domain>\n    <displayName>Own-Mailbox ({domain})</displayName>\n    <displayShortName>Own-Mailbox</displayShortName>\n{servers}  </emailProvider>\n</clientConfig>\n"
    )
}

fn apple_profile(clients: &ClientSettings, t: &Target) -> String {
    let (host, address) = (xml(&t.host), xml(&t.address));
    let id = reverse_dns(&clients.domain);
    let uuid = |what: &str| {
        let h = Sha256::digest(format!("{what}\0{}", t.address));
        let x = hex::encode(&h[..16]);
        format!(
            "{}-{}-4{}-8{}-{}",
            &x[0..8],
            &x[8..12],
            &x[13..16],
            &x[17..20],
            &x[20..32]
        )
        .to_uppercase()
    };
    let (kind, port) = match (clients.imaps, clients.pop3s) {
        (Some(p), _) => ("EmailTypeIMAP", p),
        (None, Some(p)) => ("EmailTypePOP", p),
        (None, None) => ("EmailTypeIMAP", 993),
    };
    let outgoing = match clients.submissions {
        Some(p) => format!(
            "      <key>OutgoingMailServerHostName</key><string>{host}</string>\n      <key>OutgoingMailServerPortNumber</key><integer>{p}</integer>\n      <key>OutgoingMailServerUseSSL</key><true/>\n      <key>OutgoingMailServerAuthentication</key><string>EmailAuthPassword</string>\n      <key>OutgoingMailServerUsername</key><string>{address}</string>\n      <key>OutgoingPasswordSameAsIncomingPassword</key><true/>\n"
        ),
        None => String::new(),
    };
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>PayloadContent</key>
  <array>
    <dict>
      <key>EmailAccountDescription</key><string>{address}</string>
      <key>EmailAccountType</key><string>{kind}</string>
      <key>EmailAddress</key><string>{address}</string>
      <key>IncomingMailServerHostName</key><string>{host}</string>
      <key>IncomingMailServerPortNumber</key><integer>{port}</integer>
      <key>IncomingMailServerUseSSL</key><true/>
      <key>IncomingMailServerAuthentication</key><string>EmailAuthPassword</string>
      <key>IncomingMailServerUsername</key><string>{address}</string>
{outgoing}      <key>PayloadType</key><string>com.apple.mail.managed</string>
      <key>PayloadIdentifier</key><string>{id}.mail.account</string>
      <key>PayloadUUID</key><string>{account_uuid}</string>
      <key>PayloadVersion</key><integer>1</integer>
      <key>PayloadDisplayName</key><string>{address}</string>
    </dict>
  </array>
  <key>PayloadDisplayName</key><string>Own-Mailbox: {address}</string>
  <key>PayloadIdentifier</key><string>{id}.mail</string>
  <key>PayloadType</key><string>Configuration</string>
  <key>PayloadUUID</key><string>{profile_uuid}</string>
  <key>PayloadVersion</key><integer>1</integer>
</dict>
</plist>
"#,
        account_uuid = uuid("account"),
        profile_uuid = uuid("profile"),
    )
}

/// `sandbox.test` → `test.sandbox`, the reverse-DNS style Apple identifiers use.
fn reverse_dns(domain: &str) -> String {
    let labels: Vec<&str> = domain.trim_end_matches('.').rsplit('.').collect();
    xml(&labels.join("."))
}

/// Escapes text for XML character data and attribute values.
fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thunderbird_xml_names_the_handle_host_and_only_offered_services() {
        let clients = ClientSettings {
            domain: "sandbox.test".into(),
            imaps: Some(993),
            pop3s: None,
            submissions: None,
        };
        let t = Target {
            address: "alice@sandbox.test".into(),
            host: "alice.sandbox.test".into(),
        };
        let x = thunderbird_xml(&clients, &t);
        assert!(x.contains("<hostname>alice.sandbox.test</hostname>"), "{x}");
        assert!(x.contains("<port>993</port>"));
        assert!(!x.contains("pop3"));
        let p = apple_profile(&clients, &t);
        assert!(p.contains("<key>IncomingMailServerPortNumber</key><integer>993</integer>"));
        assert_eq!(p, apple_profile(&clients, &t), "stable UUIDs");
        assert_eq!(xml("a<b&\"c\""), "a&lt;b&amp;&quot;c&quot;");
    }
}
