//! The sockets: hickory-server's [`Server`] on UDP and TCP of one port, with
//! [`Handler`] deciding every reply from the zone.

use std::io;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};
use tracing::{debug, warn};

use super::rrl::{Limiter, RrlConfig, Verdict};
use super::transfer::{self, TransferAcl};
use super::wire::{self, Reply};
use super::ZoneSource;

/// How long a TCP connection may stay silent between queries (RFC 7766 §6.2.3 asks for
/// a timeout; BIND's default is 30 s). hickory-server counts it from the last query
/// received, so it also bounds how long a zone transfer may take.
const TCP_TIMEOUT: Duration = Duration::from_secs(30);
/// Replies queued for one TCP connection before it is written to; a transfer waits
/// for room (`transfer::start`), other replies are one per query.
const TCP_REPLY_QUEUE: usize = 64;
/// UDP sockets at most, whatever the number of cores.
const MAX_UDP_SOCKETS: usize = 8;
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
    /// One socket per core on the same port (SO_REUSEPORT): the kernel spreads the
    /// clients over them, and each has its own receive loop.
    udp: Vec<UdpSocket>,
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
            let first = reuse_port_udp(addr)?;
            let local_addr = first.local_addr()?;
            let mut udp = vec![first];
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            for _ in 1..cores.min(MAX_UDP_SOCKETS) {
                udp.push(reuse_port_udp(local_addr)?);
            }
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
        let handler = Handler {
            zone: self.zone,
            allow_transfer: self.allow_transfer,
            limiter: self.limiter.map(Mutex::new),
        };
        let mut server = Server::new(handler);
        for socket in self.udp {
            server.register_socket(socket);
        }
        server.register_listener(self.tcp, TCP_TIMEOUT, TCP_REPLY_QUEUE);
        if let Err(error) = server.block_until_done().await {
            warn!(%error, "dns: the server stopped");
        }
    }
}

/// A UDP socket bound to `addr` with SO_REUSEPORT, so that more can share the port.
fn reuse_port_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Answers every request hickory-server parsed: a transfer from an allowed peer
/// (`transfer`), or one reply from the zone (`wire::reply`), rate-limited on UDP.
struct Handler {
    zone: Arc<dyn ZoneSource>,
    allow_transfer: Arc<TransferAcl>,
    limiter: Option<Mutex<Limiter>>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let protocol = request.protocol();
        let nothing = ResponseInfo::from(Header {
            metadata: Metadata::response_from_request(&request.metadata),
            counts: HeaderCounts::default(),
        });
        if protocol == Protocol::Tcp
            && self.allow_transfer.allows(request.src().ip())
            && transfer::is_request(request, self.zone.as_ref())
        {
            transfer::start(request, response, Arc::clone(&self.zone));
            return nothing;
        }
        // A panic in the zone source costs this request a SERVFAIL, nothing more.
        let decided = catch_unwind(AssertUnwindSafe(|| {
            wire::reply(request, protocol, self.zone.as_ref())
        }));
        let reply = match decided {
            Ok(Some(reply)) => reply,
            Ok(None) => return nothing,
            Err(_) => {
                warn!("dns: panic while answering a query; sent SERVFAIL");
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                Reply {
                    metadata,
                    answers: Vec::new(),
                    authorities: Vec::new(),
                    edns: None,
                }
            }
        };
        let mut reply = reply.fitted(&request.queries, protocol);
        if protocol == Protocol::Udp {
            if let Some(limiter) = &self.limiter {
                let verdict = limiter
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .check(
                        request.src().ip(),
                        &reply,
                        request.queries.queries().first(),
                        Instant::now(),
                    );
                match verdict {
                    Verdict::Send => {}
                    Verdict::Slip => reply = reply.truncated(),
                    Verdict::Drop => return nothing,
                }
            }
        }
        match response
            .send_response(reply.message(&request.queries))
            .await
        {
            Ok(info) => info,
            Err(error) => {
                debug!(peer = %request.src(), %error, "dns: reply not sent");
                nothing
            }
        }
    }
}
