//! Newtypes for the names the system passes around, so that an address, a node's
//! key and a queue id can't be mixed up.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a string is not a usable mailbox address.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddressError {
    #[error("address has no '@'")]
    NoAt,
    #[error("address has an empty local part or domain")]
    Empty,
    #[error("address is longer than 254 octets (RFC 5321 section 4.5.3.1.3)")]
    TooLong,
    #[error("address holds a character that is not allowed: {0:?}")]
    BadChar(char),
}

/// A mailbox address `local@domain`, with the domain in lower case.
///
/// The local part keeps its case (RFC 5321 section 2.4 says it may be case
/// sensitive), but lookups on the relay use [`Address::canonical`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Address(String);

impl Address {
    /// Parses an address as it appears in `MAIL FROM`/`RCPT TO` (without the angle
    /// brackets). Quoted local parts, source routes and address literals are refused:
    /// the relay only hosts plain dot-atom addresses.
    pub fn parse(s: &str) -> Result<Self, AddressError> {
        if s.len() > 254 {
            return Err(AddressError::TooLong);
        }
        let (local, domain) = s.rsplit_once('@').ok_or(AddressError::NoAt)?;
        let domain = domain.strip_suffix('.').unwrap_or(domain);
        if local.is_empty()
            || domain.is_empty()
            || domain.starts_with('.')
            || domain.ends_with('.')
            || domain.contains("..")
        {
            return Err(AddressError::Empty);
        }
        for c in local.chars().chain(domain.chars()) {
            if c.is_control()
                || c.is_whitespace()
                || matches!(
                    c,
                    '<' | '>' | '"' | '\\' | '@' | ',' | ';' | ':' | '[' | ']' | '(' | ')'
                )
            {
                return Err(AddressError::BadChar(c));
            }
        }
        Ok(Address(format!("{local}@{}", domain.to_ascii_lowercase())))
    }

    /// The lookup key: the whole address in lower case.
    pub fn canonical(&self) -> String {
        self.0.to_lowercase()
    }

    pub fn local_part(&self) -> &str {
        self.0.rsplit_once('@').map(|(l, _)| l).unwrap_or(&self.0)
    }

    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map(|(_, d)| d).unwrap_or("")
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A home node's tunnel identity: its Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeKey(pub [u8; 32]);

impl NodeKey {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        let bytes = hex::decode(s).ok()?;
        Some(NodeKey(bytes.try_into().ok()?))
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKey({})", self.to_hex())
    }
}

impl fmt::Display for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The id of one message in the relay's spool; it travels with the message to the
/// node, which uses it to drop a redelivered duplicate.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct QueueId(pub String);

impl QueueId {
    /// A new id: time-ordered (milliseconds since the epoch) with 64 random bits, so
    /// that ids sort in arrival order and never collide across relay instances.
    pub fn generate() -> Self {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        QueueId(format!("{millis:013x}{:016x}", rand::random::<u64>()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An OpenPGP fingerprint, upper-case hex as GnuPG prints it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fingerprint(pub String);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_parsing() {
        let a = Address::parse("Alice@Sandbox.TEST").unwrap();
        assert_eq!(a.as_str(), "Alice@sandbox.test");
        assert_eq!(a.canonical(), "alice@sandbox.test");
        assert_eq!(a.domain(), "sandbox.test");
        assert_eq!(Address::parse("nobody"), Err(AddressError::NoAt));
        assert_eq!(Address::parse("@x.test"), Err(AddressError::Empty));
        assert_eq!(Address::parse("a@."), Err(AddressError::Empty));
        assert_eq!(Address::parse("a@...."), Err(AddressError::Empty));
        assert_eq!(Address::parse("a@x..test"), Err(AddressError::Empty));
        assert_eq!(Address::parse("a@x.test.."), Err(AddressError::Empty));
        assert_eq!(Address::parse("a@x.test.").unwrap().as_str(), "a@x.test");
        assert!(Address::parse("a\"b@x.test").is_err());
        assert!(Address::parse("a@[127.0.0.1]").is_err());
        assert!(Address::parse(&format!("{}@x.test", "a".repeat(260))).is_err());
    }

    #[test]
    fn queue_ids_sort_by_time_and_differ() {
        let a = QueueId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = QueueId::generate();
        assert!(a < b);
        assert_ne!(a, b);
    }
}
