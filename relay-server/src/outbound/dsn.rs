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

/// The whole DSN message, `multipart/report` (RFC 6522) with the original's
/// header (RFC 3462 `text/rfc822-headers`).
pub fn build(
    reporting_mta: &str,
    relay_domain: &str,
    sender: &str,
    arrival: i64,
    failure: &Failure<'_>,
    original: &[u8],
) -> Vec<u8> {
    let boundary = format!("omb-dsn-{}", hex::encode(rand::random::<[u8; 8]>()));
    let now = chrono::Utc::now();
    let arrival = chrono::DateTime::from_timestamp(arrival, 0).unwrap_or(now);
    let diagnostic: String = failure
        .diagnostic
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(900)
        .collect();
    let status = status_of(&diagnostic, failure.expired);
    let why = if failure.expired {
        format!(
            "could not be delivered before the relay gave up trying.\r\nThe last attempt ended with: {diagnostic}"
        )
    } else {
        format!("was refused by the recipient's mail server, which said:\r\n\r\n    {diagnostic}")
    };
    let mut m = String::new();
    let _ = write!(
        m,
        "From: Mail Delivery System <MAILER-DAEMON@{relay_domain}>\r\n\
         To: <{sender}>\r\n\
         Subject: Undelivered mail to {rcpt}\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}@{reporting_mta}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         Your message to <{rcpt}> {why}\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; {reporting_mta}\r\n\
         Arrival-Date: {arrival}\r\n\
         \r\n\
         Final-Recipient: rfc822; {rcpt}\r\n\
         Action: failed\r\n\
         Status: {status}\r\n",
        rcpt = failure.rcpt,
        date = now.to_rfc2822(),
        id = hex::encode(rand::random::<[u8; 12]>()),
        arrival = arrival.to_rfc2822(),
    );
    if let Some(mta) = failure.remote_mta {
        let _ = write!(m, "Remote-MTA: dns; {mta}\r\n");
    }
    let _ = write!(
        m,
        "Diagnostic-Code: smtp; {diagnostic}\r\n\
         Last-Attempt-Date: {}\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/rfc822-headers\r\n\
         \r\n",
        now.to_rfc2822()
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
            &Failure {
                rcpt: "bob@example.org",
                diagnostic: "550 5.1.1 <bob@example.org>: no such user",
                expired: false,
                remote_mta: Some("mx.example.org"),
            },
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
}
