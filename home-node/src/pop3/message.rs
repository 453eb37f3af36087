//! How a message goes over POP3: CRLF line endings (RFC 1939 section 3), the
//! exact size that LIST and STAT announce, TOP's cut, dot-stuffing, and the
//! unique-id listing (UIDL, RFC 1939 section 7).

/// The message as RETR sends it, before dot-stuffing: every line ends in CRLF
/// (a bare LF or bare CR becomes CRLF) and the last line is terminated too, so
/// that the final `.` stands on a line of its own.
///
/// RFC 1939 section 5 (LIST): the size is that of the message "in octets",
/// counted on this form: no dot-stuffing, no termination octet.
pub fn normalize(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 2);
    let mut i = 0;
    while i < message.len() {
        match message[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if message.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The number of octets RETR sends for `message` (before dot-stuffing): what
/// LIST and STAT report.
pub fn pop3_size(message: &[u8]) -> u64 {
    normalize(message).len() as u64
}

/// TOP (RFC 1939 section 7): the header, the empty line after it, and the first
/// `lines` lines of the body, from a message already [`normalize`]d. A message
/// with no empty line is all header and comes whole.
pub fn top(normalized: &[u8], lines: u64) -> &[u8] {
    let header_end = if normalized.starts_with(b"\r\n") {
        Some(2)
    } else {
        normalized
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| p + 4)
    };
    let Some(mut end) = header_end else {
        return normalized;
    };
    let mut left = lines;
    while left > 0 && end < normalized.len() {
        end = match normalized[end..].windows(2).position(|w| w == b"\r\n") {
            Some(p) => end + p + 2,
            None => normalized.len(),
        };
        left -= 1;
    }
    &normalized[..end]
}

/// Appends `normalized` to `out` as a multi-line response body (RFC 1939
/// section 3): a line that starts with `.` gets one more, then the `.` line.
pub fn write_dot_stuffed(out: &mut Vec<u8>, normalized: &[u8]) {
    out.reserve(normalized.len() + normalized.len() / 512 + 8);
    let mut at_line_start = true;
    for &b in normalized {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !at_line_start {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

/// The unique-id listing of a message (RFC 1939 section 7: 1 to 70 characters
/// from 0x21 to 0x7E, never reused for another message of the maildrop, and the
/// same in every session).
///
/// A message delivered by the relay keeps its delivery (queue) id: lower-case
/// hex, unique in the store, and it survives anything that renumbers UIDs.
/// Any other message is named by INBOX's UIDVALIDITY and its UID, `u<V>.<UID>`,
/// which can never look like a hex queue id.
pub fn unique_id(delivery_id: Option<&str>, uidvalidity: u32, uid: u32) -> String {
    match delivery_id {
        Some(id)
            if !id.is_empty()
                && id.len() <= 70
                && id
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            id.to_string()
        }
        _ => format!("u{uidvalidity}.{uid}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_makes_crlf_everywhere_and_ends_the_last_line() {
        assert_eq!(normalize(b""), b"");
        assert_eq!(normalize(b"a\r\nb\r\n"), b"a\r\nb\r\n");
        assert_eq!(normalize(b"a\nb"), b"a\r\nb\r\n");
        assert_eq!(normalize(b"a\rb\r\r\n"), b"a\r\nb\r\n\r\n");
        assert_eq!(normalize(b"x\n\n"), b"x\r\n\r\n");
        assert_eq!(pop3_size(b"a\nb"), 6);
    }

    #[test]
    fn top_keeps_the_header_and_n_body_lines() {
        let m = b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\nl3\r\n";
        assert_eq!(top(m, 0), b"A: 1\r\nB: 2\r\n\r\n");
        assert_eq!(top(m, 2), b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\n");
        assert_eq!(top(m, 3), &m[..]);
        assert_eq!(top(m, u64::MAX), &m[..]);
        assert_eq!(top(b"A: 1\r\n", 0), b"A: 1\r\n");
        assert_eq!(top(b"\r\nbody\r\n", 0), b"\r\n");
    }

    #[test]
    fn dot_stuffing_doubles_leading_dots_and_terminates() {
        let mut out = Vec::new();
        write_dot_stuffed(&mut out, b".a\r\nb.\r\n.\r\n..\r\n");
        assert_eq!(out, b"..a\r\nb.\r\n..\r\n...\r\n.\r\n");
        let mut out = Vec::new();
        write_dot_stuffed(&mut out, b"");
        assert_eq!(out, b".\r\n");
    }

    #[test]
    fn unique_ids_use_the_delivery_id_or_uidvalidity_and_uid() {
        assert_eq!(
            unique_id(Some("0193ab0c5e2f1a2b3c4d5e6f70"), 7, 3),
            "0193ab0c5e2f1a2b3c4d5e6f70"
        );
        assert_eq!(unique_id(None, 7, 3), "u7.3");
        assert_eq!(unique_id(Some("has space"), 7, 3), "u7.3");
        assert_eq!(unique_id(Some(""), 7, 3), "u7.3");
        assert_eq!(unique_id(Some(&"a".repeat(71)), 7, 3), "u7.3");
    }
}
