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

pub use inference::router as inference_router;
pub use management::router as management_router;
pub use metrics::{count_responses, router as metrics_router};

/// Adds TorchServe's JSON answers for unknown paths and wrong methods.
fn with_fallbacks(router: Router<Arc<AppState>>) -> Router<Arc<AppState>> {
    router
        .fallback(|| async { ApiError::resource_not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
}
