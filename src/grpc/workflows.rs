//! torchyard's workflow services (proto/torchyard/workflow.proto): predictions on the
//! inference listener, management on the management listener.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::codec::{document, given, input_params, page, reply, required, scale};
use super::pb::torchyard::workflow::v1::workflow_inference_service_server::WorkflowInferenceService;
use super::pb::torchyard::workflow::v1::workflow_management_service_server::WorkflowManagementService;
use super::pb::torchyard::workflow::v1::{
    DescribeWorkflowRequest, ListWorkflowsRequest, RegisterWorkflowRequest, ScaleWorkflowRequest,
    SetDefaultWorkflowRequest, UnregisterWorkflowRequest, WorkflowManagementResponse,
    WorkflowPredictRequest, WorkflowPredictResponse,
};
use super::timing;
use crate::facade::{predict, workflows};
use crate::job::InferenceRequest;
use crate::state::AppState;
use crate::workflow::WorkflowOptions;

/// Workflow predictions of one server.
pub struct Inference {
    state: Arc<AppState>,
}

impl Inference {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl WorkflowInferenceService for Inference {
    async fn predict(
        &self,
        request: Request<WorkflowPredictRequest>,
    ) -> Result<Response<WorkflowPredictResponse>, Status> {
        let (metadata, _, r) = request.into_parts();
        let name = required(r.workflow_name, "workflow_name")?;
        let version = given(r.workflow_version);
        let input = InferenceRequest {
            id: uuid::Uuid::new_v4().to_string(),
            headers: timing::traceparent(&metadata).into_iter().collect(),
            params: input_params(r.input),
        };
        let output = predict::workflow(&self.state, &name, version.as_deref(), input).await?;
        let response = WorkflowPredictResponse {
            prediction: output.body,
        };
        Ok(timing::answer(response, &output.headers))
    }
}

/// Workflow management of one server.
pub struct Management {
    state: Arc<AppState>,
}

impl Management {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

impl From<String> for WorkflowManagementResponse {
    fn from(msg: String) -> Self {
        Self { msg }
    }
}

type Reply = Result<Response<WorkflowManagementResponse>, Status>;

#[tonic::async_trait]
impl WorkflowManagementService for Management {
    async fn register_workflow(&self, request: Request<RegisterWorkflowRequest>) -> Reply {
        let r = request.into_inner();
        let opts = WorkflowOptions {
            url: r.url,
            workflow_name: given(r.workflow_name),
        };
        reply(workflows::register(&self.state, opts).await)
    }

    async fn unregister_workflow(&self, request: Request<UnregisterWorkflowRequest>) -> Reply {
        let r = request.into_inner();
        let version = given(r.workflow_version);
        reply(workflows::unregister(&self.state, &r.workflow_name, version.as_deref()).await)
    }

    async fn list_workflows(&self, request: Request<ListWorkflowsRequest>) -> Reply {
        let r = request.into_inner();
        let listed = workflows::list(&self.state, page(r.limit, r.next_page_token));
        reply(listed.map(|l| document(&l)))
    }

    async fn describe_workflow(&self, request: Request<DescribeWorkflowRequest>) -> Reply {
        let r = request.into_inner();
        let version = given(r.workflow_version);
        let described = workflows::describe(&self.state, &r.workflow_name, version.as_deref());
        reply(described.map(|d| document(&d)))
    }

    async fn scale_workflow(&self, request: Request<ScaleWorkflowRequest>) -> Reply {
        let r = request.into_inner();
        let (version, node) = (given(r.workflow_version), given(r.node));
        let bounds = scale(r.min_worker, r.max_worker, r.synchronous);
        let scaled = workflows::scale(
            &self.state,
            &r.workflow_name,
            version.as_deref(),
            node.as_deref(),
            bounds,
        )
        .await;
        reply(scaled.map(|s| s.message().to_string()))
    }

    async fn set_default_workflow(&self, request: Request<SetDefaultWorkflowRequest>) -> Reply {
        let r = request.into_inner();
        let set = workflows::set_default(&self.state, &r.workflow_name, &r.workflow_version);
        reply(set.await)
    }
}
