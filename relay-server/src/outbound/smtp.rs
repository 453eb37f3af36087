//! The outbound SMTP client (RFC 5321): one connection to a destination,
//! upgraded with STARTTLS when the server offers it (RFC 3207), then any
//! number of messages on it. STARTTLS is opportunistic (RFC 7435: any
//! certificate is taken, the clear is accepted) unless an MTA-STS policy in
//! `enforce` mode requires it with a valid certificate (RFC 8461 §4.2), or
//! the host's DANE TLSA records require it with a matching one (RFC 7672).

use super::dane::DaneTls;
use super::tls::Trust;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The longest reply accepted, all lines together.
const MAX_REPLY: usize = 64 * 1024;

/// A server's reply: its code and its text (lines joined by spaces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

impl Reply {
    fn positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    pub fn permanent(&self) -> bool {
        self.code >= 500
    }

    /// Whether an EHLO reply names `extension` (RFC 5321 §4.1.1.1: one
    /// keyword per line, parameters after it).
    fn offers(&self, extension: &str) -> bool {
        self.text
            .split(' ')
            .any(|w| w.eq_ignore_ascii_case(extension))
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

/// What became of one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Try again later; the server's reply or what went wrong.
    Temporary(String),
    /// Never: the server's reply.
    Permanent(String),
}

impl Outcome {
    /// A RCPT reply: accepted (for now), or why not.
    fn of_rcpt(reply: &Reply) -> Self {
        match reply.positive() {
            true => Outcome::Delivered,
            false => Outcome::from_reply(reply),
        }
    }

    fn from_reply(reply: &Reply) -> Self {
        if reply.permanent() {
            Outcome::Permanent(reply.to_string())
        } else {
            Outcome::Temporary(reply.to_string())
        }
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// What a connection needs of TLS.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TlsRequirement {
    /// STARTTLS when offered, any certificate; else in the clear.
    Opportunistic,
    /// STARTTLS and a certificate valid for the host name (MTA-STS), or no
    /// delivery.
    Verified,
    /// STARTTLS and a certificate matching one of these usable TLSA records
    /// (DANE), or no delivery; SNI names the TLSA base domain.
    Dane(DaneTls),
    /// STARTTLS with any certificate, or no delivery: DANE with TLSA
    /// records none of which is usable (RFC 7672 §2.2).
    Encrypted,
}

impl TlsRequirement {
    /// The policy that makes TLS mandatory, if any.
    fn policy(&self) -> Option<&'static str> {
        match self {
            TlsRequirement::Opportunistic => None,
            TlsRequirement::Verified => Some("MTA-STS"),
            TlsRequirement::Dane(_) | TlsRequirement::Encrypted => Some("DANE"),
        }
    }
}

pub struct Connection {
    stream: BufReader<Box<dyn Stream>>,
    timeout: Duration,
    pub tls: bool,
    /// Whether the server's certificate is valid for the name (PKIX), or why
    /// not (also when there is no TLS).
    pub pkix: Result<(), String>,
    pub peer: SocketAddr,
    /// The server offers PIPELINING (RFC 2920) in its last EHLO reply.
    pipelining: bool,
    /// When the connection was made (reuse has a time limit).
    pub opened: std::time::Instant,
}

/// Errors of the connection as a whole: every recipient waiting on it gets a
/// temporary failure.
#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    #[error("cannot connect to {0}: {1}")]
    Connect(SocketAddr, String),
    #[error("{0} timed out")]
    Timeout(SocketAddr),
    #[error("connection to {0}: {1}")]
    Io(SocketAddr, String),
    #[error("{0} answered {1}")]
    Refused(SocketAddr, Reply),
    #[error("{0} sent a malformed reply")]
    Malformed(SocketAddr),
    /// TLS was required (MTA-STS `enforce`, DANE) and did not happen.
    #[error("{0}: no TLS with a valid certificate, as {1} requires: {2}")]
    TlsRequired(SocketAddr, &'static str, String),
}

impl SmtpError {
    /// Whether the server refused for good (a 5xx greeting or EHLO).
    pub fn permanent(&self) -> bool {
        matches!(self, SmtpError::Refused(_, r) if r.permanent())
    }
}

impl Connection {
    /// Connects, reads the greeting, says EHLO and starts TLS when offered.
    pub async fn open(
        peer: SocketAddr,
        server_name: &str,
        helo: &str,
        trust: &Trust,
        requirement: &TlsRequirement,
        timeout: Duration,
    ) -> Result<Self, SmtpError> {
        let policy = requirement.policy();
        let required =
            |why: &str| SmtpError::TlsRequired(peer, policy.unwrap_or_default(), why.to_string());
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(peer))
            .await
            .map_err(|_| SmtpError::Timeout(peer))?
            .map_err(|e| SmtpError::Connect(peer, e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let mut conn = Connection {
            stream: BufReader::new(Box::new(tcp) as Box<dyn Stream>),
            timeout,
            tls: false,
            pkix: Err("no TLS".into()),
            peer,
            pipelining: false,
            opened: std::time::Instant::now(),
        };
        let greeting = conn.reply().await?;
        if greeting.code != 220 {
            return Err(SmtpError::Refused(peer, greeting));
        }
        let ehlo = conn.command(&format!("EHLO {helo}")).await?;
        if !ehlo.positive() {
            return Err(SmtpError::Refused(peer, ehlo));
        }
        conn.pipelining = ehlo.offers("PIPELINING");
        let verified = policy.is_some();
        if !ehlo.offers("STARTTLS") {
            if verified {
                return Err(required("STARTTLS not offered"));
            }
            return Ok(conn);
        }
        let reply = conn.command("STARTTLS").await?;
        if reply.code != 220 {
            if verified {
                return Err(required(&format!("STARTTLS answered {reply}")));
            }
            // Opportunistic: carry on in the clear.
            return Ok(conn);
        }
        // RFC 7672 §8.1: under DANE, SNI carries the TLSA base domain.
        let sni = match requirement {
            TlsRequirement::Dane(dane) => &dane.base,
            _ => server_name,
        };
        let name = rustls::pki_types::ServerName::try_from(sni.to_string())
            .unwrap_or_else(|_| rustls::pki_types::ServerName::IpAddress(peer.ip().into()));
        let connector = match requirement {
            TlsRequirement::Opportunistic | TlsRequirement::Encrypted => {
                trust.opportunistic.clone()
            }
            TlsRequirement::Verified => trust.verified.clone(),
            TlsRequirement::Dane(dane) => trust
                .dane(&dane.records, &dane.names)
                .map_err(|e| required(&e.to_string()))?,
        };
        let plain = conn.stream.into_inner();
        let upgraded = tokio::time::timeout(timeout, connector.connect(name.clone(), plain))
            .await
            .map_err(|_| SmtpError::Timeout(peer))?
            .map_err(|e| match verified {
                true => required(&format!("TLS handshake: {e}")),
                false => SmtpError::Io(peer, format!("TLS handshake: {e}")),
            })?;
        let pkix = match upgraded.get_ref().1.peer_certificates() {
            _ if *requirement == TlsRequirement::Verified => Ok(()),
            Some(chain) => trust.check(chain, &name),
            None => Err("no certificate".into()),
        };
        let mut conn = Connection {
            stream: BufReader::new(Box::new(upgraded) as Box<dyn Stream>),
            timeout,
            tls: true,
            pkix,
            peer,
            pipelining: false,
            opened: std::time::Instant::now(),
        };
        // RFC 3207 §4.2: everything learned before TLS is forgotten.
        let ehlo = conn.command(&format!("EHLO {helo}")).await?;
        if !ehlo.positive() {
            return Err(SmtpError::Refused(peer, ehlo));
        }
        conn.pipelining = ehlo.offers("PIPELINING");
        Ok(conn)
    }

    /// Sends one message; the outcome of each recipient, in order. An `Err`
    /// means the connection is no longer usable.
    pub async fn send(
        &mut self,
        mail_from: &str,
        rcpts: &[String],
        data: &[u8],
    ) -> Result<Vec<Outcome>, SmtpError> {
        if self.pipelining {
            return self.send_pipelined(mail_from, rcpts, data).await;
        }
        let reply = self.command(&format!("MAIL FROM:<{mail_from}>")).await?;
        if !reply.positive() {
            let _ = self.command("RSET").await;
            return Ok(vec![Outcome::from_reply(&reply); rcpts.len()]);
        }
        let mut outcomes = Vec::with_capacity(rcpts.len());
        for rcpt in rcpts {
            let reply = self.command(&format!("RCPT TO:<{rcpt}>")).await?;
            outcomes.push(Outcome::of_rcpt(&reply));
        }
        if !outcomes.contains(&Outcome::Delivered) {
            let _ = self.command("RSET").await;
            return Ok(outcomes);
        }
        let reply = self.command("DATA").await?;
        if reply.code != 354 {
            let _ = self.command("RSET").await;
            return Ok(rejected(outcomes, &reply));
        }
        self.end_data(outcomes, data).await
    }

    /// [`Connection::send`] with PIPELINING (RFC 2920): MAIL, every RCPT and
    /// DATA in one write, then their replies in order; one round trip instead
    /// of one per command.
    async fn send_pipelined(
        &mut self,
        mail_from: &str,
        rcpts: &[String],
        data: &[u8],
    ) -> Result<Vec<Outcome>, SmtpError> {
        let mut group = format!("MAIL FROM:<{mail_from}>\r\n");
        for rcpt in rcpts {
            group.push_str(&format!("RCPT TO:<{rcpt}>\r\n"));
        }
        group.push_str("DATA\r\n");
        self.write(group.as_bytes()).await?;
        let mail = self.reply().await?;
        let mut outcomes = Vec::with_capacity(rcpts.len());
        for _ in rcpts {
            let reply = self.reply().await?;
            outcomes.push(match mail.positive() {
                true => Outcome::of_rcpt(&reply),
                false => Outcome::from_reply(&mail),
            });
        }
        let reply = self.reply().await?;
        if reply.code != 354 {
            let _ = self.command("RSET").await;
            return Ok(match outcomes.contains(&Outcome::Delivered) {
                true => rejected(outcomes, &reply),
                false => outcomes,
            });
        }
        if !outcomes.contains(&Outcome::Delivered) {
            // §3.1: a server that said 354 with no recipient gets an empty
            // message, never the real one.
            self.write(b".\r\n").await?;
            let _ = self.reply().await?;
            return Ok(outcomes);
        }
        self.end_data(outcomes, data).await
    }

    /// After 354: the message, and the server's verdict on it.
    async fn end_data(
        &mut self,
        outcomes: Vec<Outcome>,
        data: &[u8],
    ) -> Result<Vec<Outcome>, SmtpError> {
        self.write(&dot_stuff(data)).await?;
        let reply = self.reply().await?;
        if reply.code != 250 {
            return Ok(rejected(outcomes, &reply));
        }
        Ok(outcomes)
    }

    /// `RSET` (RFC 5321 §4.1.1.5): a clean slate, and proof the server is
    /// still there, before a kept connection is used again.
    pub async fn reset(&mut self) -> Result<(), SmtpError> {
        let reply = self.command("RSET").await?;
        match reply.code {
            250 => Ok(()),
            _ => Err(SmtpError::Refused(self.peer, reply)),
        }
    }

    pub async fn quit(mut self) {
        let _ = self.command("QUIT").await;
    }

    async fn command(&mut self, line: &str) -> Result<Reply, SmtpError> {
        self.write(format!("{line}\r\n").as_bytes()).await?;
        self.reply().await
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), SmtpError> {
        let peer = self.peer;
        let stream = self.stream.get_mut();
        tokio::time::timeout(self.timeout, async {
            stream.write_all(bytes).await?;
            stream.flush().await
        })
        .await
        .map_err(|_| SmtpError::Timeout(peer))?
        .map_err(|e| SmtpError::Io(peer, e.to_string()))
    }

    /// Reads one (possibly multi-line) reply (RFC 5321 §4.2.1).
    async fn reply(&mut self) -> Result<Reply, SmtpError> {
        let peer = self.peer;
        let mut text = String::new();
        let mut total = 0;
        loop {
            let mut line = Vec::new();
            let n = tokio::time::timeout(self.timeout, self.stream.read_until(b'\n', &mut line))
                .await
                .map_err(|_| SmtpError::Timeout(peer))?
                .map_err(|e| SmtpError::Io(peer, e.to_string()))?;
            if n == 0 {
                return Err(SmtpError::Io(peer, "connection closed".into()));
            }
            total += n;
            if total > MAX_REPLY {
                return Err(SmtpError::Malformed(peer));
            }
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end();
            let code = line
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .filter(|c| (200..600).contains(c))
                .ok_or(SmtpError::Malformed(peer))?;
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(line.get(4..).unwrap_or_default());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(Reply { code, text });
            }
        }
    }
}

/// Recipients accepted at RCPT but refused with the message.
fn rejected(outcomes: Vec<Outcome>, reply: &Reply) -> Vec<Outcome> {
    outcomes
        .into_iter()
        .map(|o| match o {
            Outcome::Delivered => Outcome::from_reply(reply),
            other => other,
        })
        .collect()
}

/// The message as DATA sends it: CRLF line ends, leading dots doubled
/// (RFC 5321 §4.5.2), and the final `.`.
pub fn dot_stuff(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 64 + 5);
    let mut at_line_start = true;
    let mut prev = 0u8;
    for &b in data {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        at_line_start = b == b'\n';
        prev = b;
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
#[path = "smtp_tests.rs"]
mod tests;
