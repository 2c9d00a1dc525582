//! Metrics API: Prometheus text at `/metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::with_fallbacks;
use crate::state::AppState;

/// Routes of the metrics listener.
pub fn router(state: Arc<AppState>) -> Router {
    with_fallbacks(Router::new().route("/metrics", get(metrics))).with_state(state)
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    for model in state.registry.all() {
        model.sample_gauges();
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
