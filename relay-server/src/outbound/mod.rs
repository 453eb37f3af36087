//! Outgoing mail: what nodes submit through their tunnels.
//!
//! - this file: accepting a submission (the account's limits, its From, its
//!   DKIM signature) into the durable queue;
//! - `queue`: the worker that delivers due recipients — to another account of
//!   this relay straight into its encrypted spool, or over SMTP to a static
//!   route or the domain's MX; `outcome`: what became of each recipient —
//!   done, retried later, or failed, with one DSN per message;
//! - `smtp`: the SMTP client; `pool`: its connections kept between passes;
//!   `tls`: its TLS clients and trust roots;
//!   `mta_sts`: recipient domains' MTA-STS policies (RFC 8461);
//!   `dane`: MX hosts' DNSSEC-validated TLSA records (RFC 7672);
//!   `dsn`: delivery status notifications (RFC 3464); `limits`: per-account
//!   rates.

pub mod dane;
pub mod dsn;
pub mod limits;
pub mod mta_sts;
mod outcome;
mod pool;
pub mod queue;
pub mod smtp;
pub mod tls;

use crate::auth::{AuthError, Authenticator};
use crate::config::OutboundConfig;
use crate::mx::accept::Acceptor;
use crate::store::{NewOutbound, Standing, Store};
use mail_auth::{AuthenticatedMessage, DkimResult};
use omb_shared::protocol::{Submission, SubmitOutcome};
use omb_shared::types::Address;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How long a sender address found to be an account's is taken as its own
/// without asking the store again.
const OWNER_TTL: Duration = Duration::from_secs(60);
use tracing::{info, warn};

/// The relay's outbound side.
pub struct Outbound {
    pub store: Store,
    /// The relay's own DNS view: the DKIM check of submissions.
    pub auth: Authenticator,
    /// The resolver of deliveries: MX, addresses, MTA-STS.
    delivery_dns: Authenticator,
    /// The same server, asked without a cache (the `_mta-sts` TXT record).
    dns_server: SocketAddr,
    /// The MX's encrypt-then-spool path, for mail between hosted accounts
    /// and for DSNs back to senders.
    pub acceptor: Arc<Acceptor>,
    pub config: OutboundConfig,
    pub relay_domain: String,
    pub hostname: String,
    pub max_message_size: usize,
    limiter: limits::RateLimiter,
    /// `(handle, address)` found to be the account's, and when.
    owners: Mutex<HashMap<(String, String), Instant>>,
    /// SMTP connections kept between delivery passes.
    pool: pool::Pool,
    wake: Notify,
    trust: tls::Trust,
    /// The validating resolver of DANE, unless `[outbound] dane = false`.
    dane: Option<dane::Dane>,
}

/// Why the outbound side cannot start.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("[outbound] resolver: {0}")]
    Resolver(#[from] AuthError),
    #[error(transparent)]
    Dane(#[from] dane::DaneError),
}

impl Outbound {
    pub fn new(
        store: Store,
        auth: Authenticator,
        acceptor: Arc<Acceptor>,
        config: OutboundConfig,
        relay_domain: &str,
        hostname: &str,
        max_message_size: usize,
    ) -> Result<Arc<Self>, OutboundError> {
        let delivery_dns = match config.resolver {
            Some(server) => Authenticator::new(server, hostname)?,
            None => auth.clone(),
        };
        let dane = match config.dane {
            true => Some(dane::Dane::new(
                delivery_dns.nameserver(),
                config.dnssec_trust_anchor.as_deref(),
            )?),
            false => None,
        };
        Ok(Arc::new(Outbound {
            trust: tls::Trust::new(config.tls_roots.as_deref())?,
            dane,
            dns_server: delivery_dns.nameserver(),
            delivery_dns,
            limiter: limits::RateLimiter::new(config.per_minute),
            owners: Mutex::default(),
            pool: pool::Pool::new(Duration::from_secs(config.connection_cache_secs)),
            store,
            auth,
            acceptor,
            config,
            relay_domain: relay_domain.to_ascii_lowercase(),
            hostname: hostname.to_string(),
            max_message_size,
            wake: Notify::new(),
        }))
    }

    /// Whether `address` belongs to `handle` (its own addresses, its aliases,
    /// its verified domains; never the operator's postmaster@). A yes is
    /// remembered for `OWNER_TTL`: a node sends from the same few addresses
    /// all day, and an address taken from an account stops working for it
    /// within that time.
    async fn owns(&self, handle: &str, address: &str) -> Result<bool, SubmitOutcome> {
        let key = (handle.to_string(), address.to_ascii_lowercase());
        let now = Instant::now();
        {
            let owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
            if owners
                .get(&key)
                .is_some_and(|at| now.duration_since(*at) < OWNER_TTL)
            {
                return Ok(true);
            }
        }
        match self.store.route(address, &self.relay_domain, None).await {
            Ok(Some(r)) if r.handle == handle => {
                let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
                if owners.len() >= 10_000 {
                    owners.retain(|_, at| now.duration_since(*at) < OWNER_TTL);
                }
                owners.insert(key, now);
                Ok(true)
            }
            Ok(Some(_)) => Ok(false),
            Ok(None) => Ok(false),
            Err(e) => {
                warn!(error = %e, "sender look-up failed");
                Err(temporary("4.3.0 Temporary failure, try again later"))
            }
        }
    }

    /// Takes a node's submission into the queue, or says why not. `Queued`
    /// only once it is durable; the same submission id again is `Queued`
    /// without a second copy.
    pub async fn accept(&self, handle: &str, s: Submission) -> SubmitOutcome {
        match self.check(handle, &s).await {
            Ok(()) => {}
            Err(outcome) => {
                info!(%handle, submission = %s.id, ?outcome, "submission refused");
                return outcome;
            }
        }
        let new = NewOutbound {
            handle: handle.to_string(),
            submission_id: s.id.clone(),
            mail_from: s.mail_from,
            rcpt_to: s.rcpt_to,
            data: s.data,
            rate_interval_ms: limits::interval_ms(self.config.per_minute),
        };
        match self.store.outbound_insert(&new).await {
            Ok(id) => {
                info!(queue_id = %id, %handle, submission = %s.id, rcpts = new.rcpt_to.len(), size = new.data.len(), "queued for delivery");
                self.wake.notify_one();
                SubmitOutcome::Queued
            }
            Err(e) => {
                warn!(error = %e, "cannot queue a submission");
                temporary("4.3.0 The relay cannot queue the message now; try again later")
            }
        }
    }

    async fn check(&self, handle: &str, s: &Submission) -> Result<(), SubmitOutcome> {
        if s.rcpt_to.is_empty() {
            return Err(permanent("5.5.1 No recipients"));
        }
        if s.rcpt_to.len() > self.config.max_recipients {
            return Err(permanent(&format!(
                "5.5.3 Too many recipients: at most {} per message",
                self.config.max_recipients
            )));
        }
        if s.data.len() > self.max_message_size {
            return Err(permanent(&format!(
                "5.3.4 Message exceeds the size limit of {} bytes",
                self.max_message_size
            )));
        }
        for rcpt in &s.rcpt_to {
            match Address::parse(rcpt) {
                // The open-relay tricks are not addresses the relay routes.
                Ok(a) if !a.local_part().contains(['%', '!']) => {}
                _ => return Err(permanent(&format!("5.1.3 Bad recipient address {rcpt:?}"))),
            }
        }
        if !self.owns(handle, &s.mail_from).await? {
            return Err(permanent(
                "5.7.1 The envelope sender is not an address of this account",
            ));
        }
        let message = AuthenticatedMessage::parse(&s.data)
            .ok_or_else(|| permanent("5.6.0 The message does not parse"))?;
        let from = match message.from.as_slice() {
            [one] => one.to_lowercase(),
            _ => {
                return Err(permanent(
                    "5.7.1 The message needs exactly one From address",
                ))
            }
        };
        if !from.eq_ignore_ascii_case(&s.mail_from) && !self.owns(handle, &from).await? {
            return Err(permanent(
                "5.7.1 The From address is not an address of this account",
            ));
        }
        self.limits(handle).await?;
        let from_domain = from.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
        self.dkim(&message, from_domain).await
    }

    /// The account's rate and daily cap (lower while it is new).
    async fn limits(&self, handle: &str) -> Result<(), SubmitOutcome> {
        let now = crate::store::now();
        let standing = match self.store.outbound_standing(handle).await {
            Ok(standing) => standing.unwrap_or(Standing {
                created_at: now,
                today: 0,
                tat_ms: 0,
            }),
            Err(e) => {
                warn!(error = %e, "cannot read the account's sending counts");
                return Err(temporary("4.3.0 Temporary failure, try again later"));
            }
        };
        let new = now - standing.created_at < self.config.new_account_days * 86_400;
        let cap = if new {
            self.config.new_account_per_day
        } else {
            self.config.per_day
        };
        if standing.today >= cap {
            return Err(temporary(&format!(
                "4.7.1 Daily sending limit of {cap} messages reached; try again tomorrow"
            )));
        }
        let stored = limits::over_stored_rate(
            standing.tat_ms,
            crate::store::now_ms(),
            self.config.per_minute,
        );
        if let Some(wait) = stored.or_else(|| self.limiter.take(handle).err()) {
            return Err(temporary(&format!(
                "4.7.1 Sending rate limit reached; try again in {} s",
                wait.as_secs().max(1)
            )));
        }
        Ok(())
    }

    /// A DKIM signature by the From domain (aligned, RFC 7489 §3.1.1) that
    /// verifies against this relay's DNS.
    async fn dkim(
        &self,
        message: &AuthenticatedMessage<'_>,
        from_domain: &str,
    ) -> Result<(), SubmitOutcome> {
        let outputs = match tokio::time::timeout(
            Duration::from_secs(10),
            self.auth.resolver().verify_dkim(message),
        )
        .await
        {
            Ok(o) => o,
            Err(_) => return Err(temporary("4.4.3 DNS lookup of the DKIM key timed out")),
        };
        let mut temp = false;
        for o in &outputs {
            let aligned = o
                .signature()
                .is_some_and(|s| s.d.eq_ignore_ascii_case(from_domain));
            match o.result() {
                DkimResult::Pass if aligned => return Ok(()),
                DkimResult::TempError(_) if aligned => temp = true,
                _ => {}
            }
        }
        if temp {
            return Err(temporary(
                "4.7.5 The DKIM key could not be looked up; try again later",
            ));
        }
        Err(permanent(&format!(
            "5.7.20 No valid DKIM signature by {from_domain} (is the node's key published?)"
        )))
    }

    /// Wakes the delivery worker.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

fn temporary(text: &str) -> SubmitOutcome {
    SubmitOutcome::Temporary(text.to_string())
}

fn permanent(text: &str) -> SubmitOutcome {
    SubmitOutcome::Permanent(text.to_string())
}
