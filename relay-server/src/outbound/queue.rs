//! The delivery worker: claims due recipients, groups them by domain, and
//! delivers each group — to hosted accounts through the MX's encrypt-then-
//! spool path, to others over one SMTP connection per destination — and
//! hands each outcome to `outcome`.

use super::dane::{HostDane, SecureMx};
use super::mta_sts::Mode;
use super::outcome::Done;
use super::pool::Target;
use super::smtp::{Connection, Outcome, SmtpError, TlsRequirement};
use super::Outbound;
use crate::mx::session::{AcceptedRcpt, StoreVerdict, Transaction};
use crate::store::DueRcpt;
use mail_auth::hickory_resolver::proto::op::ResponseCode;
use omb_shared::types::Address;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tracing::{debug, info, info_span, warn, Instrument};

/// Recipients claimed per look at the queue.
const BATCH: i64 = 500;

/// How long the worker waits after a look that found mail, before the next:
/// nothing for mail that must not wait, enough for a pass to carry several
/// messages down one connection when they stream in.
const GATHER: Duration = Duration::from_millis(50);

/// Hosts by name (for TLS) and address.
type Hosts = Vec<(String, SocketAddr)>;

impl Outbound {
    /// Runs the worker for ever.
    pub async fn run(self: Arc<Self>) {
        let slots = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let poll = Duration::from_millis(self.config.poll_ms.max(10));
        let reaper = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                reaper.pool.reap();
            }
        });
        let lease = self.lease();
        loop {
            match self.store.outbound_claim(BATCH, lease).await {
                Ok(due) if !due.is_empty() => {
                    let claimed = Instant::now();
                    let full = due.len() as i64 >= BATCH;
                    let mut by_domain: BTreeMap<String, Vec<DueRcpt>> = BTreeMap::new();
                    for d in due {
                        by_domain.entry(d.domain.clone()).or_default().push(d);
                    }
                    for (domain, rcpts) in by_domain {
                        let Ok(permit) = slots.clone().acquire_owned().await else {
                            return;
                        };
                        let this = self.clone();
                        let span = info_span!("outbound", %domain);
                        tokio::spawn(
                            async move {
                                this.deliver_domain(&domain, rcpts, claimed).await;
                                drop(permit);
                            }
                            .instrument(span),
                        );
                    }
                    // Under a steady stream, let a few more messages come
                    // before the next look: one pass (one connection) then
                    // carries several, instead of one each.
                    if full {
                        continue;
                    }
                    tokio::time::sleep(GATHER).await;
                    continue;
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "cannot read the outbound queue"),
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// Seconds a claim holds its recipients: if its worker dies, they come
    /// back after this long.
    fn lease(&self) -> i64 {
        (self.config.timeout_secs * 5).max(60) as i64
    }

    async fn deliver_domain(&self, domain: &str, rcpts: Vec<DueRcpt>, claimed: Instant) {
        let mut done = Done::default();
        self.deliver_domain_to(domain, rcpts, claimed, &mut done)
            .await;
        self.flush(&mut done).await;
    }

    async fn deliver_domain_to(
        &self,
        domain: &str,
        rcpts: Vec<DueRcpt>,
        claimed: Instant,
        done: &mut Done,
    ) {
        // Hosted recipients never leave the relay. Only the relay's own
        // names and verified custom domains can have any.
        let remote = match self.may_be_hosted(domain).await {
            Ok(false) => rcpts,
            Ok(true) => {
                let mut remote = Vec::new();
                for r in rcpts {
                    match self.store.route(&r.rcpt, &self.relay_domain, None).await {
                        Ok(Some(hosted)) => {
                            let outcome = self.deliver_local(&r, &hosted.handle).await;
                            self.record(&r, outcome, None, done).await;
                        }
                        Ok(None) => remote.push(r),
                        Err(e) => {
                            let outcome =
                                Outcome::Temporary(format!("4.3.0 recipient look-up failed: {e}"));
                            self.record(&r, outcome, None, done).await;
                        }
                    }
                }
                remote
            }
            Err(e) => {
                let outcome = Outcome::Temporary(format!("4.3.0 recipient look-up failed: {e}"));
                for r in &rcpts {
                    self.record(r, outcome.clone(), None, done).await;
                }
                return;
            }
        };
        if remote.is_empty() {
            return;
        }
        let (targets, mode) = match self.destination(domain).await {
            Ok(found) => found,
            Err(outcome) => {
                for r in &remote {
                    self.record(r, outcome.clone(), None, done).await;
                }
                return;
            }
        };
        let (target, mut conn) = match self.connect(&targets, mode).await {
            Ok(found) => found,
            Err(outcome) => {
                for r in &remote {
                    self.record(r, outcome.clone(), None, done).await;
                }
                return;
            }
        };
        let host = target.name.clone();
        // One transaction per message, all on this connection.
        let mut by_message: BTreeMap<String, Vec<DueRcpt>> = BTreeMap::new();
        for r in remote {
            by_message.entry(r.id.clone()).or_default().push(r);
        }
        let mut broken: Option<String> = None;
        // A pass starts no message after a quarter of its lease, so that no
        // recipient is still being sent when the lease ends and another
        // worker claims it; the rest go back to the queue, due at once.
        let deadline = claimed + Duration::from_secs(self.lease() as u64 / 4);
        let mut released = Vec::new();
        for rcpts in by_message.into_values() {
            if Instant::now() >= deadline {
                released.extend(rcpts.into_iter().map(|r| (r.id, r.rcpt)));
                continue;
            }
            let outcomes = match (&broken, self.message_data(&rcpts[0]).await) {
                (Some(e), _) => vec![Outcome::Temporary(e.clone()); rcpts.len()],
                (None, Ok(Some(data))) => {
                    let list: Vec<String> = rcpts.iter().map(|r| r.rcpt.clone()).collect();
                    match conn.send(&rcpts[0].mail_from, &list, &data).await {
                        Ok(o) => o,
                        Err(e) => {
                            let text = format!("4.4.2 {e}");
                            broken = Some(text.clone());
                            vec![Outcome::Temporary(text); rcpts.len()]
                        }
                    }
                }
                (None, Ok(None)) => continue,
                (None, Err(e)) => vec![Outcome::Temporary(format!("4.3.0 {e}")); rcpts.len()],
            };
            for (r, outcome) in rcpts.iter().zip(outcomes) {
                self.record(r, outcome, Some(&host), done).await;
            }
        }
        if !released.is_empty() {
            info!(
                count = released.len(),
                "a long pass: recipients handed back to the queue"
            );
            if let Err(e) = self.store.outbound_release(released).await {
                // They come back when their lease ends.
                warn!(error = %e, "cannot hand recipients back to the queue");
            }
            self.wake.notify_one();
        }
        if broken.is_none() {
            self.pool.put(target, conn);
        }
    }

    /// A connection to the first of `targets` that answers: one kept from an
    /// earlier pass when there is one, else a new one, tried in order.
    async fn connect(
        &self,
        targets: &[Target],
        mode: Option<Mode>,
    ) -> Result<(Target, Connection), Outcome> {
        for target in targets {
            if let Some(conn) = self.pool.take(target).await {
                return Ok((target.clone(), conn));
            }
        }
        let timeout = Duration::from_secs(self.config.timeout_secs.max(1));
        let mut last_error = String::from("4.4.1 no host to try");
        let mut permanent = false;
        for target @ Target { name, addr, tls } in targets {
            match Connection::open(*addr, name, &self.hostname, &self.trust, tls, timeout).await {
                Ok(c) => {
                    let (dane, tlsa_base) = match tls {
                        TlsRequirement::Dane(d) => (true, Some(tracing::field::display(&d.base))),
                        _ => (false, None),
                    };
                    info!(host = %name, %addr, tls = c.tls, pkix = c.pkix.is_ok(), dane, tlsa_base, "connected");
                    if let (Some(Mode::Testing), Err(why)) = (mode, &c.pkix) {
                        warn!(host = %name, error = %why, "MTA-STS (testing): this MX fails the domain's policy; delivering anyway");
                    }
                    return Ok((target.clone(), c));
                }
                Err(e) => {
                    debug!(host = %name, error = %e, "cannot deliver through this host");
                    permanent = e.permanent();
                    last_error = match &e {
                        SmtpError::Refused(_, reply) => reply.to_string(),
                        SmtpError::TlsRequired(_, policy, _) => {
                            warn!(host = %name, error = %e, "{policy}: not delivering through this MX");
                            format!("4.7.5 {e}")
                        }
                        other => format!("4.4.1 {other}"),
                    };
                }
            }
        }
        Err(match permanent {
            true => Outcome::Permanent(last_error),
            false => Outcome::Temporary(last_error),
        })
    }

    /// Where mail for `domain` goes: its static route (as the operator set
    /// it: no DANE, no MTA-STS), or its MX hosts by preference (RFC 5321
    /// §5.1; the domain itself when it has no MX) — under DANE when the MX
    /// RRset is secure and a host has secure TLSA records (RFC 7672), else
    /// those its MTA-STS policy allows, with that policy's mode.
    async fn destination(&self, domain: &str) -> Result<(Vec<Target>, Option<Mode>), Outcome> {
        if let Some(route) = self.config.routes.get(domain) {
            let hosts = if let Ok(addr) = route.parse::<SocketAddr>() {
                vec![(domain.to_string(), addr)]
            } else {
                let Some((host, port)) = route.rsplit_once(':') else {
                    return Err(Outcome::Temporary(format!(
                        "4.3.5 bad static route {route:?}"
                    )));
                };
                self.addresses(host, port.parse().unwrap_or(25)).await
            };
            let targets = hosts
                .into_iter()
                .map(|(name, addr)| Target {
                    name,
                    addr,
                    tls: TlsRequirement::Opportunistic,
                })
                .collect();
            return Ok((targets, None));
        }
        let (names, secure) = self.mx_hosts(domain).await?;
        // A null MX (RFC 7505): the domain takes no mail.
        if names.len() == 1 && names[0].is_empty() {
            return Err(Outcome::Permanent(format!(
                "556 5.1.10 {domain} accepts no mail (null MX)"
            )));
        }
        let mut dane = Vec::new();
        if let (true, Some(resolver)) = (secure, &self.dane) {
            for name in &names {
                dane.push((name.clone(), resolver.host(name, self.config.mx_port).await));
            }
        }
        let dane_applies = dane
            .iter()
            .any(|(_, h)| matches!(h, HostDane::Authenticated(_) | HostDane::Encrypted));
        // RFC 8461 §2: where DANE applies, MTA-STS does not.
        let (names, mode) = if dane_applies {
            info!(%domain, "DANE: secure TLSA records; MTA-STS not consulted");
            (names, None)
        } else {
            let policy = self.mta_sts(domain).await;
            let names = super::mta_sts::allowed_hosts(domain, names, policy.as_ref())?;
            (names, policy.map(|p| p.mode))
        };
        let default = match mode {
            Some(Mode::Enforce) => TlsRequirement::Verified,
            _ => TlsRequirement::Opportunistic,
        };
        let mut targets = Vec::new();
        let mut failed = None;
        for name in names {
            let tls = match dane.iter().find(|(n, _)| *n == name).map(|(_, h)| h) {
                Some(HostDane::Authenticated(dane)) => TlsRequirement::Dane(dane.clone()),
                Some(HostDane::Encrypted) => TlsRequirement::Encrypted,
                // RFC 7672 §2.2.3: a host whose TLSA records cannot be
                // looked up securely is not used.
                Some(HostDane::Failed(why)) => {
                    warn!(host = %name, error = %why, "DANE: not delivering through this MX now");
                    failed = Some(why.clone());
                    continue;
                }
                Some(HostDane::None) | None => default.clone(),
            };
            for (name, addr) in self.addresses(&name, self.config.mx_port).await {
                let tls = tls.clone();
                targets.push(Target { name, addr, tls });
            }
        }
        if targets.is_empty() {
            return Err(Outcome::Temporary(match failed {
                Some(why) => format!("4.7.5 DANE: {why}"),
                None => format!("4.4.4 no address for the mail servers of {domain}"),
            }));
        }
        Ok((targets, mode))
    }

    /// `domain`'s MX host names by preference, and whether DNSSEC proved
    /// them (the validated answer is used then; with no MX, the domain
    /// itself when its addresses are proved); a bogus MX RRset is a
    /// temporary failure (RFC 7672 §2.2.1).
    async fn mx_hosts(&self, domain: &str) -> Result<(Vec<String>, bool), Outcome> {
        if let Some(dane) = &self.dane {
            match dane.mx(domain).await {
                Ok(SecureMx::Secure(names)) if !names.is_empty() => return Ok((names, true)),
                // No MX: the domain is its own host (RFC 5321 §5.1), under
                // DANE when its address records are secure (RFC 7672 §2.2.1).
                Ok(SecureMx::Absent) if dane.addresses_secure(domain).await == Ok(true) => {
                    return Ok((vec![domain.to_string()], true))
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(Outcome::Temporary(format!(
                        "4.7.5 DNSSEC look-up of the MX records of {domain}: {e}"
                    )))
                }
            }
        }
        let resolver = self.delivery_dns.resolver();
        let mut names: Vec<String> = match resolver.mx_lookup(domain, NO_MX_CACHE).await {
            Ok(mx) => mx
                .rrset
                .iter()
                .flat_map(|m| {
                    m.exchanges
                        .iter()
                        .map(|e| e.trim_end_matches('.').to_string())
                })
                .collect(),
            Err(mail_auth::Error::Dns(mail_auth::DnsError::RecordNotFound(
                ResponseCode::NXDomain,
            ))) => {
                return Err(Outcome::Permanent(format!(
                    "550 5.1.2 the domain {domain} does not exist"
                )))
            }
            Err(mail_auth::Error::Dns(mail_auth::DnsError::RecordNotFound(_))) => Vec::new(),
            Err(e) => {
                return Err(Outcome::Temporary(format!(
                    "4.4.3 MX lookup for {domain}: {e}"
                )))
            }
        };
        if names.is_empty() {
            // No MX: the domain itself (RFC 5321 §5.1).
            names.push(domain.to_string());
        }
        Ok((names, false))
    }

    /// `host`'s addresses (RFC 5321 §5.1): its IPv4 ones first, then its
    /// IPv6 ones, each tried in turn until one answers; an IP literal as it
    /// is.
    pub(super) async fn addresses(&self, host: &str, port: u16) -> Hosts {
        if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
            return vec![(host.to_string(), SocketAddr::new(ip, port))];
        }
        let resolver = self.delivery_dns.resolver();
        let (v4, v6) = tokio::join!(
            resolver.ipv4_lookup(host, NO_V4_CACHE),
            resolver.ipv6_lookup(host, NO_V6_CACHE)
        );
        let mut out: Hosts = Vec::new();
        match v4 {
            Ok(set) => out.extend(
                set.rrset
                    .iter()
                    .map(|ip| (host.to_string(), SocketAddr::new(IpAddr::V4(*ip), port))),
            ),
            Err(e) => debug!(%host, error = %e, "no IPv4 address"),
        }
        match v6 {
            Ok(set) => out.extend(
                set.rrset
                    .iter()
                    .map(|ip| (host.to_string(), SocketAddr::new(IpAddr::V6(*ip), port))),
            ),
            Err(e) => debug!(%host, error = %e, "no IPv6 address"),
        }
        out
    }

    /// Delivers to a hosted account: encrypted to its key and spooled.
    async fn deliver_local(&self, r: &DueRcpt, handle: &str) -> Outcome {
        let Ok(Some(data)) = self.message_data(r).await else {
            return Outcome::Temporary("4.3.0 the queued message cannot be read".into());
        };
        let data = Arc::unwrap_or_clone(data);
        let Ok(address) = Address::parse(&r.rcpt) else {
            return Outcome::Permanent("553 5.1.3 bad recipient address".into());
        };
        let tx = Transaction {
            helo: self.hostname.clone(),
            protocol: "ESMTPSA",
            mail_from: r.mail_from.clone(),
            recipients: vec![AcceptedRcpt {
                address,
                handle: handle.to_string(),
            }],
            data,
        };
        match self.acceptor.store(tx, self.own_ip()).await {
            StoreVerdict::Stored(id) => {
                info!(queue_id = %r.id, spool_id = %id, %handle, "delivered to a hosted account");
                Outcome::Delivered
            }
            StoreVerdict::OverQuota => Outcome::Temporary("452 4.2.2 mailbox full".into()),
            StoreVerdict::TempFail => Outcome::Temporary("451 4.3.0 spool write failed".into()),
        }
    }

    /// The message `r` is a recipient of: read with the claim when small,
    /// else now; `None` when it is no longer queued.
    pub(super) async fn message_data(
        &self,
        r: &DueRcpt,
    ) -> Result<Option<Arc<Vec<u8>>>, crate::store::StoreError> {
        match &r.data {
            Some(data) => Ok(Some(data.clone())),
            None => Ok(self.store.outbound_data(&r.id).await?.map(Arc::new)),
        }
    }

    /// The address SPF sees for mail the relay hands to itself.
    pub(super) fn own_ip(&self) -> IpAddr {
        IpAddr::from([127, 0, 0, 1])
    }

    /// Whether `domain` is one the relay hosts accounts under: its own, an
    /// account's name under it, or a verified custom domain.
    async fn may_be_hosted(&self, domain: &str) -> Result<bool, crate::store::StoreError> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if domain == self.relay_domain || domain.ends_with(&format!(".{}", self.relay_domain)) {
            return Ok(true);
        }
        Ok(self
            .store
            .domain(&domain)
            .await?
            .is_some_and(|d| d.state == crate::store::DomainState::Verified))
    }
}

const NO_MX_CACHE: Option<
    &mail_auth::common::cache::NoCache<Box<str>, mail_auth::RecordSet<mail_auth::MX>>,
> = None;
const NO_V4_CACHE: Option<
    &mail_auth::common::cache::NoCache<Box<str>, mail_auth::RecordSet<std::net::Ipv4Addr>>,
> = None;
const NO_V6_CACHE: Option<
    &mail_auth::common::cache::NoCache<Box<str>, mail_auth::RecordSet<std::net::Ipv6Addr>>,
> = None;
