//! Predictions as the front doors ask for them. A model's answer is a stream of chunks, so
//! that a protocol that streams (gRPC's server streams, chunked HTTP) renders it as it comes:
//! one chunk for a handler that answers once, one per partial result and a last one for a
//! handler that streams. Front doors that answer once get the chunks joined.

use futures::stream::{self, BoxStream, StreamExt};

use crate::error::ApiResult;
use crate::job::{InferenceRequest, InferenceResponse};
use crate::state::AppState;

/// A model's answer, chunk by chunk; an error ends it.
pub type Answers = BoxStream<'static, ApiResult<InferenceResponse>>;

/// Runs `request` on the model `name` (its default version when `version` is None); a streamed
/// answer's chunks are joined.
pub async fn model(
    state: &AppState,
    name: &str,
    version: Option<&str>,
    request: InferenceRequest,
) -> ApiResult<InferenceResponse> {
    let model = state.registry.get(name, version)?;
    model
        .submit(request, version.is_some())
        .await?
        .whole()
        .await
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
    let answer = async move { model.submit(request, version_named).await };
    Ok(stream::once(answer)
        .flat_map(|answer| match answer {
            Ok(first) => first.chunks(),
            Err(e) => stream::once(async { Err(e) }).boxed(),
        })
        .boxed())
}

/// Runs `request` through the workflow `name` (its default version when `version` is None); a
/// streaming leaf's chunks are joined.
pub async fn workflow(
    state: &AppState,
    name: &str,
    version: Option<&str>,
    request: InferenceRequest,
) -> ApiResult<InferenceResponse> {
    let workflow = state.workflows.get(name, version)?;
    crate::workflow::execute(&workflow, request)
        .await?
        .whole()
        .await
}
