//! End-to-end test support and the sandbox.

pub mod apps;
pub mod harness;
pub mod netns;
pub mod sandbox;
