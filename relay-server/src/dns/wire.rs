//! One request in, one reply out: the protocol part of the server, with no I/O, so that
//! it can be tested and fuzzed byte by byte. hickory-server parses the message and
//! sends what [`reply`] decides; [`respond`] does both here, for the tests and the
//! fuzz target.

use std::net::{Ipv4Addr, SocketAddr};

use hickory_proto::op::{Edns, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecoder, BinEncoder};
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, ResponseInfo};
use hickory_server::zone_handler::{MessageRequest, MessageResponseBuilder, Queries};
use tracing::debug;

use super::{Answer, ZoneSource};

/// The largest UDP response this server sends, whatever the client advertises: the
/// DNS Flag Day 2020 value, which avoids IP fragmentation on common paths.
pub(crate) const MAX_UDP_PAYLOAD: u16 = 1232;
/// The UDP response size without EDNS(0) (RFC 1035 §4.2.1), and the least a client may
/// advertise with it (RFC 6891 §6.2.5).
const CLASSIC_UDP_PAYLOAD: u16 = 512;

/// What to send back for one request: the header, the records of the answer and
/// authority sections, and the OPT record. The question is the request's own.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub(crate) metadata: Metadata,
    pub(crate) answers: Vec<Record>,
    pub(crate) authorities: Vec<Record>,
    pub(crate) edns: Option<Edns>,
}

impl Reply {
    /// A reply with no records: `code`, the request's id and opcode, RD and CD copied
    /// (RFC 1035 §4.1.1, RFC 4035 §3.1.6).
    fn error(request: &Metadata, code: ResponseCode) -> Self {
        let mut metadata = Metadata::response_from_request(request);
        metadata.response_code = code;
        Self {
            metadata,
            answers: Vec::new(),
            authorities: Vec::new(),
            edns: None,
        }
    }

    /// This reply without its records and with TC set, so that the client asks again
    /// over TCP (RFC 1035 §4.2.1, RFC 2181 §9). The OPT record stays (RFC 6891 §7).
    pub(crate) fn truncated(&self) -> Self {
        let mut metadata = self.metadata;
        metadata.truncation = true;
        Self {
            metadata,
            answers: Vec::new(),
            authorities: Vec::new(),
            edns: self.edns.clone(),
        }
    }

    /// The reply as hickory-server sends it for `queries`: give it to
    /// `ResponseHandler::send_response`.
    pub(crate) fn message<'a>(
        &'a self,
        queries: &'a Queries,
    ) -> hickory_server::zone_handler::MessageResponse<
        'a,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    > {
        let mut builder = MessageResponseBuilder::new(queries, None);
        if let Some(edns) = &self.edns {
            builder.edns(edns);
        }
        builder.build(
            self.metadata,
            self.answers.iter(),
            self.authorities.iter(),
            std::iter::empty(),
            std::iter::empty(),
        )
    }

    /// The reply's bytes, at most `max` long (records that do not fit are left out and
    /// TC is set), with the header as written.
    pub(crate) fn encode(&self, queries: &Queries, max: u16) -> Option<(ResponseInfo, Vec<u8>)> {
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(max);
        let info = self.message(queries).destructive_emit(&mut encoder).ok()?;
        Some((info, bytes))
    }

    /// The reply to send on `protocol`: this one, or, on UDP when it does not fit the
    /// size the client can take, the [`truncated`](Self::truncated) one. hickory would
    /// send as many records as fit; a partial answer is of no use (RFC 2181 §9), and
    /// leaving the OPT record out of it would break EDNS.
    pub(crate) fn fitted(self, queries: &Queries, protocol: Protocol) -> Self {
        if protocol != Protocol::Udp || (self.answers.is_empty() && self.authorities.is_empty()) {
            return self;
        }
        let limit = self
            .edns
            .as_ref()
            .map_or(CLASSIC_UDP_PAYLOAD, Edns::max_payload);
        match self.encode(queries, limit) {
            Some((info, _)) if !info.truncation => self,
            _ => {
                debug!(limit, "dns: response too long for udp; sent TC");
                self.truncated()
            }
        }
    }
}

/// Decides the reply to one parsed request from `zone`; `None` when nothing should be
/// sent back (the message is a response, RFC 1035 §4.1.1: two servers must not bounce
/// errors forever).
pub(crate) fn reply(
    request: &MessageRequest,
    protocol: Protocol,
    zone: &dyn ZoneSource,
) -> Option<Reply> {
    let asked = &request.metadata;
    if asked.message_type == hickory_proto::op::MessageType::Response {
        return None;
    }
    // RFC 1035 §4.1.1: NOTIMP for an opcode this server does not support.
    if asked.op_code != OpCode::Query {
        return Some(Reply::error(asked, ResponseCode::NotImp));
    }
    // RFC 9619: a query holds exactly one question.
    let [query] = request.queries.queries() else {
        return Some(Reply::error(asked, ResponseCode::FormErr));
    };
    let query = query.original();
    let mut reply = Reply::error(asked, ResponseCode::NoError);
    if let Some(edns) = &request.edns {
        // RFC 6891 §6.1.1: a query with an OPT record gets one in the response. It
        // advertises this server's payload size (§6.2.3), lowered to what the client
        // can take, which is also what hickory-server fits a UDP reply into; RFC 3225
        // §3: DO is copied.
        let limit = match protocol {
            Protocol::Udp => edns
                .max_payload()
                .clamp(CLASSIC_UDP_PAYLOAD, MAX_UDP_PAYLOAD),
            _ => MAX_UDP_PAYLOAD,
        };
        let mut ours = Edns::new();
        ours.set_max_payload(limit);
        ours.set_dnssec_ok(edns.flags().dnssec_ok);
        reply.edns = Some(ours);
        // RFC 6891 §6.1.3: only version 0 is implemented.
        if edns.version() > 0 {
            reply.metadata.response_code = ResponseCode::BADVERS;
            return Some(reply);
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
            reply.metadata.response_code = ResponseCode::Refused;
        }
        // OPT is a pseudo-type and cannot be asked for (RFC 6891 §6.1.1).
        RecordType::OPT => reply.metadata.response_code = ResponseCode::FormErr,
        _ => fill(&mut reply, query, zone, dnssec_ok),
    }
    Some(reply)
}

/// Puts the zone's answer to `query` into `reply` (RFC 1035 §4.3.2, RFC 2308,
/// RFC 4035 §3.1).
fn fill(reply: &mut Reply, query: &Query, zone: &dyn ZoneSource, dnssec_ok: bool) {
    let answer = zone.answer(query, dnssec_ok);
    reply.metadata.authoritative = answer != Answer::Refused;
    match answer {
        Answer::Records(records) => reply.answers = records,
        Answer::NoData(proof) => {
            reply.authorities = negative_soa(zone, dnssec_ok);
            reply.authorities.extend(proof);
        }
        Answer::NxDomain(proof) => {
            reply.metadata.response_code = ResponseCode::NXDomain;
            reply.authorities = negative_soa(zone, dnssec_ok);
            reply.authorities.extend(proof);
        }
        Answer::Refused => reply.metadata.response_code = ResponseCode::Refused,
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

/// Answers one message from `zone` as the server would, bytes in and bytes out, or
/// `None` when the server sends nothing: what hickory-server does before and after
/// [`reply`] (drop a message shorter than a header, FORMERR for one that does not
/// parse, encode within the UDP size), for the tests and the fuzz target.
pub(crate) fn respond(packet: &[u8], protocol: Protocol, zone: &dyn ZoneSource) -> Option<Vec<u8>> {
    let anywhere = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    let request = match Request::from_bytes(packet.to_vec(), anywhere, protocol) {
        Ok(request) => request,
        Err(_) => {
            let header = packet.get(..12)?;
            let mut metadata = Metadata::new(
                u16::from_be_bytes([header[0], header[1]]),
                hickory_proto::op::MessageType::Query,
                OpCode::from_u8((header[2] >> 3) & 0x0f),
            );
            metadata.recursion_desired = header[2] & 0x01 != 0;
            let reply = Reply::error(&metadata, ResponseCode::FormErr);
            let none = Queries::read(&mut BinDecoder::new(&[]), 0).ok()?;
            return reply.encode(&none, u16::MAX).map(|(_, bytes)| bytes);
        }
    };
    let reply = reply(&request, protocol, zone)?.fitted(&request.queries, protocol);
    let max = match protocol {
        Protocol::Udp => reply
            .edns
            .as_ref()
            .map_or(CLASSIC_UDP_PAYLOAD, Edns::max_payload),
        _ => u16::MAX,
    };
    reply.encode(&request.queries, max).map(|(_, bytes)| bytes)
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
    use hickory_proto::rr::RecordType;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use hickory_server::net::xfer::Protocol;

    use super::respond;
    use crate::dns::tests::{query, sandbox_zone};

    /// Random and mutated messages straight through the parser path, so that a panic
    /// fails the test.
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
            for protocol in [Protocol::Udp, Protocol::Tcp] {
                let _ = respond(&packet, protocol, zone.as_ref());
            }
        }
    }

    fn reply(request: &Message) -> Option<Message> {
        let bytes = request.to_vec().expect("encode");
        let reply = respond(&bytes, Protocol::Udp, sandbox_zone().as_ref())?;
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
