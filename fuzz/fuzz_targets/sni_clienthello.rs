//! Feeds the relay's SNI passthrough `ClientHelloReader` (rustls's `Acceptor`
//! under a size cap) arbitrary bytes in arbitrary reads, and maps whatever name
//! comes out to a handle.
//!
//! Input layout: byte 0 picks the read sizes (as in `tunnel_frames`: low nibble
//! the largest read, a non-zero high nibble makes them vary); the rest is what
//! the client sends.
//!
//! Invariants checked:
//! - how the bytes are cut into reads changes nothing: the outcome (a name, no
//!   name, refused as not TLS, refused as too large, or still waiting) is the
//!   same as when they arrive in one read;
//! - every byte pushed is kept, unchanged, for forwarding;
//! - it never waits past `MAX_CLIENT_HELLO` bytes;
//! - a handle, when the name maps to one, is a lowercase label of the name;
//! - no panics.

#![no_main]

use libfuzzer_sys::fuzz_target;
use omb_relay::passthrough::sni::{handle_for, ClientHelloReader, HelloError, MAX_CLIENT_HELLO};

const READ_SIZES: [usize; 16] = [usize::MAX, 1, 2, 3, 5, 8, 13, 64, 100, 256, 512, 1024, 7, 17, 31, usize::MAX];

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Name(Option<String>),
    NotTls,
    TooLarge,
    Waiting,
}

/// The outcome of pushing `reads`, and the bytes pushed until it was known.
fn read(reads: impl Iterator<Item = impl AsRef<[u8]>>) -> (Outcome, Vec<u8>) {
    let mut reader = ClientHelloReader::new();
    let mut pushed = Vec::new();
    for r in reads {
        pushed.extend_from_slice(r.as_ref());
        let outcome = match reader.push(r.as_ref()) {
            Ok(None) => continue,
            Ok(Some(hello)) => Outcome::Name(hello.server_name),
            Err(HelloError::NotTls(_)) => Outcome::NotTls,
            Err(HelloError::TooLarge) => Outcome::TooLarge,
        };
        assert!(reader.push(b"x").is_err(), "a finished reader takes no more");
        assert_eq!(reader.raw(), &pushed[..], "bytes kept unchanged");
        return (outcome, pushed);
    }
    assert!(pushed.len() < MAX_CLIENT_HELLO, "waiting past the limit");
    assert_eq!(reader.into_raw(), pushed, "bytes kept unchanged");
    (Outcome::Waiting, pushed)
}

fuzz_target!(|data: &[u8]| {
    let [mode, stream @ ..] = data else { return };
    let max = READ_SIZES[usize::from(mode & 0x0f)];
    let vary = mode >> 4 != 0 && mode & 0x0f != 0;
    let mut state = u32::from(*mode);
    let mut reads = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let size = if vary {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            1 + (state >> 16) as usize % max
        } else {
            max
        };
        let (r, tail) = rest.split_at(size.min(rest.len()));
        reads.push(r);
        rest = tail;
    }

    let (cut, _) = read(reads.iter());
    let (whole, _) = read(std::iter::once(stream));
    assert_eq!(cut, whole, "the outcome depends on how the bytes were cut");

    if let Outcome::Name(Some(name)) = &cut {
        for domain in ["sandbox.test", "Sandbox.Test.", ""] {
            if let Some(handle) = handle_for(name, domain) {
                assert!(!handle.is_empty() && !handle.contains('.'));
                assert_eq!(handle, handle.to_ascii_lowercase());
                assert!(name.to_ascii_lowercase().starts_with(&format!("{handle}.")));
            }
        }
    }
    // The name mapping alone, on arbitrary text.
    if let Ok(text) = std::str::from_utf8(stream) {
        let _ = handle_for(text, "sandbox.test");
    }
});
