//! Code common to the Own-Mailbox relay and home node: the naming types, the
//! tunnel's wire protocol and transports, the tunnel identity, and OpenPGP helpers.

pub mod identity;
pub mod limits;
pub mod mime;
pub mod pgp;
pub mod protocol;
pub mod splice;
pub mod tls;
pub mod transport;
pub mod types;
mod wire_bytes;

/// Sets up the programs' logs: to standard error, filtered by `OMB_LOG` (e.g.
/// `info`, `omb_relay=debug`), coloured only on a terminal. Also calls
/// [`quiet_library_backtraces`]. Call first thing in `main`.
pub fn init_logging() {
    quiet_library_backtraces();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OMB_LOG")
                // hickory-server logs every DNS query at `info`.
                .unwrap_or_else(|_| "info,hickory_server=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

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
