//! The passthrough listeners' tokio driver: connection limits, the ClientHello
//! deadline, the side stream to the node, and the splice.

use super::sni::{alert, handle_for, AlertDescription, ClientHelloReader, HelloError};
use crate::config::PassthroughConfig;
use crate::store::Store;
use crate::tunnel::Hub;
use omb_shared::limits::ConnectionLimits;
use omb_shared::protocol::{read_stream_frame, write_stream_frame, Service, StreamFrame};
use omb_shared::splice::splice;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, field, info, info_span, Instrument, Span};

/// How long the node has to open the stream and answer it. A node whose
/// connection died without a word (its tunnel not yet timed out) is noticed
/// here.
const NODE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct PassthroughServer {
    hub: Arc<Hub>,
    store: Store,
    /// The relay's domain: names are `HANDLE.DOMAIN`.
    domain: String,
    limits: Arc<ConnectionLimits>,
    hello_timeout: Duration,
}

impl PassthroughServer {
    pub fn new(hub: Arc<Hub>, store: Store, domain: &str, config: &PassthroughConfig) -> Arc<Self> {
        Arc::new(PassthroughServer {
            hub,
            store,
            domain: domain.to_string(),
            limits: ConnectionLimits::new(config.max_connections_per_ip, config.max_connections),
            hello_timeout: Duration::from_secs(config.hello_timeout_secs.max(1)),
        })
    }
}

/// Accepts `service` connections until the listener fails.
pub async fn serve(listener: TcpListener, service: Service, server: Arc<PassthroughServer>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, %service, "passthrough accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let server = server.clone();
        tokio::spawn(async move {
            let Some(_admitted) = server.limits.admit(peer.ip()) else {
                debug!(%peer, %service, "passthrough refused: too many connections");
                return;
            };
            let span = info_span!(
                "passthrough",
                %peer,
                %service,
                handle = field::Empty,
                up = field::Empty,
                down = field::Empty
            );
            handle(stream, peer, service, &server)
                .instrument(span)
                .await;
        });
    }
}

/// Why a connection was not passed through (for the log).
enum Closed {
    Hello(String),
    Name(&'static str, AlertDescription),
    Offline,
    Node(String),
}

async fn handle(
    mut tcp: TcpStream,
    peer: SocketAddr,
    service: Service,
    server: &PassthroughServer,
) {
    let _ = tcp.set_nodelay(true);
    let result = async {
        let (name, hello) = read_hello(&mut tcp, server.hello_timeout).await?;
        let Some(name) = name else {
            return Err(Closed::Name("no SNI", AlertDescription::MissingExtension));
        };
        let Some(handle) = handle_for(&name, &server.domain) else {
            return Err(Closed::Name(
                "a name outside the relay's domain",
                AlertDescription::UnrecognizedName,
            ));
        };
        Span::current().record("handle", field::display(&handle));
        let Some(side) = server.hub.side_streams(&handle) else {
            // Not connected here: say whether there is such an account at all.
            return Err(match server.store.account_exists(&handle).await {
                Ok(false) => Closed::Name("no such account", AlertDescription::UnrecognizedName),
                Ok(true) => Closed::Offline,
                Err(e) => Closed::Node(format!("cannot look the account up: {e}")),
            });
        };
        let stream = tokio::time::timeout(NODE_TIMEOUT, async {
            let mut stream = side.open().await.map_err(|e| e.to_string())?;
            write_stream_frame(
                &mut stream.send,
                &StreamFrame::Open {
                    service,
                    client: Some(peer),
                },
            )
            .await
            .map_err(|e| e.to_string())?;
            // The ClientHello goes with the header: no round trip is added.
            stream
                .send
                .write_all(&hello)
                .await
                .map_err(|e| e.to_string())?;
            match read_stream_frame(&mut stream.recv).await {
                Ok(StreamFrame::Accepted) => Ok(stream),
                Ok(StreamFrame::Refused { reason }) => Err(format!("the node refused: {reason}")),
                Ok(other) => Err(format!("unexpected {other:?} from the node")),
                Err(e) => Err(e.to_string()),
            }
        })
        .await
        .map_err(|_| Closed::Node("the node did not answer in time".into()))?
        .map_err(Closed::Node)?;
        Ok((stream, hello.len() as u64))
    }
    .await;

    let (stream, hello_len) = match result {
        Ok(s) => s,
        Err(closed) => {
            match closed {
                Closed::Hello(reason) => debug!(%reason, "not passed through"),
                Closed::Name(reason, description) => {
                    info!(reason, "not passed through");
                    let _ = tcp.write_all(&alert(description)).await;
                }
                Closed::Offline => info!("not passed through: the node is offline"),
                Closed::Node(reason) => info!(%reason, "not passed through"),
            }
            let _ = tcp.shutdown().await;
            return;
        }
    };
    let (tcp_read, tcp_write) = tcp.into_split();
    let done = splice(tcp_read, tcp_write, stream.recv, stream.send).await;
    let (up, down) = (done.a_to_b + hello_len, done.b_to_a);
    Span::current().record("up", up).record("down", down);
    match done.error {
        None => info!(up, down, "passthrough closed"),
        Some(e) => info!(up, down, error = %e, "passthrough ended by an error"),
    }
}

/// Reads the ClientHello within `limit`: the SNI name (if any) and the bytes
/// read, to forward unchanged.
async fn read_hello(
    tcp: &mut TcpStream,
    limit: Duration,
) -> Result<(Option<String>, Vec<u8>), Closed> {
    let mut reader = ClientHelloReader::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            let n = tcp
                .read(&mut buf)
                .await
                .map_err(|e| Closed::Hello(e.to_string()))?;
            if n == 0 {
                return Err(Closed::Hello("closed before its ClientHello".into()));
            }
            match reader.push(&buf[..n]) {
                Ok(Some(hello)) => return Ok(hello.server_name),
                Ok(None) => {}
                Err(e @ (HelloError::NotTls(_) | HelloError::TooLarge)) => {
                    return Err(Closed::Hello(e.to_string()))
                }
            }
        }
    };
    let name = tokio::time::timeout(limit, read)
        .await
        .map_err(|_| Closed::Hello("no ClientHello in time".into()))??;
    Ok((name, reader.into_raw()))
}
