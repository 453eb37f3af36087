//! One query message in, one response message out: the protocol part of the server, with
//! no I/O, so that it can be tested and fuzzed byte by byte.

use std::panic::{catch_unwind, AssertUnwindSafe};

use hickory_proto::op::{Edns, Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType};
use tracing::{debug, warn};

use super::{Answer, ZoneSource};

/// The largest UDP response this server sends, whatever the client advertises: the
/// DNS Flag Day 2020 value, which avoids IP fragmentation on common paths.
pub(crate) const MAX_UDP_PAYLOAD: u16 = 1232;
/// The UDP response size without EDNS(0) (RFC 1035 §4.2.1), and the least a client may
/// advertise with it (RFC 6891 §6.2.5).
const CLASSIC_UDP_PAYLOAD: u16 = 512;
/// The fixed DNS header (RFC 1035 §4.1.1).
const HEADER_LEN: usize = 12;

/// The transport a message came on, which decides how large the response may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// UDP: 512 bytes, or what EDNS(0) advertises up to [`MAX_UDP_PAYLOAD`].
    Udp,
    /// TCP: up to 65535 bytes (RFC 1035 §4.2.2).
    Tcp,
}

/// The fields of a header read straight from the bytes, for replies to messages that do
/// not parse.
#[derive(Debug, Clone, Copy)]
struct RawHeader {
    id: u16,
    is_response: bool,
    op_code: u8,
    recursion_desired: bool,
    query_count: u16,
}

impl RawHeader {
    fn read(packet: &[u8]) -> Option<Self> {
        let header = packet.get(..HEADER_LEN)?;
        let byte = |i: usize| header.get(i).copied().unwrap_or_default();
        Some(Self {
            id: u16::from_be_bytes([byte(0), byte(1)]),
            is_response: byte(2) & 0x80 != 0,
            op_code: (byte(2) >> 3) & 0x0f,
            recursion_desired: byte(2) & 0x01 != 0,
            query_count: u16::from_be_bytes([byte(4), byte(5)]),
        })
    }

    /// A reply with only a header: `code`, this id and opcode, RD copied (RFC 1035 §4.1.1).
    fn reply(&self, code: ResponseCode) -> Option<Vec<u8>> {
        let mut message = Message::error_msg(self.id, OpCode::from_u8(self.op_code), code);
        message.metadata.recursion_desired = self.recursion_desired;
        message.to_vec().ok()
    }
}

/// Answers one DNS message from `zone`, or `None` when nothing should be sent back.
///
/// Never panics: a panic in the parser or in the zone source is caught and answered
/// with SERVFAIL, so garbage cannot stop the server.
pub(crate) fn respond(
    packet: &[u8],
    transport: Transport,
    zone: &dyn ZoneSource,
) -> Option<Vec<u8>> {
    match catch_unwind(AssertUnwindSafe(|| {
        respond_unguarded(packet, transport, zone)
    })) {
        Ok(reply) => reply,
        Err(_) => {
            warn!(
                len = packet.len(),
                "dns: panic while answering a message; sent SERVFAIL"
            );
            RawHeader::read(packet).and_then(|header| header.reply(ResponseCode::ServFail))
        }
    }
}

/// [`respond`] without the panic guard (the tests call it to see panics).
pub(crate) fn respond_unguarded(
    packet: &[u8],
    transport: Transport,
    zone: &dyn ZoneSource,
) -> Option<Vec<u8>> {
    // Without a whole header there is no id to answer to; and a response is never
    // answered, which keeps two servers from bouncing errors forever (RFC 1035 §4.1.1).
    let header = RawHeader::read(packet)?;
    if header.is_response {
        return None;
    }
    // RFC 1035 §4.1.1: NOTIMP for an opcode this server does not support.
    if OpCode::from_u8(header.op_code) != OpCode::Query {
        return header.reply(ResponseCode::NotImp);
    }
    // RFC 9619: a query holds exactly one question. Checked before parsing, so a bogus
    // count never sizes an allocation.
    if header.query_count != 1 {
        return header.reply(ResponseCode::FormErr);
    }
    let request = match Message::from_vec(packet) {
        Ok(request) => request,
        Err(error) => {
            debug!(%error, "dns: unparseable query; sent FORMERR");
            return header.reply(ResponseCode::FormErr);
        }
    };
    let query = request.queries.first()?;
    let mut response = Message::response(request.id, OpCode::Query);
    response.metadata.recursion_desired = request.recursion_desired;
    response.metadata.checking_disabled = request.checking_disabled;
    response.add_query(query.clone());

    let limit = match (transport, &request.edns) {
        (Transport::Tcp, _) => u16::MAX,
        (Transport::Udp, None) => CLASSIC_UDP_PAYLOAD,
        (Transport::Udp, Some(edns)) => edns
            .max_payload()
            .clamp(CLASSIC_UDP_PAYLOAD, MAX_UDP_PAYLOAD),
    };
    if let Some(asked) = &request.edns {
        // RFC 6891 §6.1.1: a query with an OPT record gets one in the response, which
        // advertises this server's own payload size (§6.2.3); RFC 3225 §3: DO is copied.
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_UDP_PAYLOAD);
        edns.set_dnssec_ok(asked.flags().dnssec_ok);
        response.set_edns(edns);
        // RFC 6891 §6.1.3: only version 0 is implemented.
        if asked.version() > 0 {
            response.metadata.response_code = ResponseCode::BADVERS;
            return encode(response, limit);
        }
    }

    // RFC 3225 §3: DNSSEC records only for a query that sets DO.
    let dnssec_ok = request
        .edns
        .as_ref()
        .is_some_and(|edns| edns.flags().dnssec_ok);
    match query.query_type() {
        // Transfers are answered on TCP by `transfer`, to the addresses allowed; here
        // (UDP, or a peer not allowed) REFUSED, as RFC 5936 §4.2 allows.
        RecordType::AXFR | RecordType::IXFR => {
            response.metadata.response_code = ResponseCode::Refused;
        }
        // OPT is a pseudo-type and cannot be asked for (RFC 6891 §6.1.1).
        RecordType::OPT => response.metadata.response_code = ResponseCode::FormErr,
        _ => fill(&mut response, query, zone, dnssec_ok),
    }
    encode(response, limit)
}

/// Puts the zone's answer to `query` into `response` (RFC 1035 §4.3.2, RFC 2308,
/// RFC 4035 §3.1).
fn fill(response: &mut Message, query: &Query, zone: &dyn ZoneSource, dnssec_ok: bool) {
    let answer = zone.answer(query, dnssec_ok);
    response.metadata.authoritative = answer != Answer::Refused;
    match answer {
        Answer::Records(records) => {
            response.add_answers(records);
        }
        Answer::NoData(proof) => {
            response.add_authorities(negative_soa(zone, dnssec_ok));
            response.add_authorities(proof);
        }
        Answer::NxDomain(proof) => {
            response.metadata.response_code = ResponseCode::NXDomain;
            response.add_authorities(negative_soa(zone, dnssec_ok));
            response.add_authorities(proof);
        }
        Answer::Refused => response.metadata.response_code = ResponseCode::Refused,
    }
}

/// The zone's SOA (and its RRSIG, with DNSSEC) for a negative answer, the TTL lowered
/// to the SOA MINIMUM (RFC 2308 §3, RFC 4035 §3.1.3).
fn negative_soa(zone: &dyn ZoneSource, dnssec_ok: bool) -> Vec<Record> {
    let Answer::Records(mut records) = zone.answer(
        &Query::query(zone.origin().clone(), RecordType::SOA),
        dnssec_ok,
    ) else {
        return Vec::new();
    };
    let Some(minimum) = records.iter().find_map(|record| match &record.data {
        RData::SOA(soa) => Some(soa.minimum),
        _ => None,
    }) else {
        return Vec::new();
    };
    for record in &mut records {
        record.ttl = record.ttl.min(minimum);
    }
    records
}

/// Serializes `response`; when it is longer than `limit`, sends the header and question
/// with TC set instead, so that the client retries over TCP (RFC 1035 §4.2.1,
/// RFC 2181 §9).
pub(super) fn encode(response: Message, limit: u16) -> Option<Vec<u8>> {
    let bytes = match response.to_vec() {
        Ok(bytes) => bytes,
        Err(error) => {
            warn!(%error, "dns: could not serialize a response; sent SERVFAIL");
            let mut failure =
                Message::error_msg(response.id, response.op_code, ResponseCode::ServFail);
            failure.metadata.recursion_desired = response.recursion_desired;
            failure.add_queries(response.queries.iter().cloned());
            return failure.to_vec().ok();
        }
    };
    if bytes.len() <= usize::from(limit) {
        return Some(bytes);
    }
    debug!(len = bytes.len(), limit, "dns: response too long; sent TC");
    response.truncate().to_vec().ok()
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
    use hickory_proto::rr::RecordType;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::{respond_unguarded, Transport};
    use crate::dns::tests::{query, sandbox_zone};

    /// Random and mutated messages straight through the parser path, without the panic
    /// guard, so that a panic fails the test.
    #[test]
    fn the_parser_path_does_not_panic() {
        let zone = sandbox_zone();
        let mut rng = StdRng::seed_from_u64(1035);
        let valid = query("alice.sandbox.test.", RecordType::MX, Some(1232))
            .to_vec()
            .expect("encode");
        for round in 0..20_000 {
            let packet: Vec<u8> = if round % 2 == 0 {
                let len = rng.gen_range(0..600);
                let mut packet: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                // Mostly a plausible header, so that the body reaches the parser.
                if round % 4 == 0 && packet.len() >= 12 {
                    packet[2] &= 0x07;
                    packet[4..6].copy_from_slice(&[0, 1]);
                }
                packet
            } else {
                let mut packet = valid.clone();
                for _ in 0..rng.gen_range(1..6) {
                    let i = rng.gen_range(0..packet.len());
                    packet[i] = rng.gen();
                }
                packet.truncate(rng.gen_range(0..=packet.len()));
                packet
            };
            for transport in [Transport::Udp, Transport::Tcp] {
                let _ = respond_unguarded(&packet, transport, zone.as_ref());
            }
        }
    }

    fn reply(request: &Message) -> Option<Message> {
        let bytes = request.to_vec().expect("encode");
        let reply = respond_unguarded(&bytes, Transport::Udp, sandbox_zone().as_ref())?;
        Some(Message::from_vec(&reply).expect("decode"))
    }

    #[test]
    fn header_level_errors() {
        // RFC 6891 §6.1.3: EDNS versions above 0 get BADVERS, with an OPT record.
        let mut request = query("sandbox.test.", RecordType::A, Some(1232));
        if let Some(edns) = request.edns.as_mut() {
            edns.set_version(1);
        }
        let badvers = reply(&request).expect("a reply");
        // Code 16 is both BADVERS and BADSIG (RFC 6895 §2.3); hickory decodes it as BADSIG.
        assert_eq!(
            u16::from(badvers.response_code),
            u16::from(ResponseCode::BADVERS)
        );
        assert!(badvers.edns.is_some() && badvers.answers.is_empty());

        // RFC 1035 §4.1.1: an unsupported opcode gets NOTIMP.
        let mut status = query("sandbox.test.", RecordType::A, None);
        status.metadata.op_code = OpCode::Status;
        assert_eq!(
            reply(&status).map(|m| m.response_code),
            Some(ResponseCode::NotImp)
        );

        // RFC 9619: exactly one question.
        let mut two = query("sandbox.test.", RecordType::A, None);
        two.add_query(two.queries[0].clone());
        assert_eq!(
            reply(&two).map(|m| m.response_code),
            Some(ResponseCode::FormErr)
        );

        // Responses are never answered.
        let mut response = query("sandbox.test.", RecordType::A, None);
        response.metadata.message_type = MessageType::Response;
        assert!(reply(&response).is_none());
    }
}
