//! SNI passthrough: `imaps` and `https` connections for `HANDLE.DOMAIN` are
//! passed to that account's home node through its tunnel, as raw bytes. The
//! relay never terminates this TLS: it reads the ClientHello only to learn the
//! name, and forwards it with everything after it unchanged; TLS ends on the
//! node, so the relay sees only ciphertext.
//!
//! `sni.rs` reads the ClientHello and maps the name, with no I/O; `server.rs`
//! accepts connections, opens a side stream to the node
//! ([`omb_shared::protocol::StreamFrame`]) and splices.

pub mod server;
pub mod sni;

pub use server::{serve, PassthroughServer};
