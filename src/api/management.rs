//! Model management API: register, scale, describe, list, unregister, set-default.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::response::Response;
use axum::routing::{get, options, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;

use super::path::Path;
use super::replies::{self, gate_first, status};
use super::{openapi, query};
use crate::error::ApiResult;
use crate::facade::models;
use crate::model::RegisterOptions;
use crate::request::{read_body, BodyLimits};
use crate::state::AppState;

/// Routes of the management API, without its description. Each handler decodes the request,
/// makes one call to [`facade`] (which holds the model-API gate and the snapshots) and encodes
/// its answer.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/models", get(list).post(register))
        // TorchServe splits the path on '/', so a trailing slash names the same resource.
        .route("/models/", get(list).post(register))
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
        .merge(super::workflow_management::routes())
}

/// The management API's description, at `/` and `/api-description`, for a management
/// listener of its own.
pub fn description_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", options(description))
        .route("/api-description", get(description))
}

/// TorchServe's document; with `?full=true` torchyard's further endpoints too.
async fn description(RawQuery(raw): RawQuery) -> Response {
    openapi::answer(openapi::management(query::full(raw.as_deref())))
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
/// one leniently: single quotes and quoted numbers are fine). The body is read as a
/// prediction's is, within the [`BodyLimits`].
async fn register(
    State(state): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let body = read_body(&headers, body, BodyLimits::of(&state.config)).await?;
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    let opts = if json_body && !body.is_empty() {
        query::json_as_query(&body).and_then(|q| query::parse(Some(&q)))
    } else {
        query::parse(raw.as_deref())
    };
    let opts: RegisterOptions = gate_first(&state, opts)?;
    Ok(replies::scaled(models::register(&state, opts).await?))
}

async fn list(
    State(state): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    Ok(Json(models::list(&state, query::parse(raw.as_deref())?)?))
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

async fn describe_models(
    state: &AppState,
    name: &str,
    version: Option<&str>,
    raw: Option<&str>,
) -> ApiResult<Json<Value>> {
    let q: DescribeQuery = query::parse(raw)?;
    let described = models::describe(state, name, version, q.customized).await?;
    Ok(Json(Value::Array(described)))
}

async fn scale(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let scaled = models::scale(&state, &name, None, query::parse(raw.as_deref())?).await?;
    Ok(replies::scaled(scaled))
}

async fn scale_version(
    State(state): State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let scale = query::parse(raw.as_deref())?;
    let scaled = models::scale(&state, &name, Some(&version), scale).await?;
    Ok(replies::scaled(scaled))
}

async fn unregister(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(status(models::unregister(&state, &name, None).await?))
}

async fn unregister_version(
    State(state): State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    Ok(status(
        models::unregister(&state, &name, Some(&version)).await?,
    ))
}

async fn set_default(
    State(state): State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    Ok(status(models::set_default(&state, &name, &version).await?))
}
