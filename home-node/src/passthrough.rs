//! The node's end of SNI passthrough: the relay opens a side stream per TLS
//! connection it passes through, names the service, and the node splices the
//! stream to its local server for that service. TLS ends there, on the node.

use crate::config::PassthroughTargets;
use omb_shared::protocol::{read_stream_frame, write_stream_frame, StreamFrame};
use omb_shared::splice::splice;
use omb_shared::transport::{SideStream, SideStreams};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tracing::{debug, field, info, info_span, Instrument, Span};

/// How long the relay has to send a stream's header, and the local server to
/// accept the connection.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts the relay's side streams until the connection closes. Each is
/// served on its own task, apart from the session (mail delivery never waits
/// for one); dropping this future ends them all.
pub async fn serve(side: Arc<dyn SideStreams>, targets: Arc<PassthroughTargets>) {
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            accepted = side.accept() => match accepted {
                Ok(stream) => {
                    let span = info_span!(
                        "passthrough",
                        service = field::Empty,
                        client = field::Empty,
                        up = field::Empty,
                        down = field::Empty
                    );
                    streams.spawn(handle(stream, targets.clone()).instrument(span));
                }
                Err(e) => {
                    debug!(error = %e, "no more passthrough streams on this connection");
                    return;
                }
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    }
}

async fn handle(stream: SideStream, targets: Arc<PassthroughTargets>) {
    let SideStream { mut recv, mut send } = stream;
    let (service, client) = match tokio::time::timeout(TIMEOUT, read_stream_frame(&mut recv)).await
    {
        Ok(Ok(StreamFrame::Open { service, client })) => (service, client),
        Ok(Ok(other)) => return debug!(?other, "a passthrough stream opened without Open"),
        Ok(Err(e)) => return debug!(error = %e, "a passthrough stream's header did not read"),
        Err(_) => return debug!("a passthrough stream's header did not come in time"),
    };
    let span = Span::current();
    span.record("service", service.name());
    if let Some(client) = client {
        span.record("client", field::display(client));
    }
    let connected = match targets.target(service) {
        None => Err(format!(
            "this node serves no {service} (no passthrough.{service} in its configuration)"
        )),
        Some(target) => match tokio::time::timeout(TIMEOUT, TcpStream::connect(target)).await {
            Ok(Ok(tcp)) => Ok(tcp),
            Ok(Err(e)) => Err(format!(
                "the local {service} server at {target} refused: {e}"
            )),
            Err(_) => Err(format!(
                "the local {service} server at {target} did not answer"
            )),
        },
    };
    let tcp = match connected {
        Ok(tcp) => tcp,
        Err(reason) => {
            info!(%reason, "passthrough refused");
            let _ = write_stream_frame(&mut send, &StreamFrame::Refused { reason }).await;
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    if write_stream_frame(&mut send, &StreamFrame::Accepted)
        .await
        .is_err()
    {
        return;
    }
    let (tcp_read, tcp_write) = tcp.into_split();
    let done = splice(recv, send, tcp_read, tcp_write).await;
    span.record("up", done.a_to_b).record("down", done.b_to_a);
    match done.error {
        None => info!(up = done.a_to_b, down = done.b_to_a, "passthrough closed"),
        Some(e) => {
            info!(up = done.a_to_b, down = done.b_to_a, error = %e, "passthrough ended by an error")
        }
    }
}
