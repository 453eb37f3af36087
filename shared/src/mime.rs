//! Just enough of RFC 5322/2045 header reading to classify a message without
//! parsing it whole: the full parser (mail-parser) lives where messages are shown.

/// The header block of a message: everything before the first empty line.
pub fn header_block(message: &[u8]) -> &[u8] {
    let mut i = 0;
    while i < message.len() {
        let line_end = message[i..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|p| i + p + 1)
            .unwrap_or(message.len());
        let line = &message[i..line_end];
        if line == b"\r\n" || line == b"\n" {
            return &message[..i];
        }
        i = line_end;
    }
    message
}

/// The unfolded value of the first header field called `name` (case-insensitive).
pub fn header_value(message: &[u8], name: &str) -> Option<String> {
    let block = header_block(message);
    let text = String::from_utf8_lossy(block);
    let mut found: Option<String> = None;
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        if let Some(value) = found.as_mut() {
            if line.starts_with([' ', '\t']) {
                value.push(' ');
                value.push_str(line.trim());
                continue;
            }
            break;
        }
        if let Some((field, value)) = line.split_once(':') {
            if field.trim().eq_ignore_ascii_case(name) {
                found = Some(value.trim().to_string());
            }
        }
    }
    found
}

/// True when the message is already end-to-end encrypted: PGP/MIME (RFC 3156),
/// S/MIME enveloped data (RFC 8551), or an inline OpenPGP message. Such mail is
/// kept as it is.
pub fn is_encrypted(message: &[u8]) -> bool {
    if let Some(ct) = header_value(message, "Content-Type") {
        let ct = ct.to_ascii_lowercase();
        if ct.starts_with("multipart/encrypted")
            || ct.starts_with("application/pkcs7-mime")
            || ct.starts_with("application/x-pkcs7-mime")
        {
            return true;
        }
        if !ct.starts_with("text/plain") {
            return false;
        }
    }
    let body = &message[header_block(message).len()..];
    let body = body
        .strip_prefix(b"\r\n")
        .or_else(|| body.strip_prefix(b"\n"))
        .unwrap_or(body);
    body.starts_with(b"-----BEGIN PGP MESSAGE-----")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_folded_headers() {
        let m = b"Subject: hi\r\nContent-Type: multipart/encrypted;\r\n\tprotocol=\"application/pgp-encrypted\"\r\n\r\nbody\r\n";
        assert_eq!(
            header_value(m, "content-type").unwrap(),
            "multipart/encrypted; protocol=\"application/pgp-encrypted\""
        );
        assert!(is_encrypted(m));
        assert!(!is_encrypted(b"Subject: x\r\n\r\nhello\r\n"));
        assert!(is_encrypted(
            b"Subject: x\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n...\r\n"
        ));
        assert!(!is_encrypted(
            b"Content-Type: text/html\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n"
        ));
    }
}
