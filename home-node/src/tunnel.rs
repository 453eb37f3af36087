//! The node's end of the tunnel: dials the relay, authenticates, publishes the
//! DKIM key, stores each delivery durably and only then acknowledges it, and
//! hands submitted mail to the relay (sent again after a reconnection until the
//! relay answers). Reconnects for ever with jittered exponential back-off.

use crate::config::PassthroughTargets;
use crate::control::Publish;
use crate::keys::Keys;
use crate::store::{MailStore, NewDelivery, Stored};
use omb_shared::pgp;
use omb_shared::protocol::{
    encode, read_frame, write_frame, Delivery, Frame, FrameDecoder, ProtocolError, PublishKind,
    Submission, SubmitOutcome, PROTOCOL_VERSION,
};
use omb_shared::transport::{Connector, TunnelStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Deliveries stored in one transaction at most.
const MAX_BATCH: usize = 64;

/// The account as the relay last described it (its Welcome): what the
/// submission server checks senders against. Kept while the tunnel is down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountFacts {
    /// The account's handle: the DKIM selector under the relay's domain.
    pub handle: String,
    /// What the account may send as.
    pub senders: crate::submission::session::Senders,
}

/// A message for the relay, from the submission server; the answer comes
/// once the relay has it durably (or refuses it).
#[derive(Debug)]
pub struct SubmitRequest {
    pub submission: Submission,
    pub reply: oneshot::Sender<SubmitOutcome>,
}

/// What the rest of the node can see of the tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunnelState {
    Connecting,
    Up {
        account: String,
    },
    /// The relay refused this node for good (bad token, unknown key): an
    /// operator has to act.
    Refused(String),
}

pub struct TunnelClient<C: Connector> {
    pub connector: C,
    pub keys: Arc<Keys>,
    pub store: MailStore,
    pub link_token: Option<String>,
    /// Written once the relay accepted the link, so later starts authenticate by key.
    pub linked_marker: PathBuf,
    pub state: watch::Sender<TunnelState>,
    /// Local servers for the relay's SNI passthrough streams.
    pub passthrough: Arc<PassthroughTargets>,
    /// Requests from the control socket, carried out while the tunnel is up.
    pub control: tokio::sync::Mutex<mpsc::Receiver<Publish>>,
    /// Mail from the submission server.
    pub submits: tokio::sync::Mutex<mpsc::Receiver<SubmitRequest>>,
    /// Written at every Welcome.
    pub account: watch::Sender<Option<AccountFacts>>,
}

enum SessionEnd {
    /// Try again after a back-off.
    Retry(String),
    /// Don't: the relay refused this node.
    Refused(String),
}

impl<C: Connector> TunnelClient<C> {
    /// Runs the tunnel for ever.
    pub async fn run(self) {
        let mut backoff = BACKOFF_MIN;
        // Submissions sent and not answered: sent again in the next session.
        let mut pending: Vec<SubmitRequest> = Vec::new();
        loop {
            let started = std::time::Instant::now();
            let end = match self.connector.connect().await {
                Ok(stream) => self.session(stream, &mut pending).await,
                Err(e) => SessionEnd::Retry(e.to_string()),
            };
            match end {
                SessionEnd::Refused(reason) => {
                    warn!(%reason, "the relay refused this node; check the link token and the node's keys");
                    let _ = self.state.send(TunnelState::Refused(reason));
                    // Keep trying slowly: an operator may fix it on the relay's side.
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                SessionEnd::Retry(reason) => {
                    let _ = self.state.send(TunnelState::Connecting);
                    if started.elapsed() > Duration::from_secs(10) {
                        backoff = BACKOFF_MIN;
                    }
                    // Full jitter: a relay restart must not bring every node back at once.
                    let wait = backoff.mul_f64(0.5 + rand::random::<f64>() * 0.5);
                    debug!(%reason, wait_ms = wait.as_millis() as u64, "tunnel down, reconnecting");
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    async fn session(&self, stream: TunnelStream, pending: &mut Vec<SubmitRequest>) -> SessionEnd {
        let TunnelStream {
            mut recv,
            mut send,
            binding,
            peer,
            handle: _conn,
            side,
        } = stream;
        let mut dec = FrameDecoder::new();
        let retry = |e: ProtocolError| SessionEnd::Retry(e.to_string());
        if let Err(e) = write_frame(
            &mut send,
            &Frame::Hello {
                version: PROTOCOL_VERSION,
                node_key: self.keys.tunnel.public().0,
            },
        )
        .await
        {
            return retry(e);
        }
        let nonce = match read_frame(&mut recv, &mut dec).await {
            Ok(Frame::Challenge { nonce }) => nonce,
            Ok(Frame::Refused { reason }) => return SessionEnd::Refused(reason),
            Ok(_) => return SessionEnd::Retry("expected a challenge".into()),
            Err(e) => return retry(e),
        };
        let signature = self.keys.tunnel.sign_challenge(&nonce, &binding);
        let linking = !self.linked_marker.exists() && self.link_token.is_some();
        let answer = match (&self.link_token, linking) {
            (Some(token), true) => match pgp::public_bytes(&self.keys.openpgp) {
                Ok(cert) => Frame::Link {
                    token: token.clone(),
                    openpgp_cert: cert,
                    signature,
                },
                Err(e) => {
                    return SessionEnd::Refused(format!(
                        "cannot export the OpenPGP certificate: {e}"
                    ))
                }
            },
            _ => Frame::Auth { signature },
        };
        if let Err(e) = write_frame(&mut send, &answer).await {
            return retry(e);
        }
        let account = match read_frame(&mut recv, &mut dec).await {
            Ok(Frame::Welcome {
                account,
                addresses,
                domains,
            }) => {
                info!(%account, ?addresses, ?domains, relay = %peer, "tunnel up");
                let _ = self.account.send(Some(AccountFacts {
                    handle: account.clone(),
                    senders: senders(addresses, domains),
                }));
                if linking {
                    if let Err(e) = std::fs::write(&self.linked_marker, &account) {
                        warn!(error = %e, "cannot record that the node is linked");
                    }
                }
                account
            }
            Ok(Frame::Refused { reason }) => return SessionEnd::Refused(reason),
            Ok(_) => return SessionEnd::Retry("expected Welcome".into()),
            Err(e) => return retry(e),
        };
        let _ = self.state.send(TunnelState::Up { account });
        // Passthrough streams on their own task, which ends with the session.
        let mut passthrough = tokio::task::JoinSet::new();
        passthrough.spawn(crate::passthrough::serve(side, self.passthrough.clone()));

        // The DKIM key's public half, so the relay's DNS serves it (RFC 6376
        // §3.6.2); the answer comes as a Published frame like any other.
        match self.keys.dkim.record() {
            Ok(record) => {
                let frame = Frame::Publish {
                    kind: PublishKind::Dkim,
                    values: vec![record],
                };
                if let Err(e) = write_frame(&mut send, &frame).await {
                    return retry(e);
                }
            }
            Err(e) => warn!(error = %e, "cannot publish the DKIM key"),
        }
        // Submissions the last session left unanswered go again (the relay
        // keeps one copy per id).
        pending.retain(|r| !r.reply.is_closed());
        for request in pending.iter() {
            if let Err(e) = write_frame(&mut send, &Frame::Submit(request.submission.clone())).await
            {
                return retry(e);
            }
        }

        let mut control = self.control.lock().await;
        let mut submits = self.submits.lock().await;
        // Publish requests sent, waiting for the relay's answer, in order.
        let mut publishing: Vec<Publish> = Vec::new();
        // Frames from the relay are read and decoded on their own task (ended
        // with the session, when `reader` drops), so the deliveries that arrive
        // while a batch is being stored are waiting, decoded, for the next one.
        let (frames_tx, mut frames_rx) = mpsc::channel::<Result<Frame, ProtocolError>>(256);
        let mut reader = tokio::task::JoinSet::new();
        reader.spawn(async move {
            loop {
                let frame = read_frame(&mut recv, &mut dec).await;
                let end = frame.is_err();
                if frames_tx.send(frame).await.is_err() || end {
                    break;
                }
            }
        });
        loop {
            let first = tokio::select! {
                frame = frames_rx.recv() => frame.unwrap_or(Err(ProtocolError::Closed)),
                Some(request) = submits.recv() => {
                    let frame = Frame::Submit(request.submission.clone());
                    pending.push(request);
                    if let Err(e) = write_frame(&mut send, &frame).await {
                        return retry(e);
                    }
                    continue;
                }
                Some(request) = control.recv() => {
                    let frame = Frame::Publish { kind: request.kind, values: request.values.clone() };
                    if let Err(e) = write_frame(&mut send, &frame).await {
                        let _ = request.reply.send(Err("the tunnel to the relay broke; try again".into()));
                        return retry(e);
                    }
                    publishing.push(request);
                    continue;
                }
            };
            // Take whatever else has already arrived, so a burst is stored in
            // one transaction (one fsync) and acknowledged together.
            let mut frames = vec![first];
            while frames.len() < MAX_BATCH && matches!(frames.last(), Some(Ok(Frame::Deliver(_)))) {
                match frames_rx.try_recv() {
                    Ok(f) => frames.push(f),
                    Err(_) => break,
                }
            }
            let mut deliveries = Vec::new();
            let mut rest = Vec::new();
            for f in frames {
                match f {
                    Ok(Frame::Deliver(d)) => deliveries.push(d),
                    other => rest.push(other),
                }
            }
            if !deliveries.is_empty() {
                let ids: Vec<String> = deliveries.iter().map(|d| d.id.clone()).collect();
                match self.store_deliveries(deliveries).await {
                    Ok(stored) => {
                        if std::env::var_os("OMB_TEST_CRASH_BEFORE_ACK").is_some() {
                            // Test hook: die between the durable store and the ack.
                            std::process::abort();
                        }
                        // Every ack of the batch in one write to the stream.
                        let mut acks = Vec::with_capacity(ids.len() * 40);
                        for id in &ids {
                            match encode(&Frame::Ack { id: id.clone() }) {
                                Ok(bytes) => acks.extend_from_slice(&bytes),
                                Err(e) => return retry(e),
                            }
                        }
                        let written = async {
                            send.write_all(&acks).await?;
                            send.flush().await
                        };
                        if let Err(e) = written.await {
                            return retry(e.into());
                        }
                        for (id, stored) in ids.iter().zip(&stored) {
                            info!(queue_id = %id, ?stored, "delivery stored");
                        }
                    }
                    Err(e) => {
                        // Not acknowledged: the relay keeps them and sends them again.
                        warn!(error = %e, "cannot store deliveries");
                        return SessionEnd::Retry(format!("store failed: {e}"));
                    }
                }
            }
            for f in rest {
                match f {
                    Ok(Frame::Ping { nonce }) => {
                        if let Err(e) = write_frame(&mut send, &Frame::Pong { nonce }).await {
                            return retry(e);
                        }
                    }
                    Ok(Frame::Pong { .. }) => {}
                    Ok(Frame::Account { addresses, domains }) => {
                        info!(?addresses, ?domains, "the account's addresses changed");
                        self.account.send_modify(|facts| {
                            if let Some(facts) = facts {
                                facts.senders = senders(addresses, domains);
                            }
                        });
                    }
                    Ok(Frame::Published { kind, error }) => {
                        if let Some(i) = publishing.iter().position(|p| p.kind == kind) {
                            let request = publishing.remove(i);
                            let _ = request.reply.send(error.map_or(Ok(()), Err));
                        } else if let Some(error) = error {
                            warn!(?kind, %error, "the relay did not publish the node's records");
                        } else {
                            debug!(?kind, "records published");
                        }
                    }
                    Ok(Frame::Submitted { id, outcome }) => {
                        if let Some(i) = pending.iter().position(|r| r.submission.id == id) {
                            let request = pending.swap_remove(i);
                            info!(submission = %id, ?outcome, "the relay answered a submission");
                            let _ = request.reply.send(outcome);
                        }
                    }
                    Ok(Frame::Refused { reason }) => {
                        return SessionEnd::Retry(format!("relay closed the session: {reason}"))
                    }
                    Ok(_) => return SessionEnd::Retry("unexpected frame from the relay".into()),
                    Err(e) => return retry(e),
                }
            }
        }
    }

    /// Checks and stores deliveries; only ciphertext ever reaches the disk.
    /// Decryption checks run in parallel on the blocking pool.
    async fn store_deliveries(&self, deliveries: Vec<Delivery>) -> anyhow::Result<Vec<Stored>> {
        let mut items = Vec::with_capacity(deliveries.len());
        let mut jobs = Vec::new();
        for d in deliveries {
            if d.relay_encrypted && d.plain_size > 0 {
                // The relay told us the size; decryption waits for a reader, and
                // there is nothing to hand to the blocking pool.
                let size = d.plain_size as i64;
                items.push(Ok(NewDelivery {
                    id: d.id,
                    internaldate: d.received_at,
                    size,
                    data: d.data,
                }));
                continue;
            }
            let keys = self.keys.clone();
            items.push(Err(jobs.len()));
            jobs.push(tokio::task::spawn_blocking(move || -> anyhow::Result<NewDelivery> {
                let (data, size) = if d.relay_encrypted {
                    // Decrypt once to learn the size (and to know it is readable).
                    // Mail this key can't read is kept all the same, never dropped.
                    match pgp::decrypt_message(&keys.openpgp, &d.data) {
                        Ok(plain) => (d.data, plain.len() as i64),
                        Err(e) => {
                            warn!(queue_id = %d.id, error = %e, "this node's key does not decrypt a delivery; keeping it as it came");
                            let size = d.data.len() as i64;
                            (d.data, size)
                        }
                    }
                } else {
                    // Encrypted by its sender: wrap it to our own key for rest.
                    let size = d.data.len() as i64;
                    (pgp::encrypt_whole_message(&keys.openpgp, &d.data)?, size)
                };
                Ok(NewDelivery { id: d.id, internaldate: d.received_at, size, data })
            }));
        }
        let mut done = Vec::with_capacity(jobs.len());
        for job in jobs {
            done.push(Some(job.await??));
        }
        // In the order the relay sent them (UIDs follow it).
        let items = items
            .into_iter()
            .map(|item| match item {
                Ok(ready) => Ok(ready),
                Err(i) => done
                    .get_mut(i)
                    .and_then(Option::take)
                    .ok_or_else(|| anyhow::anyhow!("a checked delivery went missing")),
            })
            .collect::<anyhow::Result<Vec<NewDelivery>>>()?;
        Ok(self.store.deliver_batch(&items).await?)
    }
}

/// What the relay says the account may send as, lower case.
fn senders(addresses: Vec<String>, domains: Vec<String>) -> crate::submission::session::Senders {
    crate::submission::session::Senders {
        addresses: addresses.iter().map(|a| a.to_lowercase()).collect(),
        domains: domains.iter().map(|d| d.to_lowercase()).collect(),
    }
}
