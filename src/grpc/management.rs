//! TorchServe's `ManagementAPIsService`: register, unregister, scale, list, describe and set
//! the default version of models.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::inference::given;
use super::pb::org::pytorch::serve::grpc::management::management_ap_is_service_server::ManagementApIsService;
use super::pb::org::pytorch::serve::grpc::management::{
    DescribeModelRequest, ListModelsRequest, ManagementResponse, RegisterModelRequest,
    ScaleWorkerRequest, SetDefaultRequest, UnregisterModelRequest,
};
use crate::error::ApiResult;
use crate::facade::{models, Page, Scale};
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

/// A count given as an int32, where proto3 sends 0 for not given: TorchServe reads 0 and
/// below as "use the default".
pub fn count(value: i32) -> Option<usize> {
    usize::try_from(value).ok().filter(|&n| n > 0)
}

/// A page of a list request; an offset below 0 starts at the beginning.
pub fn page(limit: i32, next_page_token: i32) -> Page {
    Page {
        limit: count(limit),
        next_page_token: usize::try_from(next_page_token).ok(),
    }
}

/// The worker bounds of a scale request.
pub fn scale(min_worker: i32, max_worker: i32, synchronous: bool) -> Scale {
    Scale {
        min_worker: count(min_worker),
        max_worker: count(max_worker),
        synchronous,
    }
}

/// A reply: `msg` holds a status message or a JSON document.
pub fn reply<T: From<String>>(result: ApiResult<String>) -> Result<Response<T>, Status> {
    result
        .map(|msg| Response::new(T::from(msg)))
        .map_err(Status::from)
}

/// A JSON document as TorchServe's management service prints it (pretty, two spaces).
pub fn document(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).expect("a JSON document prints")
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
            ..RegisterOptions::default()
        };
        reply(models::register(&self.state, opts).await)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_negative_counts_are_not_given() {
        assert_eq!(count(0), None);
        assert_eq!(count(-1), None);
        assert_eq!(count(3), Some(3));
        let p = page(0, -5);
        assert_eq!((p.limit, p.next_page_token), (None, None));
        let s = scale(2, 0, true);
        assert_eq!(
            (s.min_worker, s.max_worker, s.synchronous),
            (Some(2), None, true)
        );
    }
}
