//! Metrics served on the metrics listener: TorchServe's frontend series (request counters and
//! latencies, response classes, queue and worker-load times, host utilisation) in TorchServe's
//! exposition format, followed by torchyard's own per-model and per-workflow-node series.

mod config;
mod family;
mod handler;
mod log;
mod reserved;
mod system;
mod text;
mod workflow;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;

pub use config::{Declaration, MetricsConfig};
use family::{exponential_bounds, Counter, Family, Histogram, LazySeries, Render, Value};
use handler::{HandlerMetrics, SeriesLimit};
pub use handler::{HandlerSample, DEFAULT_MAX_SERIES};
use log::MetricLog;
use reserved::ReservedNames;
use system::{HostSample, Sampler};
use workflow::WorkflowFamilies;
pub use workflow::{NodeMetrics, WorkflowMetrics};

/// What the metrics listener exports: TorchServe's `metrics_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsMode {
    /// Every series (torchyard's default).
    Prometheus,
    /// Only `ts_inference_requests_total`, `ts_inference_latency_microseconds` and
    /// `ts_queue_latency_microseconds`, as TorchServe ≤ 0.7.1.
    Legacy,
    /// TorchServe's default: metrics are written to `ts_metrics.log` and `model_metrics.log` as
    /// they change; the metrics API still serves everything as in prometheus mode.
    Log,
}

impl FromStr for MetricsMode {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "prometheus" => Ok(Self::Prometheus),
            "legacy" => Ok(Self::Legacy),
            "log" => Ok(Self::Log),
            other => Err(format!(
                "invalid metrics_mode {other:?}: expected prometheus, legacy or log"
            )),
        }
    }
}

/// Labels of torchyard's per-model series.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct ModelLabels {
    pub model_name: String,
    pub model_version: String,
}

/// Labels of every per-workflow-node series.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct NodeLabels {
    pub workflow: String,
    pub node: String,
}

const REQUEST_LABELS: &[&str] = &["model_name", "model_version", "hostname"];
const HOST_LABELS: &[&str] = &["Level", "Hostname"];
const WORKER_LABELS: &[&str] = &["WorkerName", "Level", "Hostname"];
const GPU_LABELS: &[&str] = &["Level", "DeviceId", "Hostname"];
const MODEL_LABELS: &[&str] = &["model_name", "model_version"];
/// The `Level` of TorchServe's frontend series.
const HOST: &str = "Host";
/// The `model_version` TorchServe records for requests that name no version.
const DEFAULT_VERSION: &str = "default";
/// The series kept in legacy mode.
const LEGACY: &[&str] = &[
    "ts_inference_requests_total",
    "ts_inference_latency_microseconds",
    "ts_queue_latency_microseconds",
];

/// TorchServe's help text for a metric of `kind` measured in `unit`.
fn ts_help(kind: &str, unit: &str) -> String {
    format!("Torchserve prometheus {kind} metric with unit: {unit}")
}

/// A family named and described as TorchServe's `metrics.yaml` does.
fn ts_family<S: family::Series + Default>(
    name: &'static str,
    unit: &str,
    labels: &'static [&'static str],
) -> Family<S> {
    Family::new(name, ts_help(S::TYPE, unit), labels)
}

/// TorchServe's per-model request counters.
struct RequestFamilies {
    requests: Family<Counter>,
    latency_us: Family<Counter>,
    queue_us: Family<Counter>,
}

/// TorchServe's host gauges.
#[derive(Clone)]
struct HostFamilies {
    cpu: Family<Value>,
    memory_used: Family<Value>,
    memory_available: Family<Value>,
    memory_utilization: Family<Value>,
    disk_usage: Family<Value>,
    disk_utilization: Family<Value>,
    disk_available: Family<Value>,
    gpu_memory_utilization: Family<Value>,
    gpu_memory_used: Family<Value>,
    gpu_utilization: Family<Value>,
}

impl HostFamilies {
    fn new() -> Self {
        Self {
            cpu: ts_family("CPUUtilization", "Percent", HOST_LABELS),
            memory_used: ts_family("MemoryUsed", "Megabytes", HOST_LABELS),
            memory_available: ts_family("MemoryAvailable", "Megabytes", HOST_LABELS),
            memory_utilization: ts_family("MemoryUtilization", "Percent", HOST_LABELS),
            disk_usage: ts_family("DiskUsage", "Gigabytes", HOST_LABELS),
            disk_utilization: ts_family("DiskUtilization", "Percent", HOST_LABELS),
            disk_available: ts_family("DiskAvailable", "Gigabytes", HOST_LABELS),
            gpu_memory_utilization: ts_family("GPUMemoryUtilization", "Percent", GPU_LABELS),
            gpu_memory_used: ts_family("GPUMemoryUsed", "Megabytes", GPU_LABELS),
            gpu_utilization: ts_family("GPUUtilization", "Percent", GPU_LABELS),
        }
    }

    fn all(&self) -> [&Family<Value>; 10] {
        [
            &self.cpu,
            &self.memory_used,
            &self.memory_available,
            &self.memory_utilization,
            &self.disk_usage,
            &self.disk_utilization,
            &self.disk_available,
            &self.gpu_memory_utilization,
            &self.gpu_memory_used,
            &self.gpu_utilization,
        ]
    }

    fn record(&self, hostname: &str, sample: &HostSample, log: Option<&MetricLog>) {
        let host = [HOST, hostname];
        let set = |family: &Family<Value>, value: f64| {
            family.get_or_create(&host).set(value);
            log_update(log, family, &[("Level", HOST)], value);
        };
        if let Some(cpu) = sample.cpu_utilization {
            set(&self.cpu, cpu);
        }
        if let Some(memory) = &sample.memory {
            set(&self.memory_used, memory.used_mb);
            set(&self.memory_available, memory.available_mb);
            set(&self.memory_utilization, memory.utilization);
        }
        if let Some(disk) = &sample.disk {
            set(&self.disk_usage, disk.used_gb);
            set(&self.disk_utilization, disk.utilization);
            set(&self.disk_available, disk.available_gb);
        }
        for gpu in &sample.gpus {
            let labels = [HOST, gpu.id.as_str(), hostname];
            let set = |family: &Family<Value>, value: f64| {
                family.get_or_create(&labels).set(value);
                let dimensions = [("Level", HOST), ("DeviceId", gpu.id.as_str())];
                log_update(log, family, &dimensions, value);
            };
            set(&self.gpu_memory_utilization, gpu.memory_utilization);
            set(&self.gpu_memory_used, gpu.memory_used_mb);
            set(&self.gpu_utilization, gpu.utilization);
        }
    }
}

/// Logs an update of one of the server's families in log mode, in the family's unit.
fn log_update<S: family::Series>(
    log: Option<&MetricLog>,
    family: &Family<S>,
    dimensions: &[(&str, &str)],
    value: f64,
) {
    if let Some(log) = log {
        // The unit `ts_help` wrote into the family's help.
        let unit = family
            .help()
            .rsplit_once("unit: ")
            .map_or("", |(_, unit)| unit);
        log.update(family.name(), unit, dimensions, value);
    }
}

/// Counts answers by status class: TorchServe's `Requests2XX`, `Requests4XX`, `Requests5XX`.
#[derive(Clone)]
pub struct ResponseCounter {
    series: Arc<[LazySeries<Counter>; 3]>,
    log: Option<MetricLog>,
}

impl ResponseCounter {
    /// Counts one answer; 1xx and 3xx are not counted, as in TorchServe.
    pub fn count(&self, status: StatusCode) {
        let class = match status.as_u16() {
            200..=299 => 0,
            400..=499 => 1,
            500.. => 2,
            _ => return,
        };
        self.series[class].get().add(1.0);
        if let Some(log) = &self.log {
            let name = ["Requests2XX", "Requests4XX", "Requests5XX"][class];
            log.update(name, "Count", &[("Level", HOST)], 1.0);
        }
    }
}

/// Every family the server creates itself, before any series.
struct ServerFamilies {
    /// `Requests2XX`, `Requests4XX`, `Requests5XX`.
    responses: [Family<Counter>; 3],
    requests: RequestFamilies,
    queue_time: Family<Value>,
    worker_thread_time: Family<Value>,
    worker_load: Family<Value>,
    host: HostFamilies,
    errors: Family<Counter>,
    latency: Family<Histogram>,
    batch_size: Family<Histogram>,
    queue_depth: Family<Value>,
    workers: Family<Value>,
    workers_ready: Family<Value>,
    /// Handler metric updates dropped past `handler_metric_max_series`.
    handler_dropped: Family<Counter>,
    workflows: WorkflowFamilies,
}

impl ServerFamilies {
    fn new() -> Self {
        let status = |name| ts_family::<Counter>(name, "Count", HOST_LABELS);
        let latency_bounds = exponential_bounds(0.0005, 2.0, 16);
        let batch_bounds = exponential_bounds(1.0, 2.0, 10);
        let histogram = |name, help, labels, bounds: &Arc<[f64]>| {
            let bounds = bounds.clone();
            Family::with(name, help, labels, move || Histogram::new(bounds.clone()))
        };
        Self {
            responses: [
                status("Requests2XX"),
                status("Requests4XX"),
                status("Requests5XX"),
            ],
            requests: RequestFamilies {
                requests: ts_family("ts_inference_requests_total", "Count", REQUEST_LABELS),
                latency_us: ts_family(
                    "ts_inference_latency_microseconds",
                    "Microseconds",
                    REQUEST_LABELS,
                ),
                queue_us: ts_family(
                    "ts_queue_latency_microseconds",
                    "Microseconds",
                    REQUEST_LABELS,
                ),
            },
            queue_time: ts_family("QueueTime", "Milliseconds", HOST_LABELS),
            worker_thread_time: ts_family("WorkerThreadTime", "Milliseconds", HOST_LABELS),
            worker_load: ts_family("WorkerLoadTime", "Milliseconds", WORKER_LABELS),
            host: HostFamilies::new(),
            errors: Family::new(
                "torchyard_inference_errors_total",
                "Inference requests answered with an error",
                MODEL_LABELS,
            ),
            latency: histogram(
                "torchyard_request_latency_seconds",
                "End-to-end inference latency",
                MODEL_LABELS,
                &latency_bounds,
            ),
            batch_size: histogram(
                "torchyard_batch_size",
                "Requests per batch sent to a worker",
                MODEL_LABELS,
                &batch_bounds,
            ),
            queue_depth: Family::new(
                "torchyard_queue_depth",
                "Requests waiting for a worker",
                MODEL_LABELS,
            ),
            workers: Family::new(
                "torchyard_workers",
                "Workers in the pool, starting or ready",
                MODEL_LABELS,
            ),
            workers_ready: Family::new(
                "torchyard_workers_ready",
                "Workers with a loaded handler",
                MODEL_LABELS,
            ),
            handler_dropped: Family::new(
                "torchyard_handler_metric_updates_dropped_total",
                "Handler metric updates dropped: their metric had handler_metric_max_series \
                 series and they would have made another",
                MODEL_LABELS,
            ),
            workflows: WorkflowFamilies::new(move || Histogram::new(latency_bounds.clone())),
        }
    }

    /// The families in exposition order.
    fn renders(&self) -> Vec<Box<dyn Render>> {
        fn boxed<S: family::Series>(family: &Family<S>) -> Box<dyn Render> {
            Box::new(family.clone())
        }
        let requests = &self.requests;
        let mut families: Vec<Box<dyn Render>> = self.responses.iter().map(boxed).collect();
        families.extend([
            boxed(&requests.requests),
            boxed(&requests.latency_us),
            boxed(&requests.queue_us),
            boxed(&self.queue_time),
            boxed(&self.worker_thread_time),
            boxed(&self.worker_load),
        ]);
        families.extend(self.host.all().into_iter().map(boxed));
        families.extend([
            boxed(&self.errors),
            boxed(&self.latency),
            boxed(&self.batch_size),
            boxed(&self.queue_depth),
            boxed(&self.workers),
            boxed(&self.workers_ready),
            boxed(&self.handler_dropped),
        ]);
        families.extend(self.workflows.renders());
        families
    }
}

/// The names of the server's own families and their samples, which no handler metric may take.
fn reserved_names() -> ReservedNames {
    ReservedNames::of(&ServerFamilies::new().renders())
}

/// The server's metric families and how they are rendered.
pub struct Metrics {
    mode: MetricsMode,
    hostname: Arc<str>,
    /// Every family in exposition order.
    families: Vec<Box<dyn Render>>,
    /// The TorchServe frontend series a `metrics_config` keeps; `None` keeps them all.
    frontend: Option<std::collections::HashSet<String>>,
    handler: Arc<HandlerMetrics>,
    responses: ResponseCounter,
    queue_time: Arc<LazySeries<Value>>,
    worker_thread_time: Arc<LazySeries<Value>>,
    server: ServerFamilies,
    /// Writes `ts_metrics.log` lines in log mode.
    log: Option<MetricLog>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(
            MetricsMode::Prometheus,
            MetricsConfig::defaults(),
            true,
            handler::DEFAULT_MAX_SERIES,
        )
    }
}

impl Metrics {
    /// The families of `mode` and `config`, labelled with this host's name; handler metrics
    /// nobody declared are registered on first use when `auto_detect` is set, and each may
    /// have up to `max_series` series. Warns when a mode is not served as TorchServe serves it.
    pub fn new(
        mode: MetricsMode,
        config: MetricsConfig,
        auto_detect: bool,
        max_series: usize,
    ) -> Self {
        match mode {
            MetricsMode::Log => tracing::info!(
                "metrics_mode=log: metrics are written to ts_metrics.log and \
                 model_metrics.log; the metrics API still serves every metric as in prometheus \
                 mode"
            ),
            MetricsMode::Legacy => tracing::warn!(
                "metrics_mode=legacy: the metrics API serves only the ts_* request series; \
                 handler metrics are written to model_metrics.log, the others nowhere"
            ),
            MetricsMode::Prometheus => {}
        }
        let hostname: Arc<str> = hostname().into();
        let log = (mode == MetricsMode::Log)
            .then(|| MetricLog::new(hostname.clone(), config.frontend.clone()));
        let server = ServerFamilies::new();
        let families = server.renders();
        let handler = Arc::new(HandlerMetrics::new(
            hostname.clone(),
            config.model_metrics,
            auto_detect,
            mode != MetricsMode::Prometheus,
            ReservedNames::of(&families),
            SeriesLimit {
                max: max_series,
                dropped: server.handler_dropped.clone(),
            },
        ));
        let host = [HOST, &*hostname];
        let [ok, client, server_error] = &server.responses;
        Self {
            mode,
            responses: ResponseCounter {
                series: Arc::new([ok.lazy(&host), client.lazy(&host), server_error.lazy(&host)]),
                log: log.clone(),
            },
            log,
            queue_time: Arc::new(server.queue_time.lazy(&host)),
            worker_thread_time: Arc::new(server.worker_thread_time.lazy(&host)),
            server,
            hostname,
            families,
            frontend: config.frontend,
            handler,
        }
    }

    /// Reads the host now and then every `every` in the background (reads run on a blocking
    /// thread); nothing when `every` is `None`.
    pub fn collect_host_metrics(&self, every: Option<Duration>) {
        let Some(every) = every else { return };
        let (host, hostname) = (self.server.host.clone(), self.hostname.clone());
        let log = self.log.clone();
        tokio::spawn(async move {
            let mut sampler = Sampler::new();
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Ok((back, sample)) = tokio::task::spawn_blocking(move || {
                    let sample = sampler.sample();
                    (sampler, sample)
                })
                .await
                else {
                    return;
                };
                sampler = back;
                host.record(&hostname, &sample, log.as_ref());
            }
        });
    }

    /// The counter of answers by status class, for the listeners' middleware.
    pub fn response_counter(&self) -> ResponseCounter {
        self.responses.clone()
    }

    /// Handles on one model's series, cheap to update on the hot path.
    pub fn for_model(&self, labels: ModelLabels) -> ModelMetrics {
        let model = [labels.model_name.as_str(), labels.model_version.as_str()];
        let series = |version: &str| {
            let values = [labels.model_name.as_str(), version, &*self.hostname];
            RequestSeries {
                requests: self.server.requests.requests.lazy(&values),
                latency_us: self.server.requests.latency_us.lazy(&values),
                queue_us: self.server.requests.queue_us.lazy(&values),
            }
        };
        ModelMetrics {
            by_default: series(DEFAULT_VERSION),
            by_version: series(&labels.model_version),
            queue_time: self.queue_time.clone(),
            worker_thread_time: self.worker_thread_time.clone(),
            worker_load: self.server.worker_load.clone(),
            hostname: self.hostname.clone(),
            errors: self.server.errors.get_or_create(&model),
            latency: self.server.latency.get_or_create(&model),
            batch_size: self.server.batch_size.get_or_create(&model),
            queue_depth: self.server.queue_depth.get_or_create(&model),
            workers: self.server.workers.get_or_create(&model),
            workers_ready: self.server.workers_ready.get_or_create(&model),
            prediction_time: self
                .handler
                .model_gauge("PredictionTime", &labels.model_name),
            handler: self.handler.clone(),
            log: self.log.clone(),
            labels,
        }
    }

    /// Drops a model's own series, its workers' load times and the handler metric series its
    /// handler made when it is unregistered; the `ts_*` request counters stay, as in
    /// TorchServe.
    pub fn remove_model(&self, labels: &ModelLabels) {
        let model =
            |values: &[String]| values[0] == labels.model_name && values[1] == labels.model_version;
        self.server.errors.remove_where(model);
        self.server.latency.remove_where(model);
        self.server.batch_size.remove_where(model);
        self.server.queue_depth.remove_where(model);
        self.server.workers.remove_where(model);
        self.server.workers_ready.remove_where(model);
        self.server
            .worker_load
            .remove_where(|values| worker_of(&values[0], labels));
        self.handler
            .remove_model(&labels.model_name, &labels.model_version);
    }

    /// Handles on one workflow's series.
    pub fn for_workflow(&self, workflow: &str) -> WorkflowMetrics {
        self.server.workflows.for_workflow(workflow)
    }

    /// Drops a workflow's series when it is unregistered.
    pub fn remove_workflow(&self, workflow: &str) {
        self.server.workflows.remove_workflow(workflow);
    }

    /// Handles on one workflow node's series.
    pub fn for_node(&self, labels: NodeLabels) -> NodeMetrics {
        self.server.workflows.for_node(labels)
    }

    /// Drops a workflow node's series when its workflow is unregistered.
    pub fn remove_node(&self, labels: &NodeLabels) {
        self.server.workflows.remove_node(labels);
    }

    /// Renders the families of the metrics mode in the Prometheus text format; when `names` is
    /// not empty, only the families it names (TorchServe's `name[]` filter).
    pub fn render(&self, names: &[String]) -> String {
        let mut out = String::new();
        let legacy = self.mode == MetricsMode::Legacy;
        let configured = |name: &str| {
            name.starts_with("torchyard_")
                || self
                    .frontend
                    .as_ref()
                    .is_none_or(|kept| kept.contains(name))
        };
        let served = |name: &str| {
            if legacy {
                LEGACY.contains(&name)
            } else {
                configured(name)
            }
        };
        let wanted = |name: &str| names.is_empty() || names.iter().any(|n| n == name);
        for family in &self.families {
            if served(family.name()) && wanted(family.name()) {
                family.render(&mut out);
            }
        }
        if !legacy {
            self.handler.render(&mut out, wanted);
        }
        out
    }
}

/// TorchServe's name for worker `id` of a model: `W-9000-resnet18_1.0` for the first.
pub fn worker_name(id: usize, labels: &ModelLabels) -> String {
    format!(
        "W-{}-{}_{}",
        9000 + id,
        labels.model_name,
        labels.model_version
    )
}

/// Whether `name` is the [`worker_name`] of one of the model's workers.
fn worker_of(name: &str, labels: &ModelLabels) -> bool {
    name.strip_prefix("W-")
        .and_then(|rest| rest.split_once('-'))
        .is_some_and(|(port, model)| {
            port.bytes().all(|b| b.is_ascii_digit())
                && model
                    .strip_suffix(labels.model_version.as_str())
                    .and_then(|m| m.strip_suffix('_'))
                    == Some(labels.model_name.as_str())
        })
}

/// The host's name, as TorchServe puts in its `hostname`/`Hostname` labels.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// TorchServe's request series for one model name and one `model_version` label.
struct RequestSeries {
    requests: LazySeries<Counter>,
    latency_us: LazySeries<Counter>,
    queue_us: LazySeries<Counter>,
}

/// One model's series.
pub struct ModelMetrics {
    pub labels: ModelLabels,
    /// Requests that named no version, labelled `model_version="default"`.
    by_default: RequestSeries,
    /// Requests that named this version.
    by_version: RequestSeries,
    queue_time: Arc<LazySeries<Value>>,
    worker_thread_time: Arc<LazySeries<Value>>,
    worker_load: Family<Value>,
    hostname: Arc<str>,
    errors: Arc<Counter>,
    latency: Arc<Histogram>,
    batch_size: Arc<Histogram>,
    queue_depth: Arc<Value>,
    workers: Arc<Value>,
    workers_ready: Arc<Value>,
    /// TorchServe's `PredictionTime` gauge of this model, when declared.
    prediction_time: Option<Arc<Value>>,
    handler: Arc<HandlerMetrics>,
    log: Option<MetricLog>,
}

impl ModelMetrics {
    fn series(&self, version_named: bool) -> &RequestSeries {
        if version_named {
            &self.by_version
        } else {
            &self.by_default
        }
    }

    /// Logs an update of TorchServe's per-request metric `name` in log mode.
    fn log_request(&self, name: &str, unit: &str, version_named: bool, value: f64) {
        if let Some(log) = &self.log {
            let version = match version_named {
                true => self.labels.model_version.as_str(),
                false => DEFAULT_VERSION,
            };
            let model = [
                ("model_name", self.labels.model_name.as_str()),
                ("model_version", version),
            ];
            log.update(name, unit, &model, value);
        }
    }

    /// Logs an update of a metric in milliseconds in log mode.
    fn log_millis(&self, name: &str, dimensions: &[(&str, &str)], value: f64) {
        if let Some(log) = &self.log {
            log.update(name, "Milliseconds", dimensions, value);
        }
    }

    /// Counts a request received; `version_named` says whether its path named the version.
    pub fn record_received(&self, version_named: bool) {
        self.series(version_named).requests.get().add(1.0);
        self.log_request("ts_inference_requests_total", "Count", version_named, 1.0);
    }

    /// Adds the latency of a request a worker answered (TorchServe counts no other).
    pub fn record_answered(&self, version_named: bool, elapsed: Duration) {
        let series = self.series(version_named);
        series.latency_us.get().add(micros(elapsed));
        let name = "ts_inference_latency_microseconds";
        self.log_request(name, "Microseconds", version_named, micros(elapsed));
    }

    /// Records one request answered, by a worker or with an error.
    pub fn record_request(&self, elapsed: Duration, failed: bool) {
        if failed {
            self.errors.add(1.0);
        }
        self.latency.observe(elapsed.as_secs_f64());
    }

    /// Requests answered without an error so far: what the autoscaler measures throughput by.
    pub fn succeeded(&self) -> u64 {
        self.latency
            .count()
            .saturating_sub(self.errors.get() as u64)
    }

    /// Records how long an answered request waited for a worker.
    pub fn record_queue_wait(&self, version_named: bool, waited: Duration) {
        let series = self.series(version_named);
        series.queue_us.get().add(micros(waited));
        let name = "ts_queue_latency_microseconds";
        self.log_request(name, "Microseconds", version_named, micros(waited));
        let millis = waited.as_millis() as f64;
        self.queue_time.get().set(millis);
        self.log_millis("QueueTime", &[("Level", HOST)], millis);
    }

    /// Records the time a worker task spent on a batch besides the worker's round trip.
    pub fn record_worker_thread(&self, took: Duration) {
        let millis = took.as_millis() as f64;
        self.worker_thread_time.get().set(millis);
        self.log_millis("WorkerThreadTime", &[("Level", HOST)], millis);
    }

    /// Records how long worker `id` took to start and load the handler.
    pub fn record_worker_load(&self, id: usize, took: Duration) {
        let name = worker_name(id, &self.labels);
        let millis = took.as_millis() as f64;
        self.worker_load
            .get_or_create(&[&name, HOST, &self.hostname])
            .set(millis);
        let dimensions = [("WorkerName", name.as_str()), ("Level", HOST)];
        self.log_millis("WorkerLoadTime", &dimensions, millis);
    }

    /// Records what the handler put into `context.metrics` during a batch or its load.
    pub fn record_handler_metrics(&self, samples: &[HandlerSample]) {
        if !samples.is_empty() {
            self.handler
                .record(&self.labels.model_name, &self.labels.model_version, samples);
        }
    }

    /// The handler metrics every worker's metric cache starts with.
    pub fn declared_handler_metrics(&self) -> &[Declaration] {
        self.handler.declared()
    }

    /// Records how long a worker took on a batch from calling the handler to its reply being
    /// ready, as the worker measured it: TorchServe's `PredictionTime`.
    pub fn record_prediction_time(&self, took: Duration) {
        if let Some(gauge) = &self.prediction_time {
            gauge.set(took.as_secs_f64() * 1000.0);
        }
    }

    /// Records the size of a batch sent to a worker.
    pub fn record_batch(&self, size: usize) {
        self.batch_size.observe(size as f64);
    }

    /// Updates the gauges sampled at scrape time: requests waiting, workers in the pool and
    /// those of them ready.
    pub fn set_gauges(&self, queue_depth: usize, workers: usize, ready_workers: usize) {
        self.queue_depth.set(queue_depth as f64);
        self.workers.set(workers as f64);
        self.workers_ready.set(ready_workers as f64);
    }
}

fn micros(elapsed: Duration) -> f64 {
    elapsed.as_nanos() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use config::MetricKind;

    fn labels() -> ModelLabels {
        ModelLabels {
            model_name: "resnet18".into(),
            model_version: "1.0".into(),
        }
    }

    fn family_names(text: &str) -> Vec<&str> {
        text.lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|rest| rest.split(' ').next())
            .collect()
    }

    #[test]
    fn requests_are_labelled_by_the_version_they_name() {
        let metrics = Metrics::default();
        let model = metrics.for_model(labels());
        model.record_received(false);
        model.record_received(false);
        model.record_received(true);
        model.record_answered(false, Duration::from_nanos(1_500));
        let text = metrics.render(&[]);
        let host = &*metrics.hostname;
        assert!(text.contains(&format!(
            "ts_inference_requests_total{{model_name=\"resnet18\",model_version=\"default\",hostname=\"{host}\",}} 2.0\n"
        )));
        assert!(text.contains(&format!(
            "ts_inference_requests_total{{model_name=\"resnet18\",model_version=\"1.0\",hostname=\"{host}\",}} 1.0\n"
        )));
        assert!(text.contains(&format!(
            "ts_inference_latency_microseconds{{model_name=\"resnet18\",model_version=\"default\",hostname=\"{host}\",}} 1.5\n"
        )));
        // Series appear once used, as in TorchServe.
        assert!(!text.contains("ts_queue_latency_microseconds{"));
        assert!(!text.contains("Requests2XX{"));
    }

    #[test]
    fn name_filter_and_legacy_mode_choose_families() {
        let metrics = Metrics::default();
        let names = [
            "MemoryUsed".to_string(),
            "ts_queue_latency_microseconds".into(),
        ];
        assert_eq!(
            family_names(&metrics.render(&names)),
            ["ts_queue_latency_microseconds", "MemoryUsed"]
        );
        assert_eq!(
            family_names(
                &Metrics::new(MetricsMode::Legacy, MetricsConfig::defaults(), true, 10).render(&[])
            ),
            LEGACY
        );
        let all = Metrics::new(MetricsMode::Log, MetricsConfig::defaults(), true, 10).render(&[]);
        assert!(family_names(&all).contains(&"CPUUtilization"));
    }

    #[test]
    fn responses_count_by_status_class() {
        let metrics = Metrics::default();
        let counter = metrics.response_counter();
        for status in [200, 201, 302, 404, 400, 500, 503, 507] {
            counter.count(StatusCode::from_u16(status).unwrap());
        }
        let text = metrics.render(&[]);
        for (name, count) in [("Requests2XX", 2), ("Requests4XX", 2), ("Requests5XX", 3)] {
            let line = format!(
                "{name}{{Level=\"Host\",Hostname=\"{}\",}} {count}.0\n",
                metrics.hostname
            );
            assert!(text.contains(&line), "{line} in {text}");
        }
    }

    #[test]
    fn worker_load_times_go_with_their_model() {
        let metrics = Metrics::default();
        let model = metrics.for_model(labels());
        let other = metrics.for_model(ModelLabels {
            model_name: "resnet18_1".into(),
            model_version: "0".into(),
        });
        model.record_worker_load(1, Duration::from_millis(4593));
        other.record_worker_load(2, Duration::from_millis(10));
        let text = metrics.render(&[]);
        assert!(text.contains("WorkerLoadTime{WorkerName=\"W-9001-resnet18_1.0\",Level=\"Host\","));
        metrics.remove_model(&labels());
        let text = metrics.render(&[]);
        assert!(!text.contains("W-9001-resnet18_1.0"));
        assert!(text.contains("W-9002-resnet18_1_0"));
    }

    #[test]
    fn scrape_time_gauges_count_the_queue_and_the_pool() {
        let metrics = Metrics::default();
        metrics.for_model(labels()).set_gauges(3, 2, 1);
        let text = metrics.render(&[]);
        let model = "{model_name=\"resnet18\",model_version=\"1.0\",}";
        for (name, value) in [
            ("torchyard_queue_depth", 3),
            ("torchyard_workers", 2),
            ("torchyard_workers_ready", 1),
        ] {
            let line = format!("{name}{model} {value}.0\n");
            assert!(text.contains(&line), "{line} in {text}");
        }
    }

    #[test]
    fn handler_metrics_may_not_take_the_servers_names() {
        let metrics = Metrics::default();
        let model = metrics.for_model(labels());
        metrics.response_counter().count(StatusCode::OK);
        model.record_batch(1);
        let update = |kind, name: &str| HandlerSample {
            kind,
            name: name.into(),
            unit: "count".into(),
            dimension_names: vec!["ModelName".into()],
            dimension_values: vec!["resnet18".into()],
            values: vec![1.0],
        };
        let refused = [
            update(MetricKind::Counter, "Requests2XX"),
            update(MetricKind::Gauge, "ts_inference_latency_microseconds"),
            update(MetricKind::Counter, "torchyard_batch_size_count"),
            update(MetricKind::Counter, "torchyard_workflow_node_retries_total"),
        ];
        model.record_handler_metrics(&refused);
        model.record_handler_metrics(&[update(MetricKind::Counter, "Requests2XX")]);
        model.record_handler_metrics(&[update(MetricKind::Counter, "Requests")]);
        let text = metrics.render(&[]);
        let names = family_names(&text);
        for name in names.iter() {
            assert_eq!(
                names.iter().filter(|n| *n == name).count(),
                1,
                "{name} in {text}"
            );
        }
        for sample in refused {
            assert!(
                !text.contains(&format!("{}{{ModelName", sample.name)),
                "{text}"
            );
        }
        assert!(
            text.contains("\nRequests{ModelName=\"resnet18\",Hostname="),
            "{text}"
        );
    }

    #[test]
    fn metrics_modes_parse() {
        assert_eq!("Prometheus".parse(), Ok(MetricsMode::Prometheus));
        assert_eq!(" legacy".parse(), Ok(MetricsMode::Legacy));
        assert_eq!("log".parse(), Ok(MetricsMode::Log));
        assert!("json".parse::<MetricsMode>().is_err());
    }
}
