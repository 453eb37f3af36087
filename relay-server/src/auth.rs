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
use std::time::Duration;

use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use mail_auth::hickory_resolver::net::NetError;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimOutput, DmarcOutput, DmarcResult, DnsError,
    MessageAuthenticator, SpfOutput, SpfResult,
};
use tokio::time::{timeout_at, Instant};

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
            match timeout_at(checks_deadline, self.resolver.verify_spf(spf_params)).await {
                Ok(output) => output,
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
                let params = DmarcParameters::new(message, &dkim, spf_domain, &spf);
                match timeout_at(deadline, self.resolver.verify_dmarc(params)).await {
                    Ok(output) => Some(output),
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
mod tests {
    use super::*;

    use std::collections::HashMap;
    use std::error::Error;
    use std::sync::Arc;

    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use hickory_proto::op::{Message, ResponseCode};
    use hickory_proto::rr::rdata::TXT;
    use hickory_proto::rr::{RData, Record, RecordType};
    use mail_auth::common::crypto::Ed25519Key;
    use mail_auth::common::headers::HeaderWriter as _;
    use mail_auth::dkim::DkimSigner;
    use tokio::net::{TcpListener, UdpSocket};

    type TestResult = Result<(), Box<dyn Error>>;

    /// Ed25519 test key of the mail-auth examples (RFC 8463 format).
    const ED25519_SEED: &str = "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=";
    const ED25519_PUBLIC: &str = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

    const SENDER_IP: &str = "192.0.2.1";
    const OTHER_IP: &str = "198.51.100.7";

    const MESSAGE: &str = "From: Alice <alice@example.org>\r\n\
        To: bob@relay.test\r\n\
        Subject: hello\r\n\
        Message-ID: <1@example.org>\r\n\
        \r\n\
        Hello Bob.\r\n";

    /// A tiny authoritative DNS server on loopback UDP that answers TXT queries from
    /// `zone`, NODATA for other types of a known name, and NXDOMAIN otherwise.
    async fn fake_dns(zone: HashMap<String, Vec<String>>) -> Result<SocketAddr, Box<dyn Error>> {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        let address = socket.local_addr()?;
        let zone = Arc::new(zone);
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 4096];
            loop {
                let Ok((len, peer)) = socket.recv_from(&mut buffer).await else {
                    return;
                };
                let Some(Ok(query)) = buffer.get(..len).map(Message::from_vec) else {
                    continue;
                };
                let mut response = Message::response(query.metadata.id, query.metadata.op_code);
                response.metadata.recursion_desired = query.metadata.recursion_desired;
                response.metadata.recursion_available = true;
                response.metadata.authoritative = true;
                let mut known = false;
                for question in &query.queries {
                    response.add_query(question.clone());
                    let name = question
                        .name()
                        .to_ascii()
                        .trim_end_matches('.')
                        .to_ascii_lowercase();
                    if let Some(texts) = zone.get(&name) {
                        known = true;
                        if question.query_type() == RecordType::TXT {
                            for text in texts {
                                response.add_answer(Record::from_rdata(
                                    question.name().clone(),
                                    60,
                                    RData::TXT(TXT::new(vec![text.clone()])),
                                ));
                            }
                        }
                    }
                }
                if !known {
                    response.metadata.response_code = ResponseCode::NXDomain;
                }
                if let Ok(bytes) = response.to_vec() {
                    let _ = socket.send_to(&bytes, peer).await;
                }
            }
        });
        Ok(address)
    }

    fn example_zone() -> HashMap<String, Vec<String>> {
        let record = |text: String| vec![text];
        HashMap::from([
            (
                "example.org".to_string(),
                record(format!("v=spf1 ip4:{SENDER_IP} -all")),
            ),
            (
                "mail.example.org".to_string(),
                record(format!("v=spf1 ip4:{SENDER_IP} -all")),
            ),
            (
                "_dmarc.example.org".to_string(),
                record("v=DMARC1; p=reject".to_string()),
            ),
            (
                "sel._domainkey.example.org".to_string(),
                record(format!("v=DKIM1; k=ed25519; p={ED25519_PUBLIC}")),
            ),
        ])
    }

    fn signed_message() -> Result<String, Box<dyn Error>> {
        let key = Ed25519Key::from_seed_and_public_key(
            &STANDARD.decode(ED25519_SEED)?,
            &STANDARD.decode(ED25519_PUBLIC)?,
        )?;
        let signature = DkimSigner::from_key(key)
            .domain("example.org")
            .selector("sel")
            .headers(["From", "To", "Subject", "Message-ID"])
            .sign(MESSAGE.as_bytes())?;
        Ok(format!("{}{MESSAGE}", signature.to_header()))
    }

    fn assert_shape(header: &str) {
        assert!(
            header.starts_with("Authentication-Results: relay.test;"),
            "{header}"
        );
        assert!(header.ends_with("\r\n"), "{header}");
        assert_eq!(
            header.matches("\r\n").count(),
            header.matches("\r\n\t").count() + 1
        );
        for method in ["spf=", "dkim=", "dmarc="] {
            assert!(header.contains(method), "no {method} in {header}");
        }
    }

    /// An unused loopback port: bound, read, then released.
    async fn unused_port() -> Result<SocketAddr, Box<dyn Error>> {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        Ok(socket.local_addr()?)
    }

    #[test]
    fn rejects_unusable_host_names() {
        let nameserver = SocketAddr::from(([127, 0, 0, 1], 53));
        for name in [
            "",
            "relay test",
            "relay;test",
            "-relay.test",
            "a..b",
            "relay.test\r\nX-Injected: yes",
        ] {
            assert!(
                matches!(
                    Authenticator::new(nameserver, name),
                    Err(AuthError::InvalidHostname(_))
                ),
                "{name:?} accepted"
            );
        }
        assert!(Authenticator::new(nameserver, "Relay.Test.").is_ok());
    }

    #[test]
    fn authentication_future_is_send() -> TestResult {
        fn assert_send<T: Send>(_: &T) {}
        let authenticator =
            Authenticator::new(SocketAddr::from(([127, 0, 0, 1], 53)), "relay.test")?;
        let ip = IpAddr::from([192, 0, 2, 1]);
        assert_send(&authenticator.authentication_results(ip, "a.test", "", b""));
        Ok(())
    }

    #[test]
    fn reverse_path_forms() {
        assert_eq!(bare_address(" <a@b.test> "), "a@b.test");
        assert_eq!(bare_address("<>"), "");
        assert_eq!(bare_address("a@b.test"), "a@b.test");
        assert_eq!(domain_of("a@B.test."), Some("B.test"));
        assert_eq!(domain_of("a@"), None);
    }

    /// The header for one message, checked against a DNS server holding the
    /// example.org zone.
    async fn example_results(
        ip: &str,
        helo: &str,
        mail_from: &str,
        message: &[u8],
    ) -> Result<String, Box<dyn std::error::Error>> {
        let authenticator = Authenticator::new(fake_dns(example_zone()).await?, "relay.test")?;
        Ok(authenticator
            .authentication_results(ip.parse()?, helo, mail_from, message)
            .await)
    }

    #[tokio::test]
    async fn nameserver_refusing_gives_temperror_within_budget() -> TestResult {
        let authenticator = Authenticator::new(unused_port().await?, "relay.test")?;
        let started = Instant::now();
        let header = authenticator
            .authentication_results(
                SENDER_IP.parse()?,
                "mail.example.org",
                "alice@example.org",
                signed_message()?.as_bytes(),
            )
            .await;
        assert!(
            started.elapsed() <= TIME_BUDGET + Duration::from_secs(1),
            "{header}"
        );
        assert_shape(&header);
        assert!(header.contains("spf=temperror"), "{header}");
        assert!(header.contains("dkim=temperror"), "{header}");
        assert!(header.contains("dmarc=temperror"), "{header}");
        Ok(())
    }

    #[tokio::test]
    async fn silent_nameserver_cannot_hold_the_session() -> TestResult {
        // A server that takes queries over UDP and TCP and never answers.
        let udp = UdpSocket::bind("127.0.0.1:0").await?;
        let address = udp.local_addr()?;
        let _tcp = TcpListener::bind(address).await?;
        let budget = Duration::from_millis(1500);
        let authenticator = Authenticator::with_budget(address, "relay.test", budget)?;

        let started = Instant::now();
        let header = authenticator
            .authentication_results(
                SENDER_IP.parse()?,
                "mail.example.org",
                "alice@example.org",
                MESSAGE.as_bytes(),
            )
            .await;
        assert!(
            started.elapsed() < budget + Duration::from_millis(500),
            "{header}"
        );
        assert_shape(&header);
        assert!(header.contains("spf=temperror"), "{header}");
        assert!(header.contains("dkim=none"), "{header}");
        assert!(header.contains("dmarc=temperror"), "{header}");
        assert!(header.contains("header.from=example.org"), "{header}");
        drop(udp);
        Ok(())
    }

    #[tokio::test]
    async fn aligned_signed_mail_passes() -> TestResult {
        let header = example_results(
            SENDER_IP,
            "mail.example.org",
            "<alice@example.org>",
            signed_message()?.as_bytes(),
        )
        .await?;
        assert_shape(&header);
        assert!(header.contains("spf=pass"), "{header}");
        assert!(
            header.contains("smtp.mailfrom=alice@example.org"),
            "{header}"
        );
        assert!(
            header.contains("dkim=pass header.d=example.org header.s=sel"),
            "{header}"
        );
        assert!(
            header.contains("dmarc=pass header.from=example.org"),
            "{header}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn forged_unsigned_mail_fails() -> TestResult {
        let header = example_results(
            OTHER_IP,
            "forger.test",
            "alice@example.org",
            MESSAGE.as_bytes(),
        )
        .await?;
        assert_shape(&header);
        assert!(header.contains("spf=fail"), "{header}");
        assert!(header.contains("dkim=none"), "{header}");
        assert!(
            header.contains("dmarc=fail") && header.contains("policy.dmarc=reject"),
            "{header}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn null_reverse_path_checks_helo() -> TestResult {
        let header = example_results(SENDER_IP, "mail.example.org", "", MESSAGE.as_bytes()).await?;
        assert_shape(&header);
        assert!(header.contains("spf=pass"), "{header}");
        assert!(header.contains("postmaster@mail.example.org"), "{header}");
        assert!(header.contains("smtp.helo=mail.example.org"), "{header}");
        Ok(())
    }

    #[tokio::test]
    async fn unparsable_message_still_reports_spf() -> TestResult {
        let header = example_results(
            SENDER_IP,
            "mail.example.org",
            "alice@example.org",
            b"\r\nno headers at all\r\n",
        )
        .await?;
        assert_shape(&header);
        assert!(header.contains("spf=pass"), "{header}");
        assert!(header.contains("dkim=permerror"), "{header}");
        assert!(header.contains("dmarc=none"), "{header}");
        Ok(())
    }

    #[tokio::test]
    async fn hostile_envelope_cannot_break_the_header() -> TestResult {
        let header = example_results(
            OTHER_IP,
            "evil.test\r\nX-Injected: yes",
            "a\"b\r\nX-Injected: yes@example.org",
            MESSAGE.as_bytes(),
        )
        .await?;
        assert_shape(&header);
        assert!(!header.contains("\r\nX-Injected"), "{header}");
        Ok(())
    }
}
