//! The gRPC front doors: TorchServe's `InferenceAPIsService` and `ManagementAPIsService`
//! (wire-compatible with TorchServe's protos), and torchyard's workflow services, served on
//! `grpc_inference_port` and `grpc_management_port` with TorchServe's token authorization
//! and, with `enable_grpc_ssl`, TLS. Every call decodes its message, makes one call to
//! [`crate::facade`] and encodes the answer; errors become TorchServe's gRPC codes
//! ([`status`]).

mod codec;
mod inference;
mod management;
mod status;
mod timing;
mod workflows;

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use futures::StreamExt;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Identity, Server, ServerTlsConfig};

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

/// The TLS settings of the gRPC listeners from a PEM certificate chain and private key.
pub fn tls_config(cert: &Path, key: &Path) -> Result<ServerTlsConfig> {
    let read = |path: &Path| {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    };
    Ok(ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?)))
}

/// Serves the gRPC services of `which` on `listener` until `stop` is cancelled, then lets
/// the calls in progress finish. With `key`, every call must carry it as a Bearer token.
pub async fn serve(
    which: Listener,
    listener: TcpListener,
    state: Arc<AppState>,
    key: Option<Arc<str>>,
    tls: Option<ServerTlsConfig>,
    stop: CancellationToken,
) -> Result<()> {
    let mut server = Server::builder().layer(crate::logging::GrpcAccessLog);
    if let Some(tls) = tls {
        server = server
            .tls_config(tls)
            .context("invalid gRPC TLS settings")?;
    }
    let auth = Authorization(key);
    let limit = state.config.max_request_size;
    let router = match which {
        Listener::Inference => server
            .add_service(InterceptedService::new(
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
        Listener::Management => server
            .add_service(InterceptedService::new(
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
    // Replies go out at once: without this, small answers wait on Nagle's algorithm.
    let incoming = TcpListenerStream::new(listener).inspect(|accepted| {
        if let Ok(stream) = accepted {
            let _ = stream.set_nodelay(true);
        }
    });
    router
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await
        .context("gRPC server failed")
}

/// TorchServe's gRPC token check: with token authorization on, every call (`Ping`
/// included, unlike REST's `/ping`) needs the listener's key in its `authorization`
/// metadata, else PERMISSION_DENIED.
#[derive(Clone)]
struct Authorization(Option<Arc<str>>);

impl Interceptor for Authorization {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(key) = &self.0 else {
            return Ok(request);
        };
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if crate::auth::authorizes(given, key) {
            Ok(request)
        } else {
            Err(tonic::Status::permission_denied(
                "Token Authorization failed. Token either incorrect, expired, or not provided correctly",
            ))
        }
    }
}
