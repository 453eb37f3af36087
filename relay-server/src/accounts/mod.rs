//! Accounts as people sign up for them: the rules for handles (`handle`), the
//! proof of work a signup costs (`pow`) and the per-client signup limit
//! (`limit`). The SQL is in `store`; the HTTP API in `web::api`.

pub mod handle;
pub mod limit;
pub mod pow;

pub use handle::{Handle, HandleError};
