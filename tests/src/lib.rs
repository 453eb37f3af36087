//! End-to-end test support and the sandbox.

pub mod apps;
pub mod harness;
pub mod http;
pub mod knot;
pub mod netns;
pub mod sandbox;
pub mod sending;
pub mod unbound;
