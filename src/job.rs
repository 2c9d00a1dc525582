//! An inference request on its way to a worker, and the answer that comes back.

use std::time::Instant;

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::error::ApiError;
use crate::worker::protocol::SegmentTrace;

/// One request as the handler sees it: headers and named parameters (body, form fields, parts).
#[derive(Debug, Clone, Default)]
pub struct InferenceRequest {
    pub id: String,
    /// Header names lower-case.
    pub headers: Vec<(String, String)>,
    pub params: Vec<Param>,
}

/// A body, form field or multipart part with its content type.
#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub content_type: Option<String>,
    pub value: Bytes,
}

/// A handler's output for one request.
#[derive(Debug, Clone)]
pub struct InferenceResponse {
    pub status: u16,
    pub content_type: Option<String>,
    /// Headers the handler set with `context.set_response_header`.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Set by the workers of a fused workflow segment: which of its nodes ran and failed.
    pub trace: Option<Box<SegmentTrace>>,
}

/// What a job's submitter gets back.
pub type JobResult = Result<InferenceResponse, ApiError>;

/// A request queued for a model's workers.
#[derive(Debug)]
pub struct Job {
    pub request: InferenceRequest,
    pub reply: oneshot::Sender<JobResult>,
    pub enqueued: Instant,
    /// Whether the request named the model version, for the metrics' `model_version` label.
    pub version_named: bool,
}

impl Job {
    /// Answers the job; a submitter that went away is ignored.
    pub fn finish(self, result: JobResult) {
        let _ = self.reply.send(result);
    }
}
