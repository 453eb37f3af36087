//! NOTIFY (RFC 1996): tells the configured secondaries that the zone has a new serial,
//! so that they transfer it at once instead of at the SOA REFRESH.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Record, RecordType};
use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout};
use tracing::{debug, info, warn};

use super::{Answer, RelayZone, ZoneSource};

/// Changes closer together than this are announced once (a batch of account changes
/// makes one NOTIFY, not hundreds).
const DEBOUNCE: Duration = Duration::from_millis(100);
/// How long to wait for an answer to the first NOTIFY; doubled for each retry
/// (RFC 1996 §3.6 asks for retries with a growing interval).
const FIRST_WAIT: Duration = Duration::from_millis(500);
/// How many NOTIFY messages are sent to one secondary for one serial.
const ATTEMPTS: u32 = 5;

/// Sends NOTIFY to every `target` on each new serial of `zone`, until the zone is
/// dropped. A newer serial cancels the retries of an older one. Returns at once when
/// there is no target.
pub async fn notify_secondaries(zone: Arc<RelayZone>, targets: Vec<SocketAddr>) {
    if targets.is_empty() {
        return;
    }
    let mut serials = zone.watch_serial();
    let mut pending = JoinSet::new();
    loop {
        if serials.changed().await.is_err() {
            return;
        }
        sleep(DEBOUNCE).await;
        let serial = *serials.borrow_and_update();
        let soa = match zone.answer(&Query::query(zone.origin().clone(), RecordType::SOA), false) {
            Answer::Records(records) => records,
            _ => continue,
        };
        pending.abort_all();
        for target in &targets {
            pending.spawn(notify_one(*target, soa.clone(), serial));
        }
    }
}

/// Sends NOTIFY for `soa` to one secondary until it answers (RFC 1996 §4.7) or
/// [`ATTEMPTS`] are used up.
async fn notify_one(target: SocketAddr, soa: Vec<Record>, serial: u32) {
    let Some(origin) = soa.first().map(|r| r.name.clone()) else {
        return;
    };
    let local: SocketAddr = if target.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = match UdpSocket::bind(local).await {
        Ok(socket) => socket,
        Err(error) => {
            warn!(%target, %error, "dns: cannot open a socket for NOTIFY");
            return;
        }
    };
    // RFC 1996 §3.7: the question names the zone with type SOA; the answer section may
    // carry the new SOA. AA is set (§3.2).
    let mut message = Message::query();
    message.metadata.op_code = OpCode::Notify;
    message.metadata.authoritative = true;
    message.add_query(Query::query(origin, RecordType::SOA));
    message.add_answers(soa);
    let Ok(bytes) = message.to_vec() else {
        return;
    };
    let mut wait = FIRST_WAIT;
    let mut buf = vec![0u8; 4096];
    for attempt in 1..=ATTEMPTS {
        if let Err(error) = socket.send_to(&bytes, target).await {
            debug!(%target, %error, "dns: NOTIFY send failed");
        }
        let answered = timeout(wait, async {
            loop {
                let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                    return None;
                };
                let Some(reply) = buf.get(..len).and_then(|b| Message::from_vec(b).ok()) else {
                    continue;
                };
                if from == target
                    && reply.id == message.id
                    && reply.message_type == MessageType::Response
                    && reply.op_code == OpCode::Notify
                {
                    return Some(reply.response_code);
                }
            }
        })
        .await;
        match answered {
            Ok(Some(ResponseCode::NoError)) => {
                info!(%target, serial, attempt, "dns: secondary notified");
                return;
            }
            Ok(Some(code)) => {
                warn!(%target, serial, %code, "dns: secondary refused NOTIFY; check its allow-notify");
                return;
            }
            Ok(None) | Err(_) => {}
        }
        wait *= 2;
    }
    warn!(%target, serial, "dns: secondary did not answer NOTIFY; it will find the change at the SOA refresh");
}
