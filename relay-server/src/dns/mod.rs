//! The relay's authoritative DNS server.
//!
//! Two halves, so that the data can change without touching the wire code:
//!
//! - a [`ZoneSource`] answers one question from records: [`RelayZone`] holds the relay's
//!   zone in memory ([`ZoneData`]: the fixed names of a [`ZoneConfig`] and the names of
//!   every account) and follows the database, so that changes are served at once;
//! - a [`DnsServer`] does only the wire work (RFC 1035 §4, RFC 6891 EDNS(0), RFC 7766
//!   TCP): parse, ask the source, build the reply, truncate, frame. The protocol part is the
//!   I/O-free `wire::respond`; `server` drives it from UDP and TCP sockets.
//!
//! The sandbox and the tests resolve through this server on loopback, never through the
//! system resolver.

mod live;
mod server;
mod wire;
mod zone;

#[cfg(test)]
mod tests;

use hickory_proto::op::Query;
use hickory_proto::rr::{Name, Record};

pub use live::RelayZone;
pub use server::DnsServer;
pub use zone::{ZoneConfig, ZoneData, ZoneError};

/// What a [`ZoneSource`] has to say about one question.
///
/// The server turns it into a response code and sections (RFC 1035 §4.3.2, RFC 2308 for
/// negative answers) and sets the AA bit on everything but [`Answer::Refused`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// NOERROR with these records in the answer section. They should all be owned by the
    /// query name, written with the query's own letter case (RFC 4343 §4.1).
    Records(Vec<Record>),
    /// NOERROR and no data: the name exists but has no record of the asked type. The
    /// server puts the zone's SOA in the authority section (RFC 2308 §2.2).
    NoData,
    /// NXDOMAIN: the name does not exist in the zone. The server puts the zone's SOA in the
    /// authority section (RFC 2308 §2.1).
    NxDomain,
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
    fn answer(&self, query: &Query) -> Answer;

    /// The apex of the zone. A query for `origin()` of type SOA must answer
    /// [`Answer::Records`] with the SOA record: the server puts it in the authority section
    /// of negative answers.
    fn origin(&self) -> &Name;
}
