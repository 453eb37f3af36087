//! The relay's MX: inbound SMTP from the Internet (RFC 5321).
//!
//! `session.rs` is the protocol, with no I/O; `server.rs` drives it over TCP and
//! TLS; `accept.rs` decides on recipients and turns an accepted message into
//! encrypted spool entries.

pub mod accept;
pub mod server;
pub mod session;

pub use server::{serve, MxServer};
