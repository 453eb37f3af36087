//! What became of each recipient of a delivery pass: delivered (committed in
//! batches), deferred on the retry schedule, or failed — refused for good or
//! expired — with one DSN (RFC 3464) per message for all of its recipients
//! that failed in the pass, back to the sender's node.

use super::smtp::Outcome;
use super::{dsn, Outbound};
use crate::mx::session::{AcceptedRcpt, StoreVerdict, Transaction};
use crate::store::DueRcpt;
use omb_shared::types::Address;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Deliveries recorded at most before they are committed: a relay that dies
/// before the commit sends these again once their lease is over (at-least-
/// once, like every MTA).
const FLUSH_EVERY: usize = 64;

/// How long a delivery waits at most for its commit, however slow the pass:
/// far less than a claim's lease (at least 60 s), so no other worker takes
/// the recipient again meanwhile.
const FLUSH_AFTER: Duration = Duration::from_secs(5);

/// Outcomes recorded in a pass and not yet committed.
#[derive(Default)]
pub(super) struct Done {
    /// `(queue id, recipient)` delivered.
    delivered: Vec<(String, String)>,
    /// When the oldest of `delivered` was recorded.
    since: Option<Instant>,
    /// Recipients that failed for good, waiting for their message's DSN.
    failed: Vec<Failed>,
}

struct Failed {
    rcpt: DueRcpt,
    diagnostic: String,
    expired: bool,
    host: Option<String>,
}

impl Outbound {
    /// Records one recipient's outcome: delivered or failed (committed with
    /// the next [`Outbound::flush`]), or deferred (at once).
    pub(super) async fn record(
        &self,
        r: &DueRcpt,
        outcome: Outcome,
        host: Option<&str>,
        done: &mut Done,
    ) {
        let now = crate::store::now();
        let (diagnostic, expired) = match outcome {
            Outcome::Delivered => {
                info!(queue_id = %r.id, rcpt = %r.rcpt, host = host.unwrap_or("local"), "delivered");
                done.delivered.push((r.id.clone(), r.rcpt.clone()));
                let since = *done.since.get_or_insert_with(Instant::now);
                if done.delivered.len() >= FLUSH_EVERY || since.elapsed() >= FLUSH_AFTER {
                    self.flush(done).await;
                }
                return;
            }
            Outcome::Temporary(text) => {
                if now < r.created_at + self.config.expire_secs as i64 {
                    let schedule = &self.config.retry_secs;
                    let step = schedule
                        .get(r.attempts as usize)
                        .or(schedule.last())
                        .copied()
                        .unwrap_or(600);
                    info!(queue_id = %r.id, rcpt = %r.rcpt, error = %text, retry_in = step, "deferred");
                    if let Err(e) = self
                        .store
                        .outbound_defer(&r.id, &r.rcpt, now + step as i64, &text)
                        .await
                    {
                        warn!(error = %e, "cannot record a deferral");
                    }
                    return;
                }
                (text, true)
            }
            Outcome::Permanent(text) => (text, false),
        };
        info!(queue_id = %r.id, rcpt = %r.rcpt, error = %diagnostic, expired, "failed; a DSN goes back");
        done.failed.push(Failed {
            rcpt: r.clone(),
            diagnostic,
            expired,
            host: host.map(str::to_string),
        });
    }

    /// Commits the deliveries recorded so far (one commit for the lot), and
    /// sends the DSNs of the failures, one per message.
    pub(super) async fn flush(&self, done: &mut Done) {
        let delivered = std::mem::take(&mut done.delivered);
        done.since = None;
        if let Err(e) = self.store.outbound_done_many(delivered).await {
            warn!(error = %e, "cannot record deliveries; they may be repeated");
        }
        let mut by_message: BTreeMap<String, Vec<Failed>> = BTreeMap::new();
        for f in std::mem::take(&mut done.failed) {
            by_message.entry(f.rcpt.id.clone()).or_default().push(f);
        }
        for (id, failed) in by_message {
            match self.bounce(&failed).await {
                Ok(()) => {
                    let rcpts = failed
                        .iter()
                        .map(|f| (id.clone(), f.rcpt.rcpt.clone()))
                        .collect();
                    if let Err(e) = self.store.outbound_done_many(rcpts).await {
                        warn!(queue_id = %id, error = %e, "cannot record failures; the DSN may be repeated");
                    }
                }
                Err(why) => {
                    // Keep the recipients: the DSN is tried again later.
                    warn!(queue_id = %id, error = %why, "cannot spool the DSN; trying again later");
                    let retry = crate::store::now() + 60;
                    for f in &failed {
                        let _ = self
                            .store
                            .outbound_defer(&id, &f.rcpt.rcpt, retry, &f.diagnostic)
                            .await;
                    }
                }
            }
        }
    }

    /// Spools one DSN for a message's `failed` recipients into the sender's
    /// account (null reverse-path, RFC 5321 §4.5.5).
    async fn bounce(&self, failed: &[Failed]) -> Result<(), String> {
        let Some(first) = failed.first() else {
            return Ok(());
        };
        let r = &first.rcpt;
        let original = self
            .message_data(r)
            .await
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        let failures: Vec<dsn::Failure<'_>> = failed
            .iter()
            .map(|f| dsn::Failure {
                rcpt: &f.rcpt.rcpt,
                diagnostic: &f.diagnostic,
                expired: f.expired,
                remote_mta: f.host.as_deref(),
            })
            .collect();
        let report = dsn::build(
            &self.hostname,
            &self.relay_domain,
            &r.mail_from,
            r.created_at,
            &failures,
            &original,
        );
        let address = Address::parse(&r.mail_from).map_err(|e| e.to_string())?;
        let tx = Transaction {
            helo: self.hostname.clone(),
            protocol: "ESMTP",
            mail_from: String::new(),
            recipients: vec![AcceptedRcpt {
                address,
                handle: r.handle.clone(),
            }],
            data: report,
        };
        match self.acceptor.store(tx, self.own_ip()).await {
            StoreVerdict::Stored(_) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    }
}
