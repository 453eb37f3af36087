//! Tests of [`super`]: SPF, DKIM and DMARC against a DNS server of the test's own.

use super::*;

use std::collections::HashMap;
use std::error::Error;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{RData, Record, RecordType};
use mail_auth::common::crypto::Ed25519Key;
use mail_auth::common::headers::HeaderWriter as _;
use mail_auth::dkim::DkimSigner;
use tokio::net::{TcpListener, UdpSocket};

type TestResult = Result<(), Box<dyn Error>>;

/// Ed25519 test key of the mail-auth examples (RFC 8463 format).
const ED25519_SEED: &str = "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=";
const ED25519_PUBLIC: &str = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

const SENDER_IP: &str = "192.0.2.1";
const OTHER_IP: &str = "198.51.100.7";

const MESSAGE: &str = "From: Alice <alice@example.org>\r\n\
    To: bob@relay.test\r\n\
    Subject: hello\r\n\
    Message-ID: <1@example.org>\r\n\
    \r\n\
    Hello Bob.\r\n";

/// A tiny authoritative DNS server on loopback UDP that answers TXT queries from
/// `zone`, NODATA for other types of a known name, and NXDOMAIN otherwise.
async fn fake_dns(zone: HashMap<String, Vec<String>>) -> Result<SocketAddr, Box<dyn Error>> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let address = socket.local_addr()?;
    let zone = Arc::new(zone);
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 4096];
        loop {
            let Ok((len, peer)) = socket.recv_from(&mut buffer).await else {
                return;
            };
            let Some(Ok(query)) = buffer.get(..len).map(Message::from_vec) else {
                continue;
            };
            let mut response = Message::response(query.metadata.id, query.metadata.op_code);
            response.metadata.recursion_desired = query.metadata.recursion_desired;
            response.metadata.recursion_available = true;
            response.metadata.authoritative = true;
            let mut known = false;
            for question in &query.queries {
                response.add_query(question.clone());
                let name = question
                    .name()
                    .to_ascii()
                    .trim_end_matches('.')
                    .to_ascii_lowercase();
                if let Some(texts) = zone.get(&name) {
                    known = true;
                    if question.query_type() == RecordType::TXT {
                        for text in texts {
                            response.add_answer(Record::from_rdata(
                                question.name().clone(),
                                60,
                                RData::TXT(TXT::new(vec![text.clone()])),
                            ));
                        }
                    }
                }
            }
            if !known {
                response.metadata.response_code = ResponseCode::NXDomain;
            }
            if let Ok(bytes) = response.to_vec() {
                let _ = socket.send_to(&bytes, peer).await;
            }
        }
    });
    Ok(address)
}

fn example_zone() -> HashMap<String, Vec<String>> {
    let record = |text: String| vec![text];
    HashMap::from([
        (
            "example.org".to_string(),
            record(format!("v=spf1 ip4:{SENDER_IP} -all")),
        ),
        (
            "mail.example.org".to_string(),
            record(format!("v=spf1 ip4:{SENDER_IP} -all")),
        ),
        (
            "_dmarc.example.org".to_string(),
            record("v=DMARC1; p=reject".to_string()),
        ),
        (
            "sel._domainkey.example.org".to_string(),
            record(format!("v=DKIM1; k=ed25519; p={ED25519_PUBLIC}")),
        ),
    ])
}

fn signed_message() -> Result<String, Box<dyn Error>> {
    let key = Ed25519Key::from_seed_and_public_key(
        &STANDARD.decode(ED25519_SEED)?,
        &STANDARD.decode(ED25519_PUBLIC)?,
    )?;
    let signature = DkimSigner::from_key(key)
        .domain("example.org")
        .selector("sel")
        .headers(["From", "To", "Subject", "Message-ID"])
        .sign(MESSAGE.as_bytes())?;
    Ok(format!("{}{MESSAGE}", signature.to_header()))
}

fn assert_shape(header: &str) {
    assert!(
        header.starts_with("Authentication-Results: relay.test;"),
        "{header}"
    );
    assert!(header.ends_with("\r\n"), "{header}");
    assert_eq!(
        header.matches("\r\n").count(),
        header.matches("\r\n\t").count() + 1
    );
    for method in ["spf=", "dkim=", "dmarc="] {
        assert!(header.contains(method), "no {method} in {header}");
    }
}

/// An unused loopback port: bound, read, then released.
async fn unused_port() -> Result<SocketAddr, Box<dyn Error>> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    Ok(socket.local_addr()?)
}

#[test]
fn rejects_unusable_host_names() {
    let nameserver = SocketAddr::from(([127, 0, 0, 1], 53));
    for name in [
        "",
        "relay test",
        "relay;test",
        "-relay.test",
        "a..b",
        "relay.test\r\nX-Injected: yes",
    ] {
        assert!(
            matches!(
                Authenticator::new(nameserver, name),
                Err(AuthError::InvalidHostname(_))
            ),
            "{name:?} accepted"
        );
    }
    assert!(Authenticator::new(nameserver, "Relay.Test.").is_ok());
}

#[test]
fn authentication_future_is_send() -> TestResult {
    fn assert_send<T: Send>(_: &T) {}
    let authenticator = Authenticator::new(SocketAddr::from(([127, 0, 0, 1], 53)), "relay.test")?;
    let ip = IpAddr::from([192, 0, 2, 1]);
    assert_send(&authenticator.authentication_results(ip, "a.test", "", b""));
    Ok(())
}

#[test]
fn reverse_path_forms() {
    assert_eq!(bare_address(" <a@b.test> "), "a@b.test");
    assert_eq!(bare_address("<>"), "");
    assert_eq!(bare_address("a@b.test"), "a@b.test");
    assert_eq!(domain_of("a@B.test."), Some("B.test"));
    assert_eq!(domain_of("a@"), None);
}

/// The header for one message, checked against a DNS server holding the
/// example.org zone.
async fn example_results(
    ip: &str,
    helo: &str,
    mail_from: &str,
    message: &[u8],
) -> Result<String, Box<dyn std::error::Error>> {
    let authenticator = Authenticator::new(fake_dns(example_zone()).await?, "relay.test")?;
    Ok(authenticator
        .authentication_results(ip.parse()?, helo, mail_from, message)
        .await)
}

#[tokio::test]
async fn nameserver_refusing_gives_temperror_within_budget() -> TestResult {
    let authenticator = Authenticator::new(unused_port().await?, "relay.test")?;
    let started = Instant::now();
    let header = authenticator
        .authentication_results(
            SENDER_IP.parse()?,
            "mail.example.org",
            "alice@example.org",
            signed_message()?.as_bytes(),
        )
        .await;
    assert!(
        started.elapsed() <= TIME_BUDGET + Duration::from_secs(1),
        "{header}"
    );
    assert_shape(&header);
    assert!(header.contains("spf=temperror"), "{header}");
    assert!(header.contains("dkim=temperror"), "{header}");
    assert!(header.contains("dmarc=temperror"), "{header}");
    Ok(())
}

#[tokio::test]
async fn silent_nameserver_cannot_hold_the_session() -> TestResult {
    // A server that takes queries over UDP and TCP and never answers.
    let udp = UdpSocket::bind("127.0.0.1:0").await?;
    let address = udp.local_addr()?;
    let _tcp = TcpListener::bind(address).await?;
    let budget = Duration::from_millis(1500);
    let authenticator = Authenticator::with_budget(address, "relay.test", budget)?;

    let started = Instant::now();
    let header = authenticator
        .authentication_results(
            SENDER_IP.parse()?,
            "mail.example.org",
            "alice@example.org",
            MESSAGE.as_bytes(),
        )
        .await;
    assert!(
        started.elapsed() < budget + Duration::from_millis(500),
        "{header}"
    );
    assert_shape(&header);
    assert!(header.contains("spf=temperror"), "{header}");
    assert!(header.contains("dkim=none"), "{header}");
    assert!(header.contains("dmarc=temperror"), "{header}");
    assert!(header.contains("header.from=example.org"), "{header}");
    drop(udp);
    Ok(())
}

#[tokio::test]
async fn aligned_signed_mail_passes() -> TestResult {
    let header = example_results(
        SENDER_IP,
        "mail.example.org",
        "<alice@example.org>",
        signed_message()?.as_bytes(),
    )
    .await?;
    assert_shape(&header);
    assert!(header.contains("spf=pass"), "{header}");
    assert!(
        header.contains("smtp.mailfrom=alice@example.org"),
        "{header}"
    );
    assert!(
        header.contains("dkim=pass header.d=example.org header.s=sel"),
        "{header}"
    );
    assert!(
        header.contains("dmarc=pass header.from=example.org"),
        "{header}"
    );
    Ok(())
}

#[tokio::test]
async fn forged_unsigned_mail_fails() -> TestResult {
    let header = example_results(
        OTHER_IP,
        "forger.test",
        "alice@example.org",
        MESSAGE.as_bytes(),
    )
    .await?;
    assert_shape(&header);
    assert!(header.contains("spf=fail"), "{header}");
    assert!(header.contains("dkim=none"), "{header}");
    assert!(
        header.contains("dmarc=fail") && header.contains("policy.dmarc=reject"),
        "{header}"
    );
    Ok(())
}

#[tokio::test]
async fn null_reverse_path_checks_helo() -> TestResult {
    let header = example_results(SENDER_IP, "mail.example.org", "", MESSAGE.as_bytes()).await?;
    assert_shape(&header);
    assert!(header.contains("spf=pass"), "{header}");
    assert!(header.contains("postmaster@mail.example.org"), "{header}");
    assert!(header.contains("smtp.helo=mail.example.org"), "{header}");
    Ok(())
}

#[tokio::test]
async fn unparsable_message_still_reports_spf() -> TestResult {
    let header = example_results(
        SENDER_IP,
        "mail.example.org",
        "alice@example.org",
        b"\r\nno headers at all\r\n",
    )
    .await?;
    assert_shape(&header);
    assert!(header.contains("spf=pass"), "{header}");
    assert!(header.contains("dkim=permerror"), "{header}");
    assert!(header.contains("dmarc=none"), "{header}");
    Ok(())
}

#[tokio::test]
async fn hostile_envelope_cannot_break_the_header() -> TestResult {
    let header = example_results(
        OTHER_IP,
        "evil.test\r\nX-Injected: yes",
        "a\"b\r\nX-Injected: yes@example.org",
        MESSAGE.as_bytes(),
    )
    .await?;
    assert_shape(&header);
    assert!(!header.contains("\r\nX-Injected"), "{header}");
    Ok(())
}

/// A DNS server on loopback UDP that answers every query REFUSED, and counts them.
async fn refusing_dns() -> Result<(SocketAddr, Arc<AtomicUsize>), Box<dyn Error>> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let address = socket.local_addr()?;
    let queries = Arc::new(AtomicUsize::new(0));
    let counted = queries.clone();
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 4096];
        loop {
            let Ok((len, peer)) = socket.recv_from(&mut buffer).await else {
                return;
            };
            let Some(Ok(query)) = buffer.get(..len).map(Message::from_vec) else {
                continue;
            };
            counted.fetch_add(1, Ordering::SeqCst);
            let mut response = Message::response(query.metadata.id, query.metadata.op_code);
            for question in &query.queries {
                response.add_query(question.clone());
            }
            response.metadata.response_code = ResponseCode::Refused;
            if let Ok(bytes) = response.to_vec() {
                let _ = socket.send_to(&bytes, peer).await;
            }
        }
    });
    Ok((address, queries))
}

#[tokio::test]
async fn a_refused_lookup_is_not_repeated_for_the_next_message() -> TestResult {
    // RFC 9520: resolution failures are cached; the next message gets the
    // same temperror without asking again.
    let (address, queries) = refusing_dns().await?;
    let authenticator = Authenticator::new(address, "relay.test")?;
    let ip: IpAddr = SENDER_IP.parse()?;
    let check = || {
        authenticator.authentication_results(
            ip,
            "mail.example.org",
            "alice@example.org",
            MESSAGE.as_bytes(),
        )
    };
    let first = check().await;
    assert!(first.contains("spf=temperror"), "{first}");
    assert!(first.contains("dmarc=temperror"), "{first}");
    let asked = queries.load(Ordering::SeqCst);
    assert!(asked > 0);
    let second = check().await;
    assert!(second.contains("spf=temperror"), "{second}");
    assert!(second.contains("dkim=none"), "{second}");
    assert!(second.contains("dmarc=temperror"), "{second}");
    assert_eq!(queries.load(Ordering::SeqCst), asked, "{second}");
    Ok(())
}
