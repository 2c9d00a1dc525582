//! The task that owns one worker: starts the process, loads the handler, feeds it batches from
//! the model's queue, and restarts it with backoff when it dies or hangs.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_channel::Receiver;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::batcher;
use super::dispatch::Dispatch;
use super::process::WorkerProcess;
use super::protocol::{
    Frame, FromWorker, LoadMessage, ParamMeta, RequestMeta, ResponseMeta, SegmentNode, ToWorker,
};
use super::rank_group::Parallelism;
use super::shared_memory::{is_shared, RegionLease};
use super::status::{WorkerState, WorkerStatus};
use super::template::ModelTemplate;
use super::threads::TorchThreads;
use super::{async_worker, continuous};
use crate::error::ApiError;
use crate::gpu::ModelGpus;
use crate::job::{InferenceRequest, InferenceResponse, Job, JobResult, MoreChunks};
use crate::metrics::ModelMetrics;
use crate::python_env::PythonEnv;

/// Everything a worker of one model needs, shared by all its workers.
pub struct WorkerSpec {
    pub model_name: String,
    pub model_version: String,
    pub model_dir: PathBuf,
    /// Packages installed for this model, put first on the worker's import path.
    pub deps_dir: Option<PathBuf>,
    pub handler: String,
    pub manifest: serde_json::Value,
    pub model_yaml_config: serde_json::Value,
    pub batch_size: usize,
    pub max_batch_delay: Duration,
    pub response_timeout: Duration,
    /// How long loading the handler may take before the worker is killed.
    pub startup_timeout: Duration,
    /// How long a failing worker is restarted before it gives up.
    pub max_retry_timeout: Duration,
    /// How long a job may wait in the queue before it is dropped.
    pub client_timeout: Option<Duration>,
    /// Free workers' tickets, when requests need one to be queued (`useJobTicket`).
    pub tickets: Option<JobTickets>,
    /// Whether the worker decodes JSON and text parameters (TorchServe's `decode_input_request`).
    pub decode_input_request: bool,
    /// The envelope of requests that name none (`service_envelope`; never a workflow node's).
    pub envelope: Option<String>,
    /// The function nodes a fused workflow segment runs, instead of `handler`.
    pub segment: Option<Arc<[SegmentNode]>>,
    pub python: PythonEnv,
    /// Which GPU each new worker gets.
    pub gpus: ModelGpus,
    /// torchrun workers: each worker is this many ranks (`parallelType`, `torchrun:`).
    pub parallel: Option<Parallelism>,
    pub metrics: ModelMetrics,
    pub queue: Receiver<Job>,
    /// Which workers are idle, and the requests to retry ahead of `queue`.
    pub dispatch: Dispatch,
    /// Workers of this model that have a loaded handler.
    pub ready_workers: AtomicUsize,
    /// The process that loads the handler once and forks the workers (template.rs).
    pub template: ModelTemplate,
    /// Torch threads each worker runs.
    pub threads: TorchThreads,
    /// Workers that gave up restarting (past `max_retry_timeout`) and serve no more.
    pub retired_workers: AtomicUsize,
    /// Batches in a row that got no answer within `response_timeout` (TorchServe logs the count).
    pub unanswered_in_a_row: AtomicUsize,
}

impl WorkerSpec {
    /// Answers every job waiting for any worker (retried or queued) with an error: no worker
    /// can serve them now.
    pub fn fail_queued(&self, reason: &str) {
        fail_queued(&self.dispatch.retried, reason);
        fail_queued(&self.queue, reason);
    }
}

/// TorchServe's job tickets: a worker waiting for work offers one, a request takes one to be
/// queued, and with none on offer the request is refused at once.
#[derive(Default)]
pub struct JobTickets(AtomicUsize);

impl JobTickets {
    /// Takes a ticket; false when no worker is free.
    pub fn take(&self) -> bool {
        self.0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Returns a ticket taken for a request that could not be queued after all.
    pub fn give_back(&self) {
        self.offer();
    }

    pub(super) fn offer(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A running worker task.
pub struct WorkerHandle {
    pub status: Arc<WorkerStatus>,
    /// This worker's own queue: the requests of the stateful sequences pinned to it, served
    /// before the model's queue.
    pub pinned: async_channel::Sender<Job>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl WorkerHandle {
    /// Asks the worker to stop after its current batch.
    pub fn stop(&self) {
        self.cancel.cancel();
    }

    /// Waits for the worker task to end.
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

/// Starts worker `id` of the model described by `spec`, on the next GPU it gets.
pub fn spawn_worker(spec: Arc<WorkerSpec>, id: usize) -> WorkerHandle {
    let status = Arc::new(WorkerStatus::new(id, spec.gpus.next_ids()));
    let cancel = CancellationToken::new();
    let (pinned, pinned_rx) = async_channel::unbounded();
    let task = tokio::spawn(supervise(spec, status.clone(), cancel.clone(), pinned_rx));
    WorkerHandle {
        status,
        pinned,
        cancel,
        task,
    }
}

/// Why a worker stopped serving.
pub(super) enum Exit {
    Cancelled,
    Crashed(String),
}

/// Restart delays: 0.1 s doubling up to 10 s.
struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(10);

    fn next(&mut self) -> Duration {
        let delay = self.0;
        self.0 = (self.0 * 2).min(Self::MAX);
        delay
    }
}

async fn supervise(
    spec: Arc<WorkerSpec>,
    status: Arc<WorkerStatus>,
    cancel: CancellationToken,
    pinned: Receiver<Job>,
) {
    static SOCKETS: AtomicUsize = AtomicUsize::new(0);
    let label = crate::metrics::worker_name(status.id, &spec.metrics.labels);
    let mut backoff = Backoff(Backoff::FIRST);
    // When the worker last went from working to failing; `None` while it works.
    let mut failing_since: Option<Instant> = None;
    let mut restarts = 0;
    while !cancel.is_cancelled() {
        status.set_state(WorkerState::Starting);
        let socket = spec
            .python
            .runtime_dir
            .join(format!("w{}.sock", SOCKETS.fetch_add(1, Ordering::Relaxed)));
        let loading = Instant::now();
        let started = tokio::select! {
            started = start(&spec, &label, &socket, &status, restarts) => started,
            _ = cancel.cancelled() => break,
        };
        let mut traceback_logged = false;
        let exit = match started {
            Ok(mut process) => {
                spec.metrics
                    .record_worker_load(status.id, loading.elapsed());
                backoff = Backoff(Backoff::FIRST);
                if failing_since.take().is_some() {
                    tracing::info!(
                        "worker {label}: Auto recovery succeeded, reset recoveryStartTS"
                    );
                }
                spec.ready_workers.fetch_add(1, Ordering::SeqCst);
                status.set_state(WorkerState::Ready);
                let exit = serve(&spec, &mut process, &cancel, &pinned).await;
                spec.ready_workers.fetch_sub(1, Ordering::SeqCst);
                match &exit {
                    Exit::Cancelled => process.stop().await,
                    Exit::Crashed(reason) => {
                        // Describe shows it down, with why, until its successor starts.
                        status.set_failure(
                            500,
                            format!("the worker broke ({reason}); it is restarted"),
                        );
                        status.set_state(WorkerState::Failed);
                        process.kill().await;
                        tracing::info!("{label} Worker disconnected. WORKER_MODEL_LOADED");
                    }
                }
                exit
            }
            Err(failure) => {
                status.set_failure(failure.status, failure.message.clone());
                status.set_state(WorkerState::Failed);
                if spec.ready_workers.load(Ordering::SeqCst) == 0 {
                    spec.fail_queued(&failure.message);
                }
                traceback_logged = failure.traceback_logged;
                Exit::Crashed(failure.message)
            }
        };
        status.set_pid(0);
        let Exit::Crashed(reason) = exit else { break };
        restarts += 1;
        let since = match failing_since {
            Some(since) => {
                tracing::warn!("worker {label}: Auto recovery failed again");
                since
            }
            None => {
                tracing::info!(
                    "worker {label}: Auto recovery start timestamp: {}",
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |since| since.as_millis())
                );
                *failing_since.insert(Instant::now())
            }
        };
        if since.elapsed() >= spec.max_retry_timeout {
            fail_queued(&pinned, &reason);
            retire(&spec, &status, &label, &reason, &cancel).await;
            return;
        }
        let delay = backoff.next();
        // A load failure's last model-log line is its exception; repeating it here would split
        // the traceback for readers that key on that line (TorchServe's tests do).
        let shown = if traceback_logged {
            "the handler failed to load; its traceback is in the model log"
        } else {
            reason.as_str()
        };
        tracing::warn!("worker {label} stopped ({shown}). Retry worker: {label} in {delay:?}.");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => break,
        }
    }
    fail_queued(&pinned, "the worker stopped");
    status.set_state(WorkerState::Stopped);
}

/// Gives up on a worker that kept failing for `max_retry_timeout` (TorchServe's
/// `maxRetryTimeoutInSec`): it stays `FAILED`, with the reason, until it is scaled away.
async fn retire(
    spec: &WorkerSpec,
    status: &WorkerStatus,
    label: &str,
    reason: &str,
    cancel: &CancellationToken,
) {
    let limit = spec.max_retry_timeout.as_secs();
    let message = format!(
        "worker gave up after failing for maxRetryTimeoutInSec ({limit}s); last failure: {reason}"
    );
    tracing::error!("worker {label}: {message}");
    status.set_failure(
        status.failure().map_or(500, |(code, _)| code),
        message.clone(),
    );
    status.set_state(WorkerState::Failed);
    spec.retired_workers.fetch_add(1, Ordering::SeqCst);
    if spec.ready_workers.load(Ordering::SeqCst) == 0 {
        spec.fail_queued(&message);
    }
    cancel.cancelled().await;
    spec.retired_workers.fetch_sub(1, Ordering::SeqCst);
    status.set_state(WorkerState::Stopped);
}

/// Why a worker did not start.
struct StartFailure {
    /// The status a registration waiting on the worker answers.
    status: u16,
    message: String,
    /// The worker logged the handler's traceback before it answered.
    traceback_logged: bool,
}

impl StartFailure {
    /// A failure of the server's side: starting the process or talking to it.
    fn server(message: String) -> Self {
        Self {
            status: 500,
            message,
            traceback_logged: false,
        }
    }
}

/// Starts the process (a torchrun worker's ranks, its `restarts`-th time) and loads the
/// handler; the error says why not.
async fn start(
    spec: &WorkerSpec,
    label: &str,
    socket: &std::path::Path,
    status: &WorkerStatus,
    restarts: usize,
) -> Result<WorkerProcess, StartFailure> {
    let threads = spec.parallel.is_none().then(|| spec.threads.per_worker());
    let cores = status.cores();
    let load = ToWorker::Load(LoadMessage {
        model_name: &spec.model_name,
        model_version: &spec.model_version,
        model_dir: &spec.model_dir.to_string_lossy(),
        handler: &spec.handler,
        manifest: &spec.manifest,
        batch_size: spec.batch_size,
        gpu_id: status.gpu_id,
        limit_max_image_pixels: true,
        decode_input_request: spec.decode_input_request,
        envelope: spec.envelope.as_deref(),
        model_yaml_config: &spec.model_yaml_config,
        metrics: spec.metrics.declared_handler_metrics(),
        server_name: "torchyard",
        server_version: env!("CARGO_PKG_VERSION"),
        threads,
        cores: &cores,
        shared_memory_threshold: spec.python.shared_memory_threshold,
        segment: spec.segment.as_deref(),
    });
    let process = match &spec.parallel {
        Some(parallel) => {
            parallel
                .start(spec, label, socket, &status.gpu_ids, restarts)
                .await
        }
        None => match spec
            .template
            .fork_worker(spec, &load, socket, label, status.gpu_id)
            .await
        {
            Some(process) => Ok(process),
            None => {
                WorkerProcess::start(
                    &spec.python,
                    spec.deps_dir.as_deref(),
                    label,
                    socket,
                    &spec.model_dir,
                )
                .await
            }
        },
    };
    let mut process =
        process.map_err(|e| StartFailure::server(format!("cannot start worker: {e}")))?;
    process.threads = threads;
    status.set_start_mode(process.start_mode());
    let loaded = tokio::time::timeout(spec.startup_timeout, process.call(&load, &[])).await;
    let Ok(reply) = loaded else {
        process.kill().await;
        // TorchServe's two lines (its WorkerThread's error and the exception's first line),
        // which log readers of TorchServe wait for.
        tracing::error!(
            "worker {label}: Backend worker error\n\
             org.pytorch.serve.wlm.WorkerInitializationException: Backend worker did not respond \
             in given time (startupTimeout {}s)",
            spec.startup_timeout.as_secs()
        );
        return Err(StartFailure::server(format!(
            "Backend worker did not respond in given time: the handler did not load within \
             startupTimeout ({}s)",
            spec.startup_timeout.as_secs()
        )));
    };
    match reply.and_then(|frame| frame.message::<FromWorker>()) {
        Ok(FromWorker::Loaded { pid, metrics }) => {
            spec.metrics.record_handler_metrics(&metrics);
            status.set_pid(pid.unwrap_or(0));
            Ok(process)
        }
        Ok(FromWorker::Error {
            status,
            message,
            metrics,
            ..
        }) => {
            spec.metrics.record_handler_metrics(&metrics);
            process.kill().await;
            Err(StartFailure {
                status: status.unwrap_or(500),
                message: format!("handler failed to load: {message}"),
                traceback_logged: true,
            })
        }
        Ok(other) => {
            process.kill().await;
            Err(StartFailure::server(format!(
                "unexpected reply to load: {other:?}"
            )))
        }
        Err(e) => {
            process.kill().await;
            Err(StartFailure::server(format!(
                "worker died while loading: {e}"
            )))
        }
    }
}

/// Batches a worker holds at once: the next goes out while the worker still runs one, so it
/// finds its next batch waiting when it finishes instead of a round trip through the server.
const PIPELINE_DEPTH: usize = 2;

/// A batch goes out ahead only up to this many bytes of request bodies in its frame (bodies in
/// shared memory do not count): it then fits in the socket's buffer, so sending it never waits
/// on the worker, which may be writing its reply.
const SEND_AHEAD_LIMIT: usize = 64 * 1024;

/// Feeds batches to a loaded worker until it is cancelled or breaks (see [`serve_batches`]);
/// with job tickets, withdraws the ticket it offered while it waited, if no request took it.
async fn serve(
    spec: &WorkerSpec,
    process: &mut WorkerProcess,
    cancel: &CancellationToken,
    pinned: &Receiver<Job>,
) -> Exit {
    if continuous::enabled(spec) {
        return continuous::serve(spec, process, cancel, pinned).await;
    }
    if async_worker::enabled(spec) {
        return async_worker::serve(spec, process, cancel, pinned).await;
    }
    let mut offered = false;
    let exit = serve_batches(spec, process, cancel, pinned, &mut offered).await;
    if let (Some(tickets), true) = (&spec.tickets, offered) {
        tickets.take();
    }
    exit
}

/// Feeds batches to a loaded worker until it is cancelled or breaks. While a batch runs, the
/// next is sent ahead when it can be formed at once: with batch size 1, greedy batching
/// (`max_batch_delay` 0), or a full batch already queued; never with job tickets, where a
/// worker takes work only when it is free, nor with a client timeout, checked as a job
/// starts; and the model's shared queue only while no other worker is idle, so a request never
/// waits behind a busy worker while another could run it. Requests of the sequences pinned to
/// this worker (`pinned`) go first, batched among themselves, then those a dying worker never
/// started. `offered`: whether the worker offers a job ticket.
async fn serve_batches(
    spec: &WorkerSpec,
    process: &mut WorkerProcess,
    cancel: &CancellationToken,
    pinned: &Receiver<Job>,
    offered: &mut bool,
) -> Exit {
    let mut flights: VecDeque<Flight> = VecDeque::with_capacity(PIPELINE_DEPTH);
    // A batch formed while another ran, too large to send ahead, and whether it is pinned.
    let mut held: Option<(Vec<Job>, bool)> = None;
    let mut queue_done = false;
    let mut idle = spec.dispatch.idle_mark();
    let mut idle_changes = spec.dispatch.watch_idle();
    // One timer for the worker's life, pushed later as batches go out: a timer made per batch
    // would, each time, wake the runtime thread parked on I/O to shorten its wait.
    let deadline = tokio::time::sleep(spec.response_timeout);
    tokio::pin!(deadline);
    let rearm = |deadline: std::pin::Pin<&mut tokio::time::Sleep>| {
        deadline.reset(tokio::time::Instant::now() + spec.response_timeout)
    };
    loop {
        let stopping = cancel.is_cancelled() || (queue_done && spec.dispatch.retried.is_empty());
        if flights.is_empty() {
            if let Some((batch, from_pinned)) = held.take() {
                rearm(deadline.as_mut());
                if let Err(message) = send(spec, process, batch, from_pinned, &mut flights).await {
                    return crash(spec, flights, None, message, false);
                }
                continue;
            }
            if stopping {
                return Exit::Cancelled;
            }
        }
        let send_ahead = !stopping
            && held.is_none()
            && flights.len() < PIPELINE_DEPTH
            && (flights.is_empty()
                || (spec.tickets.is_none()
                    && spec.client_timeout.is_none()
                    && (spec.batch_size == 1
                        || spec.max_batch_delay.is_zero()
                        || spec.queue.len() >= spec.batch_size)));
        idle.set(flights.is_empty() && send_ahead);
        let idle_now = spec.dispatch.idle_workers();
        let shared = send_ahead && (flights.is_empty() || idle_now == 0);
        if let (Some(tickets), true, false) =
            (&spec.tickets, flights.is_empty() && send_ahead, *offered)
        {
            tickets.offer();
            *offered = true;
        }
        // A batch that waits to fill is formed by one worker at a time (TorchServe's model lock).
        let forms_alone =
            flights.is_empty() && spec.batch_size > 1 && !spec.max_batch_delay.is_zero();
        let (first, source, forming) = match tokio::select! {
            biased;
            frame = process.receive_or_break(!flights.is_empty()) => Err(frame),
            () = &mut deadline, if !flights.is_empty() => {
                let failed = spec.unanswered_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::error!(
                    "model {}: Number or consecutive unsuccessful inference {failed}",
                    spec.model_name
                );
                let message = format!(
                    "no response within {}s",
                    spec.response_timeout.as_secs_f64()
                );
                return crash(spec, flights, held, message, true);
            }
            () = cancel.cancelled(), if !stopping => continue,
            Ok(job) = pinned.recv(), if send_ahead => Ok((job, pinned, None)),
            Ok(job) = spec.dispatch.retried.recv(), if shared => {
                Ok((job, &spec.dispatch.retried, None))
            }
            (forming, job) = spec.dispatch.next_to_form(&spec.queue),
                if shared && !queue_done && forms_alone => {
                let Ok(job) = job else {
                    queue_done = true;
                    continue;
                };
                Ok((job, &spec.queue, Some(forming)))
            }
            job = spec.queue.recv(), if shared && !queue_done && !forms_alone => {
                let Ok(job) = job else {
                    queue_done = true;
                    continue;
                };
                Ok((job, &spec.queue, None))
            }
            // A batch runs: whether the next may go ahead changes as other workers go idle.
            _ = idle_changes.wait_for(|&n| (n == 0) != (idle_now == 0)),
                if send_ahead && !flights.is_empty() => continue,
        } {
            Ok(job) => job,
            Err(frame) => {
                let frame = match frame {
                    Ok(frame) => frame,
                    Err(e) => {
                        let message = format!("worker connection lost: {e}");
                        return crash(spec, flights, held, message, true);
                    }
                };
                let head = flights.front_mut().expect("a batch in flight");
                let outcome = head.take(frame, spec).await;
                // After a wait for a client to read, the worker's time counts from now.
                rearm(deadline.as_mut());
                let Some(outcome) = outcome else {
                    if let Err(message) = head.cancel_ended(spec, process).await {
                        return crash(spec, flights, held, message, true);
                    }
                    continue;
                };
                let head = flights.pop_front().expect("a batch in flight");
                if let Err(message) = head.finish(spec, outcome) {
                    return crash(spec, flights, held, message, false);
                }
                continue;
            }
        };
        idle.set(false);
        *offered = false;
        let from_pinned = std::ptr::eq(source, pinned);
        let delay = if flights.is_empty() {
            spec.max_batch_delay
        } else {
            Duration::ZERO
        };
        let mut batch = batcher::collect(source, first, spec.batch_size, delay).await;
        drop(forming);
        batch.retain(|job| !job.reply.is_closed());
        if let Some(limit) = spec.client_timeout {
            drop_expired(spec, &mut batch, limit);
        }
        if batch.is_empty() {
            continue;
        }
        let share_above = spec.python.shared_memory_threshold;
        if !flights.is_empty()
            && framed_body_bytes(&batch, share_above, |len| process.can_share(len))
                > SEND_AHEAD_LIMIT
        {
            held = Some((batch, from_pinned));
            continue;
        }
        if flights.is_empty() {
            rearm(deadline.as_mut());
        }
        if let Err(message) = send(spec, process, batch, from_pinned, &mut flights).await {
            let head_started = flights.len() > 1;
            return crash(spec, flights, None, message, head_started);
        }
    }
}

/// Answers and removes the jobs of `batch` that waited in the queue longer than `limit`
/// (`clientTimeoutInMills`).
pub(super) fn drop_expired(spec: &WorkerSpec, batch: &mut Vec<Job>, limit: Duration) {
    let (fresh, expired): (Vec<Job>, Vec<Job>) = std::mem::take(batch)
        .into_iter()
        .partition(|job| job.enqueued.elapsed() < limit);
    *batch = fresh;
    for job in expired {
        tracing::warn!(
            "model {}: dropping inference request {} due to client timeout",
            spec.model_name,
            job.request.id
        );
        job.finish(Err(ApiError::unavailable(format!(
            "Model \"{}\" dropped the request: it waited longer than clientTimeoutInMills ({} ms)",
            spec.model_name,
            limit.as_millis()
        ))));
    }
}

/// Bytes of request bodies that travel in a batch's frame: all but those of at least
/// `share_above` bytes (0: none), which go in shared memory when a region can take them all
/// (`can_share` of their bytes, [`WorkerProcess::can_share`]).
fn framed_body_bytes(
    batch: &[Job],
    share_above: usize,
    can_share: impl Fn(usize) -> bool,
) -> usize {
    let (mut shared, mut framed) = (0, 0);
    for param in batch.iter().flat_map(|job| &job.request.params) {
        match is_shared(param.value.len(), share_above) {
            true => shared += param.value.len(),
            false => framed += param.value.len(),
        }
    }
    match shared == 0 || can_share(shared) {
        true => framed,
        false => framed + shared,
    }
}

/// Sends a batch to the worker and puts it in flight; `pinned`: whether it holds the requests
/// of sequences pinned to the worker. The error says why the worker broke.
async fn send(
    spec: &WorkerSpec,
    process: &mut WorkerProcess,
    batch: Vec<Job>,
    pinned: bool,
    flights: &mut VecDeque<Flight>,
) -> Result<(), String> {
    spec.metrics.record_batch(batch.len());
    flights.push_back(Flight::new(batch, pinned));
    dispatch(
        spec,
        process,
        flights.back_mut().expect("just pushed"),
        None,
    )
    .await
}

/// Sends a flight's batch to the worker as a `predict` message; an async worker's replies name
/// the batch by `number`. The flight holds the shared-memory region its bodies went in.
pub(super) async fn dispatch(
    spec: &WorkerSpec,
    process: &mut WorkerProcess,
    flight: &mut Flight,
    number: Option<u64>,
) -> Result<(), String> {
    let mut blobs: Vec<&Bytes> = Vec::new();
    let requests: Vec<RequestMeta<'_>> = flight
        .batch
        .iter()
        .map(|job| RequestMeta {
            id: &job.request.id,
            headers: &job.request.headers,
            segment: job.segment,
            params: job
                .request
                .params
                .iter()
                .map(|p| ParamMeta::new(p, spec.decode_input_request, &mut blobs))
                .collect(),
        })
        .collect();
    let threads = process
        .threads
        .map(|_| spec.threads.per_worker())
        .filter(|&wanted| process.threads != Some(wanted));
    let message = ToWorker::Predict {
        requests,
        blobs: blobs.iter().map(|b| b.len()).collect(),
        batch: number,
        threads,
    };
    if threads.is_some() {
        process.threads = threads;
    }
    let region = process
        .send(&message, &blobs, spec.python.shared_memory_threshold)
        .await
        .map_err(|e| format!("worker connection lost: {e}"))?;
    flight.region = region;
    Ok(())
}

/// Answers the batch the worker was running (the first in flight, with `head_started`) with
/// the worker's failure; the batches it never started, sent behind that one or formed and not
/// sent, go to another worker (see [`Dispatch::retry_unstarted`]).
pub(super) fn crash(
    spec: &WorkerSpec,
    flights: VecDeque<Flight>,
    held: Option<(Vec<Job>, bool)>,
    message: String,
    head_started: bool,
) -> Exit {
    let mut flights = flights.into_iter();
    if head_started {
        let error = worker_failed(spec, &message);
        for answer in flights.next().into_iter().flat_map(|f| f.answers) {
            answer.finish(Err(error.clone()));
        }
    }
    for flight in flights {
        let pinned = flight.pinned;
        spec.dispatch
            .retry_unstarted(flight.into_jobs(), pinned, &spec.model_name);
    }
    if let Some((jobs, pinned)) = held {
        spec.dispatch
            .retry_unstarted(jobs, pinned, &spec.model_name);
    }
    Exit::Crashed(message)
}

/// Answers every batch in flight with the worker's failure, for a worker that runs them all at
/// once (an async worker): each had started.
pub(super) fn crash_all(
    spec: &WorkerSpec,
    flights: impl IntoIterator<Item = Flight>,
    message: String,
) -> Exit {
    let error = worker_failed(spec, &message);
    for answer in flights.into_iter().flat_map(|flight| flight.answers) {
        answer.finish(Err(error.clone()));
    }
    Exit::Crashed(message)
}

/// The error a job gets when its worker broke.
pub(super) fn worker_failed(spec: &WorkerSpec, message: &str) -> ApiError {
    ApiError::internal(format!(
        "Worker for model {} failed: {message}",
        spec.model_name
    ))
}

/// A batch sent to the worker whose reply has not all come.
pub(super) struct Flight {
    pub(super) batch: Vec<Batched>,
    pub(super) answers: Vec<Answer>,
    /// When the batch was sent.
    pub(super) scheduled: Instant,
    /// Whether it holds requests of sequences pinned to the worker.
    pub(super) pinned: bool,
    /// The requests whose streamed answer ended early (the client went away or stopped
    /// reading), which the worker is yet to be told to stop.
    pub(super) ended: Vec<usize>,
    /// The shared-memory region the batch's bodies went in: busy until the reply has come.
    pub(super) region: Option<RegionLease>,
}

impl Flight {
    /// A batch of queued jobs, sent now; `pinned` as the field.
    pub(super) fn new(jobs: Vec<Job>, pinned: bool) -> Self {
        let (batch, answers) = jobs.into_iter().map(Batched::from_job).unzip();
        Self {
            batch,
            answers,
            scheduled: Instant::now(),
            pinned,
            ended: Vec::new(),
            region: None,
        }
    }

    /// Tells the worker to stop the requests whose answer ended early (see `cancel` in
    /// docs/protocol.md); not torchrun workers, whose ranks could stop at different points of
    /// the handler's collectives. The error says why the worker broke.
    pub(super) async fn cancel_ended(
        &mut self,
        spec: &WorkerSpec,
        process: &mut WorkerProcess,
    ) -> Result<(), String> {
        if self.ended.is_empty() || spec.parallel.is_some() {
            self.ended.clear();
            return Ok(());
        }
        let ids = self
            .ended
            .drain(..)
            .filter_map(|index| self.batch.get(index))
            .map(|job| job.request.id.as_str())
            .collect::<Vec<_>>();
        tracing::info!("cancelling requests {ids:?}: their clients went away or stopped reading");
        process
            .send(&ToWorker::Cancel { ids }, &[], 0)
            .await
            .map(drop)
            .map_err(|e| format!("worker connection lost: {e}"))
    }

    /// The batch's jobs back, for a batch the worker never started (no partial answer sent).
    fn into_jobs(self) -> Vec<Job> {
        self.batch
            .into_iter()
            .zip(self.answers)
            .filter_map(|(job, answer)| match answer {
                Answer::Reply(reply) => Some(Job {
                    request: job.request,
                    reply,
                    enqueued: job.enqueued,
                    version_named: job.version_named,
                    segment: job.segment,
                }),
                Answer::Stream(_) | Answer::Gone => None,
            })
            .collect()
    }

    /// Takes in one frame of the reply: forwards a streaming handler's chunks to their jobs
    /// (waiting up to `spec.response_timeout` for a client that does not read them, see
    /// [`Answer::partial`]) and returns `None` until the final frame, whose outcome it returns;
    /// the handler's metrics and the worker's `PredictionTime` go to the model's metrics.
    pub(super) async fn take(
        &mut self,
        frame: Frame,
        spec: &WorkerSpec,
    ) -> Option<Result<Vec<InferenceResponse>, Failure>> {
        let metrics = &spec.metrics;
        let broken = |e: std::io::Error| Failure::Worker(format!("bad reply: {e}"));
        let message = match frame.message::<FromWorker>() {
            Ok(message) => message,
            Err(e) => return Some(Err(broken(e))),
        };
        let outcome = match message {
            FromWorker::Intermediate { responses } => {
                let bodies = match frame.split_blobs() {
                    Ok(bodies) => bodies,
                    Err(e) => return Some(Err(broken(e))),
                };
                for (index, response) in responses.into_iter().enumerate() {
                    let index = response.index.unwrap_or(index);
                    let chunk = match chunk(response, &bodies) {
                        Ok(chunk) => chunk,
                        Err(failure) => return Some(Err(failure)),
                    };
                    if let Some(answer) = self.answers.get_mut(index) {
                        if answer.partial(chunk, spec.response_timeout).await {
                            self.ended.push(index);
                        }
                    }
                }
                return None;
            }
            FromWorker::Predicted {
                responses,
                prediction_us,
                metrics: recorded,
            } => {
                metrics.record_handler_metrics(&recorded);
                metrics.record_prediction_time(Duration::from_micros(prediction_us));
                match frame.split_blobs() {
                    Err(e) => Err(broken(e)),
                    Ok(_) if responses.len() != self.batch.len() => {
                        Err(Failure::Handler(ApiError::internal(format!(
                            "worker returned {} responses for a batch of {}",
                            responses.len(),
                            self.batch.len()
                        ))))
                    }
                    Ok(bodies) => responses.into_iter().map(|r| chunk(r, &bodies)).collect(),
                }
            }
            FromWorker::Error {
                status,
                error_type,
                message,
                metrics: recorded,
            } => {
                metrics.record_handler_metrics(&recorded);
                let code = status
                    .and_then(|s| axum::http::StatusCode::from_u16(s).ok())
                    .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
                let kind = match error_type.as_deref() {
                    Some("PredictionException") => "PredictionException",
                    _ => "InternalServerException",
                };
                Err(Failure::Handler(ApiError::new(code, kind, message)))
            }
            FromWorker::Loaded { .. } => Err(Failure::Worker("unexpected 'loaded' reply".into())),
        };
        Some(outcome)
    }

    /// Answers the batch's jobs with its outcome; `Err` with the reason when the worker broke.
    pub(super) fn finish(
        self,
        spec: &WorkerSpec,
        outcome: Result<Vec<InferenceResponse>, Failure>,
    ) -> Result<(), String> {
        let answering = Instant::now();
        match outcome {
            Ok(responses) => {
                if spec.unanswered_in_a_row.load(Ordering::Relaxed) != 0 {
                    spec.unanswered_in_a_row.store(0, Ordering::Relaxed);
                }
                let handled = answering - self.scheduled;
                for ((job, answer), mut response) in
                    self.batch.iter().zip(self.answers).zip(responses)
                {
                    job.record_answered(spec, self.scheduled, handled, &mut response);
                    answer.finish(Ok(response));
                }
            }
            Err(Failure::Handler(error)) => {
                for answer in self.answers {
                    answer.finish(Err(error.clone()));
                }
            }
            Err(Failure::Worker(message)) => {
                let error = worker_failed(spec, &message);
                for answer in self.answers {
                    answer.finish(Err(error.clone()));
                }
                return Err(message);
            }
        }
        spec.metrics.record_worker_thread(answering.elapsed());
        Ok(())
    }
}

/// A job of the batch in flight, without its reply (which its [`Answer`] holds).
pub(super) struct Batched {
    pub(super) request: InferenceRequest,
    pub(super) enqueued: Instant,
    pub(super) version_named: bool,
    segment: bool,
}

impl Batched {
    /// Splits a job into the request and where its answer goes.
    /// Records the wait of a job answered from a batch `scheduled` then, which the handler took
    /// `handled` over, and puts both on its answer's `Server-Timing` header. As in TorchServe,
    /// only answered requests count their wait.
    pub(super) fn record_answered(
        &self,
        spec: &WorkerSpec,
        scheduled: Instant,
        handled: Duration,
        response: &mut InferenceResponse,
    ) {
        let waited = scheduled - self.enqueued;
        spec.metrics.record_queue_wait(self.version_named, waited);
        response.headers.push((
            crate::timing::SERVER_TIMING.into(),
            format!(
                "{}, {}",
                crate::timing::entry("queue", waited),
                crate::timing::entry("handler", handled)
            ),
        ));
    }

    fn from_job(job: Job) -> (Self, Answer) {
        let batched = Self {
            request: job.request,
            enqueued: job.enqueued,
            version_named: job.version_named,
            segment: job.segment,
        };
        (batched, Answer::Reply(job.reply))
    }
}

/// Where a job's answer goes: its reply, until the handler sends a partial result; then the
/// stream that the reply's first chunk opened.
pub(super) enum Answer {
    Reply(oneshot::Sender<JobResult>),
    Stream(mpsc::Sender<JobResult>),
    Gone,
}

impl Answer {
    /// Whether the client went away (or the answer is complete): nothing more reaches it.
    pub(super) fn is_gone(&self) -> bool {
        match self {
            Answer::Reply(reply) => reply.is_closed(),
            Answer::Stream(more) => more.is_closed(),
            Answer::Gone => true,
        }
    }

    /// Sends a partial result: the first opens the stream. While the client has not read the
    /// chunks buffered before this one, waits up to `wait` for it to (leaving room in the
    /// stream for the last chunk or an error); past that, the answer ends with an error. True
    /// when the answer ended now: the client went away or did not read in time.
    pub(super) async fn partial(&mut self, mut chunk: InferenceResponse, wait: Duration) -> bool {
        match std::mem::replace(self, Answer::Gone) {
            Answer::Reply(reply) => {
                let (more, rest) = MoreChunks::channel();
                chunk.more = Some(rest);
                if reply.send(Ok(chunk)).is_ok() {
                    *self = Answer::Stream(more);
                }
            }
            Answer::Stream(more) => {
                match tokio::time::timeout(wait, more.reserve_many(2)).await {
                    Ok(Ok(mut room)) => room.next().expect("two permits").send(Ok(chunk)),
                    Ok(Err(_)) => return true,
                    Err(_) => {
                        let _ = more.try_send(Err(ApiError::unavailable(format!(
                            "The client did not read the streamed answer for {}s \
                             (responseTimeout): the request is cancelled",
                            wait.as_secs_f64()
                        ))));
                        return true;
                    }
                }
                *self = Answer::Stream(more);
            }
            Answer::Gone => return false,
        }
        matches!(self, Answer::Gone)
    }

    /// Sends the last chunk, or the only one. A stream always has room for it: a partial
    /// result leaves one place free.
    pub(super) fn finish(self, result: JobResult) {
        match self {
            Answer::Reply(reply) => {
                let _ = reply.send(result);
            }
            Answer::Stream(more) => {
                let _ = more.try_send(result);
            }
            Answer::Gone => {}
        }
    }
}

/// How a batch failed: the handler raised (the worker lives on) or the worker itself broke.
pub(super) enum Failure {
    Handler(ApiError),
    Worker(String),
}

/// One handler output of a reply frame.
fn chunk(response: ResponseMeta, bodies: &[Bytes]) -> Result<InferenceResponse, Failure> {
    let body = bodies
        .get(response.blob)
        .cloned()
        .ok_or_else(|| Failure::Worker(format!("response blob {} missing", response.blob)))?;
    Ok(InferenceResponse {
        status: response.status.unwrap_or(200),
        content_type: response.content_type,
        headers: response.headers,
        body,
        trace: response.trace,
        more: None,
    })
}

/// Answers every queued job with an error: no worker can serve them now.
fn fail_queued(queue: &Receiver<Job>, reason: &str) {
    while let Ok(job) = queue.try_recv() {
        job.finish(Err(ApiError::unavailable(format!(
            "No worker is available to serve the request: {reason}"
        ))));
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::job::{Param, STREAM_BUFFER};

    fn chunk(body: &'static str) -> InferenceResponse {
        InferenceResponse {
            status: 200,
            content_type: None,
            headers: Vec::new(),
            body: Bytes::from_static(body.as_bytes()),
            trace: None,
            more: None,
        }
    }

    const WAIT: Duration = Duration::from_secs(5);

    /// Bodies at or above the threshold leave the frame only when a region can take them: a
    /// batch sent ahead never puts more than it counts in the socket.
    #[test]
    fn bodies_count_in_the_frame_unless_a_region_takes_them() {
        let job = |sizes: &[usize]| {
            let params = sizes.iter().map(|&len| Param {
                name: "body".into(),
                content_type: None,
                value: Bytes::from(vec![0; len]),
            });
            let request = InferenceRequest {
                id: "r".into(),
                headers: Vec::new(),
                params: params.collect(),
            };
            Job::new(request, false, false).0
        };
        let batch = [job(&[10, 100]), job(&[200])];
        assert_eq!(framed_body_bytes(&batch, 0, |_| true), 310);
        assert_eq!(framed_body_bytes(&batch, 100, |len| len == 300), 10);
        assert_eq!(framed_body_bytes(&batch, 100, |_| false), 310);
        assert_eq!(framed_body_bytes(&batch, 1000, |_| false), 310);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_nobody_reads_waits_then_ends_with_an_error() {
        let (reply, first) = oneshot::channel();
        let mut answer = Answer::Reply(reply);
        assert!(!answer.partial(chunk("a"), WAIT).await);
        // Chunks fit while a place stays free for the last one.
        for _ in 1..STREAM_BUFFER {
            assert!(!answer.partial(chunk("b"), WAIT).await);
        }
        let started = tokio::time::Instant::now();
        assert!(answer.partial(chunk("c"), WAIT).await);
        assert_eq!(started.elapsed(), WAIT);
        let received: Vec<JobResult> = first.await.unwrap().unwrap().chunks().collect().await;
        assert_eq!(received.len(), STREAM_BUFFER + 1);
        let error = received.last().unwrap().as_ref().unwrap_err();
        assert!(error.message.contains("did not read"), "{}", error.message);
        // The answer is over: a later chunk is not another ending.
        assert!(!answer.partial(chunk("d"), WAIT).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_makes_room_and_a_client_that_left_ends_the_answer() {
        let (reply, first) = oneshot::channel();
        let mut answer = Answer::Reply(reply);
        assert!(!answer.partial(chunk("a"), WAIT).await);
        let mut chunks = first.await.unwrap().unwrap().chunks();
        for _ in 1..STREAM_BUFFER {
            assert!(!answer.partial(chunk("b"), WAIT).await);
        }
        let reader = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            // The first chunk, then one that held a place.
            chunks.next().await;
            chunks.next().await;
            chunks
        });
        let started = tokio::time::Instant::now();
        assert!(!answer.partial(chunk("c"), WAIT).await);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        drop(reader.await.unwrap());
        assert!(answer.partial(chunk("d"), WAIT).await);
        assert!(answer.is_gone());
    }
}
