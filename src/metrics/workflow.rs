//! torchyard's workflow series: calls, failures and latency of each workflow as a whole and of
//! each of its nodes (with the node's retries).

use std::sync::Arc;
use std::time::Duration;

use super::family::{Counter, Family, Histogram, Render};
use super::NodeLabels;

const WORKFLOW_LABELS: &[&str] = &["workflow"];
const NODE_LABELS: &[&str] = &["workflow", "node"];

/// Three families counting calls, failed calls and latencies, labelled alike.
#[derive(Clone)]
struct CallFamilies {
    requests: Family<Counter>,
    errors: Family<Counter>,
    latency: Family<Histogram>,
}

impl CallFamilies {
    /// The series with these label values.
    fn series(&self, values: &[&str]) -> CallSeries {
        CallSeries {
            requests: self.requests.get_or_create(values),
            errors: self.errors.get_or_create(values),
            latency: self.latency.get_or_create(values),
        }
    }

    /// Drops the series whose label values satisfy `remove`.
    fn remove_where(&self, remove: impl Fn(&[String]) -> bool) {
        self.requests.remove_where(&remove);
        self.errors.remove_where(&remove);
        self.latency.remove_where(&remove);
    }
}

/// Handles on one workflow's or node's call series.
struct CallSeries {
    requests: Arc<Counter>,
    errors: Arc<Counter>,
    latency: Arc<Histogram>,
}

impl CallSeries {
    fn record(&self, elapsed: Duration, failed: bool) {
        self.requests.add(1.0);
        if failed {
            self.errors.add(1.0);
        }
        self.latency.observe(elapsed.as_secs_f64());
    }
}

/// The workflow families.
#[derive(Clone)]
pub struct WorkflowFamilies {
    workflows: CallFamilies,
    nodes: CallFamilies,
    node_retries: Family<Counter>,
}

impl WorkflowFamilies {
    /// The families, latencies counted in buckets made by `latency`.
    pub fn new(latency: impl Fn() -> Histogram + Clone + Send + Sync + 'static) -> Self {
        Self {
            workflows: CallFamilies {
                requests: Family::new(
                    "torchyard_workflow_requests_total",
                    "Requests a workflow answered, with or without an error",
                    WORKFLOW_LABELS,
                ),
                errors: Family::new(
                    "torchyard_workflow_errors_total",
                    "Workflow requests answered with an error",
                    WORKFLOW_LABELS,
                ),
                latency: Family::with(
                    "torchyard_workflow_latency_seconds",
                    "Workflow latency, every node included",
                    WORKFLOW_LABELS,
                    latency.clone(),
                ),
            },
            nodes: CallFamilies {
                requests: Family::new(
                    "torchyard_workflow_node_requests_total",
                    "Requests a workflow node handled",
                    NODE_LABELS,
                ),
                errors: Family::new(
                    "torchyard_workflow_node_errors_total",
                    "Workflow node calls that failed after all attempts",
                    NODE_LABELS,
                ),
                latency: Family::with(
                    "torchyard_workflow_node_latency_seconds",
                    "Workflow node latency, retries included",
                    NODE_LABELS,
                    latency,
                ),
            },
            node_retries: Family::new(
                "torchyard_workflow_node_retries_total",
                "Workflow node attempts that were retries",
                NODE_LABELS,
            ),
        }
    }

    /// Every family, in exposition order.
    pub fn renders(&self) -> Vec<Box<dyn Render>> {
        let (w, n) = (&self.workflows, &self.nodes);
        vec![
            Box::new(w.requests.clone()),
            Box::new(w.errors.clone()),
            Box::new(w.latency.clone()),
            Box::new(n.requests.clone()),
            Box::new(n.errors.clone()),
            Box::new(self.node_retries.clone()),
            Box::new(n.latency.clone()),
        ]
    }

    /// Handles on one workflow's series.
    pub fn for_workflow(&self, workflow: &str) -> WorkflowMetrics {
        WorkflowMetrics(self.workflows.series(&[workflow]))
    }

    /// Drops a workflow's series when it is unregistered.
    pub fn remove_workflow(&self, workflow: &str) {
        self.workflows.remove_where(|values| values[0] == workflow);
    }

    /// Handles on one workflow node's series.
    pub fn for_node(&self, labels: NodeLabels) -> NodeMetrics {
        let node = [labels.workflow.as_str(), labels.node.as_str()];
        NodeMetrics {
            calls: self.nodes.series(&node),
            retries: self.node_retries.get_or_create(&node),
            labels,
        }
    }

    /// Drops a workflow node's series when its workflow is unregistered.
    pub fn remove_node(&self, labels: &NodeLabels) {
        let node = |values: &[String]| values[0] == labels.workflow && values[1] == labels.node;
        self.nodes.remove_where(node);
        self.node_retries.remove_where(node);
    }
}

/// One workflow's series.
pub struct WorkflowMetrics(CallSeries);

impl WorkflowMetrics {
    /// Records one request through the workflow and whether it failed.
    pub fn record_request(&self, elapsed: Duration, failed: bool) {
        self.0.record(elapsed, failed);
    }
}

/// One workflow node's series.
pub struct NodeMetrics {
    pub labels: NodeLabels,
    calls: CallSeries,
    retries: Arc<Counter>,
}

impl NodeMetrics {
    /// Records one node call, its retries and whether it failed in the end.
    pub fn record_call(&self, elapsed: Duration, retries: usize, failed: bool) {
        self.retries.add(retries as f64);
        self.calls.record(elapsed, failed);
    }

    /// Calls recorded so far and the bucket bound (seconds) of their median latency.
    pub fn calls_and_p50(&self) -> (u64, Option<f64>) {
        let calls = &self.calls;
        (
            calls.requests.get() as u64,
            calls.latency.quantile_bound(0.5),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::family::exponential_bounds;
    use super::*;

    fn families() -> WorkflowFamilies {
        let bounds = exponential_bounds(1.0, 2.0, 2);
        WorkflowFamilies::new(move || Histogram::new(bounds.clone()))
    }

    fn render(families: &WorkflowFamilies) -> String {
        let mut out = String::new();
        for family in families.renders() {
            family.render(&mut out);
        }
        out
    }

    #[test]
    fn workflows_and_nodes_count_calls_failures_and_latency() {
        let families = families();
        let workflow = families.for_workflow("wf");
        workflow.record_request(Duration::from_millis(1500), false);
        workflow.record_request(Duration::from_millis(500), true);
        let node = families.for_node(NodeLabels {
            workflow: "wf".into(),
            node: "pre".into(),
        });
        node.record_call(Duration::from_millis(500), 2, true);
        let text = render(&families);
        for line in [
            "torchyard_workflow_requests_total{workflow=\"wf\",} 2.0\n",
            "torchyard_workflow_errors_total{workflow=\"wf\",} 1.0\n",
            "torchyard_workflow_latency_seconds_bucket{workflow=\"wf\",le=\"1\",} 1.0\n",
            "torchyard_workflow_latency_seconds_sum{workflow=\"wf\",} 2.0\n",
            "torchyard_workflow_node_requests_total{workflow=\"wf\",node=\"pre\",} 1.0\n",
            "torchyard_workflow_node_errors_total{workflow=\"wf\",node=\"pre\",} 1.0\n",
            "torchyard_workflow_node_retries_total{workflow=\"wf\",node=\"pre\",} 2.0\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert_eq!(node.calls_and_p50(), (1, Some(1.0)));
        families.remove_workflow("wf");
        families.remove_node(&node.labels);
        assert!(!render(&families).contains("wf"));
    }
}
