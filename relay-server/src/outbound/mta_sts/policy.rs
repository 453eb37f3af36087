//! MTA-STS records and policies (RFC 8461): the `_mta-sts` TXT record
//! (§3.1), the policy file (§3.2) and which MX hosts a policy allows (§4.1).
//! Pure parsing and matching, no I/O.

/// The longest policy file read (RFC 8461 §3.3 suggests 64 KiB).
pub const MAX_POLICY_BYTES: usize = 64 * 1024;

/// The longest `max_age` honoured, one year (RFC 8461 §3.2).
pub const MAX_AGE_LIMIT: u64 = 31_557_600;

/// What a sender does with a domain's MX hosts (RFC 8461 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Only matching MX hosts, only over STARTTLS with a valid certificate.
    Enforce,
    /// Deliver as without a policy, but report (here: log) what would fail.
    Testing,
    /// The domain has withdrawn its policy.
    None,
}

/// A parsed policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    /// MX patterns: a host name, or `*.` and a name (lowercase, no final dot).
    pub mx: Vec<String>,
    /// Seconds the policy may be cached, at most [`MAX_AGE_LIMIT`].
    pub max_age: u64,
}

/// Why a TXT record or a policy file is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("not an MTA-STS record (no v=STSv1 first)")]
    NotSts,
    #[error("the record has no valid id (1 to 32 letters and digits)")]
    BadId,
    #[error("policy field {0:?} is missing")]
    Missing(&'static str),
    #[error("policy field {0}: bad value {1:?}")]
    BadValue(&'static str, String),
    #[error("policy line {0:?} is not `key: value`")]
    BadLine(String),
}

/// The policy id of a `_mta-sts` TXT record (RFC 8461 §3.1):
/// `v=STSv1; id=ID;` and possibly extension fields, which are ignored.
pub fn record_id(txt: &str) -> Result<String, PolicyError> {
    let mut fields = txt.split(';').map(str::trim).filter(|f| !f.is_empty());
    if fields.next() != Some("v=STSv1") {
        return Err(PolicyError::NotSts);
    }
    let mut id = None;
    for field in fields {
        let (name, value) = field.split_once('=').ok_or(PolicyError::BadId)?;
        if name == "id" && id.is_none() {
            let ok =
                (1..=32).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_alphanumeric());
            if !ok {
                return Err(PolicyError::BadId);
            }
            id = Some(value.to_string());
        }
    }
    id.ok_or(PolicyError::BadId)
}

/// Of a name's TXT records (each given whole, its strings joined), the one
/// MTA-STS id. RFC 8461 §3.1: records not starting with `v=STSv1;` are
/// discarded; anything but exactly one valid record means no policy.
pub fn single_record_id<'a>(records: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let sts: Vec<&str> = records
        .into_iter()
        .filter(|r| r.starts_with("v=STSv1"))
        .collect();
    match sts.as_slice() {
        [one] => record_id(one).ok(),
        _ => None,
    }
}

impl Policy {
    /// Parses a policy file (RFC 8461 §3.2): `key: value` lines ended by LF or
    /// CRLF. Unknown keys are ignored; of a key other than `mx` given twice,
    /// the first counts.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let (mut version, mut mode, mut max_age) = (None, None, None);
        let mut mx = Vec::new();
        for line in text.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().is_empty() {
                continue;
            }
            let (key, value) = line
                .split_once(':')
                .ok_or_else(|| PolicyError::BadLine(line.chars().take(80).collect()))?;
            let value = value.trim_matches([' ', '\t']);
            match key {
                "version" if version.is_none() => version = Some(value),
                "mode" if mode.is_none() => mode = Some(value),
                "max_age" if max_age.is_none() => max_age = Some(value),
                "mx" => mx.push(mx_pattern(value)?),
                _ => {}
            }
        }
        match version {
            Some("STSv1") => {}
            Some(other) => return Err(PolicyError::BadValue("version", other.into())),
            None => return Err(PolicyError::Missing("version")),
        }
        let mode = match mode.ok_or(PolicyError::Missing("mode"))? {
            "enforce" => Mode::Enforce,
            "testing" => Mode::Testing,
            "none" => Mode::None,
            other => return Err(PolicyError::BadValue("mode", other.into())),
        };
        let max_age = max_age.ok_or(PolicyError::Missing("max_age"))?;
        // 1 to 10 digits (§3.2).
        let seconds = max_age
            .parse::<u64>()
            .ok()
            .filter(|_| {
                (1..=10).contains(&max_age.len()) && max_age.bytes().all(|b| b.is_ascii_digit())
            })
            .ok_or_else(|| PolicyError::BadValue("max_age", max_age.into()))?;
        if mx.is_empty() && mode != Mode::None {
            return Err(PolicyError::Missing("mx"));
        }
        Ok(Policy {
            mode,
            mx,
            max_age: seconds.min(MAX_AGE_LIMIT),
        })
    }

    /// Whether `host` (an MX host name) is allowed (RFC 8461 §4.1): equal to
    /// a pattern, or a pattern `*.REST` with `host` being one more label
    /// before `REST`. Case does not matter, nor a final dot.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(rest) => host
                    .split_once('.')
                    .is_some_and(|(first, tail)| !first.is_empty() && tail == rest),
                None => *pattern == host,
            })
    }
}

/// An `mx` value: a host name, possibly with a leading `*.` wildcard label.
fn mx_pattern(value: &str) -> Result<String, PolicyError> {
    let pattern = value.trim_end_matches('.').to_ascii_lowercase();
    let name = pattern.strip_prefix("*.").unwrap_or(&pattern);
    let valid = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if valid {
        Ok(pattern)
    } else {
        Err(PolicyError::BadValue("mx", value.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txt_records() {
        assert_eq!(
            record_id("v=STSv1; id=20160831085700Z;"),
            Ok("20160831085700Z".into())
        );
        assert_eq!(record_id("v=STSv1;id=abc"), Ok("abc".into()));
        assert_eq!(record_id("v=STSv1; ext_1=x-y; id=A1 ; "), Ok("A1".into()));
        assert_eq!(record_id("v=STSv2; id=abc;"), Err(PolicyError::NotSts));
        assert_eq!(record_id("id=abc; v=STSv1;"), Err(PolicyError::NotSts));
        assert_eq!(record_id("v=STSv1;"), Err(PolicyError::BadId));
        assert_eq!(record_id("v=STSv1; id=a-b;"), Err(PolicyError::BadId));
        assert_eq!(
            record_id(&format!("v=STSv1; id={};", "a".repeat(33))),
            Err(PolicyError::BadId)
        );
        // Only one STS record may be published; others are discarded.
        assert_eq!(
            single_record_id(["v=spf1 -all", "v=STSv1; id=x1;"]),
            Some("x1".into())
        );
        assert_eq!(
            single_record_id(["v=STSv1; id=x1;", "v=STSv1; id=x2;"]),
            None
        );
        assert_eq!(single_record_id(["v=spf1 -all"]), None);
    }

    #[test]
    fn policy_files() {
        let p = Policy::parse(
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.Example.NET.\r\nmax_age: 604800\r\n",
        )
        .unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.mx, ["mail.example.com", "*.example.net"]);
        assert_eq!(p.max_age, 604_800);
        // LF line ends, spaces, unknown keys, no final newline.
        let p = Policy::parse(
            "version:STSv1\nmode:   testing\nfoo: bar\nmx: a.b\nmax_age: 99999999999",
        )
        .err();
        assert_eq!(
            p,
            Some(PolicyError::BadValue("max_age", "99999999999".into()))
        );
        let p =
            Policy::parse("version:STSv1\nmode:   testing\nfoo: bar\nmx: a.b\nmax_age: 9999999999")
                .unwrap();
        assert_eq!((p.mode, p.max_age), (Mode::Testing, MAX_AGE_LIMIT));
        // none needs no mx.
        let p = Policy::parse("version: STSv1\nmode: none\nmax_age: 86400\n").unwrap();
        assert_eq!(p.mode, Mode::None);
        for (text, error) in [
            (
                "mode: enforce\nmx: a.b\nmax_age: 1",
                PolicyError::Missing("version"),
            ),
            (
                "version: STSv1\nmx: a.b\nmax_age: 1",
                PolicyError::Missing("mode"),
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.b",
                PolicyError::Missing("max_age"),
            ),
            (
                "version: STSv1\nmode: enforce\nmax_age: 1",
                PolicyError::Missing("mx"),
            ),
            (
                "version: STSv2\nmode: enforce\nmx: a.b\nmax_age: 1",
                PolicyError::BadValue("version", "STSv2".into()),
            ),
            (
                "version: STSv1\nmode: strict\nmx: a.b\nmax_age: 1",
                PolicyError::BadValue("mode", "strict".into()),
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.b\nmax_age: -1",
                PolicyError::BadValue("max_age", "-1".into()),
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a..b\nmax_age: 1",
                PolicyError::BadValue("mx", "a..b".into()),
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.*.b\nmax_age: 1",
                PolicyError::BadValue("mx", "a.*.b".into()),
            ),
            ("<html>", PolicyError::BadLine("<html>".into())),
        ] {
            assert_eq!(Policy::parse(text), Err(error), "{text:?}");
        }
    }

    /// What this relay serves for its own domains, it reads.
    #[test]
    fn the_relays_own_policy_parses() {
        let text = crate::web::mta_sts::policy_text("enforce", "mx.sandbox.test", 604_800);
        let p = Policy::parse(&text).unwrap();
        assert_eq!((p.mode, p.max_age), (Mode::Enforce, 604_800));
        assert!(p.allows("mx.sandbox.test"));
    }

    #[test]
    fn mx_patterns() {
        let p = Policy {
            mode: Mode::Enforce,
            mx: vec!["mail.example.com".into(), "*.example.net".into()],
            max_age: 1,
        };
        assert!(p.allows("mail.example.com"));
        assert!(p.allows("MAIL.Example.com."));
        assert!(!p.allows("mail2.example.com"));
        assert!(!p.allows("example.com"));
        // §4.1: the wildcard covers exactly one leftmost label.
        assert!(p.allows("mx1.example.net"));
        assert!(!p.allows("example.net"));
        assert!(!p.allows("a.b.example.net"));
        assert!(!p.allows(".example.net"));
        assert!(!p.allows("mx1.example.net.evil"));
    }
}
