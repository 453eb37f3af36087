//! The TLS ClientHello, read without terminating TLS: the bytes are buffered
//! (to be forwarded unchanged) and a copy is fed to rustls's [`Acceptor`], which
//! parses the handshake and yields the SNI (RFC 6066 section 3). Sans-IO: bytes
//! in, a name out.

use rustls::server::Acceptor;

/// The most bytes read before the ClientHello must be complete. A ClientHello
/// with post-quantum key shares is about 2 KiB; 16 KiB is one full TLS record.
pub const MAX_CLIENT_HELLO: usize = 16 * 1024;

/// Why a connection's first bytes are not passed through.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HelloError {
    #[error("not a TLS ClientHello: {0}")]
    NotTls(String),
    #[error("no complete ClientHello in the first {MAX_CLIENT_HELLO} bytes")]
    TooLarge,
}

/// A ClientHello, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The SNI host name as the client sent it, if it sent one.
    pub server_name: Option<String>,
}

/// Reads a ClientHello from the bytes a client sends first, keeping them.
pub struct ClientHelloReader {
    acceptor: Acceptor,
    raw: Vec<u8>,
    done: bool,
}

impl Default for ClientHelloReader {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientHelloReader {
    pub fn new() -> Self {
        ClientHelloReader {
            acceptor: Acceptor::default(),
            raw: Vec::new(),
            done: false,
        }
    }

    /// Adds bytes the client sent. `Ok(Some(hello))` once the ClientHello is
    /// complete, `Ok(None)` while more bytes are needed. An error, or a second
    /// call after `Some`, means the connection must close.
    ///
    /// Only the first [`MAX_CLIENT_HELLO`] bytes are parsed, so the outcome
    /// does not depend on how the bytes are cut into pushes; every byte is
    /// kept for forwarding (what follows the ClientHello in the same read).
    pub fn push(&mut self, bytes: &[u8]) -> Result<Option<Hello>, HelloError> {
        if self.done {
            return Err(HelloError::NotTls("ClientHello already read".into()));
        }
        let room = MAX_CLIENT_HELLO.saturating_sub(self.raw.len());
        self.raw.extend_from_slice(bytes);
        let mut rest = &bytes[..bytes.len().min(room)];
        while !rest.is_empty() {
            match self.acceptor.read_tls(&mut rest) {
                Ok(0) => return self.fail(HelloError::NotTls("rustls took no bytes".into())),
                Ok(_) => {}
                Err(e) => return self.fail(HelloError::NotTls(e.to_string())),
            }
        }
        match self.acceptor.accept() {
            Ok(None) if self.raw.len() >= MAX_CLIENT_HELLO => self.fail(HelloError::TooLarge),
            Ok(None) => Ok(None),
            Ok(Some(accepted)) => {
                self.done = true;
                let server_name = accepted.client_hello().server_name().map(str::to_string);
                Ok(Some(Hello { server_name }))
            }
            Err((e, _alert)) => self.fail(HelloError::NotTls(e.to_string())),
        }
    }

    fn fail(&mut self, e: HelloError) -> Result<Option<Hello>, HelloError> {
        self.done = true;
        Err(e)
    }

    /// Every byte pushed so far, unchanged: what to forward.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    pub fn into_raw(self) -> Vec<u8> {
        self.raw
    }
}

/// The account handle a passthrough name stands for: `HANDLE.DOMAIN`, one label
/// under the relay's domain, compared without regard to ASCII case (a trailing
/// dot allowed). `None` for any other name.
pub fn handle_for(server_name: &str, domain: &str) -> Option<String> {
    let name = server_name.strip_suffix('.').unwrap_or(server_name);
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    let cut = name.len().checked_sub(domain.len() + 1)?;
    let (label, suffix) = (name.get(..cut)?, name.get(cut..)?);
    let suffix = suffix.strip_prefix('.')?;
    if !suffix.eq_ignore_ascii_case(domain)
        || label.is_empty()
        || !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return None;
    }
    Some(label.to_ascii_lowercase())
}

/// A fatal TLS alert record (RFC 8446 section 6), sent in the clear before
/// closing a connection that is not passed through.
pub fn alert(description: AlertDescription) -> [u8; 7] {
    [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, description as u8]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertDescription {
    /// RFC 6066 section 3: the name is not one this server serves.
    UnrecognizedName = 112,
    /// RFC 8446 section 9.2: a ClientHello without SNI where one is required.
    MissingExtension = 109,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use std::sync::Arc;

    /// The first flight of a real rustls client for `name` (`None`: no SNI).
    fn client_hello(name: &str, sni: bool) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.enable_sni = sni;
        config.alpn_protocols = vec![b"imap".to_vec()];
        let server_name = ServerName::try_from(name.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), server_name).unwrap();
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        out
    }

    #[test]
    fn a_real_client_hello_gives_its_name_whole_or_byte_by_byte() {
        let hello = client_hello("Alice.Sandbox.Test", true);
        let mut r = ClientHelloReader::new();
        assert_eq!(
            r.push(&hello).unwrap(),
            Some(Hello {
                server_name: Some("alice.sandbox.test".into())
            })
        );
        assert_eq!(r.raw(), &hello[..], "the bytes are kept unchanged");

        let mut r = ClientHelloReader::new();
        let (last, head) = hello.split_last().unwrap();
        for b in head {
            assert_eq!(r.push(std::slice::from_ref(b)).unwrap(), None);
        }
        let got = r.push(std::slice::from_ref(last)).unwrap().unwrap();
        assert_eq!(got.server_name.as_deref(), Some("alice.sandbox.test"));
        assert_eq!(r.into_raw(), hello);
    }

    #[test]
    fn bytes_after_the_hello_are_kept_even_past_the_limit() {
        let hello = client_hello("alice.sandbox.test", true);
        let mut input = hello.clone();
        input.resize(MAX_CLIENT_HELLO + 100, 0x17);
        let mut r = ClientHelloReader::new();
        let got = r.push(&input).unwrap().unwrap();
        assert_eq!(got.server_name.as_deref(), Some("alice.sandbox.test"));
        assert_eq!(r.raw(), &input[..]);
    }

    #[test]
    fn a_hello_without_sni_has_no_name() {
        let hello = client_hello("alice.sandbox.test", false);
        let got = ClientHelloReader::new().push(&hello).unwrap().unwrap();
        assert_eq!(got.server_name, None);
    }

    #[test]
    fn a_truncated_hello_waits_for_more() {
        let hello = client_hello("alice.sandbox.test", true);
        for cut in [1, 5, 9, hello.len() / 2, hello.len() - 1] {
            let mut r = ClientHelloReader::new();
            assert_eq!(r.push(&hello[..cut]).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn an_oversized_hello_is_refused() {
        // A ClientHello announcing 20,000 bytes, split over records: the first
        // record is full (16,384) and legal, but the whole can't be complete
        // within the limit.
        let mut record = vec![0x16, 0x03, 0x01, 0x40, 0x00];
        record.extend_from_slice(&[0x01, 0x00, 0x4e, 0x20, 0x03, 0x03]);
        record.resize(5 + 0x4000, 0);
        let mut r = ClientHelloReader::new();
        assert_eq!(r.push(&record[..MAX_CLIENT_HELLO - 1]).unwrap(), None);
        assert_eq!(
            r.push(&record[MAX_CLIENT_HELLO - 1..]),
            Err(HelloError::TooLarge)
        );
        // Once refused, always refused.
        assert!(r.push(b"").is_err());
        // In one piece too.
        assert_eq!(
            ClientHelloReader::new().push(&record),
            Err(HelloError::TooLarge)
        );
    }

    #[test]
    fn other_protocols_and_garbage_are_refused() {
        for input in [
            &b"GET / HTTP/1.1\r\nHost: alice.sandbox.test\r\n\r\n"[..],
            b"* OK IMAP4rev1\r\n",
            b"SSH-2.0-OpenSSH_9.2\r\n",
            // An alert record, not a handshake.
            &[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28],
            // A handshake record holding a ServerHello.
            &[0x16, 0x03, 0x03, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00],
            // A record of length zero.
            &[0x16, 0x03, 0x01, 0x00, 0x00],
        ] {
            let got = ClientHelloReader::new().push(input);
            assert!(
                matches!(got, Err(HelloError::NotTls(_))),
                "{input:?} gave {got:?}"
            );
        }
        // A real hello with its body damaged.
        let mut hello = client_hello("alice.sandbox.test", true);
        let n = hello.len();
        hello[9..n].iter_mut().for_each(|b| *b = 0xff);
        assert!(ClientHelloReader::new().push(&hello).is_err());
    }

    #[test]
    fn names_map_to_handles_under_the_relays_domain_only() {
        let d = "sandbox.test";
        assert_eq!(
            handle_for("alice.sandbox.test", d).as_deref(),
            Some("alice")
        );
        assert_eq!(
            handle_for("ALICE.Sandbox.TEST.", d).as_deref(),
            Some("alice")
        );
        assert_eq!(
            handle_for("alice.sandbox.test", "Sandbox.Test.").as_deref(),
            Some("alice")
        );
        for name in [
            "sandbox.test",
            ".sandbox.test",
            "a.b.sandbox.test",
            "alice.other.test",
            "alicesandbox.test",
            "alice.sandbox.test.evil",
            "alice.xsandbox.test",
            "é.sandbox.test",
            "",
        ] {
            assert_eq!(handle_for(name, d), None, "{name}");
        }
    }
}
