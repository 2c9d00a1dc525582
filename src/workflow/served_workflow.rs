//! A registered workflow: its DAG and the node models that run it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

use serde_json::{json, Map, Value};

use super::dag::{Dag, NodeKind};
use super::plan::Plan;
use super::remote::RemoteTarget;
use super::spec::{NodeProps, WorkflowSpec};
use super::stage::Stage;
use crate::metrics::{NodeMetrics, WorkflowMetrics};
use crate::model::ServedModel;

/// What runs a node.
#[derive(Clone)]
pub enum Runner {
    /// The model whose workers run the node: its node model, the model of the fused segment
    /// of function nodes it belongs to, or a model registered on its own that it shares.
    Model(Arc<ServedModel>),
    /// A model served by another server.
    Remote(Arc<RemoteTarget>),
}

impl Runner {
    /// The local model, if the node has one.
    pub fn model(&self) -> Option<&Arc<ServedModel>> {
        match self {
            Self::Model(model) => Some(model),
            Self::Remote(_) => None,
        }
    }
}

/// One node of a running workflow.
pub struct WorkflowNode {
    pub runner: Runner,
    /// False when the node shares a model registered on its own, which outlives the workflow
    /// and keeps its own scale, or calls a remote one.
    pub owned: bool,
    pub props: NodeProps,
    pub metrics: Arc<NodeMetrics>,
}

/// A workflow being served.
pub struct Workflow {
    pub name: String,
    pub version: String,
    pub url: String,
    pub spec: WorkflowSpec,
    pub dag: Dag,
    /// Parallel to `dag.nodes`.
    pub nodes: Vec<WorkflowNode>,
    /// Which nodes run together.
    pub plan: Plan,
    /// Parallel to `plan.stages`.
    pub stages: Vec<Box<dyn Stage>>,
    /// The unpacked archive, removed with the workflow when the server unpacked it.
    pub dir: PathBuf,
    pub owns_dir: bool,
    /// The copy of a downloaded (or `file://`) archive kept in the workflow store, removed
    /// with the workflow.
    pub stored_copy: Option<PathBuf>,
    pub in_flight: InFlight,
    /// Requests, errors and latency of the whole workflow.
    pub metrics: WorkflowMetrics,
}

/// Counts requests running through a workflow, so an old version can drain before it stops.
#[derive(Default)]
pub struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

/// Marks one request in flight until dropped.
pub struct InFlightGuard<'a>(&'a InFlight);

impl InFlight {
    pub fn enter(&self) -> InFlightGuard<'_> {
        self.count.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(self)
    }

    /// Waits until no request is in flight.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The model name of node `node` of workflow `workflow`.
pub fn node_model_name(workflow: &str, node: &str) -> String {
    format!("{workflow}__{node}")
}

impl crate::versioned::Versioned for Workflow {
    const KIND: &'static str = "Workflow";

    fn name(&self) -> &str {
        &self.name
    }

    fn version(&self) -> &str {
        &self.version
    }

    fn describe(&self) -> Value {
        let globals = &self.spec.globals;
        let mut dag = Map::new();
        for (node, children) in &self.spec.dag {
            dag.insert(node.clone(), json!(children));
        }
        let nodes: Vec<Value> = self
            .dag
            .nodes
            .iter()
            .zip(&self.nodes)
            .zip(&self.plan.stage_of)
            .map(|((node, served), &stage)| {
                let mut described = json!({
                    "name": node.name,
                    "type": node.kind.label(),
                    "properties": served.props,
                });
                match &served.runner {
                    Runner::Model(model) => {
                        described["modelName"] = json!(model.def.name);
                        described["workers"] = json!(model.worker_bounds());
                        described["autoscaling"] = json!(model.autoscaling());
                    }
                    Runner::Remote(target) => {
                        described["remote"] = json!({"url": target.url.as_str(), "protocol": target.protocol.label()});
                    }
                }
                if let Some(route) = &node.route {
                    let names = |c: &[usize]| -> Vec<&str> { c.iter().map(|&i| self.dag.nodes[i].name.as_str()).collect() };
                    described["route"] = route.describe(names);
                }
                let stage_nodes = &self.plan.stages[stage].nodes;
                if node.kind == NodeKind::Function || stage_nodes.len() > 1 {
                    let segment: Vec<&str> = stage_nodes
                        .iter()
                        .map(|&i| self.dag.nodes[i].name.as_str())
                        .collect();
                    described["segment"] = json!(segment);
                }
                described
            })
            .collect();
        json!({
            "workflowName": self.name,
            "workflowVersion": self.version,
            "workflowUrl": self.url,
            "minWorkers": globals.min_workers,
            "maxWorkers": globals.max_workers,
            "batchSize": globals.batch_size,
            "maxBatchDelay": globals.max_batch_delay,
            "retryAttempts": globals.retry_attempts,
            "timeoutMs": globals.timeout_ms,
            "workflowDag": dag,
            "nodes": nodes,
        })
    }

    fn summary(&self) -> Value {
        json!({"workflowName": self.name, "workflowUrl": self.url})
    }
}
