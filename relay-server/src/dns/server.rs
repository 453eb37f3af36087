//! The sockets: UDP and TCP on one port, each message handed to [`wire::respond`].

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout};
use tracing::{debug, warn};

use super::rrl::{Limiter, RrlConfig, Verdict};
use super::transfer::{self, TransferAcl};
use super::wire::{self, Transport};
use super::ZoneSource;

/// How long a TCP connection may stay silent between queries, and how long one read or
/// write may take (RFC 7766 §6.2.3 asks for a timeout; BIND's default is 30 s).
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest query accepted over TCP. Queries hold one question (at most ~260 bytes)
/// and an OPT record; anything much longer is not a query, and the connection is closed.
const MAX_TCP_QUERY: usize = 4096;
/// Open TCP connections beyond this are closed at once, so idle clients cannot use up
/// memory or file descriptors.
const MAX_TCP_CONNECTIONS: usize = 256;
/// The pause after a failed `accept` or `recv`, so a persistent error (no more file
/// descriptors) does not spin a core.
const ERROR_PAUSE: Duration = Duration::from_millis(50);
/// How many times `bind` tries to find a port free for both UDP and TCP when given
/// port 0.
const BIND_ATTEMPTS: usize = 16;

/// What the server allows beyond answering queries.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Who may transfer the zone (AXFR/IXFR over TCP); nobody by default.
    pub allow_transfer: TransferAcl,
    /// Response-rate limiting on UDP.
    pub rrl: RrlConfig,
}

/// An authoritative DNS server for one [`ZoneSource`], on UDP and TCP of one port.
pub struct DnsServer {
    udp: UdpSocket,
    tcp: TcpListener,
    zone: Arc<dyn ZoneSource>,
    local_addr: SocketAddr,
    allow_transfer: Arc<TransferAcl>,
    limiter: Option<Limiter>,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("local_addr", &self.local_addr)
            .field("origin", &self.zone.origin().to_ascii())
            .finish_non_exhaustive()
    }
}

impl DnsServer {
    /// Binds UDP and TCP to `addr`. With port 0, both get the same free port.
    pub async fn bind(addr: SocketAddr, zone: Arc<dyn ZoneSource>) -> io::Result<Self> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let udp = UdpSocket::bind(addr).await?;
            let local_addr = udp.local_addr()?;
            match TcpListener::bind(local_addr).await {
                Ok(tcp) => {
                    return Ok(Self {
                        udp,
                        tcp,
                        zone,
                        local_addr,
                        allow_transfer: Arc::new(TransferAcl::default()),
                        limiter: None,
                    })
                }
                // Port 0 chose a UDP port whose TCP twin is taken: try another one.
                Err(e)
                    if e.kind() == io::ErrorKind::AddrInUse
                        && addr.port() == 0
                        && attempts < BIND_ATTEMPTS => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Applies `options` (the server starts with no transfers and no rate limit). The
    /// error names a bad entry of the rate limiter's configuration.
    pub fn with_options(mut self, options: &ServerOptions) -> Result<Self, String> {
        self.allow_transfer = Arc::new(options.allow_transfer.clone());
        self.limiter = Limiter::new(&options.rrl)?;
        Ok(self)
    }

    /// The address both sockets are bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves UDP and TCP until this future is dropped; dropping it also closes every
    /// open TCP connection.
    pub async fn run(self) {
        tokio::join!(
            serve_udp(self.udp, Arc::clone(&self.zone), self.limiter),
            serve_tcp(self.tcp, self.zone, self.allow_transfer),
        );
    }
}

/// One datagram, one answer (RFC 1035 §4.2.1), unless the rate limiter drops or
/// truncates it.
async fn serve_udp(socket: UdpSocket, zone: Arc<dyn ZoneSource>, limiter: Option<Limiter>) {
    let limiter = limiter.map(Mutex::new);
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(error) => {
                debug!(%error, "dns: udp receive failed");
                sleep(ERROR_PAUSE).await;
                continue;
            }
        };
        let Some(packet) = buf.get(..len) else {
            continue;
        };
        let Some(mut reply) = wire::respond(packet, Transport::Udp, zone.as_ref()) else {
            debug!(%peer, len, "dns: dropped a udp message that has no query header");
            continue;
        };
        if let Some(limiter) = &limiter {
            let verdict = limiter
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .check(peer.ip(), &reply, Instant::now());
            match verdict {
                Verdict::Send => {}
                Verdict::Slip(truncated) => reply = truncated,
                Verdict::Drop => continue,
            }
        }
        if let Err(error) = socket.send_to(&reply, peer).await {
            debug!(%peer, %error, "dns: udp send failed");
        }
    }
}

/// Accepts TCP connections, each served on a task of its own.
async fn serve_tcp(listener: TcpListener, zone: Arc<dyn ZoneSource>, allow: Arc<TransferAcl>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) if connections.len() < MAX_TCP_CONNECTIONS => {
                    connections.spawn(serve_connection(
                        stream,
                        peer,
                        Arc::clone(&zone),
                        Arc::clone(&allow),
                    ));
                }
                Ok((_stream, peer)) => {
                    warn!(%peer, "dns: too many tcp connections; closed a new one");
                }
                Err(error) => {
                    warn!(%error, "dns: tcp accept failed");
                    sleep(ERROR_PAUSE).await;
                }
            },
            Some(finished) = connections.join_next(), if !connections.is_empty() => {
                if let Err(error) = finished {
                    warn!(%error, "dns: a tcp connection task failed");
                }
            }
        }
    }
}

/// Serves queries on one TCP connection, one after the other, each framed by a two-byte
/// length (RFC 1035 §4.2.2, RFC 7766 §6.2.1), until the client closes it, stays idle for
/// [`TCP_IDLE_TIMEOUT`], or sends something that is not a query. A transfer request from
/// an allowed address gets the zone (`transfer`); from others, REFUSED.
async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    zone: Arc<dyn ZoneSource>,
    allow: Arc<TransferAcl>,
) {
    // Replies go out whole in one write; small segments should not wait.
    if let Err(error) = stream.set_nodelay(true) {
        debug!(%peer, %error, "dns: could not set TCP_NODELAY");
    }
    loop {
        let mut prefix = [0u8; 2];
        match timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut prefix)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                debug!(%peer, "dns: tcp connection idle; closed");
                return;
            }
        }
        let len = usize::from(u16::from_be_bytes(prefix));
        if len > MAX_TCP_QUERY {
            debug!(%peer, len, "dns: tcp message too long; closed");
            return;
        }
        let mut message = vec![0u8; len];
        if !matches!(
            timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut message)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        if allow.allows(peer.ip()) {
            if let Some(request) = transfer::request(&message, zone.as_ref()) {
                if transfer::send(&mut stream, &request, Arc::clone(&zone)).await {
                    continue;
                }
                return;
            }
        }
        // A message with no query header leaves nothing to answer: the stream is
        // probably not DNS, so close it.
        let Some(reply) = wire::respond(&message, Transport::Tcp, zone.as_ref()) else {
            debug!(%peer, len, "dns: tcp message has no query header; closed");
            return;
        };
        let Ok(reply_len) = u16::try_from(reply.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&reply_len.to_be_bytes());
        framed.extend_from_slice(&reply);
        if !matches!(
            timeout(TCP_IDLE_TIMEOUT, stream.write_all(&framed)).await,
            Ok(Ok(()))
        ) {
            return;
        }
    }
}
