//! The tunnel's wire protocol: versioned, length-prefixed frames carried over one
//! reliable byte stream (a QUIC stream, or a Tor stream), in both directions.
//!
//! Each frame on the wire is `u32 length (big endian) | u16 version | body`, where
//! `length` counts the version and the body, and the body is a [`Frame`] encoded
//! with postcard. The decoder is sans-IO ([`FrameDecoder`]), so it can be fuzzed
//! byte by byte; [`read_frame`]/[`write_frame`] drive it over tokio streams.
//!
//! A session goes:
//! ```text
//! node  -> Hello{version, node_key}
//! relay -> Challenge{nonce}
//! node  -> Link{token, cert, sig}   (first time)   | Auth{sig}   (every later time)
//! relay -> Welcome{account, addresses, domains}    | Refused{reason}
//! relay -> Deliver{..} ...   node -> Ack{id} ...    (at-least-once; acked after a durable store)
//! either -> Ping / Pong
//! node  -> Publish{kind, values}   relay -> Published{kind, error}   (DNS records)
//! relay -> Account{addresses, domains}   (what the account may send as, changed)
//! node  -> Submit{..} ...  relay -> Submitted{id, outcome}   (outgoing mail; the
//!          relay answers `Queued` only once the message is durable, and a
//!          Submit sent again with the same id is not queued twice)
//! ```
//!
//! Beside that session, the relay opens one more stream per connection it
//! passes through by TLS SNI ([`StreamFrame`]): it names the service, the node
//! answers, and raw bytes follow both ways:
//! ```text
//! relay -> Open{service, client}  then the client's bytes (its TLS ClientHello first)
//! node  -> Accepted               then the local service's bytes
//!        | Refused{reason}        and the stream closes
//! ```

use bytes::{Buf, BytesMut};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The version this build speaks; a peer with another version is refused with a
/// reason instead of being misread.
pub const PROTOCOL_VERSION: u16 = 2;

/// The largest frame accepted: room for the relay's largest message after
/// encryption and armouring (ASCII armour adds about a third).
pub const MAX_FRAME_LEN: usize = 96 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// The node's opening: its protocol version and tunnel public key.
    Hello {
        version: u16,
        node_key: [u8; 32],
    },
    /// The relay's fresh nonce, to be signed with the channel binding.
    Challenge {
        nonce: [u8; 32],
    },
    /// First connection: a one-time link token, the node's public OpenPGP
    /// certificate (binary), and the challenge signature.
    Link {
        token: String,
        openpgp_cert: Vec<u8>,
        signature: Vec<u8>,
    },
    /// Later connections: the challenge signature by the registered key.
    Auth {
        signature: Vec<u8>,
    },
    /// The session is up. `addresses` and `domains` say what the account may
    /// send as (see [`Frame::Account`]).
    Welcome {
        account: String,
        addresses: Vec<String>,
        domains: Vec<String>,
    },
    /// The session is refused; the connection closes after this frame.
    Refused {
        reason: String,
    },
    /// One message for the node.
    Deliver(Delivery),
    /// The node has stored the message with this id durably (or had it already).
    Ack {
        id: String,
    },
    Ping {
        nonce: u64,
    },
    Pong {
        nonce: u64,
    },
    /// The node asks the relay to publish these DNS records for its account,
    /// replacing those of the same kind (an empty list removes them).
    Publish {
        kind: PublishKind,
        values: Vec<String>,
    },
    /// The relay's answer to [`Frame::Publish`]: served by its DNS from now
    /// on, or why not.
    Published {
        kind: PublishKind,
        error: Option<String>,
    },
    /// Outgoing mail from the node's submission server, DKIM-signed by the
    /// node, for the relay's outbound queue.
    Submit(Submission),
    /// The relay's answer to [`Frame::Submit`].
    Submitted {
        id: String,
        outcome: SubmitOutcome,
    },
    /// What the account may send as changed (a custom domain verified, suspended
    /// or removed, aliases turned on or off): its addresses, lower case, and the
    /// domains any local part of which is its own (verified custom domains, and
    /// `HANDLE.RELAYDOMAIN` while aliases are on).
    Account {
        addresses: Vec<String>,
        domains: Vec<String>,
    },
}

/// One message a node hands to the relay for delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submission {
    /// Chosen by the node; the relay keeps one copy per id, so the node may
    /// send it again after a broken tunnel without it going out twice.
    pub id: String,
    /// The envelope sender (RFC 5321 reverse-path), an address of the account.
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// The whole message, signed (RFC 6376), CRLF line ends.
    pub data: Vec<u8>,
}

/// What the relay did with a [`Submission`]. The texts start with an enhanced
/// status code (RFC 3463), e.g. `4.7.1 rate limit reached`, which the node's
/// submission server passes on with the matching SMTP reply code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SubmitOutcome {
    /// Durably queued for delivery.
    Queued,
    /// Not queued; try again later (rate limit, a busy relay).
    Temporary(String),
    /// Not queued, and trying again won't help (a From that is not the
    /// account's, a signature that does not verify).
    Permanent(String),
}

/// The DNS records a node publishes through the relay (whose zone holds its
/// names); only public data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PublishKind {
    /// The node's DKIM key records (`v=DKIM1; …`), at `HANDLE._domainkey.DOMAIN`.
    Dkim,
    /// DNS-01 challenge values (RFC 8555 §8.4), at `_acme-challenge.HANDLE.DOMAIN`,
    /// so the node gets a certificate without the relay holding its key.
    AcmeChallenge,
}

impl PublishKind {
    /// Most values of one kind a node may publish.
    pub const MAX_VALUES: usize = 8;
    /// The longest value accepted (a 4096-bit RSA DKIM key is about 750 bytes).
    pub const MAX_VALUE_LEN: usize = 1024;

    /// Why `values` cannot be published, if they can't: too many, too long,
    /// or not printable ASCII.
    pub fn check(self, values: &[String]) -> Result<(), String> {
        if values.len() > Self::MAX_VALUES {
            return Err(format!("at most {} records of one kind", Self::MAX_VALUES));
        }
        for value in values {
            if value.is_empty() || value.len() > Self::MAX_VALUE_LEN {
                return Err(format!(
                    "a record value must hold 1 to {} bytes",
                    Self::MAX_VALUE_LEN
                ));
            }
            if !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                return Err("record values are printable ASCII".to_string());
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub id: String,
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// Seconds since the epoch when the relay accepted the message.
    pub received_at: i64,
    /// True when the relay wrapped the whole message in PGP/MIME to the node's
    /// certificate; false when it arrived encrypted already and was kept as it is.
    pub relay_encrypted: bool,
    /// The size of the message as the node will read it (decrypted), so the
    /// node needn't decrypt to learn it (IMAP's RFC822.SIZE).
    pub plain_size: u64,
    #[serde(with = "crate::wire_bytes")]
    pub data: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("frame of {0} bytes is over the limit")]
    TooLong(usize),
    #[error("frame too short to hold a version")]
    TooShort,
    #[error("peer speaks protocol version {0}, this build speaks {PROTOCOL_VERSION}")]
    Version(u16),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed")]
    Closed,
}

/// Encodes one frame with its length and version prefix.
pub fn encode(frame: &Frame) -> Result<Vec<u8>, ProtocolError> {
    encode_with_limit(frame, MAX_FRAME_LEN)
}

fn encode_with_limit<T: Serialize>(frame: &T, limit: usize) -> Result<Vec<u8>, ProtocolError> {
    let body = postcard::to_stdvec(frame).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    let len = body.len() + 2;
    if len > limit {
        return Err(ProtocolError::TooLong(len));
    }
    let mut out = Vec::with_capacity(4 + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// A sans-IO frame decoder: feed it bytes, take frames out.
#[derive(Default)]
pub struct FrameDecoder {
    buf: BytesMut,
    /// The largest frame this decoder accepts now; see [`FrameDecoder::set_limit`].
    limit: Option<usize>,
}

/// The frame limit before a peer is authenticated: room for a Link frame with a
/// certificate, nothing like a message (four bytes must not buy 96 MiB).
pub const HANDSHAKE_FRAME_LEN: usize = 64 * 1024;

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder that accepts frames of at most `limit` bytes.
    pub fn with_limit(limit: usize) -> Self {
        FrameDecoder {
            buf: BytesMut::new(),
            limit: Some(limit.min(MAX_FRAME_LEN)),
        }
    }

    /// Changes the limit (e.g. raises it once the peer is authenticated).
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = Some(limit.min(MAX_FRAME_LEN));
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed. An error is
    /// final: the stream can't be resynchronised and the connection must close.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ProtocolError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > self.limit.unwrap_or(MAX_FRAME_LEN) {
            return Err(ProtocolError::TooLong(len));
        }
        if len < 2 {
            return Err(ProtocolError::TooShort);
        }
        if self.buf.len() < 4 + len {
            // No reservation from the announced length: memory follows the
            // bytes that really arrived.
            return Ok(None);
        }
        self.buf.advance(4);
        let payload = self.buf.split_to(len);
        decode_payload(&payload).map(Some)
    }
}

/// Decodes `version | body` (the part of a frame after its length).
fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ProtocolError> {
    let [v0, v1, body @ ..] = payload else {
        return Err(ProtocolError::TooShort);
    };
    let version = u16::from_be_bytes([*v0, *v1]);
    if version != PROTOCOL_VERSION {
        return Err(ProtocolError::Version(version));
    }
    let (frame, rest) = postcard::take_from_bytes::<T>(body)
        .map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(ProtocolError::Malformed(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    Ok(frame)
}

/// How much [`read_frame`] reads at most at once.
const READ_CHUNK: usize = 64 * 1024;

/// Reads one frame; `Err(Closed)` on a clean end of stream between frames.
/// Cancel-safe: bytes read stay in `dec`, so dropping the future (in a
/// `select!`) loses nothing.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    dec: &mut FrameDecoder,
) -> Result<Frame, ProtocolError> {
    loop {
        if let Some(frame) = dec.next_frame()? {
            return Ok(frame);
        }
        // Straight into the decoder's buffer: no zeroed 64 KiB chunk per call
        // (the node takes a burst of deliveries frame by frame).
        if dec.buf.capacity() - dec.buf.len() < READ_CHUNK / 4 {
            dec.buf.reserve(READ_CHUNK);
        }
        let n = r.read_buf(&mut dec.buf).await?;
        if n == 0 {
            return Err(ProtocolError::Closed);
        }
    }
}

pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    frame: &Frame,
) -> Result<(), ProtocolError> {
    let bytes = encode(frame)?;
    w.write_all(&bytes).await?;
    w.flush().await?;
    Ok(())
}

/// A service the relay passes through to nodes by TLS SNI; the node connects
/// each to the local server its configuration names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Service {
    /// IMAP over implicit TLS (RFC 8314), port 993.
    Imaps,
    /// HTTP over TLS (the webmail), port 443.
    Https,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::Imaps => "imaps",
            Service::Https => "https",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The frames at the start of a side stream: one the relay opens per
/// connection it passes through to the node (see the module's description).
/// Framed like [`Frame`]s (`u32 length | u16 version | postcard body`) but a
/// type of their own, so neither can be taken for the other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamFrame {
    /// Relay to node, first on the stream: pass the bytes that follow to the
    /// node's `service`. `client` is the address that connected to the relay,
    /// for the node's logs.
    Open {
        service: Service,
        client: Option<SocketAddr>,
    },
    /// Node to relay: connected to the local service; raw bytes follow.
    Accepted,
    /// Node to relay: not passed through (no local server for the service, or
    /// it does not answer); the stream ends.
    Refused { reason: String },
}

/// The largest [`StreamFrame`] accepted (with its version).
pub const MAX_STREAM_FRAME_LEN: usize = 1024;

/// Encodes one stream frame with its length and version prefix.
pub fn encode_stream_frame(frame: &StreamFrame) -> Result<Vec<u8>, ProtocolError> {
    encode_with_limit(frame, MAX_STREAM_FRAME_LEN)
}

/// Decodes one stream frame from the start of `bytes`: the frame and the bytes
/// it took, or `Ok(None)` when more are needed. What follows it is not touched.
pub fn decode_stream_frame(bytes: &[u8]) -> Result<Option<(StreamFrame, usize)>, ProtocolError> {
    let Some(len) = bytes.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if len > MAX_STREAM_FRAME_LEN {
        return Err(ProtocolError::TooLong(len));
    }
    match bytes.get(4..4 + len) {
        Some(payload) => Ok(Some((decode_payload(payload)?, 4 + len))),
        None => Ok(None),
    }
}

/// Reads one stream frame, and not one byte more: the raw bytes after it
/// belong to the passed-through connection.
pub async fn read_stream_frame<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<StreamFrame, ProtocolError> {
    let mut len = [0u8; 4];
    read_exact_or_closed(r, &mut len).await?;
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_STREAM_FRAME_LEN {
        return Err(ProtocolError::TooLong(n));
    }
    let mut payload = vec![0u8; n];
    read_exact_or_closed(r, &mut payload).await?;
    decode_payload(&payload)
}

async fn read_exact_or_closed<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
) -> Result<(), ProtocolError> {
    match r.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ProtocolError::Closed),
        Err(e) => Err(e.into()),
    }
}

pub async fn write_stream_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    frame: &StreamFrame,
) -> Result<(), ProtocolError> {
    let bytes = encode_stream_frame(frame)?;
    w.write_all(&bytes).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Frame> {
        vec![
            Frame::Hello {
                version: 1,
                node_key: [3; 32],
            },
            Frame::Challenge { nonce: [9; 32] },
            Frame::Link {
                token: "tok".into(),
                openpgp_cert: vec![1, 2, 3],
                signature: vec![4; 64],
            },
            Frame::Deliver(Delivery {
                id: "abc".into(),
                mail_from: "a@b.test".into(),
                rcpt_to: vec!["c@d.test".into()],
                received_at: 1_700_000_000,
                relay_encrypted: true,
                plain_size: 7,
                data: b"hello\r\n".to_vec(),
            }),
            Frame::Ack { id: "abc".into() },
        ]
    }

    #[test]
    fn round_trip_byte_by_byte() {
        let mut wire = Vec::new();
        for f in sample() {
            wire.extend(encode(&f).unwrap());
        }
        let mut dec = FrameDecoder::new();
        let mut out = Vec::new();
        for b in wire {
            dec.push(&[b]);
            while let Some(f) = dec.next_frame().unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out, sample());
    }

    #[test]
    fn refuses_oversized_and_wrong_version() {
        let mut dec = FrameDecoder::new();
        dec.push(&u32::MAX.to_be_bytes());
        assert!(matches!(dec.next_frame(), Err(ProtocolError::TooLong(_))));

        let mut wire = encode(&Frame::Ping { nonce: 1 }).unwrap();
        wire[5] = 9;
        let mut dec = FrameDecoder::new();
        dec.push(&wire);
        assert!(matches!(dec.next_frame(), Err(ProtocolError::Version(9))));
    }

    #[test]
    fn handshake_limit_refuses_big_announcements_before_they_arrive() {
        let mut dec = FrameDecoder::with_limit(HANDSHAKE_FRAME_LEN);
        dec.push(&[0x05, 0xff, 0xff, 0xff]);
        assert!(matches!(dec.next_frame(), Err(ProtocolError::TooLong(_))));
        let mut dec = FrameDecoder::new();
        dec.push(&[0x05, 0xff, 0xff, 0xff]);
        assert!(matches!(dec.next_frame(), Ok(None)));
        assert!(
            dec.buf.capacity() < 1024 * 1024,
            "no reservation from the announced length"
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut dec = FrameDecoder::new();
        dec.push(&[0, 0, 0, 6, 0, 1, 0xff, 0xff, 0xff, 0xff]);
        assert!(dec.next_frame().is_err());
    }

    #[test]
    fn stream_frames_round_trip_and_leave_what_follows() {
        let frames = [
            StreamFrame::Open {
                service: Service::Imaps,
                client: Some("192.0.2.7:50123".parse().unwrap()),
            },
            StreamFrame::Open {
                service: Service::Https,
                client: None,
            },
            StreamFrame::Accepted,
            StreamFrame::Refused {
                reason: "no local server for imaps".into(),
            },
        ];
        for f in frames {
            let mut wire = encode_stream_frame(&f).unwrap();
            let len = wire.len();
            wire.extend_from_slice(b"\x16\x03\x01raw bytes");
            for cut in 0..len {
                assert!(matches!(decode_stream_frame(&wire[..cut]), Ok(None)));
            }
            assert_eq!(decode_stream_frame(&wire).unwrap(), Some((f.clone(), len)));
            let mut r = &wire[..];
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            assert_eq!(rt.block_on(read_stream_frame(&mut r)).unwrap(), f);
            assert_eq!(
                r, b"\x16\x03\x01raw bytes",
                "nothing after the frame was read"
            );
        }
    }

    #[test]
    fn stream_frames_refuse_garbage() {
        assert!(matches!(
            decode_stream_frame(&[0, 0, 0x04, 0x01]),
            Err(ProtocolError::TooLong(1025))
        ));
        assert!(decode_stream_frame(&[0, 0, 0, 1, 0]).is_err());
        assert!(matches!(
            decode_stream_frame(&[0, 0, 0, 3, 0, 9, 0]),
            Err(ProtocolError::Version(9))
        ));
        // An unknown service (variant 7) or trailing bytes.
        assert!(decode_stream_frame(&[0, 0, 0, 5, 0, 1, 0, 7, 0]).is_err());
        assert!(decode_stream_frame(&[0, 0, 0, 4, 0, 1, 1, 0]).is_err());
        // A session frame is not a stream frame.
        let ping = encode(&Frame::Ping { nonce: 1 }).unwrap();
        assert!(decode_stream_frame(&ping).is_err());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut short: &[u8] = &[0, 0, 0, 9, 0, 1];
        assert!(matches!(
            rt.block_on(read_stream_frame(&mut short)),
            Err(ProtocolError::Closed)
        ));
    }
}
