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
pub mod server_timing;
mod workflow_management;

use std::sync::Arc;

use axum::extract::RawQuery;
use axum::response::Response;
use axum::routing::{get, options};
use axum::Router;

use crate::error::ApiError;
use crate::state::AppState;

pub use inference::{description_routes as inference_description, routes as inference_routes};
pub use management::{description_routes as management_description, routes as management_routes};
pub use metrics::{count_responses, router as metrics_router};

/// The router of one HTTP listener serving `routes`.
pub fn listener_router(routes: Router<Arc<AppState>>, state: Arc<AppState>) -> Router {
    with_fallbacks(routes).with_state(state)
}

/// What a listener shared by the inference and management APIs serves besides their routes
/// (KServe's configuration puts both on one address): TorchServe's description of both at `/`
/// and `/api-description`, and the metrics at `/metrics`, as TorchServe's shared listener has.
pub fn shared_listener_routes() -> Router<Arc<AppState>> {
    async fn description(RawQuery(raw): RawQuery) -> Response {
        openapi::answer(openapi::inference_and_management(query::full(
            raw.as_deref(),
        )))
    }
    Router::new()
        .route("/", options(description))
        .route("/api-description", get(description))
        .merge(metrics::routes())
}

/// Adds TorchServe's JSON answers for unknown paths and wrong methods.
fn with_fallbacks(router: Router<Arc<AppState>>) -> Router<Arc<AppState>> {
    router
        .fallback(|| async { ApiError::resource_not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
}
