//! The tunnel's transports, behind one small interface: a node dials and gets a
//! [`TunnelStream`]; the relay accepts [`TunnelStream`]s. The protocol in
//! [`crate::protocol`] runs unchanged over any of them. `quic.rs` is the first;
//! Tor (arti) comes as `tor.rs` beside it.

pub mod quic;

use std::future::Future;
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncWrite};

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot reach the relay at {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error(
        "the relay's certificate does not match the pinned fingerprint; refusing to talk to it"
    )]
    PinMismatch,
    #[error("TLS set-up: {0}")]
    Tls(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// One authenticated-transport byte stream, both halves, plus what the protocol
/// needs from the transport: a channel binding that both ends compute alike and
/// no other connection shares.
pub struct TunnelStream {
    pub recv: Box<dyn AsyncRead + Send + Unpin>,
    pub send: Box<dyn AsyncWrite + Send + Unpin>,
    /// Bytes unique to this connection (TLS exporter for QUIC), signed by the node.
    pub binding: Vec<u8>,
    /// The far end as this side sees it (for logs and per-IP limits).
    pub peer: SocketAddr,
    /// Keeps the underlying connection open while the stream lives, and closes it.
    pub handle: Box<dyn ConnectionHandle>,
}

/// Closing and watching the connection under a [`TunnelStream`].
pub trait ConnectionHandle: Send + Sync {
    /// Closes the connection at once, with a reason for the peer.
    fn close(&self, reason: &str);
    /// The peer's address now (it changes when a NAT rebinds).
    fn remote_address(&self) -> SocketAddr;
}

/// How a node reaches its relay.
pub trait Connector: Send + Sync + 'static {
    fn connect(&self) -> impl Future<Output = Result<TunnelStream, TransportError>> + Send;
}
