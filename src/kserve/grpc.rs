//! `inference.GRPCInferenceService`, the Open Inference Protocol over gRPC, served on the
//! gRPC inference port: health, metadata and `ModelInfer`, whose tensors go to the handler as
//! the JSON request of the `kservev2` envelope, as TorchServe builds it; the answer becomes the
//! `ModelInferResponse` straight from the handler's plain outputs when the server wraps them.

use std::sync::Arc;

use bytes::Bytes;
use tonic::{Request, Response, Status};

use super::pb::grpc_inference_service_server::GrpcInferenceService;
use super::pb::model_metadata_response::TensorMetadata;
use super::pb::*;
use super::tensors::{grpc_request_json, grpc_response, V2Answer};
use super::{infer, lookup, Answer, Infer, Payload, Protocol, Target};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// The v2 inference service of one server.
pub struct Inference {
    state: Arc<AppState>,
}

impl Inference {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    /// The target a request names; a missing name is a bad request.
    fn target(&self, name: &str, version: &str) -> ApiResult<Target> {
        if name.is_empty() {
            return Err(ApiError::bad_request("Parameter name is required."));
        }
        let version = (!version.is_empty()).then_some(version);
        lookup(&self.state, name, version)
    }
}

fn tensors(values: &serde_json::Value) -> Vec<TensorMetadata> {
    let Some(list) = values.as_array() else {
        return Vec::new();
    };
    list.iter()
        .map(|t| TensorMetadata {
            name: t["name"].as_str().unwrap_or_default().into(),
            datatype: t["datatype"].as_str().unwrap_or_default().into(),
            shape: t["shape"]
                .as_array()
                .map(|s| s.iter().filter_map(|d| d.as_i64()).collect())
                .unwrap_or_default(),
        })
        .collect()
}

#[tonic::async_trait]
impl GrpcInferenceService for Inference {
    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        let ready = self.state.healthy();
        Ok(Response::new(ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let r = request.into_inner();
        let target = self.target(&r.name, &r.version).map_err(Status::from)?;
        Ok(Response::new(ModelReadyResponse {
            ready: target.ready(),
        }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: "torchyard".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: Vec::new(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        let target = self.target(&r.name, &r.version).map_err(Status::from)?;
        let m = target.metadata(&self.state);
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        Ok(Response::new(ModelMetadataResponse {
            name: m["name"].as_str().unwrap_or_default().into(),
            versions: strings(&m["versions"]),
            platform: m["platform"].as_str().unwrap_or_default().into(),
            inputs: tensors(&m["inputs"]),
            outputs: tensors(&m["outputs"]),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let r = request.into_inner();
        let answer = async {
            let target = self.target(&r.model_name, &r.model_version)?;
            let (body, tensors) = grpc_request_json(&r)?;
            let body = Bytes::from(body);
            let v2_id = (!r.id.is_empty()).then(|| r.id.clone());
            let names = r.inputs.iter().map(|i| i.name.clone()).collect();
            let request = Infer {
                protocol: Protocol::V2,
                explain: false,
                payload: Payload::Checked {
                    body,
                    v2_id,
                    names,
                    tensors,
                },
                id: uuid::Uuid::new_v4().to_string(),
                headers: Vec::new(),
            };
            let answer = match infer(target, !r.model_version.is_empty(), request).await? {
                Answer::Tensors(answer, _) => answer.into_answer(),
                Answer::Response(output) if output.status >= 400 => {
                    let message = String::from_utf8_lossy(&output.body).into_owned();
                    return Err(ApiError::internal(message));
                }
                Answer::Response(output) => V2Answer::parse(&output.body)?,
            };
            grpc_response(answer, !r.raw_input_contents.is_empty())
        };
        Ok(Response::new(answer.await.map_err(Status::from)?))
    }
}
