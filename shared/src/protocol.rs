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
//! relay -> Welcome{..}                              | Refused{reason}
//! relay -> Deliver{..} ...   node -> Ack{id} ...    (at-least-once; acked after a durable store)
//! either -> Ping / Pong
//! ```

use bytes::{Buf, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The version this build speaks; a peer with another version is refused with a
/// reason instead of being misread.
pub const PROTOCOL_VERSION: u16 = 1;

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
    /// The session is up.
    Welcome {
        account: String,
        addresses: Vec<String>,
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
    let body = postcard::to_stdvec(frame).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    let len = body.len() + 2;
    if len > MAX_FRAME_LEN {
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
        let version = u16::from_be_bytes([payload[0], payload[1]]);
        if version != PROTOCOL_VERSION {
            return Err(ProtocolError::Version(version));
        }
        let (frame, rest) = postcard::take_from_bytes::<Frame>(&payload[2..])
            .map_err(|e| ProtocolError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(ProtocolError::Malformed(format!(
                "{} trailing bytes",
                rest.len()
            )));
        }
        Ok(Some(frame))
    }
}

/// Reads one frame; `Err(Closed)` on a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    dec: &mut FrameDecoder,
) -> Result<Frame, ProtocolError> {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if let Some(frame) = dec.next_frame()? {
            return Ok(frame);
        }
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return Err(ProtocolError::Closed);
        }
        dec.push(&chunk[..n]);
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
}
