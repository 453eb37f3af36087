//! One node's tunnel session on the relay.

use super::Hub;
use crate::store::{LinkRefusal, RecordKind, SpoolEntry, Store};
use omb_shared::identity::verify_challenge;
use omb_shared::pgp;
use omb_shared::protocol::{
    read_frame, write_frame, Delivery, Frame, FrameDecoder, ProtocolError, PublishKind,
    SubmitOutcome, PROTOCOL_VERSION,
};
use omb_shared::transport::quic::{accept_stream, QuicListener};
use omb_shared::transport::{ConnectionHandle, TunnelStream};
use omb_shared::types::NodeKey;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, info, info_span, warn, Instrument};

/// How long a node has to finish the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// Re-read the spool this often even without a wake-up (another relay instance
/// sharing the database may have spooled mail).
const RESCAN: Duration = Duration::from_secs(5);
/// Bytes of mail sent to a node and not yet acknowledged, at most (one larger
/// message is always allowed alone).
const MAX_INFLIGHT_BYTES: i64 = 16 * 1024 * 1024;
/// How often the account's senders are looked at for changes made by other
/// processes (this process's own changes are sent at once).
const SENDERS_REFRESH: Duration = Duration::from_secs(60);
/// Offered messages kept in memory while the window is full, at most (by
/// count and by bytes); beyond, they are left to a spool scan. Without this
/// backlog every offer that found the window full was dropped and read back
/// from the spool (an id scan and one body read per message), so a relay that
/// fell behind once kept reading every message back for as long as the load
/// lasted.
const BACKLOG_MAX: usize = 1024;
const BACKLOG_MAX_BYTES: usize = 16 * 1024 * 1024;

pub struct TunnelContext {
    pub store: Store,
    pub hub: Arc<Hub>,
    pub window: usize,
    /// Where the node's submissions go.
    pub outbound: Arc<crate::outbound::Outbound>,
}

/// Accepts nodes until the endpoint closes.
pub async fn serve(listener: QuicListener, ctx: Arc<TunnelContext>) {
    while let Some(incoming) = listener.accept().await {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let peer = incoming.remote_address();
            let stream = match accept_stream(incoming).await {
                Ok(s) => s,
                Err(e) => {
                    debug!(%peer, error = %e, "tunnel connection failed");
                    return;
                }
            };
            let span = info_span!("tunnel", %peer);
            run(stream, &ctx).instrument(span).await;
        });
    }
}

async fn refuse<W: AsyncWrite + Unpin>(w: &mut W, conn: &dyn ConnectionHandle, reason: &str) {
    warn!(reason, "node refused");
    let _ = write_frame(
        w,
        &Frame::Refused {
            reason: reason.to_string(),
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    conn.close(reason);
}

async fn run(stream: TunnelStream, ctx: &TunnelContext) {
    let TunnelStream {
        mut recv,
        mut send,
        binding,
        handle: conn,
        side,
        ..
    } = stream;
    let conn: &dyn ConnectionHandle = &*conn;
    // Until the node is authenticated, frames are small.
    let mut dec = FrameDecoder::with_limit(omb_shared::protocol::HANDSHAKE_FRAME_LEN);

    let handshake = async {
        let Frame::Hello { version, node_key } = read_frame(&mut recv, &mut dec).await? else {
            return Ok(Err("expected Hello".to_string()));
        };
        if version != PROTOCOL_VERSION {
            return Ok(Err(format!(
                "protocol version {version} is not supported; this relay speaks {PROTOCOL_VERSION}"
            )));
        }
        let key = NodeKey(node_key);
        let nonce: [u8; 32] = rand::random();
        write_frame(&mut send, &Frame::Challenge { nonce }).await?;
        let answer = read_frame(&mut recv, &mut dec).await?;
        let signature = match &answer {
            Frame::Link { signature, .. } | Frame::Auth { signature } => signature,
            _ => return Ok(Err("expected Link or Auth".to_string())),
        };
        if !verify_challenge(&key, &nonce, &binding, signature) {
            return Ok(Err(
                "bad signature: the node does not hold the key it named".to_string(),
            ));
        }
        let handle = match answer {
            Frame::Link {
                token,
                openpgp_cert,
                ..
            } => {
                let cert = match pgp::parse_cert(&openpgp_cert) {
                    Ok(c) if pgp::can_encrypt_to(&c) && !c.is_tsk() => c,
                    Ok(_) => return Ok(Err(
                        "the OpenPGP certificate has no usable encryption key, or holds secrets"
                            .to_string(),
                    )),
                    Err(_) => return Ok(Err("the OpenPGP certificate does not parse".to_string())),
                };
                let fpr = pgp::fingerprint(&cert);
                match ctx
                    .store
                    .link_node(&token, &key, &openpgp_cert, &fpr.0)
                    .await
                {
                    Ok(Ok(handle)) => {
                        info!(%handle, node = %key, fingerprint = %fpr, "node linked");
                        handle
                    }
                    Ok(Err(LinkRefusal::BadToken)) => {
                        return Ok(Err(LinkRefusal::BadToken.to_string()))
                    }
                    Ok(Err(LinkRefusal::KeyTaken)) => {
                        return Ok(Err(LinkRefusal::KeyTaken.to_string()))
                    }
                    Err(e) => {
                        warn!(error = %e, "link failed");
                        return Ok(Err("temporary failure, try again".to_string()));
                    }
                }
            }
            _ => match ctx.store.node_account(&key).await {
                Ok(Some(handle)) => handle,
                Ok(None) => {
                    return Ok(Err(
                        "unknown node key: link this node with a link token first".to_string(),
                    ))
                }
                Err(e) => {
                    warn!(error = %e, "node look-up failed");
                    return Ok(Err("temporary failure, try again".to_string()));
                }
            },
        };
        Ok::<_, ProtocolError>(Ok(handle))
    };
    let handle = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(Ok(handle))) => handle,
        Ok(Ok(Err(reason))) => return refuse(&mut send, conn, &reason).await,
        Ok(Err(e)) => {
            debug!(error = %e, "handshake failed");
            return refuse(&mut send, conn, &format!("handshake failed: {e}")).await;
        }
        Err(_) => return refuse(&mut send, conn, "handshake timed out").await,
    };
    dec.set_limit(omb_shared::protocol::MAX_FRAME_LEN);
    // Subscribed before the first look, so no change falls between the two.
    let mut account_changes = ctx.store.account_changes();
    let mut senders = ctx
        .store
        .senders(&handle, &ctx.outbound.relay_domain)
        .await
        .unwrap_or_default();
    if write_frame(
        &mut send,
        &Frame::Welcome {
            account: handle.clone(),
            addresses: senders.0.clone(),
            domains: senders.1.clone(),
        },
    )
    .await
    .is_err()
    {
        return;
    }
    // Changes made by other processes (the CLI, another relay on the same
    // database) are not announced: looked for now and then.
    let mut senders_refresh = tokio::time::interval(SENDERS_REFRESH);
    senders_refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    senders_refresh.tick().await;
    let mut registration = ctx.hub.register(&handle, side);
    info!(%handle, "node connected");

    // Frames from the node arrive on their own task, so a large delivery being
    // written never delays reading acknowledgements.
    let (tx, mut rx) = mpsc::channel::<Result<Frame, ProtocolError>>(256);
    let reader = tokio::spawn(async move {
        loop {
            let frame = read_frame(&mut recv, &mut dec).await;
            let end = frame.is_err();
            if tx.send(frame).await.is_err() || end {
                break;
            }
        }
    });

    let mut inflight: HashMap<String, i64> = HashMap::new();
    let mut inflight_bytes: i64 = 0;
    // Acknowledged, with the delete still committing: not sent again, and not
    // holding up the next sends while the commit's fsync runs.
    let mut deleting: HashSet<String> = HashSet::new();
    let mut deletes: JoinSet<(Vec<String>, Result<usize, String>)> = JoinSet::new();
    // Submissions being checked and queued; answered as each finishes.
    let mut submitting: JoinSet<(String, SubmitOutcome)> = JoinSet::new();
    // Whether the spool may hold mail for this node that was neither sent nor
    // offered in memory: at start, after a wake-up, when offers did not fit
    // the window, and every RESCAN (another relay instance may have spooled).
    let mut need_scan = true;
    // Offers waiting for room in the window, oldest first, and their ids
    // (which a scan must skip: they are sent from here).
    let mut backlog: VecDeque<Arc<SpoolEntry>> = VecDeque::new();
    let mut backlog_ids: HashSet<String> = HashSet::new();
    let mut backlog_bytes: usize = 0;
    let result: Result<(), String> = async {
        loop {
            // Fill the window: at most `window` messages and about 16 MiB in
            // flight (but always at least one, whatever its size).
            // The spool first: what it holds beyond the backlog is older.
            if need_scan && inflight.len() < ctx.window && inflight_bytes < MAX_INFLIGHT_BYTES {
                let room = ctx.window - inflight.len();
                let skip = inflight.keys().chain(deleting.iter()).chain(backlog_ids.iter()).cloned().collect();
                let queue = ctx.store.spool_queue(&handle, &skip, room).await.map_err(|e| e.to_string())?;
                // A short answer means nothing else is waiting.
                need_scan = queue.len() >= room;
                for (id, size) in queue {
                    if !inflight.is_empty() && inflight_bytes + size > MAX_INFLIGHT_BYTES {
                        need_scan = true;
                        break;
                    }
                    let Some(e) = ctx.store.spool_get(&handle, &id).await.map_err(|e| e.to_string())? else { continue };
                    send_delivery(&mut send, e).await?;
                    inflight.insert(id, size);
                    inflight_bytes += size;
                }
            }
            // Then the offers held in memory, as far as the window allows.
            while inflight.len() < ctx.window {
                let Some(entry) = backlog.front() else { break };
                let size = entry.data.len() as i64;
                if !inflight.is_empty() && inflight_bytes + size > MAX_INFLIGHT_BYTES {
                    break;
                }
                let Some(entry) = backlog.pop_front() else { break };
                backlog_ids.remove(entry.id.as_str());
                backlog_bytes -= entry.data.len();
                let id = entry.id.to_string();
                // Sent meanwhile (scans skip the backlog's ids; kept as a guard).
                if inflight.contains_key(&id) || deleting.contains(&id) {
                    continue;
                }
                let entry = Arc::try_unwrap(entry).unwrap_or_else(|shared| (*shared).clone());
                send_delivery(&mut send, entry).await?;
                inflight.insert(id, size);
                inflight_bytes += size;
            }
            tokio::select! {
                frame = rx.recv() => {
                    // Take every frame already waiting, so the acks of a burst
                    // are deleted in one commit.
                    let mut frames = vec![frame];
                    while frames.len() < 256 {
                        match rx.try_recv() {
                            Ok(f) => frames.push(Some(f)),
                            Err(_) => break,
                        }
                    }
                    let acked: Vec<String> = frames.iter().filter_map(|f| match f {
                        Some(Ok(Frame::Ack { id })) => Some(id.clone()),
                        _ => None,
                    }).collect();
                    if !acked.is_empty() {
                        for id in &acked {
                            if let Some(size) = inflight.remove(id) {
                                inflight_bytes -= size;
                            }
                            deleting.insert(id.clone());
                        }
                        let store = ctx.store.clone();
                        let owner = handle.clone();
                        deletes.spawn(async move {
                            let result = store.spool_delete_many(&owner, acked.clone()).await.map_err(|e| e.to_string());
                            (acked, result)
                        });
                    }
                    for frame in frames {
                        match frame {
                            Some(Ok(Frame::Ack { .. })) | Some(Ok(Frame::Pong { .. })) => {}
                            Some(Ok(Frame::Ping { nonce })) => write_frame(&mut send, &Frame::Pong { nonce }).await.map_err(|e| e.to_string())?,
                            Some(Ok(Frame::Submit(submission))) => {
                                let outbound = ctx.outbound.clone();
                                let owner = handle.clone();
                                submitting.spawn(async move {
                                    let id = submission.id.clone();
                                    (id, outbound.accept(&owner, submission).await)
                                });
                            }
                            Some(Ok(Frame::Publish { kind, values })) => {
                                let error = publish(&ctx.store, &handle, kind, &values).await.err();
                                write_frame(&mut send, &Frame::Published { kind, error }).await.map_err(|e| e.to_string())?;
                            }
                            Some(Ok(other)) => return Err(format!("unexpected frame {}", frame_name(&other))),
                            Some(Err(ProtocolError::Closed)) | None => return Ok(()),
                            Some(Err(e)) => return Err(e.to_string()),
                        }
                    }
                },
                Some(done) = submitting.join_next(), if !submitting.is_empty() => {
                    let (id, outcome) = done.map_err(|e| e.to_string())?;
                    write_frame(&mut send, &Frame::Submitted { id, outcome }).await.map_err(|e| e.to_string())?;
                }
                Some(done) = deletes.join_next(), if !deletes.is_empty() => {
                    let (ids, result) = done.map_err(|e| e.to_string())?;
                    let deleted = result?;
                    for id in &ids {
                        deleting.remove(id);
                        info!(queue_id = %id, "delivered to node");
                    }
                    debug!(acked = ids.len(), deleted, "acknowledgements committed");
                }
                Some(first) = registration.offers.recv() => {
                    let mut offers = vec![first];
                    while let Ok(more) = registration.offers.try_recv() {
                        offers.push(more);
                    }
                    // Held in the backlog, and sent from there at the top of
                    // the loop as the window allows.
                    for entry in offers {
                        let id = entry.id.as_str();
                        // Sent already (by a scan), or waiting here already.
                        if inflight.contains_key(id) || deleting.contains(id) || backlog_ids.contains(id) {
                            continue;
                        }
                        if backlog.len() >= BACKLOG_MAX || backlog_bytes + entry.data.len() > BACKLOG_MAX_BYTES {
                            // Left in the spool for a scan to find.
                            need_scan = true;
                            continue;
                        }
                        backlog_ids.insert(id.to_string());
                        backlog_bytes += entry.data.len();
                        backlog.push_back(entry);
                    }
                }
                changed = account_changes.recv() => {
                    // Lagging behind counts as a change of ours.
                    if changed.as_ref().map_or(true, |h| *h == handle) {
                        resend_senders(ctx, &handle, &mut senders, &mut send).await?;
                    }
                }
                _ = senders_refresh.tick() => resend_senders(ctx, &handle, &mut senders, &mut send).await?,
                _ = registration.wake.notified() => need_scan = true,
                _ = registration.stop.notified() => return Err("replaced by a newer connection of the same node".to_string()),
                _ = tokio::time::sleep(RESCAN) => need_scan = true,
            }
        }
    }
    .await;
    // Let the deletes already under way finish; one that doesn't only means a
    // redelivery, which the node drops as a duplicate.
    while deletes.join_next().await.is_some() {}
    reader.abort();
    ctx.hub.unregister(&handle, registration.generation);
    match result {
        Ok(()) => info!(%handle, in_flight = inflight.len(), "node disconnected"),
        Err(reason) => {
            info!(%handle, %reason, in_flight = inflight.len(), "node session ended");
            conn.close(&reason);
        }
    }
}

/// Tells the node what its account may send as, when that changed since `sent`.
async fn resend_senders<W: AsyncWrite + Unpin>(
    ctx: &TunnelContext,
    handle: &str,
    sent: &mut (Vec<String>, Vec<String>),
    send: &mut W,
) -> Result<(), String> {
    let now = match ctx.store.senders(handle, &ctx.outbound.relay_domain).await {
        Ok(now) => now,
        Err(e) => {
            warn!(error = %e, "cannot read the account's addresses");
            return Ok(());
        }
    };
    if now != *sent {
        let (addresses, domains) = now.clone();
        info!(%handle, ?addresses, ?domains, "the account's addresses changed");
        write_frame(send, &Frame::Account { addresses, domains })
            .await
            .map_err(|e| e.to_string())?;
        *sent = now;
    }
    Ok(())
}

/// Sends one spooled message to the node.
async fn send_delivery<W: AsyncWrite + Unpin>(send: &mut W, e: SpoolEntry) -> Result<(), String> {
    let delivery = Delivery {
        id: e.id.0,
        mail_from: e.mail_from,
        rcpt_to: e.rcpt_to,
        received_at: e.received_at,
        relay_encrypted: e.relay_encrypted,
        plain_size: e.plain_size.max(0) as u64,
        data: e.data,
    };
    let id = delivery.id.clone();
    write_frame(send, &Frame::Deliver(delivery))
        .await
        .map_err(|e| e.to_string())?;
    debug!(queue_id = %id, "sent to node");
    Ok(())
}

/// Publishes a node's DNS records in its account's names (the zone follows at
/// once). The error is told to the node.
async fn publish(
    store: &Store,
    handle: &str,
    kind: PublishKind,
    values: &[String],
) -> Result<(), String> {
    kind.check(values)?;
    let stored = match kind {
        PublishKind::Dkim => RecordKind::Dkim,
        PublishKind::AcmeChallenge => RecordKind::Acme,
    };
    store
        .set_account_records(handle, stored, values)
        .await
        .map_err(|e| {
            warn!(error = %e, %handle, "cannot publish a node's DNS records");
            "the relay could not store the records; try again".to_string()
        })?;
    info!(%handle, ?kind, count = values.len(), "node published DNS records");
    Ok(())
}

fn frame_name(f: &Frame) -> &'static str {
    match f {
        Frame::Hello { .. } => "Hello",
        Frame::Challenge { .. } => "Challenge",
        Frame::Link { .. } => "Link",
        Frame::Auth { .. } => "Auth",
        Frame::Welcome { .. } => "Welcome",
        Frame::Refused { .. } => "Refused",
        Frame::Deliver(_) => "Deliver",
        Frame::Ack { .. } => "Ack",
        Frame::Ping { .. } => "Ping",
        Frame::Pong { .. } => "Pong",
        Frame::Publish { .. } => "Publish",
        Frame::Published { .. } => "Published",
        Frame::Submit(_) => "Submit",
        Frame::Submitted { .. } => "Submitted",
        Frame::Account { .. } => "Account",
    }
}
