//! The tunnel over QUIC (quinn). The relay presents a self-signed certificate that
//! the node pins by its SHA-256; the node authenticates inside the protocol by
//! signing a challenge bound to the TLS exporter of this connection.
//!
//! Transport settings follow what home connections need: keep-alives well under
//! the 30 s UDP timeout of common NATs, an idle timeout that notices a dead path,
//! and connection migration on the relay so a NAT rebinding or a new home address
//! keeps the same connection.

use super::{
    BoxFuture, ConnectionHandle, Connector, SideStream, SideStreams, TransportError, TunnelStream,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// ALPN of the tunnel protocol.
pub const ALPN: &[u8] = b"omb-tunnel/1";
const EXPORTER_LABEL: &[u8] = b"EXPORTER-omb-tunnel-binding";
/// The TLS name the node asks for; the pin, not the name, authenticates the relay.
const SERVER_NAME: &str = "omb-relay";

/// How often the node sends a keep-alive: under the 30 s UDP mapping timeout of
/// many NATs.
pub const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// A connection with no packets for this long is dead (both ends).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The relay's tunnel certificate and key (DER), created on first start.
pub struct RelayTlsIdentity {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl RelayTlsIdentity {
    /// Loads `tunnel-identity.bin` from `dir`, creating it if absent. Creation is
    /// atomic (a hard link that fails if another process won the race), so two
    /// processes starting at once agree on one certificate.
    pub fn load_or_create(dir: &Path) -> Result<Self, TransportError> {
        let path = dir.join("tunnel-identity.bin");
        if let Some(id) = Self::read(&path)? {
            return Ok(id);
        }
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let id = RelayTlsIdentity {
            cert: cert.der().to_vec(),
            key: key.serialize_der(),
        };
        let mut bytes = (id.cert.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&id.cert);
        bytes.extend_from_slice(&id.key);
        let tmp = dir.join(format!("tunnel-identity.{}.tmp", rand::random::<u64>()));
        crate::pgp::write_private_file(&tmp, &bytes)?;
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(id),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::read(&path)?
                .ok_or_else(|| TransportError::Tls("tunnel identity vanished".into())),
            Err(e) => Err(e.into()),
        }
    }

    fn read(path: &Path) -> Result<Option<Self>, TransportError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let damaged = || TransportError::Tls(format!("{} is damaged", path.display()));
        let len = u32::from_be_bytes(
            bytes
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(damaged)?,
        ) as usize;
        let cert = bytes.get(4..4 + len).ok_or_else(damaged)?.to_vec();
        let key = bytes.get(4 + len..).ok_or_else(damaged)?.to_vec();
        Ok(Some(RelayTlsIdentity { cert, key }))
    }

    /// The pin a node configures: SHA-256 of the certificate, hex.
    pub fn pin(&self) -> String {
        hex::encode(Sha256::digest(&self.cert))
    }
}

/// Side streams (SNI passthrough connections) the relay may have open to one
/// node at once; the relay's next one waits for one to end.
pub const MAX_SIDE_STREAMS: u32 = 64;

/// The most one stream may have in flight unread (QUIC stream flow control):
/// 2 MiB is a 170 Mbit/s delivery to a node 100 ms away, and bounds what a
/// passed-through connection whose reader stalls holds in memory.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;

/// The most the whole connection may have in flight unread: a full window for
/// every side stream and two more, so side streams whose readers stall (a
/// client that does not read what the node's server answers) can never use up
/// the credit the session's stream needs to carry mail.
const CONNECTION_WINDOW: u32 = STREAM_WINDOW * (MAX_SIDE_STREAMS + 2);

fn transport_config(client: bool) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // Streams the peer may open: the relay opens side streams to the node; the
    // node opens only the session's stream (and no more before it has
    // authenticated).
    let peer_streams = if client { MAX_SIDE_STREAMS } else { 1 };
    t.max_concurrent_bidi_streams(peer_streams.into());
    t.max_concurrent_uni_streams(0u8.into());
    t.stream_receive_window(STREAM_WINDOW.into());
    // Credit only: memory follows the bytes that really arrive unread, so many
    // idle peers on one relay cost no more for it (DESIGN.md).
    t.receive_window(CONNECTION_WINDOW.into());
    t.datagram_receive_buffer_size(None);
    if let Ok(idle) = IDLE_TIMEOUT.try_into() {
        t.max_idle_timeout(Some(idle));
    }
    if client {
        t.keep_alive_interval(Some(KEEP_ALIVE));
    }
    t
}

/// The relay's QUIC endpoint.
pub struct QuicListener {
    endpoint: quinn::Endpoint,
}

impl QuicListener {
    pub fn bind(addr: SocketAddr, id: &RelayTlsIdentity) -> Result<Self, TransportError> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key.clone()));
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TransportError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(vec![CertificateDer::from(id.cert.clone())], key)
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(Arc::new(transport_config(false)));
        config.migration(true);
        let endpoint = quinn::Endpoint::server(config, addr)?;
        Ok(QuicListener { endpoint })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        Ok(self.endpoint.local_addr()?)
    }

    /// The next incoming connection attempt; `None` when the endpoint is closed.
    /// Finish it with [`accept_stream`] in its own task, so a slow handshake never
    /// holds up the others.
    pub async fn accept(&self) -> Option<quinn::Incoming> {
        self.endpoint.accept().await
    }
}

/// Completes the handshake of an incoming connection and takes the node's stream.
pub async fn accept_stream(incoming: quinn::Incoming) -> Result<TunnelStream, TransportError> {
    let peer = incoming.remote_address();
    let conn = incoming.await.map_err(|e| TransportError::Connect {
        addr: peer.to_string(),
        reason: e.to_string(),
    })?;
    let (send, recv) = tokio::time::timeout(Duration::from_secs(20), conn.accept_bi())
        .await
        .map_err(|_| TransportError::Connect {
            addr: peer.to_string(),
            reason: "no stream opened in time".into(),
        })?
        .map_err(|e| TransportError::Connect {
            addr: peer.to_string(),
            reason: e.to_string(),
        })?;
    stream_from(conn, send, recv, peer)
}

fn stream_from(
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    peer: SocketAddr,
) -> Result<TunnelStream, TransportError> {
    let mut binding = vec![0u8; 32];
    conn.export_keying_material(&mut binding, EXPORTER_LABEL, b"")
        .map_err(|_| TransportError::Tls("cannot export a channel binding".into()))?;
    // The session's frames (mail, acknowledgements) are sent before the bytes
    // of side streams when both wait for the congestion window.
    let _ = send.set_priority(1);
    Ok(TunnelStream {
        recv: Box::new(recv),
        send: Box::new(send),
        binding,
        peer,
        side: Arc::new(QuicSideStreams(conn.clone())),
        handle: Box::new(QuicHandle(conn)),
    })
}

/// Side streams are QUIC bidirectional streams: relay-initiated ones, which
/// the node accepts (the node's session stream is the one the relay accepted).
struct QuicSideStreams(quinn::Connection);

impl SideStreams for QuicSideStreams {
    fn open(&self) -> BoxFuture<'_, Result<SideStream, TransportError>> {
        Box::pin(async move {
            let (send, recv) = self
                .0
                .open_bi()
                .await
                .map_err(|e| TransportError::Stream(e.to_string()))?;
            Ok(SideStream {
                recv: Box::new(recv),
                send: Box::new(send),
            })
        })
    }

    fn accept(&self) -> BoxFuture<'_, Result<SideStream, TransportError>> {
        Box::pin(async move {
            let (send, recv) = self
                .0
                .accept_bi()
                .await
                .map_err(|e| TransportError::Stream(e.to_string()))?;
            Ok(SideStream {
                recv: Box::new(recv),
                send: Box::new(send),
            })
        })
    }
}

struct QuicHandle(quinn::Connection);

impl ConnectionHandle for QuicHandle {
    fn close(&self, reason: &str) {
        self.0.close(0u32.into(), reason.as_bytes());
    }
    fn remote_address(&self) -> SocketAddr {
        self.0.remote_address()
    }
}

impl Drop for QuicHandle {
    fn drop(&mut self) {
        self.0.close(0u32.into(), b"closed");
    }
}

/// The node's side: dials `relay` and checks the relay's certificate against `pin`.
pub struct QuicConnector {
    endpoint: quinn::Endpoint,
    relay: String,
    config: quinn::ClientConfig,
}

impl QuicConnector {
    /// `relay` is `host:port`, resolved at each dial (so a relay that moves is
    /// found again); `pin` is the hex SHA-256 of the relay's certificate.
    pub fn new(relay: &str, pin: &str) -> Result<Self, TransportError> {
        let pin = hex::decode(pin.trim())
            .map_err(|_| TransportError::Tls("the relay pin is not hex".into()))?;
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TransportError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCert {
                pin,
                provider: provider(),
            }))
            .with_no_client_auth();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport_config(true)));
        let bind: SocketAddr = if relay.starts_with('[') {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        }
        .parse()
        .map_err(|_| TransportError::Tls("bad bind address".into()))?;
        let endpoint = quinn::Endpoint::client(bind)?;
        Ok(QuicConnector {
            endpoint,
            relay: relay.to_string(),
            config,
        })
    }
}

impl Connector for QuicConnector {
    async fn connect(&self) -> Result<TunnelStream, TransportError> {
        let err = |reason: String| TransportError::Connect {
            addr: self.relay.clone(),
            reason,
        };
        let addr = tokio::net::lookup_host(&self.relay)
            .await
            .map_err(|e| err(e.to_string()))?
            .next()
            .ok_or_else(|| err("no address".into()))?;
        let connecting = self
            .endpoint
            .connect_with(self.config.clone(), addr, SERVER_NAME)
            .map_err(|e| err(e.to_string()))?;
        let conn = tokio::time::timeout(Duration::from_secs(15), connecting)
            .await
            .map_err(|_| err("handshake timed out".into()))?
            .map_err(|e| {
                if e.to_string().contains("pinned") {
                    TransportError::PinMismatch
                } else {
                    err(e.to_string())
                }
            })?;
        let (send, recv) = conn.open_bi().await.map_err(|e| err(e.to_string()))?;
        stream_from(conn, send, recv, addr)
    }
}

/// Accepts exactly the relay certificate whose SHA-256 is pinned; handshake
/// signatures are still verified, so only the holder of its key passes.
#[derive(Debug)]
struct PinnedCert {
    pin: Vec<u8>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if Sha256::digest(end_entity.as_ref()).as_slice() == self.pin.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "relay certificate is not the pinned one".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
