//! Predictions as the front doors ask for them. A model's answer is a stream of chunks, so
//! that a protocol that streams (gRPC's server streams, chunked HTTP) renders it as it comes:
//! today a handler answers once, so the stream holds one chunk; handlers that send partial
//! results will add chunks to it without changing the front doors.

use futures::stream::{self, BoxStream, StreamExt};

use crate::error::ApiResult;
use crate::job::{InferenceRequest, InferenceResponse};
use crate::state::AppState;

/// A model's answer, chunk by chunk; an error ends it.
pub type Answers = BoxStream<'static, ApiResult<InferenceResponse>>;

/// Runs `request` on the model `name` (its default version when `version` is None).
pub async fn model(
    state: &AppState,
    name: &str,
    version: Option<&str>,
    request: InferenceRequest,
) -> ApiResult<InferenceResponse> {
    let model = state.registry.get(name, version)?;
    model.submit(request, version.is_some()).await
}

/// Runs `request` on the model `name` and answers chunk by chunk. An unknown model is
/// refused at once, before the stream.
pub fn model_stream(
    state: &AppState,
    name: &str,
    version: Option<&str>,
    request: InferenceRequest,
) -> ApiResult<Answers> {
    let model = state.registry.get(name, version)?;
    let version_named = version.is_some();
    Ok(stream::once(async move { model.submit(request, version_named).await }).boxed())
}

/// Runs `request` through the workflow `name` (its default version when `version` is None).
pub async fn workflow(
    state: &AppState,
    name: &str,
    version: Option<&str>,
    request: InferenceRequest,
) -> ApiResult<InferenceResponse> {
    let workflow = state.workflows.get(name, version)?;
    crate::workflow::execute(&workflow, request).await
}
