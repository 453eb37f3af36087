//! The tunnel's transports, behind one small interface: a node dials and gets a
//! [`TunnelStream`]; the relay accepts [`TunnelStream`]s. The protocol in
//! [`crate::protocol`] runs unchanged over any of them. `quic.rs` is the first;
//! Tor (arti) comes as `tor.rs` beside it.
//!
//! Besides the session's own stream, a connection carries [`SideStream`]s that
//! the relay opens and the node accepts ([`SideStreams`]): one per TLS
//! connection passed through to the node by SNI. QUIC has them natively; a
//! transport over a single byte stream (Tor) multiplexes them itself.

pub mod quic;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
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
    #[error("the tunnel connection cannot carry a new stream: {0}")]
    Stream(String),
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
    /// Opens and accepts the connection's side streams; for other tasks to hold.
    /// It does not keep the connection open: once `handle` closes it (or is
    /// dropped), opening and accepting fail.
    pub side: Arc<dyn SideStreams>,
}

/// A further byte stream inside a tunnel connection, beside the session's own.
pub struct SideStream {
    pub recv: Box<dyn AsyncRead + Send + Unpin>,
    /// Shutting it down ends this direction only (half-close).
    pub send: Box<dyn AsyncWrite + Send + Unpin>,
}

/// A boxed future, so that [`SideStreams`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The side streams of one connection: the relay opens them, the node accepts
/// them. Side streams never hold up the session's stream: each has its own flow
/// control, and the session's frames go first.
pub trait SideStreams: Send + Sync {
    /// Relay: opens a new stream to the node. Waits while the node already has
    /// as many open as it allows.
    fn open(&self) -> BoxFuture<'_, Result<SideStream, TransportError>>;
    /// Node: the next stream the relay opened; an error once the connection is
    /// closed.
    fn accept(&self) -> BoxFuture<'_, Result<SideStream, TransportError>>;
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
