//! KServe's protocols as a front door onto the models and workflows: the Open Inference
//! Protocol v2 over REST ([`rest`]) and gRPC ([`grpc`], `inference.GRPCInferenceService`) and
//! KServe v1 REST. As in TorchServe, the request body goes to the handler through TorchServe's
//! `kserve` (v1) or `kservev2` (v2) envelope, which the worker applies (python/torchyard/
//! envelopes.py) because the request names it in a header. A name is looked up as a model
//! first, then as a workflow: a workflow's entry node gets the unwrapped input and its leaves'
//! answers become the outputs (docs/kserve.md).

mod binary;
pub mod grpc;
mod plain;
pub mod rest;
mod tensors;

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Value};

use binary::RawTensor;

use crate::error::{ApiError, ApiResult};
use crate::job::{InferenceRequest, InferenceResponse, Param};
use crate::model::ServedModel;
use crate::state::AppState;
use crate::versioned::Versioned;
use crate::workflow::Workflow;

/// Code generated from proto/kserve/open_inference_grpc.proto.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("inference");
}

/// The request header that names a request's envelope for the worker; a workflow's other
/// nodes do not get it.
pub const ENVELOPE_HEADER: &str = "x-torchyard-envelope";

/// The envelope header's value for a model's v2 request: the worker answers the handler's
/// outputs as they are when [`plain::PlainAnswer`] can wrap them (python/torchyard/
/// envelopes.py), which saves the worker building and encoding the answer.
const V2_MODEL_ENVELOPE: &str = "kservev2;raw";

/// Which KServe protocol a request came in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Protocol {
    /// KServe v1: `{"instances": [...]}` in, `{"predictions": [...]}` out.
    V1,
    /// Open Inference Protocol v2: input tensors in, output tensors out.
    V2,
}

impl Protocol {
    /// TorchServe's name of the envelope of this protocol.
    fn envelope(self) -> &'static str {
        match self {
            Self::V1 => "kserve",
            Self::V2 => "kservev2",
        }
    }
}

/// What a KServe model name names.
pub enum Target {
    Model(Arc<ServedModel>),
    Workflow(Arc<Workflow>),
}

/// The model `name` (its `version`, or the default), else the workflow of that name; a name
/// that is neither is the model's 404.
pub fn lookup(state: &AppState, name: &str, version: Option<&str>) -> ApiResult<Target> {
    match state.registry.get(name, version) {
        Ok(model) => Ok(Target::Model(model)),
        Err(e) if state.registry.versions(name).is_err() => state
            .workflows
            .get(name, version)
            .map(Target::Workflow)
            .map_err(|_| e),
        Err(e) => Err(e),
    }
}

impl Target {
    /// Whether every model behind the target has its minimum of workers ready (a remote
    /// node counts as ready).
    pub fn ready(&self) -> bool {
        match self {
            Self::Model(model) => model.healthy(),
            Self::Workflow(workflow) => workflow
                .nodes
                .iter()
                .all(|n| n.runner.model().is_none_or(|m| m.healthy())),
        }
    }

    /// The v2 model metadata: name, versions, platform and tensors. A model's tensors are
    /// unknown (empty, as in TorchServe); a workflow's input is its entry node and its outputs
    /// are its leaves.
    pub fn metadata(&self, state: &AppState) -> Value {
        let (name, versions, platform, inputs, outputs) = match self {
            Self::Model(model) => {
                let versions = state.registry.versions(model.name()).unwrap_or_default();
                let versions: Vec<String> =
                    versions.iter().map(|m| m.version().to_string()).collect();
                (model.name(), versions, "", Vec::new(), Vec::new())
            }
            Self::Workflow(workflow) => {
                let versions = state
                    .workflows
                    .versions(workflow.name())
                    .unwrap_or_default();
                let versions: Vec<String> =
                    versions.iter().map(|w| w.version().to_string()).collect();
                let plan = &workflow.plan;
                let tensor = |name: &str| json!({"name": name, "datatype": "BYTES", "shape": [-1]});
                // The entry node's name, not its stage's (named after the stage's last node).
                let dag = &workflow.dag;
                let inputs = vec![tensor(&dag.nodes[dag.entry].name)];
                let outputs = plan.leaves.iter().map(|&l| tensor(&plan.stages[l].name));
                (
                    workflow.name(),
                    versions,
                    "torchyard_workflow",
                    inputs,
                    outputs.collect(),
                )
            }
        };
        json!({
            "name": name,
            "versions": versions,
            "platform": platform,
            "inputs": inputs,
            "outputs": outputs,
        })
    }
}

/// The body of a KServe request.
pub enum Payload {
    /// A REST body as it came: JSON, or (v2's binary extension) JSON whose first
    /// `binary_after` bytes are followed by binary tensors. [`infer`] checks it.
    Rest {
        body: Bytes,
        binary_after: Option<usize>,
    },
    /// The v2 JSON a front door built and checked itself (gRPC), with the request's `id`, its
    /// inputs' names and its binary tensors (left out of the JSON).
    Checked {
        body: Bytes,
        v2_id: Option<String>,
        names: Vec<String>,
        tensors: Vec<RawTensor>,
    },
}

/// A KServe inference request: the protocol, whether it asks for an explanation, the body,
/// the server's request id, and the headers the handler sees besides the envelope's (REST's
/// HTTP headers, as TorchServe passes them).
pub struct Infer {
    pub protocol: Protocol,
    pub explain: bool,
    pub payload: Payload,
    pub id: String,
    pub headers: Vec<(String, String)>,
}

/// What a KServe request answers.
pub enum Answer {
    /// A model's v2 answer the server built from the handler's plain outputs, and the
    /// worker's response (status 200, the handler's headers) whose body it stands for.
    Tensors(plain::PlainAnswer, InferenceResponse),
    /// The response as it is: the worker's own answer, or a workflow's.
    Response(InferenceResponse),
}

impl Answer {
    /// The response, a built v2 answer printed as its JSON body.
    pub fn into_response(self) -> InferenceResponse {
        match self {
            Self::Tensors(answer, mut response) => {
                response.body = Bytes::from(answer.to_json());
                response
            }
            Self::Response(response) => response,
        }
    }
}

/// A request body as it goes to the worker, the v2 request's own `id`, its inputs' names and
/// its binary tensors.
type Checked = (Bytes, Option<String>, Vec<String>, Vec<RawTensor>);

/// The JSON body the handler gets, the v2 request's own `id` and its inputs' names, from a
/// REST body checked: v2 tensors against their shape and datatype, v1 as a JSON object whose
/// `instances` is a list.
fn checked_rest(
    protocol: Protocol,
    body: Bytes,
    binary_after: Option<usize>,
) -> ApiResult<Checked> {
    match protocol {
        Protocol::V2 => {
            let (body, binary) = match binary_after {
                Some(json_length) => binary::split(&body, json_length)?,
                None => (body, Vec::new()),
            };
            let indices: Vec<usize> = binary.iter().map(|t| t.input).collect();
            let request = tensors::check_request(&body, &indices)?;
            let names = request.inputs.into_iter().map(|i| i.name).collect();
            Ok((body, request.id, names, binary))
        }
        Protocol::V1 => {
            let request = serde_json::from_slice::<serde_json::Map<String, Value>>(&body)
                .map_err(|e| ApiError::bad_request(format!("Invalid v1 inference request: {e}")))?;
            if !request.get("instances").is_some_and(Value::is_array) {
                return Err(ApiError::bad_request(
                    "Invalid v1 inference request: \"instances\" must be a list",
                ));
            }
            Ok((body, None, Vec::new(), Vec::new()))
        }
    }
}

/// Runs a KServe request on `target` and answers the envelope's answer (a model), or the
/// workflow's leaves as the protocol's answer (a workflow).
pub async fn infer(target: Target, version_named: bool, infer: Infer) -> ApiResult<Answer> {
    let (body, request_id, names, binary) = match infer.payload {
        Payload::Rest { body, binary_after } => checked_rest(infer.protocol, body, binary_after)?,
        Payload::Checked {
            body,
            v2_id,
            names,
            tensors,
        } => (body, v2_id, names, tensors),
    };
    // A model's worker reads binary tensors as bytes; a workflow's entry node gets JSON.
    let (body, binary) = match target {
        Target::Workflow(_) => (binary::inline(&body, &binary)?, Vec::new()),
        Target::Model(_) => (body, binary),
    };
    // The answer's `id`: the request's own, unless blank, else the server's request id.
    let answer_id = request_id
        .filter(|id| !id.trim().is_empty())
        .unwrap_or_else(|| infer.id.clone());
    let envelope = infer.protocol.envelope();
    let mut headers = infer.headers;
    headers.push((
        "explain".into(),
        if infer.explain { "True" } else { "False" }.into(),
    ));
    let request = |envelope: String| {
        headers.push((ENVELOPE_HEADER.into(), envelope));
        InferenceRequest {
            id: infer.id.clone(),
            headers,
            params: std::iter::once(Param {
                name: "body".into(),
                content_type: Some("application/json".into()),
                value: body.clone(),
            })
            .chain(binary.iter().map(RawTensor::param))
            .collect(),
        }
    };
    match target {
        Target::Model(model) if infer.protocol == Protocol::V2 => {
            let output = model
                .submit(request(V2_MODEL_ENVELOPE.into()), version_named)
                .await?
                .whole()
                .await?;
            let answer = (output.status == 200)
                .then(|| {
                    plain::PlainAnswer::read(&output.body, &answer_id, &model.def.manifest, names)
                })
                .flatten();
            Ok(match answer {
                Some(answer) => Answer::Tensors(answer, output),
                None => Answer::Response(output),
            })
        }
        Target::Model(model) => Ok(Answer::Response(
            model
                .submit(request(envelope.into()), version_named)
                .await?
                .whole()
                .await?,
        )),
        Target::Workflow(workflow) => {
            let output = crate::workflow::execute(&workflow, request(format!("{envelope};input")))
                .await?
                .whole()
                .await?;
            let answer = workflow_answer(&workflow, infer.protocol, infer.explain, &output);
            let answer = match answer {
                Value::Object(mut v2) if infer.protocol == Protocol::V2 => {
                    v2.insert("id".into(), answer_id.into());
                    Value::Object(v2)
                }
                other => other,
            };
            Ok(Answer::Response(InferenceResponse {
                status: 200,
                content_type: Some("application/json".into()),
                headers: Vec::new(),
                body: Bytes::from(answer.to_string()),
                trace: None,
                more: None,
            }))
        }
    }
}

/// A workflow's answer in the protocol: v1 `{"predictions": ...}` (or `explanations`) of the
/// leaf's JSON answer (several leaves: the object of their answers by name), v2 one output
/// tensor per leaf.
fn workflow_answer(
    workflow: &Workflow,
    protocol: Protocol,
    explain: bool,
    output: &InferenceResponse,
) -> Value {
    let value = serde_json::from_slice(&output.body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&output.body).into_owned()));
    match protocol {
        Protocol::V1 => {
            let key = if explain {
                "explanations"
            } else {
                "predictions"
            };
            json!({ key: value })
        }
        Protocol::V2 => {
            let plan = &workflow.plan;
            let names = plan.leaves.iter().map(|&l| plan.stages[l].name.as_str());
            let leaves: Vec<(&str, Value)> = match (plan.leaves.len(), value) {
                (1, value) => names.map(|n| (n, value.clone())).collect(),
                (_, Value::Object(mut by_leaf)) => names
                    .map(|n| (n, by_leaf.remove(n).unwrap_or(Value::Null)))
                    .collect(),
                (_, other) => names.map(|n| (n, other.clone())).collect(),
            };
            json!({
                "model_name": workflow.name(),
                "model_version": workflow.version(),
                "outputs": tensors::leaf_outputs(leaves.into_iter()),
            })
        }
    }
}
