//! MTA-STS for outbound delivery (RFC 8461): which policy applies to a
//! recipient domain, found through its `_mta-sts` TXT record and fetched from
//! `https://mta-sts.DOMAIN/.well-known/mta-sts.txt`, and kept in the store
//! until it expires.
//!
//! - `policy`: the record and policy formats and MX pattern matching;
//! - `fetch`: the HTTPS fetch.
//!
//! The queue applies the policy (`queue.rs`): in `enforce` mode only MX hosts
//! the policy names, only over STARTTLS with a valid certificate; in
//! `testing` mode delivery as without a policy, with what would have failed
//! logged.

pub mod fetch;
pub mod policy;

pub use policy::{Mode, Policy};

use super::smtp::Outcome;
use super::Outbound;
use crate::domains::{lookup, presentation};
use crate::store::StoredPolicy;
use hickory_proto::rr::RecordType;
use std::net::SocketAddr;
use std::time::Duration;
use tracing::{debug, info, warn};

/// The longest a policy fetch may take (RFC 8461 §3.3 leaves it to the
/// sender; a minute is what it mentions for the whole fetch).
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

impl Outbound {
    /// The MTA-STS policy in force for mail to `domain` now, if any
    /// (RFC 8461 §5.1): the kept one while its TXT id is unchanged, and also
    /// while the TXT record cannot be found or the new policy cannot be
    /// fetched, until it expires; a new one when the id changed or none is
    /// kept.
    pub(super) async fn mta_sts(&self, domain: &str) -> Option<Policy> {
        let now = crate::store::now();
        let kept = match self.store.mta_sts_policy(domain).await {
            Ok(kept) => kept
                .filter(|k| k.expires_at > now)
                .and_then(|k| Some((Policy::parse(&k.policy).ok()?, k.policy_id))),
            Err(e) => {
                warn!(%domain, error = %e, "cannot read the kept MTA-STS policy");
                None
            }
        };
        let Some(id) = self.mta_sts_id(domain).await else {
            return kept.map(|(policy, _)| policy);
        };
        if let Some((policy, kept_id)) = &kept {
            if *kept_id == id {
                return Some(policy.clone());
            }
        }
        let host = format!("mta-sts.{domain}");
        let addrs: Vec<SocketAddr> = self
            .addresses(&host, self.config.mta_sts_port)
            .await
            .into_iter()
            .map(|(_, addr)| addr)
            .collect();
        let fetched = fetch::fetch(&host, &addrs, &self.trust.verified, FETCH_TIMEOUT)
            .await
            .map_err(|e| e.to_string())
            .and_then(|text| match Policy::parse(&text) {
                Ok(policy) => Ok((policy, text)),
                Err(e) => Err(format!("bad policy: {e}")),
            });
        match fetched {
            Ok((policy, text)) => {
                info!(%domain, %id, mode = ?policy.mode, mx = ?policy.mx, max_age = policy.max_age, "MTA-STS policy fetched");
                let stored = StoredPolicy {
                    policy_id: id,
                    policy: text,
                    fetched_at: now,
                    expires_at: now.saturating_add(policy.max_age as i64),
                };
                if let Err(e) = self.store.mta_sts_save(domain, &stored).await {
                    warn!(%domain, error = %e, "cannot keep the MTA-STS policy");
                }
                Some(policy)
            }
            Err(e) => {
                // §5.1: a fetch failure keeps the kept policy; without one,
                // the domain has no policy for now.
                warn!(%domain, error = %e, kept = kept.is_some(), "cannot fetch the MTA-STS policy");
                kept.map(|(policy, _)| policy)
            }
        }
    }

    /// The id of `domain`'s `_mta-sts` TXT record (RFC 8461 §3.1), asked
    /// without a cache so a new id is seen at once.
    async fn mta_sts_id(&self, domain: &str) -> Option<String> {
        let name = format!("_mta-sts.{domain}");
        match lookup(self.dns_server, &name, RecordType::TXT).await {
            Ok(records) => {
                let texts: Vec<String> = records.iter().map(|r| presentation(&r.data)).collect();
                policy::single_record_id(texts.iter().map(String::as_str))
            }
            Err(e) => {
                debug!(%domain, error = %e, "no MTA-STS record");
                None
            }
        }
    }
}

/// Of `domain`'s MX host names (by preference), those its policy lets mail
/// go to (RFC 8461 §4.1): in `enforce` mode only those, and none is a
/// temporary failure; otherwise all, a mismatch logged in `testing` mode.
pub(super) fn allowed_hosts(
    domain: &str,
    names: Vec<String>,
    policy: Option<&Policy>,
) -> Result<Vec<String>, Outcome> {
    let Some(policy) = policy else {
        return Ok(names);
    };
    let (allowed, refused): (Vec<String>, Vec<String>) =
        names.iter().cloned().partition(|n| policy.allows(n));
    match policy.mode {
        Mode::Enforce => {
            if !refused.is_empty() {
                warn!(%domain, ?refused, patterns = ?policy.mx, "MTA-STS (enforce): MX hosts not in the policy are skipped");
            }
            if allowed.is_empty() {
                return Err(Outcome::Temporary(format!(
                    "4.7.5 MTA-STS: no MX host of {domain} matches its policy"
                )));
            }
            Ok(allowed)
        }
        Mode::Testing => {
            if !refused.is_empty() {
                warn!(%domain, ?refused, patterns = ?policy.mx, "MTA-STS (testing): MX hosts not in the policy; delivering anyway");
            }
            Ok(names)
        }
        Mode::None => Ok(names),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_a_policy_allows() {
        let names = vec![
            "mx1.example.org".to_string(),
            "backup.example.net".to_string(),
        ];
        let mut policy = Policy {
            mode: Mode::Enforce,
            mx: vec!["*.example.org".into()],
            max_age: 86400,
        };
        assert_eq!(
            allowed_hosts("example.org", names.clone(), None),
            Ok(names.clone())
        );
        assert_eq!(
            allowed_hosts("example.org", names.clone(), Some(&policy)),
            Ok(vec!["mx1.example.org".to_string()])
        );
        policy.mx = vec!["other.example.com".into()];
        assert!(matches!(
            allowed_hosts("example.org", names.clone(), Some(&policy)),
            Err(Outcome::Temporary(t)) if t.starts_with("4.7.5")
        ));
        policy.mode = Mode::Testing;
        assert_eq!(
            allowed_hosts("example.org", names.clone(), Some(&policy)),
            Ok(names.clone())
        );
        policy.mode = Mode::None;
        assert_eq!(
            allowed_hosts("example.org", names.clone(), Some(&policy)),
            Ok(names)
        );
    }
}
