//! End-to-end test support and the sandbox.

pub mod harness;
pub mod netns;
pub mod sandbox;
