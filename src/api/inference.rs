//! Inference API: `/ping`, `/predictions/{model}[/{version}]` and the API description.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, options, post};
use axum::{Json, Router};
use serde_json::json;

use super::path::Path;
use super::{openapi, with_fallbacks};
use crate::error::ApiResult;
use crate::request::{into_http, read_request};
use crate::state::AppState;

/// Routes of the inference listener.
pub fn router(state: Arc<AppState>) -> Router {
    with_fallbacks(
        Router::new()
            .route("/", options(description))
            .route("/api-description", get(description))
            .route("/ping", get(ping))
            .route("/predictions/{model}", post(predict))
            .route("/predictions/{model}/{version}", post(predict_version))
            .route("/wfpredict/{workflow}", post(workflow_predict))
            .route(
                "/wfpredict/{workflow}/{version}",
                post(workflow_predict_version),
            ),
    )
    .with_state(state)
}

async fn description() -> impl IntoResponse {
    Json(openapi::inference())
}

/// 200 Healthy once start-up loading is done and every model has its minimum workers ready,
/// else 500 Unhealthy, as TorchServe answers.
async fn ping(State(state): State<Arc<AppState>>) -> Response {
    if state.healthy() {
        Json(json!({"status": "Healthy"})).into_response()
    } else {
        let body = Json(json!({"status": "Unhealthy"}));
        (StatusCode::INTERNAL_SERVER_ERROR, body).into_response()
    }
}

async fn predict(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    run(&state, &model, None, headers, body).await
}

async fn predict_version(
    State(state): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    run(&state, &model, Some(&version), headers, body).await
}

async fn run(
    state: &AppState,
    model: &str,
    version: Option<&str>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let model = state.registry.get(model, version)?;
    let request = read_request(
        &headers,
        body,
        state.config.max_request_size,
        state.config.connection_idle_timeout,
    )
    .await?;
    let output = model.submit(request, version.is_some()).await?;
    Ok(into_http(output))
}

async fn workflow_predict(
    State(state): State<Arc<AppState>>,
    Path(workflow): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    run_workflow(&state, &workflow, None, headers, body).await
}

async fn workflow_predict_version(
    State(state): State<Arc<AppState>>,
    Path((workflow, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    run_workflow(&state, &workflow, Some(&version), headers, body).await
}

async fn run_workflow(
    state: &AppState,
    workflow: &str,
    version: Option<&str>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let workflow = state.workflows.get(workflow, version)?;
    let request = read_request(
        &headers,
        body,
        state.config.max_request_size,
        state.config.connection_idle_timeout,
    )
    .await?;
    let output = crate::workflow::execute(&workflow, request).await?;
    Ok(into_http(output))
}
