//! Code common to the Own-Mailbox relay and home node: the naming types, the
//! tunnel's wire protocol and transports, the tunnel identity, and OpenPGP helpers.

pub mod identity;
pub mod mime;
pub mod pgp;
pub mod protocol;
pub mod transport;
pub mod types;
