//! Inference API: `/ping`, the API description and TorchServe's front doors onto a model:
//! `/predictions`, `/explanations`, KServe's v1 and v2 protocols ([`crate::kserve::rest`]),
//! SageMaker (`/invocations`, `/models/{m}/invoke`), the
//! legacy `/{m}/predict`, and `/wfpredict` for workflows. Every door decodes the request,
//! makes one call to the model (or workflow) and encodes its answer.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequest, RawQuery, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, options, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::json;

use super::path::Path;
use super::{openapi, query};
use crate::error::{ApiError, ApiResult};
use crate::job::{InferenceRequest, Param};
use crate::request::{into_http, read_request, BodyLimits};
use crate::state::AppState;

/// Routes of the inference API, without its description.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/ping", get(ping))
        .route("/predictions/{model}", any(predict))
        .route("/predictions/{model}/{version}", any(predict_version))
        .route("/predictions/{model}/{version}/", any(predict_version))
        .route(
            "/predictions/{model}/{version}/{*url_path}",
            any(predict_sub_path),
        )
        .route("/explanations/{model}", any(explain))
        .route("/explanations/{model}/{version}", any(explain_version))
        .route("/explanations/{model}/{version}/", any(explain_version))
        .route(
            "/explanations/{model}/{version}/{*url_path}",
            any(explain_sub_path),
        )
        .route("/invocations", post(invocations))
        .route("/models/{model}/invoke", post(invoke))
        .route("/{model}/predict", get(invoke).post(invoke))
        .route("/wfpredict/{workflow}", any(workflow_predict))
        .route(
            "/wfpredict/{workflow}/{version}",
            any(workflow_predict_version),
        )
        .merge(crate::kserve::rest::routes())
}

/// The inference API's description, at `/` and `/api-description`, for an inference listener
/// of its own.
pub fn description_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", options(description))
        .route("/api-description", get(description))
}

/// TorchServe's document; with `?full=true` torchyard's further endpoints too.
async fn description(RawQuery(raw): RawQuery) -> Response {
    openapi::answer(openapi::inference(query::full(raw.as_deref())))
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

/// What the handler is asked for: TorchServe marks an explanation with the request header
/// `explain: True`, which `BaseHandler` turns into a call of `explain_handle`.
#[derive(Clone, Copy, PartialEq)]
enum Action {
    Predict,
    Explain,
}

/// A request for a model as it arrived; [`decode`] makes the handler's input of it.
struct Incoming {
    headers: HeaderMap,
    query: Option<String>,
    body: Body,
}

impl<S: Send + Sync> FromRequest<S> for Incoming {
    type Rejection = std::convert::Infallible;

    async fn from_request(request: Request, _: &S) -> Result<Self, Self::Rejection> {
        let (parts, body) = request.into_parts();
        Ok(Self {
            query: parts.uri.query().map(String::from),
            headers: parts.headers,
            body,
        })
    }
}

/// Where a `/predictions` or `/explanations` request goes: the model, its version when the
/// path names one, and whatever the path has after the version, which the handler reads as the
/// request header `url_path` (TorchServe's way of passing, say, `v1/chat/completions`; empty
/// when there is nothing after the version, absent on the SageMaker and legacy paths).
struct Target {
    model: String,
    version: Option<String>,
    url_path: Option<String>,
}

impl From<String> for Target {
    fn from(model: String) -> Self {
        Self {
            model,
            version: None,
            url_path: Some(String::new()),
        }
    }
}

impl From<(String, String)> for Target {
    fn from((model, version): (String, String)) -> Self {
        Self {
            model,
            version: Some(version),
            url_path: Some(String::new()),
        }
    }
}

impl From<(String, String, String)> for Target {
    fn from((model, version, url_path): (String, String, String)) -> Self {
        Self {
            model,
            version: Some(version),
            url_path: Some(url_path),
        }
    }
}

async fn predict(
    State(state): State<Arc<AppState>>,
    method: Method,
    Path(model): Path<String>,
    incoming: Incoming,
) -> ApiResult<Response> {
    run(&state, &method, model.into(), Action::Predict, incoming).await
}

async fn predict_version(
    State(state): State<Arc<AppState>>,
    method: Method,
    Path(path): Path<(String, String)>,
    incoming: Incoming,
) -> ApiResult<Response> {
    run(&state, &method, path.into(), Action::Predict, incoming).await
}

async fn predict_sub_path(
    State(state): State<Arc<AppState>>,
    method: Method,
    Path(path): Path<(String, String, String)>,
    incoming: Incoming,
) -> ApiResult<Response> {
    run(&state, &method, path.into(), Action::Predict, incoming).await
}

async fn explain(
    State(state): State<Arc<AppState>>,
    method: Method,
    Path(model): Path<String>,
    incoming: Incoming,
) -> ApiResult<Response> {
    run(&state, &method, model.into(), Action::Explain, incoming).await
}

async fn explain_version(
    State(state): State<Arc<AppState>>,
    method: Method,
    Path(path): Path<(String, String)>,
    incoming: Incoming,
) -> ApiResult<Response> {
    run(&state, &method, path.into(), Action::Explain, incoming).await
}

async fn explain_sub_path(
    State(state): State<Arc<AppState>>,
    method: Method,
    Path(path): Path<(String, String, String)>,
    incoming: Incoming,
) -> ApiResult<Response> {
    run(&state, &method, path.into(), Action::Explain, incoming).await
}

/// `POST /models/{model}/invoke` (SageMaker) and `GET|POST /{model}/predict` (TorchServe's
/// legacy path): a prediction whatever the method.
async fn invoke(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
    incoming: Incoming,
) -> ApiResult<Response> {
    let target = Target {
        model,
        version: None,
        url_path: None,
    };
    run(&state, &Method::POST, target, Action::Predict, incoming).await
}

/// `POST /invocations` (SageMaker): the model is named by the `model_name` query parameter or
/// form field, else it is the only model loaded at start.
async fn invocations(
    State(state): State<Arc<AppState>>,
    incoming: Incoming,
) -> ApiResult<Response> {
    let request = decode(&state, incoming).await?;
    let named = request
        .params
        .iter()
        .find(|p| p.name == "model_name")
        .map(|p| String::from_utf8_lossy(&p.value).into_owned());
    let model = match named {
        Some(name) => state.registry.get(&name, None)?,
        None => only_startup_model(&state)?,
    };
    Ok(into_http(model.submit(request, false).await?))
}

/// The one model loaded at start, which `/invocations` serves when no model is named.
fn only_startup_model(state: &AppState) -> ApiResult<Arc<crate::model::ServedModel>> {
    let mut startup = state
        .registry
        .list()
        .into_iter()
        .filter(|m| m.def.loaded_at_startup);
    match (startup.next(), startup.next()) {
        (Some(model), None) => Ok(model),
        _ => Err(ApiError::bad_request("Parameter model_name is required.")),
    }
}

/// Finds the model, answers `OPTIONS` with the API description once it exists, otherwise
/// decodes the request and runs it.
async fn run(
    state: &AppState,
    method: &Method,
    target: Target,
    action: Action,
    request: Incoming,
) -> ApiResult<Response> {
    let version = target.version.as_deref();
    let model = state.registry.get(&target.model, version)?;
    if method == Method::OPTIONS {
        return Ok(openapi::answer(openapi::model_inference(&target.model)));
    }
    let mut request = decode(state, request).await?;
    if let Some(url_path) = target.url_path {
        request.headers.push(("url_path".into(), url_path));
    }
    if action == Action::Explain {
        request.headers.push(("explain".into(), "True".into()));
    }
    Ok(into_http(model.submit(request, version.is_some()).await?))
}

/// Decodes a request for a model as TorchServe's own routes do: [`decode`].
pub async fn decode_request(state: &AppState, request: Request) -> ApiResult<InferenceRequest> {
    let Ok(incoming) = Incoming::from_request(request, &()).await;
    decode(state, incoming).await
}

/// Reads the body and puts the query's pairs first among the parameters, as TorchServe does.
async fn decode(state: &AppState, incoming: Incoming) -> ApiResult<InferenceRequest> {
    let pairs = query::pairs(incoming.query.as_deref())
        .ok_or_else(|| ApiError::bad_request("Invalid query string"))?;
    let mut request = read_request(
        &incoming.headers,
        incoming.body,
        BodyLimits::of(&state.config),
    )
    .await?;
    if !pairs.is_empty() {
        let from_query = pairs.into_iter().map(|(name, value)| Param {
            name,
            content_type: None,
            value: Bytes::from(value),
        });
        request.params.splice(0..0, from_query);
    }
    Ok(request)
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
    let request = read_request(&headers, body, BodyLimits::of(&state.config)).await?;
    let output = crate::workflow::execute(&workflow, request).await?;
    Ok(into_http(output))
}
