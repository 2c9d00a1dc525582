//! Metrics API: the Prometheus text at `/metrics` (with TorchServe's `name[]` filter) and its
//! OpenAPI description at `OPTIONS /`.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, options};
use axum::{Json, Router};
use serde_json::{json, Value};
use tower::util::MapResponseLayer;

use super::{query, with_fallbacks};
use crate::metrics::Metrics;
use crate::state::AppState;

/// Routes of the metrics listener.
pub fn router(state: Arc<AppState>) -> Router {
    with_fallbacks(
        Router::new()
            .route("/", options(description))
            .merge(routes()),
    )
    .with_state(state)
}

/// The metrics themselves, at `/metrics`.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/metrics", get(metrics))
}

/// Counts every answer of `router` in TorchServe's `Requests2XX`/`4XX`/`5XX`.
pub fn count_responses(router: Router, metrics: &Metrics) -> Router {
    let counter = metrics.response_counter();
    router.layer(MapResponseLayer::new(move |response: Response| {
        counter.count(response.status());
        response
    }))
}

async fn metrics(State(state): State<Arc<AppState>>, RawQuery(raw): RawQuery) -> impl IntoResponse {
    let names: Vec<String> = query::pairs(raw.as_deref())
        .unwrap_or_default()
        .into_iter()
        .filter(|(key, _)| key == "name[]")
        .map(|(_, name)| name)
        .collect();
    for model in state.registry.all() {
        model.sample_gauges();
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(&names),
    )
}

async fn description() -> Json<Value> {
    Json(open_api())
}

/// TorchServe's description of the metrics API.
fn open_api() -> Value {
    let error = json!({
        "type": "object",
        "required": ["code", "type", "message"],
        "properties": {
            "code": {"type": "integer", "description": "Error code."},
            "type": {"type": "string", "description": "Error type."},
            "message": {"type": "string", "description": "Error message."},
        },
    });
    let text = json!({
        "type": "object",
        "required": ["# HELP", "# TYPE", "metric"],
        "properties": {
            "# HELP": {"type": "string", "description": "Help text for TorchServe metric."},
            "# TYPE": {"type": "string", "description": "Type of TorchServe metric."},
            "metric": {"type": "string", "description": "TorchServe application metric."},
        },
    });
    json!({
        "openapi": "3.0.1",
        "info": {
            "title": "TorchServe APIs",
            "description": "TorchServe is a flexible and easy to use tool for serving deep learning models",
            "version": env!("CARGO_PKG_VERSION"),
        },
        "paths": {"/metrics": {"get": {
            "description": "Get TorchServe application metrics in prometheus format.",
            "operationId": "metrics",
            "parameters": [{
                "in": "query",
                "name": "name[]",
                "description": "Names of metrics to filter",
                "required": false,
                "schema": {"type": "string"},
            }],
            "responses": {
                "200": {
                    "description": "TorchServe application metrics",
                    "content": {"text/plain; version=0.0.4; charset=utf-8": {"schema": text}},
                },
                "500": {
                    "description": "Internal Server Error",
                    "content": {"application/json": {"schema": error}},
                },
            },
        }}},
    })
}
