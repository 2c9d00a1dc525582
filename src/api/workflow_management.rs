//! Workflow management API: register, list, describe, scale, update, set-default and
//! unregister workflows and their versions.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;

use super::path::Path;
use super::query;
use super::replies::{self, status, worker_bounds};
use crate::error::ApiResult;
use crate::state::AppState;
use crate::workflow::{
    register_workflow, scale_workflow, unregister_workflow, update_workflow, WorkflowOptions,
};

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
    let opts: WorkflowOptions = query::parse(raw.as_deref())?;
    let workflow = register_workflow(&state, opts).await?;
    Ok(status(format!(
        "Workflow {} has been registered and scaled successfully.",
        workflow.name
    )))
}

async fn list(
    State(state): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    replies::list(&state.workflows, "workflows", raw.as_deref())
}

async fn describe(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    replies::describe(&state.workflows, &name, None)
}

async fn describe_version(
    State(state): State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    replies::describe(&state.workflows, &name, Some(&version))
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

async fn scale_or_update(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let q: PutQuery = query::parse(raw.as_deref())?;
    if let Some(url) = q.url {
        let workflow = update_workflow(&state, &name, url).await?;
        return Ok(status(format!(
            "Workflow {name} updated to version {}",
            workflow.version
        ))
        .into_response());
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
    let workflow = state.workflows.get(name, version)?;
    let (min, max) = worker_bounds(
        q.min_worker,
        q.max_worker,
        state.config.max_workers_per_model,
    )?;
    scale_workflow(&workflow, q.node.as_deref(), min, max, q.synchronous).await?;
    Ok(replies::scaled(
        q.synchronous,
        min,
        &format!("workflow: {name}"),
    ))
}

async fn unregister(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    unregister_workflow(&state, &name, None).await?;
    Ok(status(format!("Workflow \"{name}\" unregistered")))
}

async fn unregister_version(
    State(state): State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    unregister_workflow(&state, &name, Some(&version)).await?;
    Ok(status(format!(
        "Workflow \"{name}\" version {version} unregistered"
    )))
}

async fn set_default(
    State(state): State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    replies::set_default(&state.workflows, &name, &version)
}
