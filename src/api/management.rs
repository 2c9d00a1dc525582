//! Model management API: register, scale, describe, list, unregister, set-default.

use std::sync::Arc;

use axum::extract::Request;
use axum::extract::{Path, RawQuery, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, options, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{openapi, query, with_fallbacks};
use crate::error::{ApiError, ApiResult};
use crate::model::{register_archive, RegisterOptions, ServedModel};
use crate::state::AppState;

/// Routes of the management listener.
pub fn router(state: Arc<AppState>) -> Router {
    with_fallbacks(
        Router::new()
            .route("/", options(description))
            .route("/api-description", get(description))
            .route("/models", get(list).post(register))
            .route(
                "/models/{name}",
                get(describe).put(scale).delete(unregister),
            )
            .route(
                "/models/{name}/{version}",
                get(describe_version)
                    .put(scale_version)
                    .delete(unregister_version),
            )
            .route("/models/{name}/{version}/set-default", put(set_default))
            .merge(super::workflow_management::routes()),
    )
    .layer(middleware::from_fn_with_state(
        state.clone(),
        snapshot_after_change,
    ))
    .layer(middleware::from_fn_with_state(
        state.clone(),
        model_api_gate,
    ))
    .with_state(state)
}

/// Refuses registering and unregistering through the API unless the model API is enabled.
async fn model_api_gate(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let updates = request.method() == Method::PUT
        && request
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p.starts_with("url=")));
    let registers = updates || matches!(*request.method(), Method::POST | Method::DELETE);
    let path = request.uri().path();
    if registers
        && !state.config.model_api_enabled
        && (path.starts_with("/models") || path.starts_with("/workflows"))
    {
        return ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowedException",
            "The model API is disabled: start with --enable-model-api (or enable_model_api=true) to register or unregister",
        )
        .into_response();
    }
    next.run(request).await
}

/// Writes a snapshot after every successful change made through the API.
async fn snapshot_after_change(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let changes = !matches!(*request.method(), Method::GET | Method::OPTIONS);
    let response = next.run(request).await;
    if changes && response.status().is_success() {
        state.snapshots.save(&state).await;
    }
    response
}

async fn description() -> impl IntoResponse {
    Json(openapi::management())
}

fn status(message: String) -> Json<Value> {
    Json(json!({ "status": message }))
}

async fn register(
    State(state): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let opts: RegisterOptions = query::parse(raw.as_deref())?;
    let model = register_archive(&state, opts).await?;
    Ok(status(format!(
        "Model \"{}\" Version: {} registered with {} initial workers",
        model.def.name, model.def.version, model.def.settings.min_workers
    )))
}

/// Query of `GET /models`.
#[derive(Deserialize)]
struct Page {
    limit: Option<usize>,
    next_page_token: Option<usize>,
}

/// Cuts a page out of `items`: `limit` (default 100, at most 1000) items from offset
/// `next_page_token`; the token of the next page when there is one.
pub fn paginate<T>(items: Vec<T>, raw: Option<&str>) -> ApiResult<(Vec<T>, Option<String>)> {
    let page: Page = query::parse(raw)?;
    let limit = page.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    let start = page.next_page_token.unwrap_or(0).min(items.len());
    let end = (start + limit).min(items.len());
    let next = (end < items.len()).then(|| end.to_string());
    Ok((
        items.into_iter().skip(start).take(end - start).collect(),
        next,
    ))
}

async fn list(
    State(state): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let (page, next) = paginate(state.registry.list(), raw.as_deref())?;
    let models: Vec<Value> = page
        .iter()
        .map(|m| json!({"modelName": m.def.name, "modelUrl": m.def.url}))
        .collect();
    let mut body = json!({ "models": models });
    if let Some(token) = next {
        body["nextPageToken"] = json!(token);
    }
    Ok(Json(body))
}

fn describe_all(models: &[Arc<ServedModel>]) -> Json<Value> {
    Json(Value::Array(models.iter().map(|m| m.describe()).collect()))
}

async fn describe(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let model = state.registry.get(&name, None)?;
    Ok(describe_all(&[model]))
}

async fn describe_version(
    State(state): State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    if version == "all" {
        return Ok(describe_all(&state.registry.versions(&name)?));
    }
    Ok(describe_all(&[state
        .registry
        .get(&name, Some(&version))?]))
}

/// Query of the scale API.
#[derive(Deserialize)]
struct ScaleQuery {
    min_worker: Option<usize>,
    max_worker: Option<usize>,
    #[serde(default)]
    synchronous: bool,
}

async fn scale(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    scale_model(&state, &name, None, raw.as_deref()).await
}

async fn scale_version(
    State(state): State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    scale_model(&state, &name, Some(&version), raw.as_deref()).await
}

async fn scale_model(
    state: &AppState,
    name: &str,
    version: Option<&str>,
    raw: Option<&str>,
) -> ApiResult<Response> {
    let q: ScaleQuery = query::parse(raw)?;
    let model = state.registry.get(name, version)?;
    let (min, max) = worker_bounds(q.min_worker, q.max_worker)?;
    model.scale(min, max, q.synchronous).await?;
    if q.synchronous {
        Ok(status(format!("Workers scaled to {min} for model: {name}")).into_response())
    } else {
        Ok((
            StatusCode::ACCEPTED,
            status("Processing worker updates...".into()),
        )
            .into_response())
    }
}

/// Refuses to unregister a workflow's node model on its own.
fn check_not_node(state: &AppState, name: &str, version: Option<&str>) -> ApiResult<()> {
    match &state.registry.get(name, version)?.def.workflow {
        Some(workflow) => Err(ApiError::bad_request(format!(
            "Model {name} is a node of workflow {workflow}: unregister the workflow instead"
        ))),
        None => Ok(()),
    }
}

/// The worker bounds of a scale request: min defaults to 1, max to min.
pub fn worker_bounds(min: Option<usize>, max: Option<usize>) -> ApiResult<(usize, usize)> {
    let min = min.unwrap_or(1);
    let max = max.unwrap_or(min);
    if max < min {
        return Err(ApiError::bad_request(format!(
            "max_worker ({max}) cannot be less than min_worker ({min})"
        )));
    }
    Ok((min, max))
}

async fn unregister(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    check_not_node(&state, &name, None)?;
    state.unregister_model(&name, None).await?;
    Ok(status(format!("Model \"{name}\" unregistered")))
}

async fn unregister_version(
    State(state): State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    check_not_node(&state, &name, Some(&version))?;
    state.unregister_model(&name, Some(&version)).await?;
    Ok(status(format!(
        "Model \"{name}\" version {version} unregistered"
    )))
}

async fn set_default(
    State(state): State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    state.registry.set_default(&name, &version)?;
    Ok(status(format!(
        "Default version successfully updated for model \"{name}\" to \"{version}\""
    )))
}
