//! Workflow management API: register, list, describe, scale, update, set-default and
//! unregister workflows and their versions. Each handler decodes the request, makes one call
//! to [`facade::workflows`] and encodes its answer.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;

use super::path::Path;
use super::query;
use super::replies::{self, gate_first, status};
use crate::error::{ApiError, ApiResult};
use crate::facade::{workflows, Scale};
use crate::state::AppState;
use crate::workflow::{budget, dot, mermaid, svg, WorkflowOptions};

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
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    describe_or_draw(&state, &name, None, raw.as_deref()).await
}

async fn describe_version(
    State(state): State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    describe_or_draw(&state, &name, Some(&version), raw.as_deref()).await
}

/// Query of `GET /workflows/{name}[/{version}]`: `format` draws the DAG instead of the
/// describe JSON; `stats` adds each node's calls and median latency to the drawing.
#[derive(Deserialize)]
struct DescribeQuery {
    format: Option<String>,
    #[serde(default)]
    stats: bool,
}

/// The formats `?format=` draws, with their content types.
const PICTURE_FORMATS: [(&str, &str); 3] = [
    ("dot", "text/vnd.graphviz; charset=utf-8"),
    ("mermaid", "text/vnd.mermaid; charset=utf-8"),
    ("svg", "image/svg+xml"),
];

/// The describe JSON (TorchServe's answer), or the drawing `?format=` asks for; an SVG is laid
/// out within the drawing [`budget`].
async fn describe_or_draw(
    state: &AppState,
    name: &str,
    version: Option<&str>,
    raw: Option<&str>,
) -> ApiResult<Response> {
    let q: DescribeQuery = query::parse(raw)?;
    let Some(format) = q.format else {
        return Ok(Json(Value::from(workflows::describe(state, name, version)?)).into_response());
    };
    let Some(&(_, content_type)) = PICTURE_FORMATS.iter().find(|(f, _)| *f == format) else {
        let valid: Vec<&str> = PICTURE_FORMATS.iter().map(|(f, _)| *f).collect();
        return Err(ApiError::bad_request(format!(
            "Unknown format {format:?}; valid formats: {}",
            valid.join(", ")
        )));
    };
    let picture = workflows::picture(state, name, version, q.stats)?;
    let text = match format.as_str() {
        "dot" => dot::render(&picture),
        "svg" => budget::draw(picture, svg::render).await?,
        _ => mermaid::render(&picture),
    };
    Ok(([(header::CONTENT_TYPE, content_type)], text).into_response())
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
