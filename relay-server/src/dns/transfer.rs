//! Zone transfers to secondaries (RFC 5936 AXFR; IXFR answered the same way, as
//! RFC 1995 §4 allows): over TCP only, to the addresses of `[dns] allow_transfer`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{MessageType, Metadata, OpCode};
use hickory_proto::rr::{Record, RecordType};
use hickory_proto::serialize::binary::{BinDecoder, BinEncodable};
use hickory_server::server::{Request, ResponseHandler};
use hickory_server::zone_handler::{MessageRequest, Queries};
use tokio::sync::mpsc;
use tokio::time::{sleep, Instant};
use tracing::{debug, info, warn};

use super::wire::Reply;
use super::ZoneSource;

/// The most record bytes put in one transfer message, so that with the header and
/// question it stays below the 65535 bytes a TCP message can hold (RFC 5936 §2.2).
const MESSAGE_BUDGET: usize = 60_000;
/// How long a secondary may leave the transfer unread before it is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// The pause before trying again to queue a message on a full connection.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(2);

/// An IP network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Network {
    address: IpAddr,
    prefix: u8,
}

impl Network {
    /// Reads `ADDRESS` or `ADDRESS/PREFIX`.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not an IP address or ADDRESS/PREFIX"))?;
        let bits = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| format!("`{text}`: the prefix must be 0 to {bits}"))?,
            None => bits,
        };
        Ok(Self {
            address: address.to_canonical(),
            prefix,
        })
    }

    /// Whether `ip` lies in this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let (a, b, bits) = match (self.address, ip.to_canonical()) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                (u128::from(u32::from(a)), u128::from(u32::from(b)), 32)
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
            _ => return false,
        };
        let keep = u32::from(bits - self.prefix.min(bits));
        self.prefix == 0 || (a >> keep) == (b >> keep)
    }
}

/// Who may transfer the zone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransferAcl(Vec<Network>);

impl TransferAcl {
    /// From `[dns] allow_transfer` entries (`ADDRESS` or `ADDRESS/PREFIX`); the error
    /// names the entry that is wrong.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        entries
            .iter()
            .map(|e| Network::parse(e))
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Whether `ip` may transfer the zone.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(ip))
    }
}

/// Whether `request` asks for a transfer of `zone`'s own zone (opcode QUERY, one
/// question of type AXFR or IXFR for the apex).
pub(super) fn is_request(request: &MessageRequest, zone: &dyn ZoneSource) -> bool {
    let [query] = request.queries.queries() else {
        return false;
    };
    request.metadata.op_code == OpCode::Query
        && request.metadata.message_type == MessageType::Query
        && matches!(query.query_type(), RecordType::AXFR | RecordType::IXFR)
        && query.original().name() == zone.origin()
}

/// Sends the zone to the client of `request` as RFC 5936 §2.2 describes: SOA, every
/// record, SOA, in as many messages as needed, each with the request's id and
/// question.
///
/// hickory-server serves one TCP connection on one task and writes the replies queued
/// for it only between requests, so the transfer runs on a task of its own: the
/// records are made (and signed) on a blocking thread, and each message waits for room
/// in the connection's queue while the earlier ones go out.
pub(super) fn start<R: ResponseHandler>(
    request: &Request,
    mut response: R,
    zone: Arc<dyn ZoneSource>,
) {
    let peer = request.src();
    let Some(queries) = copy(&request.queries) else {
        return;
    };
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.authoritative = true;
    let Some(records) = zone.transfer() else {
        return;
    };
    tokio::spawn(async move {
        let (sender, mut batches) = mpsc::channel::<Vec<Record>>(4);
        let producer = tokio::task::spawn_blocking(move || {
            let mut batch: Vec<Record> = Vec::new();
            let mut size = 0;
            let mut count = 0usize;
            for record in records {
                let len = record.to_bytes().map(|b| b.len()).unwrap_or(MESSAGE_BUDGET);
                if !batch.is_empty() && size + len > MESSAGE_BUDGET {
                    if sender.blocking_send(std::mem::take(&mut batch)).is_err() {
                        return count;
                    }
                    size = 0;
                }
                size += len;
                count += 1;
                batch.push(record);
            }
            let _ = sender.blocking_send(batch);
            count
        });
        let mut sent = 0usize;
        let mut ok = true;
        while let Some(answers) = batches.recv().await {
            let reply = Reply {
                metadata,
                answers,
                authorities: Vec::new(),
                edns: None,
            };
            if !queue(&mut response, &reply, &queries).await {
                debug!(%peer, "dns: transfer stopped: the connection is gone or stuck");
                ok = false;
                break;
            }
            sent += 1;
        }
        drop(batches);
        let records = producer.await.unwrap_or_default();
        if ok {
            info!(%peer, records, messages = sent, "dns: zone transferred");
        }
    });
}

/// Queues one transfer message on the connection, waiting while its queue is full;
/// false once the connection is closed or nothing has gone out for [`WRITE_TIMEOUT`].
async fn queue<R: ResponseHandler>(response: &mut R, reply: &Reply, queries: &Queries) -> bool {
    let deadline = Instant::now() + WRITE_TIMEOUT;
    loop {
        match response.send_response(reply.message(queries)).await {
            Ok(_) => return true,
            // The queue refuses at once when full ("no available capacity") and for good
            // when the connection has ended ("channel closed").
            Err(error) if error.to_string().contains("closed") => return false,
            Err(_) if Instant::now() >= deadline => {
                warn!("dns: a secondary has not read the transfer for 30 s; stopped");
                return false;
            }
            Err(_) => sleep(QUEUE_FULL_PAUSE).await,
        }
    }
}

/// A copy of `queries` (hickory offers no `Clone`): the same question bytes read again.
pub(super) fn copy(queries: &Queries) -> Option<Queries> {
    Queries::read(&mut BinDecoder::new(queries.as_bytes()), queries.len()).ok()
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::{Network, TransferAcl};

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn networks_and_acls() {
        let acl = TransferAcl::parse(&[
            "127.0.0.1".into(),
            "10.1.0.0/16".into(),
            "2001:db8::/32".into(),
        ])
        .expect("valid");
        assert!(acl.allows(ip("127.0.0.1")));
        assert!(acl.allows(ip("::ffff:127.0.0.1")));
        assert!(!acl.allows(ip("127.0.0.2")));
        assert!(acl.allows(ip("10.1.200.3")) && !acl.allows(ip("10.2.0.1")));
        assert!(acl.allows(ip("2001:db8:5::1")) && !acl.allows(ip("2001:db9::1")));
        assert!(!TransferAcl::default().allows(ip("127.0.0.1")));
        for bad in ["localhost", "10.0.0.0/33", "::/129", "1.2.3.4/x"] {
            assert!(Network::parse(bad).is_err(), "{bad}");
        }
        assert!(Network::parse("0.0.0.0/0")
            .expect("valid")
            .contains(ip("192.0.2.1")));
    }
}
