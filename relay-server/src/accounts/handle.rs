//! Account handles: what a person may call their account.
//!
//! A handle is the local part of `HANDLE@DOMAIN` and a DNS label of its own
//! (`HANDLE.DOMAIN` carries the account's aliases, MX, DKIM and passthrough
//! names), so the rules are those of an LDH label (RFC 1035 section 2.3.1,
//! RFC 5890 section 2.3.1), made stricter for people reading addresses:
//!
//! - 3 to 32 characters (`MIN_LEN`, `MAX_LEN`): short enough to type and to
//!   leave room under the 63-octet label limit, long enough that the short
//!   names are not all taken by the first signups;
//! - ASCII letters (folded to lower case), digits and hyphens;
//! - no hyphen at the start or end, no two in a row (this also keeps out
//!   IDNA A-labels such as `xn--…`, RFC 5891 section 4.2.3.1);
//! - at least one letter (an all-digit label reads like a number or an address);
//! - not a reserved name (role addresses of RFC 2142, the relay's own host
//!   names), nor a look-alike of one.
//!
//! Look-alikes: [`skeleton`] maps a handle to the shape a reader sees
//! (`0`→`o`, `1`/`i`→`l`, `rn`→`m`, `vv`→`w`, hyphens dropped, …), in the spirit
//! of the confusable skeletons of Unicode TS #39 section 4 restricted to ASCII.
//! Two handles with one skeleton are look-alikes; the store keeps each
//! account's skeleton in an indexed column and refuses a signup whose skeleton
//! is taken.

use std::fmt;

/// Fewest characters in a handle.
pub const MIN_LEN: usize = 3;
/// Most characters in a handle.
pub const MAX_LEN: usize = 32;

/// Names no signup may take (nor a look-alike of): role mailboxes (RFC 2142),
/// the relay's service host names, and names people trust by reflex.
pub const RESERVED: &[&str] = &[
    // RFC 2142 and RFC 5321 section 4.5.1
    "postmaster",
    "abuse",
    "hostmaster",
    "webmaster",
    "security",
    "noc",
    "info",
    "marketing",
    "sales",
    "support",
    "usenet",
    "news",
    "uucp",
    "ftp",
    "www",
    // operators
    "admin",
    "administrator",
    "root",
    "sysadmin",
    "operator",
    "staff",
    "team",
    "owner",
    "system",
    "daemon",
    "nobody",
    "billing",
    "help",
    "contact",
    "legal",
    "privacy",
    "dmca",
    "official",
    "ownmailbox",
    "own-mailbox",
    "omb",
    // service host names under the relay's domain
    "mail",
    "mx",
    "ns",
    "ns1",
    "ns2",
    "ns3",
    "ns4",
    "dns",
    "smtp",
    "imap",
    "imaps",
    "pop",
    "pop3",
    "pop3s",
    "submission",
    "mta-sts",
    "autoconfig",
    "autodiscover",
    "openpgpkey",
    "relay",
    "tunnel",
    "api",
    "web",
    "webmail",
    "status",
    "static",
    "localhost",
    // addresses that must never reply or be replied to
    "noreply",
    "no-reply",
    "donotreply",
    "do-not-reply",
    "mailer-daemon",
    "bounce",
    "bounces",
];

/// A valid handle, in lower case.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Handle(String);

/// Why a handle was refused; each says what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    #[error("a handle has {MIN_LEN} to {MAX_LEN} characters, and {0:?} has {1}: choose a handle of that length")]
    Length(String, usize),
    #[error("a handle may contain only the letters a-z, digits and hyphens, not {0:?}")]
    Character(char),
    #[error("a handle cannot start or end with a hyphen: remove it or move it inside")]
    EdgeHyphen,
    #[error("a handle cannot contain two hyphens in a row: use one")]
    DoubleHyphen,
    #[error("a handle needs at least one letter: {0:?} is all digits")]
    AllDigits(String),
    #[error("{}", reserved_message(handle, reserved))]
    Reserved {
        handle: String,
        reserved: &'static str,
    },
}

fn reserved_message(handle: &str, reserved: &str) -> String {
    if handle == reserved {
        format!("{handle:?} is reserved: choose another handle")
    } else {
        format!("{handle:?} reads like the reserved name {reserved:?}: choose another handle")
    }
}

impl HandleError {
    /// A short machine-readable code, for the API.
    pub fn code(&self) -> &'static str {
        match self {
            HandleError::Reserved { .. } => "handle_reserved",
            _ => "handle_invalid",
        }
    }
}

impl Handle {
    /// The syntax rules every handle meets (it is a DNS label). Reserved names
    /// pass: the operator may create them; signups use [`Handle::parse_for_signup`].
    pub fn parse(input: &str) -> Result<Handle, HandleError> {
        let handle = input.trim().to_ascii_lowercase();
        let len = handle.chars().count();
        if !(MIN_LEN..=MAX_LEN).contains(&len) {
            return Err(HandleError::Length(handle, len));
        }
        if let Some(c) = handle
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(HandleError::Character(c));
        }
        if handle.starts_with('-') || handle.ends_with('-') {
            return Err(HandleError::EdgeHyphen);
        }
        if handle.contains("--") {
            return Err(HandleError::DoubleHyphen);
        }
        if handle.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
            return Err(HandleError::AllDigits(handle));
        }
        Ok(Handle(handle))
    }

    /// The syntax rules and no reserved name, nor a look-alike of one.
    pub fn parse_for_signup(input: &str) -> Result<Handle, HandleError> {
        let handle = Handle::parse(input)?;
        if let Some(reserved) = reserved_as(&handle.0) {
            return Err(HandleError::Reserved {
                handle: handle.0,
                reserved,
            });
        }
        Ok(handle)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// This handle's look-alike skeleton (see [`skeleton`]).
    pub fn skeleton(&self) -> String {
        skeleton(&self.0)
    }
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The reserved name `handle` is, or looks like.
pub fn reserved_as(handle: &str) -> Option<&'static str> {
    let shape = skeleton(handle);
    RESERVED
        .iter()
        .find(|r| **r == handle || skeleton(r) == shape)
        .copied()
}

/// The shape of `handle` as a reader sees it: two handles with the same
/// skeleton are easily mistaken for each other in a mail app's font.
///
/// Hyphens are dropped; digits and letters that look alike fold into one
/// (`0`→`o`, `1` `i`→`l`, `5`→`s`, `8` `6`→`b`, `2`→`z`, `9`→`g`); then letter
/// pairs that read as one letter fold (`rn`→`m`, `vv`→`w`, `cl`→`d`). So
/// `a1ice`, `aiice`, `al-ice` and `alice` are one; `allice` is not (a typo,
/// not a look-alike).
pub fn skeleton(handle: &str) -> String {
    let folded: String = handle
        .chars()
        .filter(|c| *c != '-' && *c != '_' && *c != '.')
        .map(|c| match c.to_ascii_lowercase() {
            '0' => 'o',
            '1' | 'i' => 'l',
            '5' => 's',
            '8' | '6' => 'b',
            '2' => 'z',
            '9' => 'g',
            other => other,
        })
        .collect();
    folded
        .replace("rn", "m")
        .replace("vv", "w")
        .replace("cl", "d")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> String {
        match Handle::parse_for_signup(s) {
            Ok(h) => h.as_str().to_string(),
            Err(e) => panic!("{s:?} refused: {e}"),
        }
    }

    fn err(s: &str) -> HandleError {
        match Handle::parse_for_signup(s) {
            Ok(h) => panic!("{s:?} accepted as {h}"),
            Err(e) => e,
        }
    }

    #[test]
    fn good_handles_are_lower_cased() {
        assert_eq!(ok("Alice"), "alice");
        assert_eq!(ok("  bob  "), "bob");
        assert_eq!(ok("jean-luc"), "jean-luc");
        assert_eq!(ok("r2d2"), "r2d2");
        assert_eq!(ok("abc"), "abc");
        assert_eq!(ok(&"a".repeat(MAX_LEN)), "a".repeat(MAX_LEN));
    }

    #[test]
    fn syntax_is_checked() {
        assert_eq!(err("ab"), HandleError::Length("ab".into(), 2));
        assert!(matches!(
            err(&"a".repeat(MAX_LEN + 1)),
            HandleError::Length(_, 33)
        ));
        assert!(matches!(err(""), HandleError::Length(_, 0)));
        assert_eq!(err("al.ice"), HandleError::Character('.'));
        assert_eq!(err("al_ice"), HandleError::Character('_'));
        assert_eq!(err("alice@x"), HandleError::Character('@'));
        assert_eq!(err("al ice"), HandleError::Character(' '));
        assert_eq!(err("élise"), HandleError::Character('é'));
        assert_eq!(err("-alice"), HandleError::EdgeHyphen);
        assert_eq!(err("alice-"), HandleError::EdgeHyphen);
        assert_eq!(err("al--ice"), HandleError::DoubleHyphen);
        assert_eq!(err("xn--lice-9qa"), HandleError::DoubleHyphen);
        assert_eq!(err("12345"), HandleError::AllDigits("12345".into()));
        assert_eq!(err("12-34"), HandleError::AllDigits("12-34".into()));
    }

    #[test]
    fn reserved_names_and_their_look_alikes_are_refused() {
        for name in [
            "postmaster",
            "Abuse",
            "ADMIN",
            "root",
            "mta-sts",
            "no-reply",
        ] {
            assert_eq!(err(name).code(), "handle_reserved", "{name}");
        }
        for (name, reads_as) in [
            ("p0stmaster", "postmaster"),
            ("adm1n", "admin"),
            ("abu5e", "abuse"),
            ("post-master", "postmaster"),
            ("noreply", "noreply"),
            ("n0-rep1y", "noreply"),
            ("rn-x", "mx"),
        ] {
            match err(name) {
                HandleError::Reserved { reserved, .. } => {
                    assert_eq!(skeleton(reserved), skeleton(reads_as), "{name}")
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        // The operator may still create them.
        assert_eq!(
            Handle::parse("postmaster").map(|h| h.0),
            Ok("postmaster".into())
        );
    }

    #[test]
    fn look_alikes_share_a_skeleton() {
        let same = [
            ("alice", "a1ice"),
            ("alice", "aiice"),
            ("alice", "al-ice"),
            ("bob", "b0b"),
            ("bob", "8ob"),
            ("modern", "rnodern"),
            ("william", "vvilliam"),
            ("dan", "clan"),
            ("sam", "5am"),
            ("paul", "pau1"),
        ];
        for (a, b) in same {
            assert_eq!(skeleton(a), skeleton(b), "{a} vs {b}");
        }
        let different = [
            ("alice", "alicia"),
            ("alice", "allice"),
            ("bob", "rob"),
            ("dan", "dean"),
            ("mark", "marc"),
            ("matt", "mat"),
        ];
        for (a, b) in different {
            assert_ne!(skeleton(a), skeleton(b), "{a} vs {b}");
        }
    }

    #[test]
    fn errors_say_what_to_do() {
        assert!(err("ab").to_string().contains("3 to 32"));
        assert_eq!(
            err("admin").to_string(),
            "\"admin\" is reserved: choose another handle"
        );
        assert_eq!(
            err("adm1n").to_string(),
            "\"adm1n\" reads like the reserved name \"admin\": choose another handle"
        );
    }
}
