//! Model management API: register, scale, describe, list, unregister, set-default.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{MatchedPath, Request};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, options, put};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

use super::path::Path;
use super::replies::{self, status, worker_bounds};
use super::{openapi, query, with_fallbacks};
use crate::error::{ApiError, ApiResult};
use crate::job::InferenceRequest;
use crate::model::{register_archive, RegisterOptions, ServedModel};
use crate::snapshot::RecordKind;
use crate::state::AppState;
use crate::versioned::Versioned;

/// Routes of the management listener.
pub fn router(state: Arc<AppState>) -> Router {
    with_fallbacks(
        Router::new()
            .route("/", options(description))
            .route("/api-description", get(description))
            .route("/models", get(list).post(register))
            .route(
                "/models/{name}",
                get(describe)
                    .put(scale)
                    .delete(unregister)
                    .options(model_description),
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

/// TorchServe's document; with `?full=true` torchyard's further endpoints too.
async fn description(RawQuery(raw): RawQuery) -> Response {
    let full = raw.is_some_and(|q| q.split('&').any(|pair| pair == "full=true"));
    openapi::answer(openapi::management(full))
}

/// `OPTIONS /models/{name}`: the management operations on that model.
async fn model_description(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    state.registry.get(&name, None)?;
    Ok(openapi::answer(openapi::model_management(&name)))
}

/// `POST /models`: the options come from the query, or from a JSON body (TorchServe reads
/// one leniently: single quotes and quoted numbers are fine).
async fn register(
    State(state): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    let opts: RegisterOptions = if json_body && !body.is_empty() {
        query::parse(Some(&query::json_as_query(&body)?))?
    } else {
        query::parse(raw.as_deref())?
    };
    let model = register_archive(&state, opts).await?;
    let workers = model.def.settings.min_workers;
    let hint = if workers == 0 {
        ". Use scale workers API to add workers for the model."
    } else {
        ""
    };
    Ok(status(format!(
        "Model \"{}\" Version: {} registered with {workers} initial workers{hint}",
        model.def.name, model.def.version
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
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    describe_models(&state, &name, None, raw.as_deref()).await
}

async fn describe_version(
    State(state): State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    describe_models(&state, &name, Some(&version), raw.as_deref()).await
}

/// Query of the describe API.
#[derive(Deserialize)]
struct DescribeQuery {
    #[serde(default)]
    customized: bool,
}

/// Describes models; with `customized=true` each entry also holds `customizedMetadata`, what
/// the handler answers to a request flagged `describe: True` (TorchServe's `describe_handle`).
async fn describe_models(
    state: &AppState,
    name: &str,
    version: Option<&str>,
    raw: Option<&str>,
) -> ApiResult<Json<Value>> {
    let q: DescribeQuery = query::parse(raw)?;
    let models = replies::described(&state.registry, name, version)?;
    state.gpus.refresh_usage().await;
    let mut described = Vec::with_capacity(models.len());
    for model in models {
        let mut entry = model.describe();
        if q.customized {
            entry["customizedMetadata"] = customized_metadata(&model).await?;
        }
        described.push(entry);
    }
    Ok(Json(Value::Array(described)))
}

/// The handler's answer to a describe request, as JSON when it is JSON.
async fn customized_metadata(model: &ServedModel) -> ApiResult<Value> {
    let request = InferenceRequest {
        id: uuid::Uuid::new_v4().to_string(),
        headers: vec![("describe".into(), "True".into())],
        params: Vec::new(),
    };
    let output = model.submit(request, false).await?;
    Ok(serde_json::from_slice(&output.body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&output.body).into_owned())))
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
    let what = match version {
        Some(version) => format!("model: {name}, version: {version}"),
        None => format!("model: {name}"),
    };
    Ok(replies::scaled(q.synchronous, min, &what))
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
    unregister_model(state, name, None).await
}

async fn unregister_version(
    State(state): State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    unregister_model(state, name, Some(version)).await
}

/// Unregisters a model version (the default when `version` is None) and waits at most
/// `unregister_model_timeout` for its workers to stop: after that it answers TorchServe's 408
/// while the stopping finishes in the background.
async fn unregister_model(
    state: Arc<AppState>,
    name: String,
    version: Option<String>,
) -> ApiResult<Json<Value>> {
    check_not_node(&state, &name, version.as_deref())?;
    let limit = state.config.unregister_model_timeout;
    let unregistering = {
        let name = name.clone();
        tokio::spawn(async move { state.unregister_model(&name, version.as_deref()).await })
    };
    match tokio::time::timeout(limit, unregistering).await {
        Ok(Ok(result)) => result.map(|_| status(format!("Model \"{name}\" unregistered"))),
        Ok(Err(e)) => Err(ApiError::internal(format!("unregistering failed: {e}"))),
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "RequestTimeoutException",
            format!("Timed out while cleaning resources: {name}"),
        )),
    }
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
