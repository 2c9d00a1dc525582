//! What the executor calls: a stage runs one model node, or a fused chain of nodes (functions,
//! possibly around the model node whose workers run them) in one worker call, each node with
//! its retry attempts and timeout.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use futures::future::{BoxFuture, FutureExt};

use super::spec::NodeProps;
use crate::error::ApiError;
use crate::job::{InferenceRequest, InferenceResponse};
use crate::metrics::NodeMetrics;
use crate::model::ServedModel;

/// A stage's output, shared by the stages it feeds, or the error that fails the request.
pub type StageResult = Result<Arc<InferenceResponse>, ApiError>;

/// Calls one stage of a workflow with its input: the request for the entry stage, the
/// parents' outputs otherwise. Implemented by local model nodes and fused function segments.
pub trait Stage: Send + Sync {
    /// Runs the stage's nodes on `input`, retrying and timing out each as its properties
    /// say, and reports each node that answered to `timings`; the error names the node that
    /// failed.
    fn call<'a>(
        &'a self,
        input: InferenceRequest,
        timings: Timings<'a>,
    ) -> BoxFuture<'a, StageResult>;
}

/// What one node spent on a request: the answer's `Server-Timing` entry for it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeTiming {
    /// The stage the node belongs to, which orders the entries.
    pub stage: usize,
    pub node: String,
    /// Over all its tries.
    pub took: Duration,
    pub tries: usize,
}

/// Where stage `stage` reports its nodes' timings for one request.
#[derive(Clone, Copy)]
pub struct Timings<'a> {
    pub log: &'a Mutex<Vec<NodeTiming>>,
    pub stage: usize,
}

impl Timings<'_> {
    /// Accounts one call of a node: its series in `metrics` (retries, failure, latency) and,
    /// when it answered, its timing.
    pub fn record_call(&self, metrics: &NodeMetrics, took: Duration, tries: usize, failed: bool) {
        metrics.record_call(took, tries - 1, failed);
        if !failed {
            self.record(&metrics.labels.node, took, tries);
        }
    }

    /// Records that `node` answered after `tries` tries taking `took` in all.
    pub fn record(&self, node: &str, took: Duration, tries: usize) {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(NodeTiming {
                stage: self.stage,
                node: node.to_string(),
                took,
                tries,
            });
    }
}

/// Why one try failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub reason: String,
    /// What the request answers if this is the last try: 500, or 503 when the callee could
    /// not take the request (no worker, full queue) as the model would answer on its own;
    /// a remote node answers 502, 503 or 504 as a gateway does.
    pub status: StatusCode,
}

impl Failure {
    /// A failure the request answers with 500.
    pub fn internal(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            status: StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn from_error(error: ApiError) -> Self {
        Self {
            status: if error.status == StatusCode::SERVICE_UNAVAILABLE {
                error.status
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            },
            reason: error.message,
        }
    }

    /// A handler that answered an error status.
    fn answered(status: u16, body: &[u8]) -> Self {
        Self::internal(format!(
            "handler answered {status}: {}",
            String::from_utf8_lossy(body)
        ))
    }

    /// The request's error after `tries` tries of the nodes `names` (one node, or a fused
    /// segment that failed as a whole).
    pub fn into_error(self, names: &[String], tries: usize) -> ApiError {
        let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
        let what = match quoted.as_slice() {
            [one] => format!("Workflow node {one}"),
            many => format!("Workflow nodes {}, run in one worker,", many.join(" -> ")),
        };
        let message = format!("{what} failed after {tries} attempt(s): {}", self.reason);
        let kind = match self.status {
            StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailableException",
            StatusCode::BAD_GATEWAY => "BadGatewayException",
            StatusCode::GATEWAY_TIMEOUT => "GatewayTimeoutException",
            _ => "InternalServerException",
        };
        ApiError::new(self.status, kind, message)
    }
}

/// The outcome of [`with_retries`].
pub struct Tries<T> {
    pub result: Result<T, Failure>,
    pub tries: usize,
    pub elapsed: Duration,
}

/// Makes up to `attempts` tries, each abandoned after `timeout` (a failure with status
/// `on_timeout`), until one succeeds. Dropping the future abandons the try in progress.
pub async fn with_retries<T, F, Fut>(
    attempts: usize,
    timeout: Duration,
    on_timeout: StatusCode,
    mut attempt: F,
) -> Tries<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let started = Instant::now();
    let mut result = Err(Failure::internal("no attempt was made"));
    let mut tries = 0;
    while tries < attempts.max(1) {
        tries += 1;
        result = match tokio::time::timeout(timeout, attempt()).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Failure {
                reason: format!("timed out after {} ms", timeout.as_millis()),
                status: on_timeout,
            }),
        };
        if result.is_ok() {
            break;
        }
    }
    Tries {
        result,
        tries,
        elapsed: started.elapsed(),
    }
}

/// A local node's try that times out fails as the node failed.
const INTERNAL: StatusCode = StatusCode::INTERNAL_SERVER_ERROR;

/// A fresh id for each call to a worker pool.
fn with_new_id(input: &InferenceRequest) -> InferenceRequest {
    let mut request = input.clone();
    request.id = uuid::Uuid::new_v4().to_string();
    request
}

/// A model node: each try is one request to the node model's worker pool; an abandoned try
/// that is still queued is skipped, and a worker stuck on it is killed by the model's
/// response timeout.
pub struct ModelNode {
    pub name: String,
    pub model: Arc<ServedModel>,
    pub props: NodeProps,
    pub metrics: Arc<NodeMetrics>,
}

impl Stage for ModelNode {
    fn call<'a>(
        &'a self,
        input: InferenceRequest,
        timings: Timings<'a>,
    ) -> BoxFuture<'a, StageResult> {
        async move {
            let timeout = Duration::from_millis(self.props.timeout_ms);
            let run = with_retries(self.props.retry_attempts + 1, timeout, INTERNAL, || async {
                match self.model.submit(with_new_id(&input), false).await {
                    Ok(output) if output.status < 400 => Ok(output),
                    Ok(output) => Err(Failure::answered(output.status, &output.body)),
                    Err(e) => Err(Failure::from_error(e)),
                }
            })
            .await;
            timings.record_call(&self.metrics, run.elapsed, run.tries, run.result.is_err());
            run.result
                .map(Arc::new)
                .map_err(|f| f.into_error(std::slice::from_ref(&self.name), run.tries))
        }
        .boxed()
    }
}

/// A chain of nodes fused into one worker call: the model's workers run every node in turn
/// (functions, and the model's handler when the model is one of them), each with its own
/// tries and timeout, and report per node. A call the workers could not take or answer at
/// all (no worker, a crash, the backstop timeout) is tried again as a whole, as many times
/// as the first node may be tried.
pub struct FusedNodes {
    /// Node names, in chain order.
    pub names: Vec<String>,
    pub model: Arc<ServedModel>,
    /// Per node, in chain order.
    pub metrics: Vec<Arc<NodeMetrics>>,
    pub attempts: usize,
    /// How long one call may take: every try of every node.
    pub budget: Duration,
}

impl FusedNodes {
    /// What the worker says happened to `output`; records each node's call, and the timing
    /// of each node that answered.
    fn account(&self, mut output: InferenceResponse, timings: Timings<'_>) -> StageResult {
        let Some(trace) = output.trace.take() else {
            return Err(ApiError::internal(format!(
                "the workers of {} answered without a segment trace",
                self.model.def.name
            )));
        };
        let ran = trace.nodes.len().min(self.names.len());
        for (k, &(micros, retries)) in trace.nodes.iter().take(ran).enumerate() {
            let failed = trace.failed.is_some() && k + 1 == ran;
            let took = Duration::from_micros(micros);
            timings.record_call(&self.metrics[k], took, retries + 1, failed);
        }
        let Some(failure) = trace.failed else {
            return Ok(Arc::new(output));
        };
        let Some(k) = ran.checked_sub(1) else {
            return Err(ApiError::internal("a segment failed before its first node"));
        };
        let failure = match failure.message {
            Some(reason) => Failure {
                status: if output.status == StatusCode::SERVICE_UNAVAILABLE.as_u16() {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    INTERNAL
                },
                reason,
            },
            None => Failure::answered(output.status, &output.body),
        };
        Err(failure.into_error(std::slice::from_ref(&self.names[k]), trace.nodes[k].1 + 1))
    }
}

impl Stage for FusedNodes {
    fn call<'a>(
        &'a self,
        input: InferenceRequest,
        timings: Timings<'a>,
    ) -> BoxFuture<'a, StageResult> {
        async move {
            let run = with_retries(self.attempts, self.budget, INTERNAL, || async {
                self.model
                    .submit_segment(with_new_id(&input))
                    .await
                    .map_err(Failure::from_error)
            })
            .await;
            match run.result {
                Ok(output) => self.account(output, timings),
                Err(failure) => {
                    timings.record_call(&self.metrics[0], run.elapsed, run.tries, true);
                    Err(failure.into_error(&self.names, run.tries))
                }
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn fail(reason: &str) -> Failure {
        Failure::internal(reason)
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_a_try_succeeds() {
        let calls = AtomicUsize::new(0);
        let run = with_retries(3, Duration::from_secs(1), INTERNAL, || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 => Err(fail("first")),
                n => Ok(n),
            }
        })
        .await;
        assert_eq!((run.result, run.tries), (Ok(1), 2));
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_failure_is_the_reason() {
        let calls = AtomicUsize::new(0);
        let run: Tries<()> = with_retries(2, Duration::from_secs(1), INTERNAL, || async {
            Err(fail(&format!(
                "try {}",
                calls.fetch_add(1, Ordering::SeqCst)
            )))
        })
        .await;
        assert_eq!((run.result, run.tries), (Err(fail("try 1")), 2));
        let error = fail("boom").into_error(&["pre".into()], 2);
        assert_eq!(error.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            error.message,
            "Workflow node \"pre\" failed after 2 attempt(s): boom"
        );
        let busy = Failure {
            status: StatusCode::SERVICE_UNAVAILABLE,
            ..fail("full")
        };
        let error = busy.into_error(&["a".into(), "b".into()], 1);
        assert_eq!(error.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(error
            .message
            .starts_with("Workflow nodes \"a\" -> \"b\", run in one worker,"));
    }

    #[tokio::test(start_paused = true)]
    async fn each_try_is_abandoned_at_the_timeout() {
        let calls = AtomicUsize::new(0);
        let started = tokio::time::Instant::now();
        let run = with_retries(2, Duration::from_millis(300), INTERNAL, || async {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            Ok("second")
        })
        .await;
        assert_eq!((run.result, run.tries), (Ok("second"), 2));
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        let run: Tries<()> = with_retries(
            2,
            Duration::from_millis(300),
            StatusCode::GATEWAY_TIMEOUT,
            std::future::pending,
        )
        .await;
        let timed_out = Failure {
            status: StatusCode::GATEWAY_TIMEOUT,
            ..fail("timed out after 300 ms")
        };
        assert_eq!(run.result, Err(timed_out.clone()));
        let error = timed_out.into_error(&["r".into()], 2);
        assert_eq!(
            (error.status.as_u16(), error.kind),
            (504, "GatewayTimeoutException")
        );
        assert_eq!(started.elapsed(), Duration::from_millis(900));
    }
}
