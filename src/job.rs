//! An inference request on its way to a worker, and the answer that comes back.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::stream::{self, BoxStream, StreamExt};
use tokio::sync::{mpsc, oneshot};

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
    /// The chunks that follow this one when the handler streams (sends partial results);
    /// None for a handler that answers once.
    pub more: Option<MoreChunks>,
}

/// What a job's submitter gets back.
pub type JobResult = Result<InferenceResponse, ApiError>;

/// How many chunks of a streamed answer wait for a client that has not read them: past that,
/// the worker's reader waits for the client (docs/security.md, "Streams").
pub const STREAM_BUFFER: usize = 4;

/// The chunks after the first of a streamed answer, in the order the handler sent them: the
/// last is its return value, and an error ends them. Clones share one receiver, which the
/// first [`MoreChunks::take`] gets.
#[derive(Debug, Clone)]
pub struct MoreChunks(Arc<Mutex<Option<mpsc::Receiver<JobResult>>>>);

impl MoreChunks {
    /// A stream of chunks, holding up to [`STREAM_BUFFER`] unread, and the sender that feeds
    /// it.
    pub fn channel() -> (mpsc::Sender<JobResult>, Self) {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        (tx, Self(Arc::new(Mutex::new(Some(rx)))))
    }

    /// The receiver, once.
    fn take(&self) -> Option<mpsc::Receiver<JobResult>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl InferenceResponse {
    /// The answer as one body: a streamed answer's chunks joined, with the first chunk's
    /// status, content type and headers; an error among the chunks fails it.
    pub async fn whole(mut self) -> JobResult {
        let Some(mut rest) = self.more.take().and_then(|more| more.take()) else {
            return Ok(self);
        };
        let mut body = BytesMut::from(&self.body[..]);
        while let Some(chunk) = rest.recv().await {
            body.extend_from_slice(&chunk?.body);
        }
        self.body = body.freeze();
        Ok(self)
    }

    /// The answer chunk by chunk: this one, then those that follow it.
    pub fn chunks(mut self) -> BoxStream<'static, JobResult> {
        let rest = self.more.take().and_then(|more| more.take());
        let first = stream::once(async move { Ok(self) });
        match rest {
            None => first.boxed(),
            Some(rest) => first
                .chain(stream::unfold(rest, |mut rest| async move {
                    rest.recv().await.map(|chunk| (chunk, rest))
                }))
                .boxed(),
        }
    }
}

/// A request queued for a model's workers.
#[derive(Debug)]
pub struct Job {
    pub request: InferenceRequest,
    pub reply: oneshot::Sender<JobResult>,
    pub enqueued: Instant,
    /// Whether the request named the model version, for the metrics' `model_version` label.
    pub version_named: bool,
    /// Whether the workers run the request through the fused workflow segment they hold
    /// rather than the model's handler alone (docs/protocol.md, `segment`).
    pub segment: bool,
}

impl Job {
    /// A job queued now, and the receiver of its answer.
    pub fn new(
        request: InferenceRequest,
        version_named: bool,
        segment: bool,
    ) -> (Self, oneshot::Receiver<JobResult>) {
        let (reply, answer) = oneshot::channel();
        let job = Self {
            request,
            reply,
            enqueued: Instant::now(),
            version_named,
            segment,
        };
        (job, answer)
    }

    /// Answers the job; a submitter that went away is ignored.
    pub fn finish(self, result: JobResult) {
        let _ = self.reply.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(body: &'static str) -> InferenceResponse {
        InferenceResponse {
            status: 200,
            content_type: Some("text/plain".into()),
            headers: Vec::new(),
            body: Bytes::from_static(body.as_bytes()),
            trace: None,
            more: None,
        }
    }

    /// A first chunk `a` followed by `rest`.
    fn streamed(rest: Vec<JobResult>) -> InferenceResponse {
        let (more, chunks) = MoreChunks::channel();
        for item in rest {
            more.try_send(item).unwrap();
        }
        InferenceResponse {
            more: Some(chunks),
            ..chunk("a")
        }
    }

    #[tokio::test]
    async fn whole_joins_the_chunks_and_fails_on_an_error() {
        let joined = streamed(vec![Ok(chunk("b")), Ok(chunk("c"))]).whole().await;
        assert_eq!(joined.unwrap().body, "abc");
        let failed = streamed(vec![Ok(chunk("b")), Err(ApiError::internal("boom"))]);
        assert_eq!(failed.whole().await.unwrap_err().message, "boom");
        assert_eq!(chunk("x").whole().await.unwrap().body, "x");
    }

    #[tokio::test]
    async fn chunks_are_the_first_then_the_rest() {
        let bodies: Vec<Bytes> = streamed(vec![Ok(chunk("b"))])
            .chunks()
            .map(|c| c.unwrap().body)
            .collect()
            .await;
        assert_eq!(bodies, ["a", "b"]);
        assert_eq!(chunk("x").chunks().count().await, 1);
    }
}
