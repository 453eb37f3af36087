//! Code common to the Own-Mailbox relay and home node: the naming types, the
//! tunnel's wire protocol and transports, the tunnel identity, and OpenPGP helpers.

pub mod identity;
pub mod mime;
pub mod pgp;
pub mod protocol;
pub mod transport;
pub mod types;

/// Turns off backtrace capture for library errors (`anyhow`, which sequoia uses
/// for ordinary control flow) unless the operator asked for it with
/// `RUST_LIB_BACKTRACE`: with `RUST_BACKTRACE=1` in the environment every such
/// error would otherwise walk the stack (about 4 % of the relay's CPU). Panics
/// keep their backtraces. Call first thing in `main`.
pub fn quiet_library_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
}
