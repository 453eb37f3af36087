//! The Own-Mailbox home node: keeps the keys and the mail, dials out to the relay.

pub mod access;
pub mod config;
pub mod control;
pub mod imap;
pub mod keys;
pub mod node;
pub mod passthrough;
pub mod pop3;
pub mod store;
pub mod submission;
pub mod tunnel;
