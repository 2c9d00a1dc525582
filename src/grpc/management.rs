//! TorchServe's `ManagementAPIsService`: register, unregister, scale, list, describe and set
//! the default version of models.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::codec::{count, document, given, page, reply, scale};
use super::pb::org::pytorch::serve::grpc::management::management_ap_is_service_server::ManagementApIsService;
use super::pb::org::pytorch::serve::grpc::management::{
    DescribeModelRequest, ListModelsRequest, ManagementResponse, RegisterModelRequest,
    ScaleWorkerRequest, SetDefaultRequest, UnregisterModelRequest,
};
use crate::facade::models;
use crate::model::RegisterOptions;
use crate::state::AppState;

/// The management service of one server.
pub struct Management {
    state: Arc<AppState>,
}

impl Management {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

impl From<String> for ManagementResponse {
    fn from(msg: String) -> Self {
        Self { msg }
    }
}

#[tonic::async_trait]
impl ManagementApIsService for Management {
    async fn describe_model(
        &self,
        request: Request<DescribeModelRequest>,
    ) -> Result<Response<ManagementResponse>, Status> {
        let r = request.into_inner();
        let version = given(r.model_version);
        let described =
            models::describe(&self.state, &r.model_name, version.as_deref(), r.customized).await;
        reply(described.map(|d| document(&d)))
    }

    async fn list_models(
        &self,
        request: Request<ListModelsRequest>,
    ) -> Result<Response<ManagementResponse>, Status> {
        let r = request.into_inner();
        let listed = models::list(&self.state, page(r.limit, r.next_page_token));
        reply(listed.map(|l| document(&l)))
    }

    async fn register_model(
        &self,
        request: Request<RegisterModelRequest>,
    ) -> Result<Response<ManagementResponse>, Status> {
        let r = request.into_inner();
        let opts = RegisterOptions {
            url: r.url,
            model_name: given(r.model_name),
            handler: given(r.handler),
            runtime: given(r.runtime),
            batch_size: count(r.batch_size),
            max_batch_delay: count(r.max_batch_delay).map(|n| n as u64),
            initial_workers: count(r.initial_workers),
            synchronous: r.synchronous,
            response_timeout: count(r.response_timeout).map(|n| n as u64),
            startup_timeout: count(r.startup_timeout).map(|n| n as u64),
            ..RegisterOptions::default()
        };
        let registered = models::register(&self.state, opts).await;
        reply(registered.map(|r| r.message().to_string()))
    }

    async fn scale_worker(
        &self,
        request: Request<ScaleWorkerRequest>,
    ) -> Result<Response<ManagementResponse>, Status> {
        let r = request.into_inner();
        let version = given(r.model_version);
        let bounds = scale(r.min_worker, r.max_worker, r.synchronous);
        let scaled = models::scale(&self.state, &r.model_name, version.as_deref(), bounds).await;
        reply(scaled.map(|s| s.message().to_string()))
    }

    async fn set_default(
        &self,
        request: Request<SetDefaultRequest>,
    ) -> Result<Response<ManagementResponse>, Status> {
        let r = request.into_inner();
        reply(models::set_default(&self.state, &r.model_name, &r.model_version).await)
    }

    async fn unregister_model(
        &self,
        request: Request<UnregisterModelRequest>,
    ) -> Result<Response<ManagementResponse>, Status> {
        let r = request.into_inner();
        let version = given(r.model_version);
        reply(models::unregister(&self.state, &r.model_name, version.as_deref()).await)
    }
}
