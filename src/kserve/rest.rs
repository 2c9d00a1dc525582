//! KServe's REST routes on the inference listener: the Open Inference Protocol v2 (health,
//! server and model metadata, readiness, `infer` and `explain`, with or without
//! `/versions/{v}`) and KServe v1 (`/v1/models/{m}:predict|:explain`, and `GET
//! /v1/models/{m}` for readiness).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::{infer, lookup, Infer, Payload, Protocol, Target};
use crate::api::path::Path;
use crate::error::ApiError;
use crate::request::{into_http, BodyLimits};
use crate::state::AppState;

/// The header of v2's binary tensor extension: the length of the JSON before the tensors.
const INFERENCE_HEADER_LENGTH: &str = "inference-header-content-length";

/// An error of a KServe route: TorchServe's body (`code`, `type`, `message`) with the
/// message also as `error`, the field KServe's protocols and their clients read.
struct KServeError(ApiError);

impl From<ApiError> for KServeError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl IntoResponse for KServeError {
    fn into_response(self) -> Response {
        let e = self.0;
        let body = json!({
            "code": e.status.as_u16(),
            "type": e.kind,
            "message": e.message,
            "error": e.message,
        });
        (e.status, Json(body)).into_response()
    }
}

type KResult<T> = Result<T, KServeError>;

/// The KServe routes, to merge into the inference listener's router.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{model}", get(model_metadata))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(model_metadata_version),
        )
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_ready_version),
        )
        .route("/v2/models/{model}/{action}", post(v2_infer))
        .route(
            "/v2/models/{model}/versions/{version}/{action}",
            post(v2_infer_version),
        )
        .route("/v1/models/{target}", get(v1_status).post(v1_infer))
}

/// `{"name", "version", "extensions"}`: torchyard and its version.
async fn server_metadata() -> Json<serde_json::Value> {
    Json(json!({
        "name": "torchyard",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": [],
    }))
}

/// Always live while the server answers.
async fn live() -> Json<serde_json::Value> {
    Json(json!({"live": true}))
}

/// Ready once start-up loading is done and every model has its minimum workers (`/ping`'s
/// rule); 503 before.
async fn ready(State(state): State<Arc<AppState>>) -> Response {
    readiness(state.healthy())
}

fn readiness(ready: bool) -> Response {
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"ready": ready}))).into_response()
}

async fn model_metadata(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> KResult<Json<serde_json::Value>> {
    Ok(Json(lookup(&state, &model, None)?.metadata(&state)))
}

async fn model_metadata_version(
    State(state): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> KResult<Json<serde_json::Value>> {
    Ok(Json(
        lookup(&state, &model, Some(&version))?.metadata(&state),
    ))
}

async fn model_ready(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> KResult<Response> {
    model_readiness(&state, &model, None)
}

async fn model_ready_version(
    State(state): State<Arc<AppState>>,
    Path((model, version)): Path<(String, String)>,
) -> KResult<Response> {
    model_readiness(&state, &model, Some(&version))
}

/// `{"name", "ready"}`, 200 when ready, else 503.
fn model_readiness(state: &AppState, model: &str, version: Option<&str>) -> KResult<Response> {
    let ready = lookup(state, model, version)?.ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((status, Json(json!({"name": model, "ready": ready}))).into_response())
}

async fn v2_infer(
    State(state): State<Arc<AppState>>,
    Path((model, action)): Path<(String, String)>,
    request: Request,
) -> KResult<Response> {
    run(&state, Protocol::V2, &model, None, &action, request).await
}

async fn v2_infer_version(
    State(state): State<Arc<AppState>>,
    Path((model, version, action)): Path<(String, String, String)>,
    request: Request,
) -> KResult<Response> {
    run(
        &state,
        Protocol::V2,
        &model,
        Some(&version),
        &action,
        request,
    )
    .await
}

/// `POST /v1/models/{model}:predict` or `:explain`.
async fn v1_infer(
    State(state): State<Arc<AppState>>,
    Path(target): Path<String>,
    request: Request,
) -> KResult<Response> {
    let Some((model, action)) = target.rsplit_once(':') else {
        return Err(ApiError::resource_not_found().into());
    };
    run(&state, Protocol::V1, model, None, action, request).await
}

/// `GET /v1/models/{model}`: KServe v1's model status, `{"name", "ready"}`.
async fn v1_status(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> KResult<Json<serde_json::Value>> {
    let ready = lookup(&state, &model, None)?.ready();
    Ok(Json(json!({"name": model, "ready": ready})))
}

/// Whether a request posts a form: TorchServe's frontend tests post forms to the KServe
/// routes, which reach the handler without an envelope, as on `/predictions`.
fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_start().to_ascii_lowercase())
        .is_some_and(|v| {
            v.starts_with("application/x-www-form-urlencoded")
                || v.starts_with("multipart/form-data")
        })
}

/// Finds the target, reads the body and runs the request; `action` is `infer`/`predict` or
/// `explain`. A form goes to the target as on TorchServe's own routes; anything else is the
/// protocol's JSON, through its envelope.
async fn run(
    state: &AppState,
    protocol: Protocol,
    model: &str,
    version: Option<&str>,
    action: &str,
    request: Request,
) -> KResult<Response> {
    let explain = match (protocol, action) {
        (Protocol::V2, "infer") | (Protocol::V1, "predict") => false,
        (_, "explain") => true,
        _ => return Err(ApiError::resource_not_found().into()),
    };
    let target = lookup(state, model, version)?;
    if is_form(request.headers()) {
        let mut request = crate::api::inference::decode_request(state, request).await?;
        if explain {
            request.headers.push(("explain".into(), "True".into()));
        }
        let output = match target {
            Target::Model(model) => model.submit(request, version.is_some()).await?,
            Target::Workflow(workflow) => crate::workflow::execute(&workflow, request).await?,
        };
        return Ok(into_http(output));
    }
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    let binary_after = match headers.get(INFERENCE_HEADER_LENGTH) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| ApiError::bad_request("Invalid Inference-Header-Content-Length"))?,
        ),
    };
    let body = crate::request::read_body(&headers, body, BodyLimits::of(&state.config)).await?;
    let request = Infer {
        protocol,
        explain,
        payload: Payload::Rest { body, binary_after },
        id: crate::api::request_id::current(),
        headers: crate::request::handler_headers(&headers),
    };
    let answer = infer(target, version.is_some(), request).await?;
    Ok(into_http(answer.into_response()))
}
