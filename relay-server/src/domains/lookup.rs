//! One DNS question to one configured server, as it answers it: no cache (a
//! re-check must see a fixed record at once), no search list, no system
//! resolver. UDP first, TCP when the answer is truncated (RFC 7766 §5).

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{Name, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

/// How long one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// UDP attempts before giving up.
const ATTEMPTS: usize = 2;

/// Why a question got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("`{0}` is not a domain name")]
    BadName(String),
    #[error("the DNS server {server} did not answer in time")]
    Timeout { server: SocketAddr },
    #[error("the DNS server {server} answered {code}")]
    Failure {
        server: SocketAddr,
        code: ResponseCode,
    },
    #[error("talking to the DNS server {server}: {reason}")]
    Io { server: SocketAddr, reason: String },
}

/// The records of type `rtype` at `name` (following nothing: a CNAME at the
/// name is returned only when `rtype` is CNAME). NXDOMAIN and NODATA are an
/// empty list; server failures are errors.
pub async fn lookup(
    server: SocketAddr,
    name: &str,
    rtype: RecordType,
) -> Result<Vec<Record>, LookupError> {
    let mut qname = Name::from_utf8(name).map_err(|_| LookupError::BadName(name.to_string()))?;
    qname.set_fqdn(true);
    let mut request = Message::query();
    request.metadata.recursion_desired = true;
    request.add_query(Query::query(qname.clone(), rtype));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    request.set_edns(edns);
    let bytes = request.to_vec().map_err(|e| io(server, e))?;

    let mut reply = None;
    for _ in 0..ATTEMPTS {
        match timeout(ATTEMPT_TIMEOUT, exchange_udp(server, &bytes, request.id)).await {
            Ok(Ok(message)) => {
                reply = Some(message);
                break;
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => continue,
        }
    }
    let mut reply = reply.ok_or(LookupError::Timeout { server })?;
    if reply.metadata.truncation {
        reply = timeout(ATTEMPT_TIMEOUT, exchange_tcp(server, &bytes))
            .await
            .map_err(|_| LookupError::Timeout { server })??;
    }
    match reply.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => {}
        code => return Err(LookupError::Failure { server, code }),
    }
    Ok(reply
        .answers
        .into_iter()
        .filter(|r| r.record_type() == rtype && r.name == qname)
        .collect())
}

async fn exchange_udp(server: SocketAddr, bytes: &[u8], id: u16) -> Result<Message, LookupError> {
    let local: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = UdpSocket::bind(local).await.map_err(|e| io(server, e))?;
    socket.connect(server).await.map_err(|e| io(server, e))?;
    socket.send(bytes).await.map_err(|e| io(server, e))?;
    let mut buf = vec![0u8; 65535];
    loop {
        let len = socket.recv(&mut buf).await.map_err(|e| io(server, e))?;
        // Anything that is not the answer to this question is ignored.
        if let Ok(message) = Message::from_vec(&buf[..len]) {
            if message.id == id {
                return Ok(message);
            }
        }
    }
}

async fn exchange_tcp(server: SocketAddr, bytes: &[u8]) -> Result<Message, LookupError> {
    let mut stream = TcpStream::connect(server)
        .await
        .map_err(|e| io(server, e))?;
    let len = u16::try_from(bytes.len()).map_err(|e| io(server, e))?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await.map_err(|e| io(server, e))?;
    let mut prefix = [0u8; 2];
    stream
        .read_exact(&mut prefix)
        .await
        .map_err(|e| io(server, e))?;
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
    stream
        .read_exact(&mut message)
        .await
        .map_err(|e| io(server, e))?;
    Message::from_vec(&message).map_err(|e| io(server, e))
}

fn io(server: SocketAddr, reason: impl ToString) -> LookupError {
    LookupError::Io {
        server,
        reason: reason.to_string(),
    }
}
