//! Model management API: register, scale, describe, list, unregister, set-default.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{MatchedPath, Request};
use axum::extract::{RawQuery, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, options, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;

use super::path::Path;
use super::replies::{self, status, worker_bounds};
use super::{openapi, query, with_fallbacks};
use crate::error::{ApiError, ApiResult};
use crate::model::{register_archive, RegisterOptions};
use crate::snapshot::RecordKind;
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
    .route_layer(middleware::from_fn_with_state(
        state.clone(),
        snapshot_after_change,
    ))
    .route_layer(middleware::from_fn_with_state(
        state.clone(),
        model_api_gate,
    ))
    .with_state(state)
}

/// Refuses registering, updating and unregistering through the API unless the model API is
/// enabled. It runs after routing and decides on the matched route and the decoded query, as
/// the handlers see them, so no spelling of a path or parameter slips past it.
async fn model_api_gate(
    State(state): State<Arc<AppState>>,
    matched: MatchedPath,
    request: Request,
    next: Next,
) -> Response {
    if !state.config.model_api_enabled
        && changes_registrations(request.method(), matched.as_str(), request.uri().query())
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

/// Whether a request to `route` registers, updates (`PUT /workflows/{name}?url=`) or
/// unregisters a model or workflow. A query that does not decode counts as an update: the
/// handler refuses it anyway.
fn changes_registrations(method: &Method, route: &str, query: Option<&str>) -> bool {
    let managed = route.starts_with("/models") || route.starts_with("/workflows");
    match *method {
        Method::POST | Method::DELETE => managed,
        Method::PUT if route == "/workflows/{name}" => {
            query::pairs(query).is_none_or(|pairs| pairs.iter().any(|(key, _)| key == "url"))
        }
        _ => false,
    }
}

/// Writes a snapshot after every successful change made through the API, before answering.
/// Changes wait until the restore at start has finished; unregistering a name also forgets
/// its records that failed to restore (even when nothing of it is loaded to unregister).
async fn snapshot_after_change(
    State(state): State<Arc<AppState>>,
    matched: MatchedPath,
    params: Result<axum::extract::Path<HashMap<String, String>>, PathRejection>,
    request: Request,
    next: Next,
) -> Response {
    let changes = !matches!(*request.method(), Method::GET | Method::OPTIONS);
    if changes {
        state.snapshots.wait_restored().await;
    }
    // A malformed path is the handler's to refuse, with the JSON error.
    let params = params.map(|p| p.0).unwrap_or_default();
    let unregisters = (request.method() == Method::DELETE)
        .then(|| unregistered(matched.as_str(), &params))
        .flatten();
    let response = next.run(request).await;
    let forgot = unregisters
        .is_some_and(|(kind, name, version)| state.snapshots.forget_pending(kind, name, version));
    if changes && (response.status().is_success() || forgot) {
        state.snapshots.save(&state).await;
    }
    response
}

/// The kind, name and version (if any) that a DELETE of `route` with `params` unregisters.
fn unregistered<'a>(
    route: &str,
    params: &'a HashMap<String, String>,
) -> Option<(RecordKind, &'a str, Option<&'a str>)> {
    let kind = match route {
        "/models/{name}" | "/models/{name}/{version}" => RecordKind::Model,
        "/workflows/{name}" | "/workflows/{name}/{version}" => RecordKind::Workflow,
        _ => return None,
    };
    let version = params.get("version").map(String::as_str);
    Some((kind, params.get("name")?, version))
}

async fn description() -> impl IntoResponse {
    Json(openapi::management())
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

async fn list(
    State(state): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    replies::list(&state.registry, "models", raw.as_deref())
}

async fn describe(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    replies::describe(&state.registry, &name, None)
}

async fn describe_version(
    State(state): State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    replies::describe(&state.registry, &name, Some(&version))
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
    let (min, max) = worker_bounds(
        q.min_worker,
        q.max_worker,
        state.config.max_workers_per_model,
    )?;
    model.scale(min, max, q.synchronous).await?;
    Ok(replies::scaled(
        q.synchronous,
        min,
        &format!("model: {name}"),
    ))
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
    replies::set_default(&state.registry, &name, &version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_what_a_delete_unregisters() {
        let params = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let versioned = params(&[("name", "a"), ("version", "2.0")]);
        assert_eq!(
            unregistered("/models/{name}/{version}", &versioned),
            Some((RecordKind::Model, "a", Some("2.0")))
        );
        let named = params(&[("name", "w")]);
        assert_eq!(
            unregistered("/workflows/{name}", &named),
            Some((RecordKind::Workflow, "w", None))
        );
        assert_eq!(unregistered("/models", &params(&[])), None);
        assert_eq!(
            unregistered("/models/{name}/{version}/set-default", &versioned),
            None
        );
    }
}
