//! A registered model version: its job queue, worker pool and description.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_channel::{Sender, TrySendError};
use axum::http::StatusCode;
use serde_json::{json, Value};

use super::autoscaler::usable_cores;
use super::definition::ModelDefinition;
use super::dependencies::venv_python;
use super::scaling_policy::ModelSample;
use super::sequences::{self, SequenceSettings, Sequences};
use crate::error::{ApiError, ApiResult};
use crate::gpu::{Gpus, ModelGpus};
use crate::job::{InferenceRequest, Job, JobResult};
use crate::metrics::ModelMetrics;
use crate::python_env::PythonEnv;
use crate::worker::{
    cpu_list, spawn_worker, CorePinning, Dispatch, JobTickets, Parallelism, StartMode,
    TorchThreads, WorkerHandle, WorkerSpec, WorkerState, WorkerStatus,
};

/// A model version being served.
pub struct ServedModel {
    pub def: ModelDefinition,
    queue: Sender<Job>,
    spec: Arc<WorkerSpec>,
    pool: Mutex<Pool>,
    /// Serialises scaling operations.
    scaling: tokio::sync::Mutex<()>,
    /// Workers wanted now; 0 means requests are refused at once.
    target_workers: AtomicUsize,
    /// Calls of [`ServedModel::scale`], so the autoscaler sees explicit scale calls.
    scale_calls: AtomicU64,
    /// The autoscaler's view of this model, for describe.
    autoscaling: Mutex<Value>,
    /// A stateful model's open sequences (`sequenceBatching`).
    sequences: Option<Sequences>,
    /// How its workers are pinned to cores (`cpu_launcher_enable`; never torchrun workers).
    pinning: Option<CorePinning>,
}

struct Pool {
    workers: Vec<WorkerHandle>,
    min: usize,
    max: usize,
    next_id: usize,
}

impl crate::versioned::Versioned for ServedModel {
    const KIND: &'static str = "Model";

    fn name(&self) -> &str {
        &self.def.name
    }

    fn version(&self) -> &str {
        &self.def.version
    }

    fn describe(&self) -> Value {
        let pool = self.pool.lock().expect("pool lock");
        let workers: Vec<Value> = pool
            .workers
            .iter()
            .map(|w| {
                let pid = w.status.pid();
                let state = w.status.state();
                let mut worker = json!({
                    "id": format!("{}", 9000 + w.status.id),
                    "startTime": w.status.started.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    "status": state.as_str(),
                    "memoryUsage": resident_bytes(pid),
                    "pid": pid,
                    "startMode": w.status.start_mode().map(StartMode::as_str),
                    "gpu": w.status.gpu_id.is_some(),
                    "gpuUsage": self.spec.gpus.usage(w.status.gpu_id),
                });
                if self.spec.parallel.is_some() {
                    worker["gpuIds"] = json!(w.status.gpu_ids);
                }
                if self.pinning.is_some() {
                    worker["cpuAffinity"] = json!(cpu_list(&w.status.cores()));
                }
                if let (WorkerState::Failed, Some((_, cause))) = (state, w.status.failure()) {
                    worker["failure"] = json!(cause);
                }
                worker
            })
            .collect();
        let settings = &self.def.settings;
        let mut model = json!({
            "modelName": self.def.name,
            "modelVersion": self.def.version,
            "modelUrl": self.def.url,
            "runtime": self.def.runtime,
            "minWorkers": pool.min,
            "maxWorkers": pool.max,
            "batchSize": settings.batch_size,
            "maxBatchDelay": settings.max_batch_delay.as_millis() as u64,
            "responseTimeout": settings.response_timeout.as_secs(),
            "startupTimeout": settings.startup_timeout.as_secs(),
            "maxRetryTimeoutInSec": settings.max_retry_timeout.as_secs(),
            "clientTimeoutInMills": settings.client_timeout.map_or(0, |t| t.as_millis() as u64),
            "useJobTicket": settings.use_job_ticket,
            "useVenv": self.def.venv.is_some(),
            "loadedAtStartup": self.def.loaded_at_startup,
            "workers": workers,
            "jobQueueStatus": {
                "remainingCapacity": settings.job_queue_size.saturating_sub(self.queue.len()),
                "pendingRequests": self.queue.len(),
            },
            "autoscaling": self.autoscaling(),
        });
        match &self.spec.parallel {
            Some(parallel) => {
                model["parallelType"] = json!(parallel.kind.as_str());
                model["parallelLevel"] = json!(parallel.level);
                model["ranksPerWorker"] = json!(parallel.ranks());
            }
            None => {
                model["threadsPerWorker"] = json!(self.spec.threads.per_worker());
                model["threadsConfigured"] = json!(self.spec.threads.configured());
            }
        }
        model
    }

    fn summary(&self) -> Value {
        json!({"modelName": self.def.name, "modelUrl": self.def.url})
    }
}

impl ServedModel {
    /// Creates the model with no workers; call [`ServedModel::scale`] to start them.
    /// `decode_input_request`: whether its workers decode JSON and text parameters;
    /// `service_envelope`: the envelope its handler is wrapped in, unless it is a workflow
    /// node (whose input is the workflow's, not a client's); `gpus`: the server's, on which
    /// workers are placed as the model's configuration says; `pinning`: how workers are
    /// pinned to cores, if they are.
    pub fn new(
        def: ModelDefinition,
        python: PythonEnv,
        metrics: ModelMetrics,
        decode_input_request: bool,
        service_envelope: Option<&str>,
        gpus: &Arc<Gpus>,
        pinning: Option<&CorePinning>,
    ) -> Self {
        let (queue, rx) = async_channel::bounded(def.settings.job_queue_size);
        // A model with its own environment runs its interpreter, never forked from the server's.
        let python = match &def.venv {
            Some(venv) => PythonEnv {
                interpreter: venv_python(venv),
                fork_server: None,
                ..python
            },
            None => python,
        };
        let parallel = Parallelism::from_yaml(&def.name, &def.yaml_config);
        // A torchrun worker's ranks run `OMP_NUM_THREADS` threads each, unpinned.
        let pinning = pinning.filter(|_| parallel.is_none()).cloned();
        let threads = match &pinning {
            Some(pinning) => TorchThreads::new(
                def.settings.threads_per_worker.or(pinning.fixed_slice()),
                pinning.cores(),
            ),
            None => TorchThreads::new(def.settings.threads_per_worker, usable_cores()),
        };
        let spec = Arc::new(WorkerSpec {
            model_name: def.name.clone(),
            model_version: def.version.clone(),
            model_dir: def.dir.clone(),
            deps_dir: def.deps_dir.clone(),
            handler: def.handler.clone(),
            manifest: def.manifest.clone(),
            model_yaml_config: def.yaml_config.clone(),
            batch_size: def.settings.batch_size,
            max_batch_delay: def.settings.max_batch_delay,
            response_timeout: def.settings.response_timeout,
            startup_timeout: def.settings.startup_timeout,
            max_retry_timeout: def.settings.max_retry_timeout,
            client_timeout: def.settings.client_timeout,
            tickets: def.settings.use_job_ticket.then(JobTickets::default),
            decode_input_request,
            envelope: service_envelope
                .filter(|_| def.workflow.is_none())
                .map(String::from),
            segment: def.segment.clone(),
            python,
            gpus: ModelGpus::new(gpus.clone(), &def.name, &def.yaml_config)
                .in_groups_of(parallel.as_ref().map_or(0, |p| p.level)),
            parallel,
            metrics,
            queue: rx,
            dispatch: Dispatch::default(),
            ready_workers: AtomicUsize::new(0),
            unanswered_in_a_row: AtomicUsize::new(0),
            retired_workers: AtomicUsize::new(0),
            threads,
            template: Default::default(),
        });
        let pool = Pool {
            workers: Vec::new(),
            min: def.settings.min_workers,
            max: def.settings.max_workers,
            next_id: 1,
        };
        let sequences = SequenceSettings::from_yaml(
            &def.yaml_config,
            def.settings.batch_size,
            def.settings.max_workers,
        )
        .map(Sequences::new);
        Self {
            def,
            queue,
            spec,
            pool: Mutex::new(pool),
            scaling: tokio::sync::Mutex::new(()),
            target_workers: AtomicUsize::new(0),
            scale_calls: AtomicU64::new(0),
            autoscaling: Mutex::new(Value::Null),
            sequences,
            pinning,
        }
    }

    pub fn metrics(&self) -> &ModelMetrics {
        &self.spec.metrics
    }

    /// Queues a request and waits for its answer; `version_named` says whether the request
    /// named this version (TorchServe labels the request series `default` otherwise).
    pub async fn submit(&self, request: InferenceRequest, version_named: bool) -> JobResult {
        self.submit_job(request, version_named, false).await
    }

    /// Queues a workflow stage's request for the fused workflow segment the workers hold
    /// (docs/protocol.md, `segment`) and waits for its answer.
    pub async fn submit_segment(&self, request: InferenceRequest) -> JobResult {
        self.submit_job(request, false, true).await
    }

    async fn submit_job(
        &self,
        request: InferenceRequest,
        version_named: bool,
        segment: bool,
    ) -> JobResult {
        crate::json_depth::check_request(&request, self.spec.envelope.is_some())?;
        let started = Instant::now();
        self.spec.metrics.record_received(version_named);
        let result = self.enqueue_and_wait(request, version_named, segment).await;
        let (elapsed, failed) = (
            started.elapsed(),
            result.as_ref().map_or(true, |r| r.status >= 400),
        );
        if result.is_ok() {
            self.spec.metrics.record_answered(version_named, elapsed);
        }
        self.spec.metrics.record_request(elapsed, failed);
        result
    }

    async fn enqueue_and_wait(
        &self,
        request: InferenceRequest,
        version_named: bool,
        segment: bool,
    ) -> JobResult {
        let workers = self.target_workers.load(Ordering::SeqCst);
        let no_ticket = || self.spec.tickets.as_ref().is_some_and(|t| !t.take());
        if workers == 0
            || workers <= self.spec.retired_workers.load(Ordering::SeqCst)
            || no_ticket()
        {
            return Err(ApiError::unavailable(format!(
                "Model \"{}\" has no worker to serve inference request. Please use scale workers API to add workers.",
                self.def.name
            )));
        }
        if let Some(sequences) = &self.sequences {
            return self
                .run_in_sequence(sequences, request, version_named)
                .await;
        }
        let (job, answer) = Job::new(request, version_named, segment);
        let sent = self.queue.try_send(job);
        if let (Err(_), Some(tickets)) = (&sent, &self.spec.tickets) {
            tickets.give_back();
        }
        match sent {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(ApiError::unavailable(format!(
                    "Model \"{}\" Version {} has too many queued requests (job_queue_size {})",
                    self.def.name, self.def.version, self.def.settings.job_queue_size
                )))
            }
            Err(TrySendError::Closed(_)) => {
                return Err(ApiError::unavailable(format!(
                    "Model \"{}\" is being unregistered",
                    self.def.name
                )))
            }
        }
        answer.await.unwrap_or_else(|_| {
            Err(ApiError::internal(
                "the request was dropped before a worker answered",
            ))
        })
    }

    /// Runs a request of a stateful model on the worker its sequence is pinned to, and
    /// answers with the sequence's id in the header `ts_request_sequence_id`.
    async fn run_in_sequence(
        &self,
        sequences: &Sequences,
        mut request: InferenceRequest,
        version_named: bool,
    ) -> JobResult {
        let refused = || {
            let version = if version_named {
                format!("\" Version {}", self.def.version)
            } else {
                String::new()
            };
            ApiError::unavailable(format!(
                "Model \"{}{version}\" has no worker to serve inference request. Please use scale workers API to add workers. If this is a sequence inference, please check if it is closed, or expired; or exceeds maxSequenceJobQueueSize",
                self.def.name
            ))
        };
        let (admitted, pinned) = {
            let pool = self.pool.lock().expect("pool lock");
            let ids: Vec<usize> = pool.workers.iter().map(|w| w.status.id).collect();
            let admitted = sequences.enter(&mut request, &ids, refused)?;
            let worker = pool.workers.iter().find(|w| w.status.id == admitted.worker);
            let pinned = worker.expect("a pool worker").pinned.clone();
            (admitted, pinned)
        };
        let (job, answer) = Job::new(request, version_named, false);
        let result = match pinned.try_send(job) {
            Ok(()) => answer.await.unwrap_or_else(|_| {
                Err(ApiError::internal(
                    "the request was dropped before a worker answered",
                ))
            }),
            Err(_) => Err(refused()),
        };
        let handler_ended = result.as_ref().is_ok_and(|response| {
            response
                .headers
                .iter()
                .any(|(name, _)| name.eq_ignore_ascii_case(sequences::END_HEADER))
        });
        sequences.leave(&admitted, handler_ended);
        result.map(|mut response| {
            if !response
                .headers
                .iter()
                .any(|(name, _)| name.eq_ignore_ascii_case(sequences::ID_HEADER))
            {
                response
                    .headers
                    .push((sequences::ID_HEADER.into(), admitted.id));
            }
            response
        })
    }

    /// Sets the pool to `min` workers (bounded by `max`); with `synchronous`, waits until each
    /// new worker has loaded and fails if none could.
    pub async fn scale(&self, min: usize, max: usize, synchronous: bool) -> ApiResult<()> {
        let _guard = self.scaling.lock().await;
        self.scale_calls.fetch_add(1, Ordering::SeqCst);
        let (started, stopped) = {
            let mut pool = self.pool.lock().expect("pool lock");
            pool.min = min;
            pool.max = max.max(min);
            self.set_target(min);
            let mut started = Vec::new();
            while pool.workers.len() < min {
                let id = pool.next_id;
                pool.next_id += 1;
                let handle = spawn_worker(self.spec.clone(), id);
                started.push(handle.status.clone());
                pool.workers.push(handle);
            }
            let keep = min.min(pool.workers.len());
            let stopped = pool.workers.split_off(keep);
            self.share_cores(&pool.workers);
            (started, stopped)
        };
        for worker in &stopped {
            worker.stop();
        }
        let spec = self.spec.clone();
        let stopping = async move {
            for worker in stopped {
                worker.join().await;
            }
            if min == 0 {
                spec.fail_queued("the model has no workers");
            }
        };
        if !synchronous {
            tokio::spawn(stopping);
            return Ok(());
        }
        stopping.await;
        let mut failures = Vec::new();
        for status in &started {
            if status.settled().await != WorkerState::Ready {
                failures.push(
                    status
                        .failure()
                        .unwrap_or((500, "the worker stopped while loading".into())),
                );
            }
        }
        if started.is_empty() || failures.len() < started.len() {
            return Ok(());
        }
        let (code, cause) = failures.swap_remove(0);
        let code = StatusCode::from_u16(code)
            .ok()
            .filter(|c| *c == StatusCode::INSUFFICIENT_STORAGE)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Err(ApiError::new(
            code,
            "InternalServerException",
            format!(
                "Failed to start workers for model {} version: {}. Cause: {cause}",
                self.def.name, self.def.version
            ),
        ))
    }

    /// Stops taking requests, lets the workers answer what was already queued (within the
    /// response timeout), then stops them; anything left is answered with an error.
    pub async fn shutdown(&self) {
        self.queue.close();
        let deadline = Instant::now() + self.def.settings.response_timeout;
        while !(self.queue.is_empty() && self.spec.dispatch.retried.is_empty())
            && self.spec.ready_workers.load(Ordering::SeqCst) > 0
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = self.scale(0, 0, true).await;
        if self.def.owns_dir {
            let dir = self.def.dir.clone();
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        }
        if let Some(copy) = &self.def.stored_copy {
            let _ = tokio::fs::remove_file(copy).await;
        }
        if let Some(venv) = self.def.venv.clone() {
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(venv)).await;
        }
    }

    /// Whether at least the pool's minimum of workers has a loaded handler (always true with
    /// a minimum of 0).
    pub fn healthy(&self) -> bool {
        let min = self.pool.lock().expect("pool lock").min;
        self.spec.ready_workers.load(Ordering::SeqCst) >= min
    }

    /// The pool's current (min, max) worker bounds.
    pub fn worker_bounds(&self) -> (usize, usize) {
        let pool = self.pool.lock().expect("pool lock");
        (pool.min, pool.max)
    }

    /// Whether the model has stopped taking requests (it is being unregistered).
    pub fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }

    /// What the autoscaler sees of the model now, under key `id`; `on_cpu` says which
    /// workers take a share of the CPU worker budget.
    pub fn sample(&self, id: u64, on_cpu: fn(&WorkerStatus) -> bool) -> ModelSample {
        let pool = self.pool.lock().expect("pool lock");
        ModelSample {
            id,
            workers: pool.workers.len(),
            cpu_workers: pool.workers.iter().filter(|w| on_cpu(&w.status)).count(),
            ready: self.spec.ready_workers.load(Ordering::SeqCst) >= pool.workers.len(),
            min: pool.min,
            max: pool.max,
            batch_size: self.def.settings.batch_size,
            queued: self.queue.len(),
            answered: self.spec.metrics.succeeded(),
            scale_calls: self.scale_calls.load(Ordering::SeqCst),
        }
    }

    /// Starts one more worker if the pool has one and stays within its maximum and no scale
    /// call is under way; says whether it did.
    pub fn add_worker(&self) -> bool {
        let Ok(_guard) = self.scaling.try_lock() else {
            return false;
        };
        let mut pool = self.pool.lock().expect("pool lock");
        let count = pool.workers.len();
        if count == 0 || count >= pool.max || self.queue.is_closed() {
            return false;
        }
        let id = pool.next_id;
        pool.next_id += 1;
        self.set_target(count + 1);
        pool.workers.push(spawn_worker(self.spec.clone(), id));
        self.share_cores(&pool.workers);
        true
    }

    /// Stops the newest worker if the pool stays at or above its minimum and no scale call is
    /// under way; says whether it did.
    pub fn remove_worker(&self) -> bool {
        let Ok(_guard) = self.scaling.try_lock() else {
            return false;
        };
        let mut pool = self.pool.lock().expect("pool lock");
        let count = pool.workers.len();
        if count <= pool.min {
            return false;
        }
        let Some(worker) = pool.workers.pop() else {
            return false;
        };
        worker.stop();
        self.set_target(count - 1);
        self.share_cores(&pool.workers);
        tokio::spawn(worker.join());
        true
    }

    /// With core pinning, deals each worker the slice of the cores of its place in the pool;
    /// running workers are pinned again in place (the thread count follows with their next
    /// batch, see [`ServedModel::set_target`]).
    fn share_cores(&self, workers: &[WorkerHandle]) {
        let Some(pinning) = &self.pinning else {
            return;
        };
        for (rank, worker) in workers.iter().enumerate() {
            worker.status.set_cores(pinning.slice(rank, workers.len()));
        }
    }

    /// Sets the workers wanted now, and shares the cores among them.
    fn set_target(&self, workers: usize) {
        self.spec.threads.resize(workers);
        self.target_workers.store(workers, Ordering::SeqCst);
    }

    /// The autoscaler's view of the model, as describe shows it.
    pub fn autoscaling(&self) -> Value {
        self.autoscaling.lock().expect("autoscaling lock").clone()
    }

    /// Replaces the autoscaler's view of the model.
    pub fn set_autoscaling(&self, view: Value) {
        *self.autoscaling.lock().expect("autoscaling lock") = view;
    }

    /// Refreshes the scrape-time gauges.
    pub fn sample_gauges(&self) {
        let workers = self.pool.lock().expect("pool lock").workers.len();
        self.spec.metrics.set_gauges(
            self.queue.len(),
            workers,
            self.spec.ready_workers.load(Ordering::SeqCst),
        );
    }
}

/// Resident memory of a process in bytes, 0 when unknown.
fn resident_bytes(pid: u32) -> u64 {
    if pid == 0 {
        return 0;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
