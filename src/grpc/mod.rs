//! The gRPC front doors: TorchServe's `InferenceAPIsService` and `ManagementAPIsService`
//! (wire-compatible with TorchServe's protos), and torchyard's workflow services, served on
//! `grpc_inference_port` and `grpc_management_port` with TorchServe's token authorization
//! and, with `enable_grpc_ssl`, TLS, through the same accept policy as the HTTP listeners
//! ([`crate::listener`]). Every call decodes its message, makes one call to
//! [`crate::facade`] and encodes the answer; errors become TorchServe's gRPC codes
//! ([`status`]).

mod codec;
mod inference;
mod management;
mod status;
mod timing;
mod workflows;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::service::{Interceptor, Routes};

use crate::auth::{KeyKind, TokenAuth};
use crate::listener::{self, ConnectionLimits};

use crate::state::AppState;

/// Code generated from proto/, in modules named after the proto packages.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    pub mod google {
        pub mod rpc {
            tonic::include_proto!("google.rpc");
        }
    }
    pub mod org {
        pub mod pytorch {
            pub mod serve {
                pub mod grpc {
                    pub mod inference {
                        tonic::include_proto!("org.pytorch.serve.grpc.inference");
                    }
                    pub mod management {
                        tonic::include_proto!("org.pytorch.serve.grpc.management");
                    }
                }
            }
        }
    }
    pub mod torchyard {
        pub mod workflow {
            pub mod v1 {
                tonic::include_proto!("torchyard.workflow.v1");
            }
        }
    }
}

use crate::kserve::pb::grpc_inference_service_server::GrpcInferenceServiceServer;
use pb::org::pytorch::serve::grpc::inference::inference_ap_is_service_server::InferenceApIsServiceServer;
use pb::org::pytorch::serve::grpc::management::management_ap_is_service_server::ManagementApIsServiceServer;
use pb::torchyard::workflow::v1::workflow_inference_service_server::WorkflowInferenceServiceServer;
use pb::torchyard::workflow::v1::workflow_management_service_server::WorkflowManagementServiceServer;

/// Which of the two gRPC listeners.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Listener {
    /// Predictions and health: TorchServe's inference service, the workflow predictions and
    /// KServe's `inference.GRPCInferenceService`.
    Inference,
    /// TorchServe's management service and the workflow management service.
    Management,
}

/// Serves the gRPC services of `which` on `listener` (over TLS with `tls`, which must offer
/// ALPN `h2`) until `stop` is cancelled, then lets the calls in progress finish. With `auth`,
/// every call must carry the listener's key as a Bearer token.
pub async fn serve(
    which: Listener,
    listener: TcpListener,
    state: Arc<AppState>,
    auth: Option<Arc<TokenAuth>>,
    tls: Option<TlsAcceptor>,
    limits: ConnectionLimits,
    stop: CancellationToken,
) {
    let kind = match which {
        Listener::Inference => KeyKind::Inference,
        Listener::Management => KeyKind::Management,
    };
    let auth = Authorization(auth.map(|auth| (auth, kind)));
    let limit = state.config.max_request_size;
    let routes = match which {
        Listener::Inference => Routes::new(InterceptedService::new(
            InferenceApIsServiceServer::new(inference::Inference::new(state.clone()))
                .max_decoding_message_size(limit),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(
            WorkflowInferenceServiceServer::new(workflows::Inference::new(state.clone()))
                .max_decoding_message_size(limit),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(
            GrpcInferenceServiceServer::new(crate::kserve::grpc::Inference::new(state))
                .max_decoding_message_size(limit),
            auth,
        )),
        Listener::Management => Routes::new(InterceptedService::new(
            ManagementApIsServiceServer::new(management::Management::new(state.clone()))
                .max_decoding_message_size(limit),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(
            WorkflowManagementServiceServer::new(workflows::Management::new(state))
                .max_decoding_message_size(limit),
            auth,
        )),
    };
    let routes = tower::Layer::layer(&crate::logging::GrpcAccessLog, routes.prepare());
    listener::serve_grpc(listener, routes, tls, limits, stop).await
}

/// TorchServe's gRPC token check: with token authorization on, every call (`Ping`
/// included, unlike REST's `/ping`) needs the listener's unexpired key in its
/// `authorization` metadata, else PERMISSION_DENIED.
#[derive(Clone)]
struct Authorization(Option<(Arc<TokenAuth>, KeyKind)>);

impl Interceptor for Authorization {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let Some((auth, kind)) = &self.0 else {
            return Ok(request);
        };
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if auth.authorizes(*kind, given) {
            Ok(request)
        } else {
            Err(tonic::Status::permission_denied(crate::auth::REFUSED))
        }
    }
}
