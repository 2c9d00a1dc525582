//! The three HTTP listeners' routers: inference, management and metrics.

pub mod cors;
pub mod inference;
mod management;
mod metrics;
mod openapi;
pub mod path;
mod query;
mod replies;
pub mod request_id;
mod workflow_management;

use std::sync::Arc;

use axum::Router;

use crate::error::ApiError;
use crate::state::AppState;

pub use inference::routes as inference_routes;
pub use management::{description_routes as management_description, routes as management_routes};
pub use metrics::{count_responses, router as metrics_router};

/// The router of one HTTP listener serving `routes` (one API's, or the inference and management
/// APIs merged when both are configured on the same address, as KServe's configuration does).
pub fn listener_router(routes: Router<Arc<AppState>>, state: Arc<AppState>) -> Router {
    with_fallbacks(routes).with_state(state)
}

/// Adds TorchServe's JSON answers for unknown paths and wrong methods.
fn with_fallbacks(router: Router<Arc<AppState>>) -> Router<Arc<AppState>> {
    router
        .fallback(|| async { ApiError::resource_not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
}
