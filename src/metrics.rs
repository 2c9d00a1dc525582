//! Prometheus metrics: per-model request, error, latency, queue and worker series.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of every per-model series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model_name: String,
    pub model_version: String,
}

/// Labels of every per-workflow-node series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub workflow: String,
    pub node: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

fn batch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 10))
}

type HistogramFamily<L = ModelLabels> = Family<L, Histogram, fn() -> Histogram>;

/// The server's metric families and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    requests: Family<ModelLabels, Counter>,
    errors: Family<ModelLabels, Counter>,
    inference_us: Family<ModelLabels, Counter>,
    queue_us: Family<ModelLabels, Counter>,
    latency: HistogramFamily,
    batch_size: HistogramFamily,
    queue_depth: Family<ModelLabels, Gauge>,
    workers: Family<ModelLabels, Gauge>,
    node_requests: Family<NodeLabels, Counter>,
    node_errors: Family<NodeLabels, Counter>,
    node_retries: Family<NodeLabels, Counter>,
    node_latency: HistogramFamily<NodeLabels>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let metrics = Self {
            requests: Family::default(),
            errors: Family::default(),
            inference_us: Family::default(),
            queue_us: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            batch_size: Family::new_with_constructor(batch_histogram),
            queue_depth: Family::default(),
            workers: Family::default(),
            node_requests: Family::default(),
            node_errors: Family::default(),
            node_retries: Family::default(),
            node_latency: Family::new_with_constructor(latency_histogram),
            registry: Registry::default(),
        };
        registry.register(
            "ts_inference_requests",
            "Inference requests received",
            metrics.requests.clone(),
        );
        registry.register(
            "torchyard_inference_errors",
            "Inference requests answered with an error",
            metrics.errors.clone(),
        );
        registry.register(
            "ts_inference_latency_microseconds",
            "Cumulative inference latency in microseconds",
            metrics.inference_us.clone(),
        );
        registry.register(
            "ts_queue_latency_microseconds",
            "Cumulative time requests waited in the queue, in microseconds",
            metrics.queue_us.clone(),
        );
        registry.register(
            "torchyard_request_latency_seconds",
            "End-to-end inference latency",
            metrics.latency.clone(),
        );
        registry.register(
            "torchyard_batch_size",
            "Requests per batch sent to a worker",
            metrics.batch_size.clone(),
        );
        registry.register(
            "torchyard_queue_depth",
            "Requests waiting for a worker",
            metrics.queue_depth.clone(),
        );
        registry.register(
            "torchyard_workers_ready",
            "Workers with a loaded handler",
            metrics.workers.clone(),
        );
        registry.register(
            "torchyard_workflow_node_requests",
            "Requests a workflow node handled",
            metrics.node_requests.clone(),
        );
        registry.register(
            "torchyard_workflow_node_errors",
            "Workflow node calls that failed after all attempts",
            metrics.node_errors.clone(),
        );
        registry.register(
            "torchyard_workflow_node_retries",
            "Workflow node attempts that were retries",
            metrics.node_retries.clone(),
        );
        registry.register(
            "torchyard_workflow_node_latency_seconds",
            "Workflow node latency, retries included",
            metrics.node_latency.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    /// Handles on one model's series, cheap to update on the hot path.
    pub fn for_model(&self, labels: ModelLabels) -> ModelMetrics {
        ModelMetrics {
            requests: self.requests.get_or_create(&labels).clone(),
            errors: self.errors.get_or_create(&labels).clone(),
            inference_us: self.inference_us.get_or_create(&labels).clone(),
            queue_us: self.queue_us.get_or_create(&labels).clone(),
            latency: self.latency.get_or_create(&labels).clone(),
            batch_size: self.batch_size.get_or_create(&labels).clone(),
            queue_depth: self.queue_depth.get_or_create(&labels).clone(),
            workers: self.workers.get_or_create(&labels).clone(),
            labels,
        }
    }

    /// Drops a model's series when it is unregistered.
    pub fn remove_model(&self, labels: &ModelLabels) {
        self.requests.remove(labels);
        self.errors.remove(labels);
        self.inference_us.remove(labels);
        self.queue_us.remove(labels);
        self.latency.remove(labels);
        self.batch_size.remove(labels);
        self.queue_depth.remove(labels);
        self.workers.remove(labels);
    }

    /// Handles on one workflow node's series.
    pub fn for_node(&self, labels: NodeLabels) -> NodeMetrics {
        NodeMetrics {
            requests: self.node_requests.get_or_create(&labels).clone(),
            errors: self.node_errors.get_or_create(&labels).clone(),
            retries: self.node_retries.get_or_create(&labels).clone(),
            latency: self.node_latency.get_or_create(&labels).clone(),
            labels,
        }
    }

    /// Drops a workflow node's series when its workflow is unregistered.
    pub fn remove_node(&self, labels: &NodeLabels) {
        self.node_requests.remove(labels);
        self.node_errors.remove(labels);
        self.node_retries.remove(labels);
        self.node_latency.remove(labels);
    }

    /// Renders every series in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// One model's series.
#[derive(Clone)]
pub struct ModelMetrics {
    pub labels: ModelLabels,
    requests: Counter,
    errors: Counter,
    inference_us: Counter,
    queue_us: Counter,
    latency: Histogram,
    batch_size: Histogram,
    queue_depth: Gauge,
    workers: Gauge,
}

impl ModelMetrics {
    /// Records one answered request.
    pub fn record_request(&self, elapsed: Duration, failed: bool) {
        self.requests.inc();
        if failed {
            self.errors.inc();
        }
        self.inference_us.inc_by(elapsed.as_micros() as u64);
        self.latency.observe(elapsed.as_secs_f64());
    }

    /// Records how long a request waited for a worker.
    pub fn record_queue_wait(&self, waited: Duration) {
        self.queue_us.inc_by(waited.as_micros() as u64);
    }

    /// Records the size of a batch sent to a worker.
    pub fn record_batch(&self, size: usize) {
        self.batch_size.observe(size as f64);
    }

    /// Updates the gauges sampled at scrape time.
    pub fn set_gauges(&self, queue_depth: usize, ready_workers: usize) {
        self.queue_depth.set(queue_depth as i64);
        self.workers.set(ready_workers as i64);
    }
}

/// One workflow node's series.
#[derive(Clone)]
pub struct NodeMetrics {
    pub labels: NodeLabels,
    requests: Counter,
    errors: Counter,
    retries: Counter,
    latency: Histogram,
}

impl NodeMetrics {
    /// Records one node call, its retries and whether it failed in the end.
    pub fn record_call(&self, elapsed: Duration, retries: usize, failed: bool) {
        self.requests.inc();
        self.retries.inc_by(retries as u64);
        if failed {
            self.errors.inc();
        }
        self.latency.observe(elapsed.as_secs_f64());
    }
}
