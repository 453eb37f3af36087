//! Delivery status notifications (RFC 3464) for mail that could not be
//! delivered, sent back to the sender's own INBOX.

use std::fmt::Write as _;

/// What went wrong with one recipient.
pub struct Failure<'a> {
    pub rcpt: &'a str,
    /// The remote server's reply, or what went wrong.
    pub diagnostic: &'a str,
    /// Whether the message was given up after the retry period (RFC 3463
    /// `4.4.7`), rather than refused for good.
    pub expired: bool,
    /// The server that answered, when one did.
    pub remote_mta: Option<&'a str>,
}

/// The enhanced status code (RFC 3463) in a reply like `550 5.1.1 …`.
pub fn status_of(diagnostic: &str, expired: bool) -> String {
    if expired {
        return "4.4.7".to_string();
    }
    diagnostic
        .split_whitespace()
        .nth(1)
        .filter(|w| {
            let parts: Vec<&str> = w.split('.').collect();
            parts.len() == 3
                && matches!(parts[0], "2" | "4" | "5")
                && parts
                    .iter()
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(str::to_string)
        .unwrap_or_else(|| "5.0.0".to_string())
}

/// `text` with control characters made spaces, cut at 900 characters (a
/// header field line must stay short, RFC 5322 §2.1.1).
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(900)
        .collect()
}

/// The whole DSN message for one message's `failures` (one per recipient,
/// RFC 3464 §2.3), `multipart/report` (RFC 6522) with the original's header
/// (RFC 3462 `text/rfc822-headers`).
pub fn build(
    reporting_mta: &str,
    relay_domain: &str,
    sender: &str,
    arrival: i64,
    failures: &[Failure<'_>],
    original: &[u8],
) -> Vec<u8> {
    let boundary = format!("omb-dsn-{}", hex::encode(rand::random::<[u8; 8]>()));
    let now = chrono::Utc::now();
    let arrival = chrono::DateTime::from_timestamp(arrival, 0).unwrap_or(now);
    let subject = match failures {
        [one] => format!("Undelivered mail to {}", one.rcpt),
        _ => format!("Undelivered mail to {} recipients", failures.len()),
    };
    let mut m = String::new();
    let _ = write!(
        m,
        "From: Mail Delivery System <MAILER-DAEMON@{relay_domain}>\r\n\
         To: <{sender}>\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}@{reporting_mta}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n",
        date = now.to_rfc2822(),
        id = hex::encode(rand::random::<[u8; 12]>()),
    );
    for f in failures {
        let diagnostic = one_line(f.diagnostic);
        if f.expired {
            let _ = write!(
                m,
                "Your message to <{}> could not be delivered before the relay gave up trying.\r\nThe last attempt ended with: {diagnostic}\r\n\r\n",
                f.rcpt
            );
        } else {
            let _ = write!(
                m,
                "Your message to <{}> was refused by the recipient's mail server, which said:\r\n\r\n    {diagnostic}\r\n\r\n",
                f.rcpt
            );
        }
    }
    // The per-message fields, then a group of fields per recipient (§2.2, §2.3).
    let _ = write!(
        m,
        "--{boundary}\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; {reporting_mta}\r\n\
         Arrival-Date: {arrival}\r\n",
        arrival = arrival.to_rfc2822(),
    );
    for f in failures {
        let diagnostic = one_line(f.diagnostic);
        let _ = write!(
            m,
            "\r\n\
             Final-Recipient: rfc822; {rcpt}\r\n\
             Action: failed\r\n\
             Status: {status}\r\n",
            rcpt = f.rcpt,
            status = status_of(&diagnostic, f.expired),
        );
        if let Some(mta) = f.remote_mta {
            let _ = write!(m, "Remote-MTA: dns; {mta}\r\n");
        }
        let _ = write!(
            m,
            "Diagnostic-Code: smtp; {diagnostic}\r\n\
             Last-Attempt-Date: {}\r\n",
            now.to_rfc2822()
        );
    }
    let _ = write!(
        m,
        "\r\n\
         --{boundary}\r\n\
         Content-Type: text/rfc822-headers\r\n\
         \r\n"
    );
    let mut out = m.into_bytes();
    let header_end = original
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or(original.len().min(64 * 1024));
    out.extend_from_slice(&original[..header_end]);
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes() {
        assert_eq!(status_of("550 5.1.1 no such user", false), "5.1.1");
        assert_eq!(status_of("554 go away", false), "5.0.0");
        assert_eq!(status_of("451 4.3.0 later", true), "4.4.7");
    }

    #[test]
    fn report_parses_as_multipart_report() {
        let dsn = build(
            "mx.sandbox.test",
            "sandbox.test",
            "alice@sandbox.test",
            1_700_000_000,
            &[Failure {
                rcpt: "bob@example.org",
                diagnostic: "550 5.1.1 <bob@example.org>: no such user",
                expired: false,
                remote_mta: Some("mx.example.org"),
            }],
            b"From: alice@sandbox.test\r\nSubject: hi\r\n\r\nsecret body\r\n",
        );
        let text = String::from_utf8(dsn.clone()).unwrap();
        assert!(text.contains("Status: 5.1.1\r\n"));
        assert!(text.contains("Subject: hi\r\n"));
        assert!(!text.contains("secret body"), "only the header goes back");
        let parsed = mail_parser::MessageParser::new().parse(&dsn).unwrap();
        assert_eq!(parsed.parts.len(), 4, "multipart with three parts");
        assert_eq!(
            parsed.subject(),
            Some("Undelivered mail to bob@example.org")
        );
    }

    #[test]
    fn one_report_names_every_failed_recipient() {
        let dsn = build(
            "mx.sandbox.test",
            "sandbox.test",
            "alice@sandbox.test",
            1_700_000_000,
            &[
                Failure {
                    rcpt: "bob@example.org",
                    diagnostic: "550 5.1.1 no such user",
                    expired: false,
                    remote_mta: Some("mx.example.org"),
                },
                Failure {
                    rcpt: "carol@example.org",
                    diagnostic: "451 4.3.0 try\r\nlater",
                    expired: true,
                    remote_mta: None,
                },
            ],
            b"From: alice@sandbox.test\r\nSubject: hi\r\n\r\nbody\r\n",
        );
        let text = String::from_utf8(dsn.clone()).unwrap();
        let status = text
            .split("Content-Type: message/delivery-status\r\n\r\n")
            .nth(1)
            .and_then(|rest| rest.split("\r\n--").next())
            .unwrap();
        // RFC 3464 §2.1: per-message fields, then one group per recipient.
        let groups: Vec<&str> = status.split("\r\n\r\n").collect();
        assert_eq!(groups.len(), 3, "{status}");
        assert!(groups[0].starts_with("Reporting-MTA: dns; mx.sandbox.test"));
        assert!(groups[1].contains(
            "Final-Recipient: rfc822; bob@example.org\r\nAction: failed\r\nStatus: 5.1.1"
        ));
        assert!(groups[1].contains("Remote-MTA: dns; mx.example.org"));
        assert!(groups[2].contains(
            "Final-Recipient: rfc822; carol@example.org\r\nAction: failed\r\nStatus: 4.4.7"
        ));
        assert!(groups[2].contains("Diagnostic-Code: smtp; 451 4.3.0 try  later"));
        let parsed = mail_parser::MessageParser::new().parse(&dsn).unwrap();
        assert_eq!(parsed.subject(), Some("Undelivered mail to 2 recipients"));
    }
}
