//! Zone transfers to secondaries (RFC 5936 AXFR; IXFR answered the same way, as
//! RFC 1995 §4 allows): over TCP only, to the addresses of `[dns] allow_transfer`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, OpCode, Query};
use hickory_proto::rr::{Record, RecordType};
use hickory_proto::serialize::binary::BinEncodable;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tracing::{debug, info, warn};

use super::ZoneSource;

/// The most record bytes put in one transfer message, so that with the header and
/// question it stays below the 65535 bytes a TCP message can hold (RFC 5936 §2.2).
const MESSAGE_BUDGET: usize = 60_000;
/// How long one message may take to write.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

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

/// The request, when `packet` asks for a transfer of `zone`'s own zone (opcode QUERY,
/// one question of type AXFR or IXFR for the apex).
pub(super) fn request(packet: &[u8], zone: &dyn ZoneSource) -> Option<Message> {
    // Opcode QUERY (bits 3–6 of byte 2 zero), not a response, and one question:
    // checked on the bytes first, so ordinary queries are not parsed twice.
    let header = packet.get(..12)?;
    if header[2] & 0xf8 != 0 || header[4..6] != [0, 1] {
        return None;
    }
    let message = Message::from_vec(packet).ok()?;
    let query = message.queries.first()?;
    let is_transfer = matches!(query.query_type(), RecordType::AXFR | RecordType::IXFR);
    (is_transfer && message.op_code == OpCode::Query && query.name() == zone.origin())
        .then_some(message)
}

/// Sends the zone to `stream` as RFC 5936 §2.2 describes: SOA, every record, SOA,
/// in as many messages as needed, each with the request's id and question. The
/// records are made (and signed) on a blocking thread while earlier messages go out.
pub(super) async fn send(
    stream: &mut TcpStream,
    request: &Message,
    zone: Arc<dyn ZoneSource>,
) -> bool {
    let peer = stream.peer_addr().ok();
    let query = request.queries.first().cloned();
    let Some(query) = query else { return false };
    let Some(records) = zone.transfer() else {
        return false;
    };
    let id = request.id;
    let (sender, mut messages) = mpsc::channel::<Vec<u8>>(4);
    let producer = tokio::task::spawn_blocking(move || {
        let mut batch: Vec<Record> = Vec::new();
        let mut size = 0;
        let mut count = 0usize;
        for record in records {
            let len = record.to_bytes().map(|b| b.len()).unwrap_or(MESSAGE_BUDGET);
            if !batch.is_empty() && size + len > MESSAGE_BUDGET {
                let Some(message) = encode(id, &query, std::mem::take(&mut batch)) else {
                    return count;
                };
                if sender.blocking_send(message).is_err() {
                    return count;
                }
                size = 0;
            }
            size += len;
            count += 1;
            batch.push(record);
        }
        if let Some(message) = encode(id, &query, batch) {
            let _ = sender.blocking_send(message);
        }
        count
    });
    let mut sent = 0usize;
    let mut ok = true;
    while let Some(message) = messages.recv().await {
        let Ok(len) = u16::try_from(message.len()) else {
            warn!("dns: a transfer message is too long; transfer stopped");
            ok = false;
            break;
        };
        let mut framed = Vec::with_capacity(message.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&message);
        if !matches!(
            timeout(WRITE_TIMEOUT, stream.write_all(&framed)).await,
            Ok(Ok(()))
        ) {
            debug!(?peer, "dns: transfer write failed");
            ok = false;
            break;
        }
        sent += 1;
    }
    drop(messages);
    let records = producer.await.unwrap_or_default();
    if ok {
        info!(?peer, records, messages = sent, "dns: zone transferred");
    }
    ok
}

/// One transfer message: authoritative, the question, `records` as answers.
fn encode(id: u16, query: &Query, records: Vec<Record>) -> Option<Vec<u8>> {
    let mut message = Message::response(id, OpCode::Query);
    message.metadata.authoritative = true;
    message.add_query(query.clone());
    message.add_answers(records);
    match message.to_vec() {
        Ok(bytes) => Some(bytes),
        Err(error) => {
            warn!(%error, "dns: could not encode a transfer message");
            None
        }
    }
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
