//! Message authentication at the MX: SPF (RFC 7208), DKIM (RFC 6376) and DMARC
//! (RFC 7489), reported in one `Authentication-Results` header field (RFC 8601).
//!
//! The checks are done by the `mail-auth` crate; this module composes them, points
//! them at the one DNS server the relay is configured with (never the system
//! resolver), bounds the time they may take, and turns every outcome, DNS failures
//! included, into a header line. It never fails: a message is never refused here,
//! it is only labelled.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use mail_auth::hickory_resolver::net::NetError;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimOutput, DmarcOutput, DmarcResult, DnsError,
    MessageAuthenticator, Parameters, SpfOutput, SpfResult,
};
use tokio::time::{timeout_at, Instant};

#[path = "auth_failures.rs"]
mod failures;
use failures::FailureCache;

/// Longest time one `authentication_results` call may take, all DNS lookups included.
const TIME_BUDGET: Duration = Duration::from_secs(5);

/// Time the resolver waits for one answer before it gives up on a query.
const DNS_TIMEOUT: Duration = Duration::from_secs(2);

/// How many times the resolver asks before it reports an error.
const DNS_ATTEMPTS: usize = 2;

/// Longest host name (RFC 1035 §2.3.4: 255 octets on the wire, 253 as text).
const MAX_HOSTNAME_LEN: usize = 253;

/// A resolver asking only `nameserver` (UDP, then TCP), with the relay's
/// time limits, no hosts file and no search list (names are fully
/// qualified).
pub(crate) fn resolver_setup(nameserver: SocketAddr) -> (ResolverConfig, ResolverOpts) {
    let mut udp = ConnectionConfig::udp();
    udp.port = nameserver.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = nameserver.port();
    let server = NameServerConfig::new(nameserver.ip(), true, vec![udp, tcp]);
    let config = ResolverConfig::from_name_servers(vec![server]);

    let mut options = ResolverOpts::default();
    options.timeout = DNS_TIMEOUT;
    options.attempts = DNS_ATTEMPTS;
    options.use_hosts_file = ResolveHosts::Never;
    options.try_tcp_on_error = true;
    options.ndots = 0;
    (config, options)
}

/// Runs SPF, DKIM and DMARC for the relay's MX and writes the
/// `Authentication-Results` header field for each received message.
///
/// Cheap to clone: clones share the resolver and its cache.
#[derive(Clone)]
pub struct Authenticator {
    resolver: MessageAuthenticator,
    nameserver: SocketAddr,
    hostname: String,
    budget: Duration,
    /// TXT names whose lookup failed moments ago (RFC 9520).
    failures: Arc<FailureCache>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("nameserver", &self.nameserver)
            .field("hostname", &self.hostname)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

/// Why an [`Authenticator`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The host name is not usable as the authserv-id of RFC 8601 §2.5.
    #[error(
        "relay host name {0:?} is not a valid DNS name; set the relay's host name to a \
         fully qualified name such as mx.example.org"
    )]
    InvalidHostname(String),
    /// The DNS resolver could not be set up.
    #[error(
        "cannot set up the DNS resolver for {nameserver}: {source}; check the resolver address"
    )]
    Resolver {
        /// The configured DNS server.
        nameserver: SocketAddr,
        /// What the resolver reported.
        #[source]
        source: NetError,
    },
}

impl Authenticator {
    /// Builds an authenticator that asks only `nameserver` (over UDP, and TCP for
    /// truncated or failed answers), never the system resolver or `/etc/hosts`.
    ///
    /// `nameserver`: the one DNS server (UDP and TCP) to ask, e.g. `127.0.0.1:5353`.
    /// `hostname`: this relay's host name, the authserv-id of the
    /// `Authentication-Results` header field (RFC 8601 §2.5).
    pub fn new(nameserver: SocketAddr, hostname: &str) -> Result<Self, AuthError> {
        Self::with_budget(nameserver, hostname, TIME_BUDGET)
    }

    /// [`Authenticator::new`] with a chosen total time budget per message.
    fn with_budget(
        nameserver: SocketAddr,
        hostname: &str,
        budget: Duration,
    ) -> Result<Self, AuthError> {
        let hostname = hostname.trim().trim_end_matches('.');
        if !is_valid_hostname(hostname) {
            return Err(AuthError::InvalidHostname(hostname.to_string()));
        }

        let (config, options) = resolver_setup(nameserver);
        let resolver = MessageAuthenticator::new(config, options)
            .map_err(|source| AuthError::Resolver { nameserver, source })?;
        Ok(Self {
            resolver,
            nameserver,
            hostname: hostname.to_ascii_lowercase(),
            budget,
            failures: Arc::default(),
        })
    }

    /// The DNS server the resolver asks.
    pub fn nameserver(&self) -> SocketAddr {
        self.nameserver
    }

    /// This relay's host name as written in the header field (the authserv-id).
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// The resolver, pointed at the configured DNS server (for the outbound
    /// queue's DKIM check and MX lookups).
    pub fn resolver(&self) -> &MessageAuthenticator {
        &self.resolver
    }

    /// Evaluates SPF, DKIM and DMARC for one message and returns the complete header
    /// line `Authentication-Results: <hostname>; spf=...; dkim=...; dmarc=...\r\n`
    /// (RFC 8601 §2.2), folded as mail-auth folds it, ready to prepend to the message.
    ///
    /// - SPF (RFC 7208 §2.4) checks the MAIL FROM identity; when the reverse-path is
    ///   null it checks `postmaster@<helo>` instead (RFC 7208 §2.4) and reports it as
    ///   `smtp.helo` (RFC 8601 §2.7.2).
    /// - DKIM (RFC 6376 §6) checks every signature, one `dkim=` entry each; an unsigned
    ///   message gets `dkim=none` (RFC 8601 §2.7.1), one that cannot be parsed
    ///   `dkim=permerror`.
    /// - DMARC (RFC 7489 §6.6) aligns the RFC5322.From domain with the SPF and DKIM
    ///   results; without a single From domain the result is `dmarc=none`
    ///   (RFC 7489 §11.2).
    ///
    /// Never fails: DNS errors become `temperror` or `none` as the RFCs say. SPF and
    /// DKIM run side by side; the whole call takes at most the time budget (5 s), and
    /// a check still waiting for DNS then reports `temperror`, so a dead resolver
    /// cannot hold an SMTP session.
    ///
    /// `mail_from` is the reverse-path address without angle brackets (brackets are
    /// tolerated), empty for the null reverse-path; `helo` is the HELO/EHLO argument,
    /// which the MX has before any MAIL command (RFC 5321 §4.1.4).
    pub async fn authentication_results(
        &self,
        remote_ip: IpAddr,
        helo: &str,
        mail_from: &str,
        message: &[u8],
    ) -> String {
        let start = Instant::now();
        // SPF and DKIM get three fifths of the budget, so DMARC, which needs both,
        // always has time for its own lookup.
        let checks_deadline = start + self.budget * 3 / 5;
        let deadline = start + self.budget;

        let helo = helo.trim().trim_end_matches('.');
        let mail_from = bare_address(mail_from);
        let parsed = AuthenticatedMessage::parse(message);

        // RFC 7208 §2.4: with a null reverse-path, check_host() gets the HELO domain
        // and the sender `postmaster@<helo>`.
        let (spf_params, spf_domain) = if mail_from.is_empty() {
            (
                SpfParameters::verify_ehlo(remote_ip, helo, &self.hostname),
                helo,
            )
        } else {
            (
                SpfParameters::verify_mail_from(remote_ip, helo, &self.hostname, mail_from),
                domain_of(mail_from).unwrap_or(helo),
            )
        };

        let spf_check = async {
            let lookups = self.failures.lookups();
            let params = Parameters::new(spf_params).with_txt_cache(&lookups);
            let checked = timeout_at(checks_deadline, self.resolver.verify_spf(params)).await;
            match checked {
                Ok(output) => {
                    lookups.finish(output.result() == SpfResult::TempError);
                    output
                }
                Err(_) => {
                    tracing::warn!(check = "spf", domain = spf_domain, "DNS time budget spent");
                    // RFC 7208 §2.6.6: a transient DNS error is a temperror.
                    SpfOutput::new(spf_domain.to_string()).with_result(SpfResult::TempError)
                }
            }
        };
        let dkim_check = async {
            let Some(message) = parsed.as_ref() else {
                return Vec::new();
            };
            match timeout_at(checks_deadline, self.resolver.verify_dkim(message)).await {
                Ok(outputs) => outputs,
                Err(_) => {
                    tracing::warn!(check = "dkim", "DNS time budget spent");
                    // RFC 6376 §6.1.2: a key that cannot be fetched for a transient
                    // reason gives TEMPFAIL (temperror in RFC 8601 §2.7.1).
                    message
                        .dkim_headers
                        .iter()
                        .map(|header| {
                            DkimOutput::temp_err(budget_spent()).with_signature(&header.header)
                        })
                        .collect()
                }
            }
        };
        let (spf, dkim) = tokio::join!(spf_check, dkim_check);

        // RFC 7489 §3.1.2 with RFC 7208 §2.4: the SPF-authenticated identifier is
        // the MAIL FROM domain, or the HELO domain when MAIL FROM is null.
        let dmarc = match parsed.as_ref() {
            Some(message) => {
                let lookups = self.failures.lookups();
                let params =
                    Parameters::new(DmarcParameters::new(message, &dkim, spf_domain, &spf))
                        .with_txt_cache(&lookups);
                match timeout_at(deadline, self.resolver.verify_dmarc(params)).await {
                    Ok(output) => {
                        // The record walk failed (every other temperror comes
                        // with the record found).
                        let walk_failed = output.dmarc_record().is_none()
                            && matches!(output.dkim_result(), DmarcResult::TempError(_));
                        lookups.finish(walk_failed);
                        Some(output)
                    }
                    Err(_) => {
                        tracing::warn!(check = "dmarc", "DNS time budget spent");
                        // RFC 7489 §6.6.3: a transient failure to fetch the policy
                        // record is a temperror.
                        Some(match author_domain(message) {
                            Some(domain) => DmarcOutput::default()
                                .with_domain(&domain)
                                .with_spf_result(DmarcResult::TempError(budget_spent()))
                                .with_dkim_result(DmarcResult::TempError(budget_spent())),
                            None => DmarcOutput::default(),
                        })
                    }
                }
            }
            None => None,
        };

        self.render(
            remote_ip,
            helo,
            mail_from,
            &spf,
            parsed.as_ref().map(|message| (message, dkim.as_slice())),
            dmarc.as_ref(),
        )
    }

    /// Writes the header line; `dkim` is `None` when the message could not be parsed.
    fn render(
        &self,
        remote_ip: IpAddr,
        helo: &str,
        mail_from: &str,
        spf: &SpfOutput,
        dkim: Option<(&AuthenticatedMessage<'_>, &[DkimOutput<'_>])>,
        dmarc: Option<&DmarcOutput>,
    ) -> String {
        let mut header = String::with_capacity(512);
        header.push_str("Authentication-Results: ");

        // The builders' Display writes `<authserv-id>` followed by `;\r\n\t<method>=...`
        // for each result; an empty authserv-id yields just the result entries.
        let spf_entry = AuthenticationResults::new(&self.hostname);
        let spf_entry = if mail_from.is_empty() {
            spf_entry.with_spf_ehlo_result(spf, remote_ip, helo)
        } else {
            spf_entry.with_spf_mailfrom_result(spf, remote_ip, mail_from, helo)
        };
        // Writing to a String cannot fail.
        let _ = write!(header, "{spf_entry}");

        match dkim {
            Some((_, [])) => header.push_str(";\r\n\tdkim=none"),
            Some((message, outputs)) => {
                let entries =
                    AuthenticationResults::new("").with_dkim_results(outputs, message.from());
                let _ = write!(header, "{entries}");
            }
            None => header.push_str(";\r\n\tdkim=permerror (message could not be parsed)"),
        }

        match dmarc {
            Some(dmarc) if !dmarc.domain().is_empty() => {
                let entry = AuthenticationResults::new("").with_dmarc_result(dmarc);
                let _ = write!(header, "{entry}");
            }
            // RFC 7489 §11.2: no identifier could be extracted, so none.
            _ => header.push_str(";\r\n\tdmarc=none"),
        }

        header.push_str("\r\n");
        header
    }
}

/// The error recorded when a check runs out of time; rendered as "dns error".
fn budget_spent() -> mail_auth::Error {
    mail_auth::Error::Dns(DnsError::Resolver("time budget spent".to_string()))
}

/// The reverse-path without surrounding blanks and angle brackets.
fn bare_address(mail_from: &str) -> &str {
    let trimmed = mail_from.trim();
    trimmed
        .strip_prefix('<')
        .and_then(|rest| rest.strip_suffix('>'))
        .unwrap_or(trimmed)
        .trim()
}

/// The domain part of an address, if it has a non-empty one.
fn domain_of(address: &str) -> Option<&str> {
    address
        .rsplit_once('@')
        .map(|(_, domain)| domain.trim_end_matches('.'))
        .filter(|domain| !domain.is_empty())
}

/// The single RFC5322.From domain (RFC 7489 §3.1), or `None` when there is none or
/// the From addresses span several domains (RFC 7489 §6.6.1).
fn author_domain(message: &AuthenticatedMessage<'_>) -> Option<String> {
    let mut found: Option<String> = None;
    for address in message.froms() {
        let domain = domain_of(address)?.to_ascii_lowercase();
        match &found {
            Some(existing) if *existing != domain => return None,
            Some(_) => {}
            None => found = Some(domain),
        }
    }
    found
}

/// Whether `name` is a plain DNS host name (letters, digits, hyphens, dots), usable
/// unquoted as the authserv-id of RFC 8601 §2.5.
fn is_valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_HOSTNAME_LEN
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
        })
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
