//! The relay's web front (HTTP, axum). For now it serves what mail apps need
//! to configure themselves from an address alone; signup, domains and WKD
//! come with the accounts API.

mod autoconfig;

pub use autoconfig::ClientSettings;

use crate::store::Store;
use axum::Router;
use std::sync::Arc;

/// What the handlers share.
pub struct WebContext {
    pub store: Store,
    pub clients: ClientSettings,
}

/// The relay's routes.
pub fn router(ctx: Arc<WebContext>) -> Router {
    autoconfig::routes().with_state(ctx)
}

/// Serves `router` on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, ctx: Arc<WebContext>) {
    if let Err(e) = axum::serve(listener, router(ctx)).await {
        tracing::error!(error = %e, "the web server stopped");
    }
}
