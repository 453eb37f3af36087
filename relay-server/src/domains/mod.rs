//! Custom domains: what a user must publish in their own zone, and checking
//! that they did.
//!
//! A domain is added pending; [`Domains::verify`] resolves each record through
//! the configured DNS server and reports its state (ok, missing, wrong value).
//! When the required records (the `omb-verify=` TXT and the MX) are in place
//! the domain is verified and the MX accepts its mail; a periodic re-check
//! suspends a verified domain whose records disappeared (it is kept, and comes
//! back when they do). A server failure while checking changes nothing: only
//! an answer can suspend a domain.

mod lookup;

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::rr::{RData, RecordType};
use serde::Serialize;
use tracing::{info, warn};

pub use lookup::{lookup, LookupError};

use crate::store::{Domain, DomainState, Store, StoreError};

/// The DKIM selector users point at the relay-hosted key: mail of the custom
/// domain is signed with `d=DOMAIN; s=omb`.
pub const DKIM_SELECTOR: &str = "omb";

/// What the relay needs to tell users and to check their records.
#[derive(Debug, Clone)]
pub struct DomainSettings {
    /// The relay's own domain (e.g. `sandbox.test`).
    pub relay_domain: String,
    /// The relay's MX host (e.g. `mx.sandbox.test`).
    pub mx_host: String,
    /// The DNS server that verification asks (recursive, or the user's
    /// authoritative server in tests). Never the system resolver.
    pub resolver: SocketAddr,
    /// The relay's IMAPS passthrough port, for the SRV record, if offered.
    pub imaps_port: Option<u16>,
    /// How often verified and suspended domains are checked again.
    pub recheck: Duration,
}

/// One record a user publishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Expected {
    /// The owner name, absolute, without the trailing dot.
    pub name: String,
    /// `TXT`, `MX`, `CNAME` or `SRV`.
    #[serde(rename = "type")]
    pub rtype: String,
    /// The value, in zone-file presentation form.
    pub value: String,
    /// Whether mail is accepted without it.
    pub required: bool,
    /// What the record is for.
    pub purpose: &'static str,
}

/// How a published record compares with what is expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Missing,
    /// Records of that kind exist, with other values (see `found`).
    Wrong,
    /// The DNS server did not answer.
    Unknown,
}

/// One record's check.
#[derive(Debug, Clone, Serialize)]
pub struct Checked {
    #[serde(flatten)]
    pub expected: Expected,
    pub status: Status,
    /// What the DNS has there now, in presentation form.
    pub found: Vec<String>,
    /// The lookup failure, when `status` is `unknown`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The outcome of a check.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub domain: String,
    pub state: DomainState,
    pub records: Vec<Checked>,
}

/// The custom-domain operations of the relay.
#[derive(Clone)]
pub struct Domains {
    store: Store,
    settings: DomainSettings,
}

impl Domains {
    pub fn new(store: Store, settings: DomainSettings) -> Self {
        Self { store, settings }
    }

    pub fn settings(&self) -> &DomainSettings {
        &self.settings
    }

    /// Everything the user should publish for `domain`, required records first.
    pub fn expected(&self, domain: &Domain) -> Vec<Expected> {
        let s = &self.settings;
        let (d, relay) = (&domain.domain, &s.relay_domain);
        let record = |name: String, rtype: &str, value: String, required, purpose| Expected {
            name,
            rtype: rtype.to_string(),
            value,
            required,
            purpose,
        };
        let mut out = vec![
            record(
                d.clone(),
                "TXT",
                format!("omb-verify={}", domain.verify_token),
                true,
                "proves the domain is yours",
            ),
            record(
                d.clone(),
                "MX",
                format!("10 {}.", s.mx_host),
                true,
                "brings the domain's mail to the relay",
            ),
            record(
                d.clone(),
                "TXT",
                format!("v=spf1 include:{relay} -all"),
                false,
                "SPF: lets the relay send as the domain",
            ),
            record(
                format!("{DKIM_SELECTOR}._domainkey.{d}"),
                "CNAME",
                format!("{}._domainkey.{relay}.", domain.handle),
                false,
                "DKIM: your node's key, published by the relay (rotates without you)",
            ),
            record(
                format!("_dmarc.{d}"),
                "TXT",
                "v=DMARC1; p=quarantine; adkim=r; aspf=r".to_string(),
                false,
                "DMARC: receivers reject mail forged in your name",
            ),
            record(
                format!("_mta-sts.{d}"),
                "CNAME",
                format!("_mta-sts.{relay}."),
                false,
                "MTA-STS: senders must use TLS to the relay (RFC 8461)",
            ),
            record(
                format!("mta-sts.{d}"),
                "CNAME",
                format!("mta-sts.{relay}."),
                false,
                "MTA-STS policy host",
            ),
            record(
                format!("autoconfig.{d}"),
                "CNAME",
                format!("autoconfig.{relay}."),
                false,
                "mail apps find their settings (Thunderbird autoconfig)",
            ),
        ];
        if let Some(port) = s.imaps_port {
            out.push(record(
                format!("_imaps._tcp.{d}"),
                "SRV",
                format!("0 1 {port} {}.{relay}.", domain.handle),
                false,
                "mail apps find IMAP (RFC 6186)",
            ));
        }
        out
    }

    /// Checks every record of `domain` against the DNS, stores the new state
    /// and report, and returns the report.
    pub async fn verify(&self, domain: &Domain) -> Result<Report, StoreError> {
        let mut records = Vec::new();
        for expected in self.expected(domain) {
            records.push(self.check(expected).await);
        }
        let required = records.iter().filter(|c| c.expected.required);
        let all_ok = required.clone().all(|c| c.status == Status::Ok);
        let unanswered = required.clone().any(|c| c.status == Status::Unknown);
        let state = match (all_ok, unanswered, domain.state) {
            (true, _, _) => DomainState::Verified,
            // No answer proves nothing: keep the state.
            (false, true, state) => state,
            (false, false, DomainState::Pending) => DomainState::Pending,
            (false, false, _) => DomainState::Suspended,
        };
        if state != domain.state {
            info!(domain = %domain.domain, from = ?domain.state, to = ?state, "custom domain changed state");
        }
        let report = Report {
            domain: domain.domain.clone(),
            state,
            records,
        };
        let json = serde_json::to_string(&report).unwrap_or_default();
        self.store
            .set_domain_checked(&domain.domain, state, &json)
            .await?;
        Ok(report)
    }

    /// Looks one expected record up and compares.
    async fn check(&self, expected: Expected) -> Checked {
        let rtype = match expected.rtype.as_str() {
            "MX" => RecordType::MX,
            "CNAME" => RecordType::CNAME,
            "SRV" => RecordType::SRV,
            _ => RecordType::TXT,
        };
        let found = match lookup(self.settings.resolver, &expected.name, rtype).await {
            Ok(records) => records
                .iter()
                .map(|r| presentation(&r.data))
                .collect::<Vec<_>>(),
            Err(e) => {
                return Checked {
                    expected,
                    status: Status::Unknown,
                    found: Vec::new(),
                    error: Some(e.to_string()),
                }
            }
        };
        // TXT records at the apex serve several purposes: compare only those of
        // the same kind (`omb-verify=`, `v=spf1`, `v=DMARC1`).
        let relevant: Vec<String> = if rtype == RecordType::TXT {
            let kind = txt_kind(&expected.value).to_ascii_lowercase();
            found
                .into_iter()
                .filter(|v| v.to_ascii_lowercase().starts_with(&kind))
                .collect()
        } else {
            found
        };
        let status = if relevant.is_empty() {
            Status::Missing
        } else if matches(&expected, &relevant, &self.settings) {
            Status::Ok
        } else {
            Status::Wrong
        };
        Checked {
            expected,
            status,
            found: relevant,
            error: None,
        }
    }

    /// Checks every verified or suspended domain, one after the other, every
    /// `recheck`, until the task is dropped.
    pub async fn recheck_loop(self) {
        let mut tick = tokio::time::interval(self.settings.recheck);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let domains = match self.store.domains(None).await {
                Ok(domains) => domains,
                Err(error) => {
                    warn!(%error, "cannot list custom domains to re-check");
                    continue;
                }
            };
            for domain in domains {
                if domain.state == DomainState::Pending {
                    continue;
                }
                if let Err(error) = self.verify(&domain).await {
                    warn!(%error, domain = %domain.domain, "custom domain re-check failed");
                }
            }
        }
    }
}

/// Whether what was found satisfies what is expected.
fn matches(expected: &Expected, found: &[String], settings: &DomainSettings) -> bool {
    let same = |a: &str, b: &str| {
        a.trim_end_matches('.')
            .eq_ignore_ascii_case(b.trim_end_matches('.'))
    };
    match expected.rtype.as_str() {
        // Ours among the MX hosts is enough (others may remain while moving).
        "MX" => found.iter().any(|v| {
            v.split_once(' ')
                .is_some_and(|(_, host)| same(host, &settings.mx_host))
        }),
        "TXT" if expected.value.starts_with("v=spf1") => {
            // RFC 7208 §4.5: more than one SPF record is a permanent error.
            let include = format!("include:{}", settings.relay_domain);
            found.len() == 1
                && found[0]
                    .split_ascii_whitespace()
                    .any(|term| same(term.trim_start_matches('+'), &include))
        }
        // Any DMARC policy will do; the user chooses how strict.
        "TXT" if expected.value.starts_with("v=DMARC1") => found.len() == 1,
        "TXT" => found.iter().any(|v| v == &expected.value),
        _ => found.len() == 1 && same(&found[0], &expected.value),
    }
}

/// What a TXT value is, by its start: `omb-verify=`, `v=spf1`, `v=DMARC1`.
fn txt_kind(value: &str) -> &str {
    if value.starts_with("omb-verify=") {
        return "omb-verify=";
    }
    value.split([' ', ';']).next().unwrap_or(value)
}

/// A record's data as in a zone file (TXT strings joined, RFC 7208 §3.3).
pub(crate) fn presentation(data: &RData) -> String {
    match data {
        RData::TXT(txt) => txt
            .txt_data
            .iter()
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
        RData::MX(mx) => format!("{} {}", mx.preference, mx.exchange.to_ascii()),
        RData::CNAME(name) => name.0.to_ascii(),
        RData::SRV(srv) => format!(
            "{} {} {} {}",
            srv.priority,
            srv.weight,
            srv.port,
            srv.target.to_ascii()
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> DomainSettings {
        DomainSettings {
            relay_domain: "sandbox.test".into(),
            mx_host: "mx.sandbox.test".into(),
            resolver: ([127, 0, 0, 1], 53).into(),
            imaps_port: Some(993),
            recheck: Duration::from_secs(60),
        }
    }

    fn expected(rtype: &str, value: &str) -> Expected {
        Expected {
            name: "example.org".into(),
            rtype: rtype.into(),
            value: value.into(),
            required: true,
            purpose: "test",
        }
    }

    #[test]
    fn values_compare_as_dns_does() {
        let s = settings();
        let mx = expected("MX", "10 mx.sandbox.test.");
        assert!(matches(&mx, &["20 MX.Sandbox.Test.".into()], &s));
        assert!(!matches(&mx, &["10 mx.example.org.".into()], &s));
        let spf = expected("TXT", "v=spf1 include:sandbox.test -all");
        assert!(matches(
            &spf,
            &["v=spf1 mx include:sandbox.test ~all".into()],
            &s
        ));
        assert!(!matches(&spf, &["v=spf1 -all".into()], &s));
        // Two SPF records are an error (RFC 7208 §4.5), even with ours.
        assert!(!matches(
            &spf,
            &[
                "v=spf1 include:sandbox.test -all".into(),
                "v=spf1 -all".into()
            ],
            &s
        ));
        let cname = expected("CNAME", "alice._domainkey.sandbox.test.");
        assert!(matches(
            &cname,
            &["alice._domainkey.sandbox.test".into()],
            &s
        ));
        assert!(!matches(
            &cname,
            &["bob._domainkey.sandbox.test.".into()],
            &s
        ));
    }
}
