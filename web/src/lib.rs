//! Templates and assets (later issues).
