//! Running one request through a workflow's DAG on the async runtime: every node starts as soon
//! as its parents have answered, so independent branches run concurrently.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use bytes::Bytes;
use futures::future::{join_all, BoxFuture, FutureExt, Shared};
use serde_json::{Map, Value};

use super::served_workflow::Workflow;
use crate::error::{ApiError, ApiResult};
use crate::job::{InferenceRequest, InferenceResponse, Param};

type NodeResult = Result<Arc<InferenceResponse>, ApiError>;
type NodeFuture<'a> = Shared<BoxFuture<'a, NodeResult>>;

/// Runs `request` through `workflow` and returns the leaf's output (an object keyed by leaf
/// name when there are several leaves).
pub async fn execute(
    workflow: &Workflow,
    request: InferenceRequest,
) -> ApiResult<InferenceResponse> {
    let _in_flight = workflow.in_flight.enter();
    let dag = &workflow.dag;
    let headers = request.headers.clone();
    let mut entry_request = Some(request);
    let mut futures: Vec<Option<NodeFuture<'_>>> = vec![None; dag.nodes.len()];
    for &i in &dag.order {
        let parents: Vec<(usize, NodeFuture<'_>)> = dag.nodes[i]
            .parents
            .iter()
            .map(|&p| (p, futures[p].clone().expect("parents come first")))
            .collect();
        let own_input = if i == dag.entry {
            entry_request.take()
        } else {
            None
        };
        let headers = &headers;
        let future = async move {
            let input = match own_input {
                Some(input) => input,
                None => node_input(workflow, headers, parents).await?,
            };
            call_node(workflow, i, input).await.map(Arc::new)
        };
        futures[i] = Some(future.boxed().shared());
    }
    let leaves = dag
        .leaves
        .iter()
        .map(|&l| futures[l].clone().expect("every node is built"));
    let mut outputs = Vec::with_capacity(dag.leaves.len());
    for result in join_all(leaves).await {
        outputs.push(result?);
    }
    if let [single] = outputs.as_slice() {
        return Ok(InferenceResponse::clone(single));
    }
    Ok(merge_leaves(workflow, &outputs))
}

/// The input of a non-entry node: the parent's output as `body`, or one field per parent
/// named after it.
async fn node_input(
    workflow: &Workflow,
    headers: &[(String, String)],
    parents: Vec<(usize, NodeFuture<'_>)>,
) -> ApiResult<InferenceRequest> {
    let single = parents.len() == 1;
    let (indices, outputs): (Vec<usize>, Vec<_>) = parents.into_iter().unzip();
    let mut params = Vec::with_capacity(indices.len());
    for (parent, output) in indices.into_iter().zip(join_all(outputs).await) {
        let name = if single {
            "body".to_string()
        } else {
            workflow.dag.nodes[parent].name.clone()
        };
        params.push(Param {
            name,
            content_type: None,
            value: output?.body.clone(),
        });
    }
    Ok(InferenceRequest {
        id: uuid::Uuid::new_v4().to_string(),
        headers: headers.to_vec(),
        params,
    })
}

/// Calls node `i`, retrying a failed or timed-out attempt up to the node's retry-attempts.
/// A timed-out attempt is abandoned: its queued job is skipped, and a worker stuck on it is
/// killed by the node model's response timeout.
async fn call_node(
    workflow: &Workflow,
    i: usize,
    input: InferenceRequest,
) -> ApiResult<InferenceResponse> {
    let node = &workflow.nodes[i];
    let attempts = node.props.retry_attempts + 1;
    let timeout = Duration::from_millis(node.props.timeout_ms);
    let started = Instant::now();
    let mut reason = String::new();
    let mut unavailable = false;
    for attempt in 0..attempts {
        let mut request = input.clone();
        request.id = uuid::Uuid::new_v4().to_string();
        let outcome = tokio::time::timeout(timeout, node.model.submit(request, false)).await;
        unavailable = matches!(&outcome, Ok(Err(e)) if e.status == StatusCode::SERVICE_UNAVAILABLE);
        reason = match outcome {
            Ok(Ok(output)) if output.status < 400 => {
                node.metrics.record_call(started.elapsed(), attempt, false);
                return Ok(output);
            }
            Ok(Ok(output)) => format!(
                "handler answered {}: {}",
                output.status,
                String::from_utf8_lossy(&output.body)
            ),
            Ok(Err(e)) => e.message,
            Err(_) => format!("timed out after {} ms", node.props.timeout_ms),
        };
    }
    node.metrics
        .record_call(started.elapsed(), attempts - 1, true);
    let failed = format!(
        "Workflow node \"{}\" failed after {attempts} attempt(s): {reason}",
        workflow.dag.nodes[i].name
    );
    // A node that could not take the request (no worker, full queue) makes the workflow
    // unavailable, as the same model answers on its own, rather than broken.
    Err(if unavailable {
        ApiError::unavailable(failed)
    } else {
        ApiError::internal(failed)
    })
}

/// Several leaves answer one JSON object keyed by leaf name; a JSON output is embedded as
/// JSON, anything else as a string.
fn merge_leaves(workflow: &Workflow, outputs: &[Arc<InferenceResponse>]) -> InferenceResponse {
    let mut merged = Map::new();
    for (&leaf, output) in workflow.dag.leaves.iter().zip(outputs) {
        let is_json = output
            .content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("application/json"));
        let value = is_json
            .then(|| serde_json::from_slice(&output.body).ok())
            .flatten()
            .unwrap_or_else(|| Value::String(String::from_utf8_lossy(&output.body).into_owned()));
        merged.insert(workflow.dag.nodes[leaf].name.clone(), value);
    }
    InferenceResponse {
        status: 200,
        content_type: Some("application/json".into()),
        headers: Vec::new(),
        body: Bytes::from(Value::Object(merged).to_string()),
    }
}
