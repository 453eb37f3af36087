//! The MTA-STS parsers of the relay's outbound side (RFC 8461): the policy
//! file and the `_mta-sts` TXT record, on arbitrary UTF-8.
//!
//! Invariants checked:
//! - never panics;
//! - an accepted policy has `max_age` at most one year, and at least one MX
//!   pattern unless its mode is `none`; it allows each of its own plain
//!   patterns and a name one label under each wildcard, never the empty name;
//! - an accepted record id is 1 to 32 letters and digits.

#![no_main]

use libfuzzer_sys::fuzz_target;
use omb_relay::outbound::mta_sts::policy::{record_id, Mode, Policy, MAX_AGE_LIMIT};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(id) = record_id(s) {
        assert!((1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric()), "{s:?} gave id {id:?}");
    }
    let Ok(policy) = Policy::parse(s) else { return };
    assert!(policy.max_age <= MAX_AGE_LIMIT);
    assert!(policy.mode == Mode::None || !policy.mx.is_empty(), "{s:?}");
    assert!(!policy.allows(""));
    for pattern in &policy.mx {
        match pattern.strip_prefix("*.") {
            Some(rest) => assert!(policy.allows(&format!("mx.{rest}")), "{pattern}"),
            None => assert!(policy.allows(pattern), "{pattern}"),
        }
    }
});
