//! The relay's authoritative DNS server.
//!
//! Two halves, so that the data can change without touching the wire code:
//!
//! - a [`ZoneSource`] answers one question from records: [`RelayZone`] holds the relay's
//!   zone in memory ([`ZoneData`]: the fixed names of a [`ZoneConfig`] and the names of
//!   every account) and follows the database, so that changes are served at once;
//! - a [`DnsServer`] is hickory-server's `Server` (UDP and TCP, RFC 1035 §4, RFC 7766)
//!   with this crate's request handler: hickory parses and frames, the I/O-free
//!   `wire::reply` decides each reply (EDNS(0) per RFC 6891, truncation, negative
//!   answers) from the source.
//!
//! Around them: [`ZoneKey`] signs the zone online (DNSSEC, RFC 4033–4035) with NSEC
//! denial of existence computed from the zone's canonical order (`nsec`); `transfer`
//! serves AXFR to the configured secondaries (RFC 5936) and `notify` tells them of
//! every new serial (RFC 1996); `rrl` limits the UDP responses sent to one source, so
//! that the server cannot be used to flood a forged address.
//!
//! The sandbox and the tests resolve through this server on loopback, never through the
//! system resolver.

mod dnssec;
mod export;
mod live;
mod notify;
mod nsec;
mod rrl;
mod server;
mod transfer;
mod wire;
mod zone;

#[cfg(test)]
mod tests;

use hickory_proto::op::Query;
use hickory_proto::rr::{Name, Record};

pub use dnssec::{KeyError, ZoneKey};
pub use export::zone_file;
pub use live::RelayZone;
pub use notify::notify_secondaries;
pub use rrl::RrlConfig;
pub use server::{DnsServer, ServerOptions};
pub use transfer::TransferAcl;
pub use zone::{ZoneConfig, ZoneData, ZoneError};

/// The I/O-free query path, for the fuzz target (`fuzz/fuzz_targets/dns_query.rs`).
#[doc(hidden)]
pub mod fuzzing {
    use hickory_server::net::xfer::Protocol;

    /// Answers one message as the server would on UDP (`tcp == false`) or TCP.
    pub fn respond(packet: &[u8], tcp: bool, zone: &dyn super::ZoneSource) -> Option<Vec<u8>> {
        let protocol = if tcp { Protocol::Tcp } else { Protocol::Udp };
        super::wire::respond(packet, protocol, zone)
    }
}

/// What a [`ZoneSource`] has to say about one question.
///
/// The server turns it into a response code and sections (RFC 1035 §4.3.2, RFC 2308 for
/// negative answers) and sets the AA bit on everything but [`Answer::Refused`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// NOERROR with these records in the answer section. They should all be owned by the
    /// query name, written with the query's own letter case (RFC 4343 §4.1); with DNSSEC,
    /// followed by their RRSIGs (RFC 4035 §3.1.1).
    Records(Vec<Record>),
    /// NOERROR and no data: the name exists but has no record of the asked type. The
    /// server puts the zone's SOA in the authority section (RFC 2308 §2.2), then these
    /// records: with DNSSEC, the NSEC proof and its RRSIGs (RFC 4035 §3.1.3.1); else none.
    NoData(Vec<Record>),
    /// NXDOMAIN: the name does not exist in the zone. The server puts the zone's SOA in the
    /// authority section (RFC 2308 §2.1), then these records: with DNSSEC, the NSECs that
    /// prove the name and the wildcard absent, with their RRSIGs (RFC 4035 §3.1.3.2).
    NxDomain(Vec<Record>),
    /// REFUSED: the name is not in a zone this source serves, or the class is not IN
    /// (RFC 1035 §4.1.1). No AA bit.
    Refused,
}

/// Answers questions from the records of one zone.
///
/// `answer` is called on the server's task for every query, so it should be quick and
/// must not block for long; a source backed by a database keeps what it serves in memory.
pub trait ZoneSource: Send + Sync + 'static {
    /// Answers one question. Names compare case-insensitively (RFC 4343). For a query of
    /// type ANY, answer minimally (RFC 8482 §4): one synthesized HINFO record or the
    /// records of one type.
    ///
    /// `dnssec_ok` is the query's DO bit (RFC 3225 §3): a signed zone then adds RRSIGs and
    /// NSEC proofs (RFC 4035 §3.1); without it the answer is the same as for an unsigned
    /// zone and costs nothing more.
    fn answer(&self, query: &Query, dnssec_ok: bool) -> Answer;

    /// The apex of the zone. A query for `origin()` of type SOA must answer
    /// [`Answer::Records`] with the SOA record: the server puts it in the authority section
    /// of negative answers.
    fn origin(&self) -> &Name;

    /// The whole zone for a transfer (RFC 5936 §2.2): the SOA, every other record (with
    /// DNSKEY, RRSIG and NSEC when signed), and the SOA again. `None` when this source
    /// does not offer transfers; the server then answers REFUSED.
    fn transfer(&self) -> Option<Box<dyn Iterator<Item = Record> + Send>> {
        None
    }
}
