//! The relay's web front (HTTP, axum). For now it serves what mail apps need
//! to configure themselves from an address alone; signup, domains and WKD
//! come with the accounts API.

mod autoconfig;
mod domains;

pub use autoconfig::ClientSettings;
pub use domains::check_domain_name;

use crate::domains::Domains;
use crate::store::Store;
use axum::Router;
use std::sync::Arc;

/// What the handlers share.
pub struct WebContext {
    pub store: Store,
    pub clients: ClientSettings,
    pub domains: Domains,
}

/// The relay's routes.
pub fn router(ctx: Arc<WebContext>) -> Router {
    autoconfig::routes()
        .merge(domains::routes())
        .with_state(ctx)
}

/// Serves `router` on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, ctx: Arc<WebContext>) {
    if let Err(e) = axum::serve(listener, router(ctx)).await {
        tracing::error!(error = %e, "the web server stopped");
    }
}
