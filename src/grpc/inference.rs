//! TorchServe's `InferenceAPIsService`: Ping, Predictions, StreamPredictions and
//! StreamPredictions2.

use std::sync::Arc;

use futures::future;
use futures::stream::{self, BoxStream, StreamExt};
use serde_json::json;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use super::codec::{given, input_params, required};
use super::pb::org::pytorch::serve::grpc::inference::inference_ap_is_service_server::InferenceApIsService;
use super::pb::org::pytorch::serve::grpc::inference::{
    PredictionResponse, PredictionsRequest, TorchServeHealthResponse,
};
use super::status::{in_stream_error, prediction_error};
use super::timing;
use crate::error::ApiResult;
use crate::facade::predict;
use crate::job::{InferenceRequest, InferenceResponse};
use crate::state::AppState;

/// The header that tells a handler which sequence a StreamPredictions2 request belongs to
/// (TorchServe's default `ts_header_key_sequence_id`).
const SEQUENCE_ID_HEADER: &str = "ts_request_sequence_id";

/// The inference service of one server.
pub struct Inference {
    state: Arc<AppState>,
}

impl Inference {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

/// A request's model, version and the handler's input.
struct Decoded {
    model: String,
    version: Option<String>,
    request: InferenceRequest,
}

fn decode(message: PredictionsRequest, metadata: &MetadataMap) -> ApiResult<Decoded> {
    let mut headers: Vec<(String, String)> = timing::traceparent(metadata).into_iter().collect();
    if let Some(sequence) = message.sequence_id.filter(|s| !s.is_empty()) {
        headers.push((SEQUENCE_ID_HEADER.to_string(), sequence));
    }
    Ok(Decoded {
        model: required(message.model_name, "model_name")?,
        version: given(message.model_version),
        request: InferenceRequest {
            id: uuid::Uuid::new_v4().to_string(),
            headers,
            params: input_params(message.input),
        },
    })
}

fn answer(output: InferenceResponse) -> PredictionResponse {
    PredictionResponse {
        prediction: output.body,
        ..Default::default()
    }
}

/// One StreamPredictions2 request's answers: a message per chunk of a streamed (or
/// continuously batched) answer, one for a handler that answers once, or its error in
/// `status`; each echoes the request's sequence id.
fn answers_in_stream(
    state: &AppState,
    message: PredictionsRequest,
    metadata: &MetadataMap,
) -> Answers {
    let sequence_id = message.sequence_id.clone();
    let failed = |sequence_id: Option<String>, e| PredictionResponse {
        sequence_id,
        status: Some(in_stream_error(e)),
        ..Default::default()
    };
    let chunks = decode(message, metadata)
        .and_then(|d| predict::model_stream(state, &d.model, d.version.as_deref(), d.request));
    match chunks {
        Ok(chunks) => chunks
            .map(move |chunk| {
                Ok(match chunk {
                    Ok(output) => PredictionResponse {
                        sequence_id: sequence_id.clone(),
                        ..answer(output)
                    },
                    Err(e) => failed(sequence_id.clone(), e),
                })
            })
            .boxed(),
        Err(e) => stream::once(future::ready(Ok(failed(sequence_id, e)))).boxed(),
    }
}

type Answers = BoxStream<'static, Result<PredictionResponse, Status>>;

#[tonic::async_trait]
impl InferenceApIsService for Inference {
    /// `{"status": "Healthy"}` or `"Unhealthy"`, pretty-printed as TorchServe sends it.
    async fn ping(&self, _: Request<()>) -> Result<Response<TorchServeHealthResponse>, Status> {
        let status = if self.state.healthy() {
            "Healthy"
        } else {
            "Unhealthy"
        };
        let health = serde_json::to_string_pretty(&json!({ "status": status }))
            .expect("a JSON object prints");
        Ok(Response::new(TorchServeHealthResponse { health }))
    }

    async fn predictions(
        &self,
        request: Request<PredictionsRequest>,
    ) -> Result<Response<PredictionResponse>, Status> {
        let (metadata, _, message) = request.into_parts();
        let d = decode(message, &metadata).map_err(prediction_error)?;
        let mut output = predict::model(&self.state, &d.model, d.version.as_deref(), d.request)
            .await
            .map_err(prediction_error)?;
        let headers = std::mem::take(&mut output.headers);
        Ok(timing::answer(answer(output), &headers))
    }

    type StreamPredictionsStream = Answers;

    /// The model's answer chunk by chunk: one message per chunk (one for a handler that
    /// answers once, as TorchServe sends it).
    async fn stream_predictions(
        &self,
        request: Request<PredictionsRequest>,
    ) -> Result<Response<Answers>, Status> {
        let (metadata, _, message) = request.into_parts();
        let d = decode(message, &metadata).map_err(prediction_error)?;
        let chunks = predict::model_stream(&self.state, &d.model, d.version.as_deref(), d.request)
            .map_err(prediction_error)?;
        let answers = chunks.map(|chunk| chunk.map(answer).map_err(prediction_error));
        Ok(Response::new(answers.boxed()))
    }

    type StreamPredictions2Stream = Answers;

    /// The answers of each request in turn, in the order of the requests (a message per
    /// chunk); a failed request is answered with its error in `status` and the stream goes on.
    async fn stream_predictions2(
        &self,
        request: Request<Streaming<PredictionsRequest>>,
    ) -> Result<Response<Answers>, Status> {
        let state = self.state.clone();
        let (metadata, _, messages) = request.into_parts();
        let metadata = Arc::new(metadata);
        let answers = messages.flat_map(move |message| match message {
            Ok(message) => answers_in_stream(&state, message, &metadata),
            Err(status) => stream::once(future::ready(Err(status))).boxed(),
        });
        Ok(Response::new(answers.boxed()))
    }
}
