//! torchyard's errors as TorchServe's gRPC services report them: the code TorchServe picks
//! for the HTTP status (its `GRPCUtils.getGRPCStatusCode`), and a description of the message
//! followed, on the next line, by TorchServe's exception class, as its services append it.

use axum::http::StatusCode;
use prost::Message;
use tonic::{Code, Status};

use super::pb::google::rpc;
use crate::error::ApiError;

/// TorchServe's gRPC code for an HTTP status. One exception: the only 405 a gRPC call meets
/// is the disabled model API, which TorchServe's management service answers with
/// PERMISSION_DENIED.
fn code(status: StatusCode) -> Code {
    match status.as_u16() {
        400 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 | 405 => Code::PermissionDenied,
        404 => Code::NotFound,
        409 => Code::Aborted,
        413 | 429 => Code::ResourceExhausted,
        416 => Code::OutOfRange,
        499 => Code::Cancelled,
        501 => Code::Unimplemented,
        503 => Code::Unavailable,
        504 => Code::DeadlineExceeded,
        _ => match status.as_u16() / 100 {
            2 => Code::Ok,
            4 => Code::FailedPrecondition,
            5 => Code::Internal,
            _ => Code::Unknown,
        },
    }
}

/// The Java class TorchServe names for an exception type.
fn exception_class(kind: &str) -> String {
    let package = match kind {
        "ModelException"
        | "ModelNotFoundException"
        | "ModelVersionNotFoundException"
        | "InvalidModelException" => "org.pytorch.serve.archive.model",
        "DownloadArchiveException" => "org.pytorch.serve.archive",
        "WorkflowException" | "WorkflowNotFoundException" | "InvalidWorkflowException" => {
            "org.pytorch.serve.archive.workflow"
        }
        // Errors of the handler: TorchServe reports them all so.
        "PredictionException" => return "org.pytorch.serve.http.InternalServerException".into(),
        _ => "org.pytorch.serve.http",
    };
    format!("{package}.{kind}")
}

/// The status description: the message, then the exception class.
fn description(e: &ApiError) -> String {
    format!("{}\n{}", e.message, exception_class(e.kind))
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        if e.status == StatusCode::METHOD_NOT_ALLOWED {
            // The disabled model API, in the words of TorchServe's management service.
            let disabled = ApiError::new(e.status, "ModelException", "Model API disabled");
            return Status::new(code(e.status), description(&disabled));
        }
        Status::new(code(e.status), description(&e))
    }
}

/// Errors TorchServe's inference service finds itself before a worker takes the request: it
/// answers them INTERNAL, where its management service says NOT_FOUND or INVALID_ARGUMENT.
fn refused_before_the_worker(e: &ApiError) -> bool {
    matches!(
        e.kind,
        "ModelNotFoundException"
            | "ModelVersionNotFoundException"
            | "BadRequestException"
            | "ServiceUnavailableException"
    )
}

/// The code of a prediction's error, as TorchServe's inference service picks it.
fn prediction_code(e: &ApiError) -> Code {
    if refused_before_the_worker(e) {
        Code::Internal
    } else {
        code(e.status)
    }
}

/// A failed prediction as the status that ends the call.
pub fn prediction_error(e: ApiError) -> Status {
    Status::new(prediction_code(&e), description(&e))
}

/// `google.rpc.ErrorInfo`, which TorchServe packs into an in-stream error.
#[derive(Clone, PartialEq, Message)]
struct ErrorInfo {
    #[prost(string, tag = "1")]
    reason: String,
}

/// A failed prediction inside StreamPredictions2, where an error answers one request and
/// the stream goes on: the code, the message, and the exception class as an `ErrorInfo`.
pub fn in_stream_error(e: ApiError) -> rpc::Status {
    let info = ErrorInfo {
        reason: exception_class(e.kind),
    };
    rpc::Status {
        code: prediction_code(&e) as i32,
        message: e.message,
        details: vec![prost_types::Any {
            type_url: "type.googleapis.com/google.rpc.ErrorInfo".into(),
            value: info.encode_to_vec(),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses_become_torchserve_grpc_codes() {
        let cases = [
            (400, Code::InvalidArgument),
            (403, Code::PermissionDenied),
            (404, Code::NotFound),
            (405, Code::PermissionDenied),
            (408, Code::FailedPrecondition),
            (409, Code::Aborted),
            (413, Code::ResourceExhausted),
            (500, Code::Internal),
            (503, Code::Unavailable),
            (504, Code::DeadlineExceeded),
            (507, Code::Internal),
        ];
        for (status, expected) in cases {
            assert_eq!(
                code(StatusCode::from_u16(status).unwrap()),
                expected,
                "{status}"
            );
        }
    }

    #[test]
    fn descriptions_name_torchserve_exception_classes() {
        let status = Status::from(ApiError::model_not_found("Model not found: m"));
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(
            status.message(),
            "Model not found: m\norg.pytorch.serve.archive.model.ModelNotFoundException"
        );
        let conflict = Status::from(ApiError::conflict("taken"));
        assert_eq!(
            conflict.message(),
            "taken\norg.pytorch.serve.http.ConflictStatusException"
        );
    }

    #[test]
    fn predictions_refused_up_front_are_internal() {
        let unknown = prediction_error(ApiError::model_not_found("Model not found: m"));
        assert_eq!(unknown.code(), Code::Internal);
        let handler = ApiError::new(
            StatusCode::from_u16(507).unwrap(),
            "PredictionException",
            "boom",
        );
        let failed = prediction_error(handler.clone());
        assert_eq!(failed.code(), Code::Internal);
        assert!(failed
            .message()
            .ends_with("org.pytorch.serve.http.InternalServerException"));
        let bad_input = ApiError::new(StatusCode::BAD_REQUEST, "PredictionException", "no");
        assert_eq!(prediction_error(bad_input).code(), Code::InvalidArgument);
        let in_stream = in_stream_error(handler);
        assert_eq!(in_stream.code, Code::Internal as i32);
        assert_eq!(in_stream.message, "boom");
        let info = ErrorInfo::decode(in_stream.details[0].value.as_slice()).unwrap();
        assert_eq!(
            info.reason,
            "org.pytorch.serve.http.InternalServerException"
        );
    }
}
