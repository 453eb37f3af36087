//! The Own-Mailbox home node: keeps the keys and the mail, dials out to the relay.

pub mod config;
pub mod keys;
pub mod node;
pub mod passthrough;
pub mod store;
pub mod tunnel;
