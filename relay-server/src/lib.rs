//! The Own-Mailbox relay: takes mail from the Internet (MX), encrypts it to its
//! owner's OpenPGP certificate before it touches disk (spool), and forwards it over
//! the tunnel to the owner's home node.

pub mod accounts;
pub mod auth;
pub mod config;
pub mod dns;
pub mod domains;
pub mod mx;
pub mod outbound;
pub mod passthrough;
pub mod server;
pub mod store;
pub mod tunnel;
pub mod web;
