//! Decrypting a stored message with its kept session key
//! (`omb_shared::pgp::decrypt_bytes_with`): the node's quick path for the
//! relay's layout (`shared/src/pgp/seipd.rs`, a packet parser of its own) and
//! sequoia behind it, on arbitrary bytes.
//!
//! Invariant checked: never panics, whatever the bytes (packet headers,
//! partial body lengths, lengths past the end, nested packets). What it
//! gives back is not checked: sequoia reads an unencrypted message too, and
//! the node only ever stores messages it encrypted itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use omb_shared::pgp::{self, MessageKey};
use sequoia_openpgp::Cert;
use std::sync::OnceLock;

fn keys() -> &'static (Cert, MessageKey) {
    static KEYS: OnceLock<(Cert, MessageKey)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let cert = pgp::generate_cert(&["<fuzz@example.org>".into()]).expect("a key");
        let (_, key) = pgp::encrypt_whole_message_keyed(&cert, b"Subject: seed\r\n\r\nx\r\n")
            .expect("a message");
        (cert, key)
    })
}

fuzz_target!(|data: &[u8]| {
    let (cert, key) = keys();
    let _ = pgp::decrypt_bytes_with(cert, data, Some(key));
});
