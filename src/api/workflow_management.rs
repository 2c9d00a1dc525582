//! Workflow management API: register, list, describe, scale, update, set-default and
//! unregister workflows and their versions. Each handler decodes the request, makes one call
//! to [`facade::workflows`] and encodes its answer.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;

use super::path::Path;
use super::query;
use super::replies::{self, gate_first, status};
use crate::error::ApiResult;
use crate::facade::{workflows, Scale};
use crate::state::AppState;
use crate::workflow::WorkflowOptions;

/// Workflow routes, merged into the management listener.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/workflows", get(list).post(register))
        .route(
            "/workflows/{name}",
            get(describe).put(scale_or_update).delete(unregister),
        )
        .route(
            "/workflows/{name}/{version}",
            get(describe_version)
                .put(scale_version)
                .delete(unregister_version),
        )
        .route("/workflows/{name}/{version}/set-default", put(set_default))
}

async fn register(
    State(state): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let opts: WorkflowOptions = gate_first(&state, query::parse(raw.as_deref()))?;
    Ok(status(workflows::register(&state, opts).await?))
}

async fn list(
    State(state): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    Ok(Json(workflows::list(
        &state,
        query::parse(raw.as_deref())?,
    )?))
}

async fn describe(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(workflows::describe(&state, &name, None)?.into()))
}

async fn describe_version(
    State(state): State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        workflows::describe(&state, &name, Some(&version))?.into(),
    ))
}

/// Query of `PUT /workflows/{name}`: `url` updates to a new archive, otherwise it scales.
#[derive(Deserialize)]
struct PutQuery {
    url: Option<String>,
    node: Option<String>,
    min_worker: Option<usize>,
    max_worker: Option<usize>,
    #[serde(default)]
    synchronous: bool,
}

/// `PUT /workflows/{name}`: an update when the query names a `url`, else a scale. A query
/// that does not decode may have meant an update, so the model-API gate answers it first.
async fn scale_or_update(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let q: PutQuery = gate_first(&state, query::parse(raw.as_deref()))?;
    if let Some(url) = q.url {
        return Ok(status(workflows::update(&state, &name, url).await?).into_response());
    }
    scale(&state, &name, None, q).await
}

async fn scale_version(
    State(state): State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    scale(&state, &name, Some(&version), query::parse(raw.as_deref())?).await
}

async fn scale(
    state: &AppState,
    name: &str,
    version: Option<&str>,
    q: PutQuery,
) -> ApiResult<Response> {
    let scale = Scale {
        min_worker: q.min_worker,
        max_worker: q.max_worker,
        synchronous: q.synchronous,
    };
    let scaled = workflows::scale(state, name, version, q.node.as_deref(), scale).await?;
    Ok(replies::scaled(scaled))
}

async fn unregister(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(status(workflows::unregister(&state, &name, None).await?))
}

async fn unregister_version(
    State(state): State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    Ok(status(
        workflows::unregister(&state, &name, Some(&version)).await?,
    ))
}

async fn set_default(
    State(state): State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    Ok(status(
        workflows::set_default(&state, &name, &version).await?,
    ))
}
