//! Workflow management API: register, list, describe and unregister workflows.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::management::paginate;
use super::query;
use crate::error::ApiResult;
use crate::state::AppState;
use crate::workflow::{register_workflow, unregister_workflow, WorkflowOptions};

/// Workflow routes, merged into the management listener.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/workflows", get(list).post(register))
        .route("/workflows/{name}", get(describe).delete(unregister))
}

async fn register(
    State(state): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let opts: WorkflowOptions = query::parse(raw.as_deref())?;
    let workflow = register_workflow(&state, opts).await?;
    Ok(Json(json!({
        "status": format!("Workflow {} has been registered and scaled successfully.", workflow.name)
    })))
}

async fn list(
    State(state): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let (page, next) = paginate(state.workflows.list(), raw.as_deref())?;
    let workflows: Vec<Value> = page
        .iter()
        .map(|w| json!({"workflowName": w.name, "workflowUrl": w.url}))
        .collect();
    let mut body = json!({ "workflows": workflows });
    if let Some(token) = next {
        body["nextPageToken"] = json!(token);
    }
    Ok(Json(body))
}

async fn describe(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let workflow = state.workflows.get(&name)?;
    Ok(Json(json!([workflow.describe()])))
}

async fn unregister(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    unregister_workflow(&state, &name).await?;
    Ok(Json(
        json!({ "status": format!("Workflow \"{name}\" unregistered") }),
    ))
}
