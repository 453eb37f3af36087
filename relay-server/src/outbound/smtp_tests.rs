//! Tests of the SMTP client (`smtp.rs`) against scripted servers.

use super::*;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;

/// An opportunistic connection to a scripted server that offers no TLS.
async fn plain(addr: SocketAddr) -> Connection {
    Connection::open(
        addr,
        "localhost",
        "relay.test",
        &Trust::new(None).unwrap(),
        &TlsRequirement::Opportunistic,
        Duration::from_secs(5),
    )
    .await
    .unwrap()
}

/// Sends `body` to two recipients, the second of which the server
/// refuses with 550 5.1.1.
async fn send_to_one_good_one_refused(conn: &mut Connection, body: &[u8]) {
    let outcomes = conn
        .send("a@b.test", &["x@y.test".into(), "z@y.test".into()], body)
        .await
        .unwrap();
    assert_eq!(outcomes[0], Outcome::Delivered);
    assert_eq!(
        outcomes[1],
        Outcome::Permanent("550 5.1.1 no such user".into())
    );
}

#[test]
fn dot_stuffing() {
    assert_eq!(dot_stuff(b"a\r\n.b\n..c"), b"a\r\n..b\r\n...c\r\n.\r\n");
    assert_eq!(dot_stuff(b""), b"\r\n.\r\n");
}

/// A server that offers STARTTLS with `chain` and returns the name the
/// client sent in SNI, once the handshake is done.
async fn starttls_server(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> (SocketAddr, tokio::task::JoinHandle<Option<String>>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (s, _) = listener.accept().await.ok()?;
        let mut s = BufReader::new(s);
        let mut line = Vec::new();
        s.get_mut().write_all(b"220 hi\r\n").await.ok()?;
        s.read_until(b'\n', &mut line).await.ok()?;
        s.get_mut()
            .write_all(b"250-x\r\n250 STARTTLS\r\n")
            .await
            .ok()?;
        s.read_until(b'\n', &mut line).await.ok()?;
        s.get_mut().write_all(b"220 go\r\n").await.ok()?;
        let tls = acceptor.accept(s.into_inner()).await.ok()?;
        let sni = tls.get_ref().1.server_name().map(str::to_string);
        let mut tls = BufReader::new(tls);
        tls.read_until(b'\n', &mut line).await.ok()?;
        tls.get_mut().write_all(b"250 ok\r\n").await.ok()?;
        sni
    });
    (addr, server)
}

/// DANE with an MX host that is an alias: SNI carries the TLSA base
/// domain, the expanded name, not the MX host name (RFC 7672 §8.1); a
/// DANE-TA(2) certificate naming only the expanded name is taken when
/// that name is a reference identifier (§3.2.2), refused when not.
#[tokio::test]
async fn dane_sends_the_tlsa_base_domain_and_checks_the_reference_names() {
    use super::super::dane::tlsa::{Tlsa, CERT, DANE_TA, SHA2_256};
    use sha2::{Digest, Sha256};
    let trust = Trust::new(None).unwrap();
    let (chain, key) = crate::outbound::dane::tlsa::tests::issued_with_key("mx-final.example");
    let anchor = Tlsa {
        usage: DANE_TA,
        selector: CERT,
        matching: SHA2_256,
        data: Sha256::digest(&chain[1]).to_vec(),
    };
    let dane = |names: &[&str]| {
        TlsRequirement::Dane(DaneTls {
            records: vec![anchor.clone()],
            base: "mx-final.example".into(),
            names: names.iter().map(|n| n.to_string()).collect(),
        })
    };
    let timeout = Duration::from_secs(5);

    let (addr, server) = starttls_server(chain.clone(), key.clone_key()).await;
    let both = dane(&["mx-final.example", "mx-alias.example"]);
    let conn = Connection::open(
        addr,
        "mx-alias.example",
        "relay.test",
        &trust,
        &both,
        timeout,
    )
    .await
    .unwrap();
    assert!(conn.tls);
    assert_eq!(server.await.unwrap().as_deref(), Some("mx-final.example"));

    // The MX host name alone is not the name the certificate carries.
    let (addr, _server) = starttls_server(chain, key).await;
    let alias = dane(&["mx-alias.example"]);
    let result = Connection::open(
        addr,
        "mx-alias.example",
        "relay.test",
        &trust,
        &alias,
        timeout,
    )
    .await;
    assert!(
        matches!(&result, Err(SmtpError::TlsRequired(_, "DANE", _))),
        "{:?}",
        result.err()
    );
}

/// MTA-STS `enforce`: a server without STARTTLS gets no mail.
#[tokio::test]
async fn required_tls_is_not_given_up() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let mut s = BufReader::new(s);
        s.get_mut().write_all(b"220 hi\r\n").await.unwrap();
        let mut line = Vec::new();
        s.read_until(b'\n', &mut line).await.unwrap();
        s.get_mut().write_all(b"250 no tls here\r\n").await.unwrap();
        s.read_until(b'\n', &mut line).await
    });
    let result = Connection::open(
        addr,
        "mx.example.org",
        "relay.test",
        &Trust::new(None).unwrap(),
        &TlsRequirement::Verified,
        Duration::from_secs(5),
    )
    .await;
    assert!(
        matches!(&result, Err(e @ SmtpError::TlsRequired(..)) if !e.permanent()),
        "{:?}",
        result.err()
    );
}

#[tokio::test]
async fn talks_to_a_scripted_server() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let mut s = BufReader::new(s);
        let mut got = Vec::new();
        s.get_mut().write_all(b"220 hi\r\n").await.unwrap();
        let replies: [&[u8]; 6] = [
            b"250-x\r\n250 SIZE 10\r\n",
            b"250 ok\r\n",
            b"250 ok\r\n",
            b"550 5.1.1 no such user\r\n",
            b"354 go\r\n",
            b"250 queued\r\n",
        ];
        for (i, r) in replies.iter().enumerate() {
            loop {
                let mut line = Vec::new();
                s.read_until(b'\n', &mut line).await.unwrap();
                got.extend_from_slice(&line);
                if i != 5 || line == b".\r\n" {
                    break;
                }
            }
            s.get_mut().write_all(r).await.unwrap();
        }
        got
    });
    let mut conn = plain(addr).await;
    assert!(!conn.tls);
    send_to_one_good_one_refused(&mut conn, b"Subject: s\r\n\r\n.hi\r\n").await;
    let got = String::from_utf8(server.await.unwrap()).unwrap();
    assert!(got.ends_with("Subject: s\r\n\r\n..hi\r\n.\r\n"), "{got}");
}

/// PIPELINING offered: MAIL, both RCPTs and DATA come before any reply
/// (the server answers nothing until it has seen DATA, so a client that
/// waited would time out); a refused recipient is told apart.
#[tokio::test]
async fn pipelines_when_offered() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let mut s = BufReader::new(s);
        s.get_mut().write_all(b"220 hi\r\n").await.unwrap();
        let mut line = Vec::new();
        s.read_until(b'\n', &mut line).await.unwrap();
        s.get_mut()
            .write_all(b"250-x\r\n250-PIPELINING\r\n250 SIZE 10\r\n")
            .await
            .unwrap();
        let mut group = Vec::new();
        while !group.ends_with(b"DATA\r\n") {
            s.read_until(b'\n', &mut group).await.unwrap();
        }
        s.get_mut()
            .write_all(b"250 ok\r\n250 ok\r\n550 5.1.1 no such user\r\n354 go\r\n")
            .await
            .unwrap();
        let mut body = Vec::new();
        while !body.ends_with(b"\r\n.\r\n") {
            s.read_until(b'\n', &mut body).await.unwrap();
        }
        s.get_mut().write_all(b"250 queued\r\n").await.unwrap();
        String::from_utf8(group).unwrap()
    });
    let mut conn = plain(addr).await;
    send_to_one_good_one_refused(&mut conn, b"Subject: s\r\n\r\nhi\r\n").await;
    assert_eq!(
        server.await.unwrap(),
        "MAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nRCPT TO:<z@y.test>\r\nDATA\r\n"
    );
}
