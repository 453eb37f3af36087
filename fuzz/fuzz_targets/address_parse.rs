//! `Address::parse` on arbitrary UTF-8.
//!
//! Invariants checked:
//! - never panics;
//! - an accepted address is stable: parsing what it displays gives it back, and
//!   its accessors agree with it (`local@domain`, domain in lower case, at most
//!   254 octets).

#![no_main]

use libfuzzer_sys::fuzz_target;
use omb_shared::types::Address;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let Ok(addr) = Address::parse(s) else { return };
    let shown = addr.to_string();
    assert_eq!(shown, addr.as_str());
    let again = Address::parse(&shown).unwrap_or_else(|e| panic!("{s:?} parsed as {shown:?}, which does not parse: {e}"));
    assert_eq!(again, addr, "{s:?} parsed as {shown:?}, which parses as {:?}", again.as_str());
    assert_eq!(format!("{}@{}", addr.local_part(), addr.domain()), shown);
    assert_eq!(addr.domain(), addr.domain().to_ascii_lowercase());
    assert!(shown.len() <= 254, "{s:?} parsed as {} octets", shown.len());
});
