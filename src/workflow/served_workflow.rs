//! A registered workflow: its DAG and the node models that run it.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::dag::{Dag, NodeKind};
use super::spec::{NodeProps, WorkflowSpec};
use crate::metrics::NodeMetrics;
use crate::model::ServedModel;

/// One node of a running workflow.
pub struct WorkflowNode {
    pub model: Arc<ServedModel>,
    pub props: NodeProps,
    pub metrics: NodeMetrics,
}

/// A workflow being served.
pub struct Workflow {
    pub name: String,
    pub url: String,
    pub spec: WorkflowSpec,
    pub dag: Dag,
    /// Parallel to `dag.nodes`.
    pub nodes: Vec<WorkflowNode>,
    /// The unpacked archive, removed with the workflow when the server unpacked it.
    pub dir: PathBuf,
    pub owns_dir: bool,
}

/// The model name of node `node` of workflow `workflow`.
pub fn node_model_name(workflow: &str, node: &str) -> String {
    format!("{workflow}__{node}")
}

impl Workflow {
    /// The workflow's entry in the describe API.
    pub fn describe(&self) -> Value {
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
            .map(|(node, served)| {
                json!({
                    "name": node.name,
                    "type": match node.kind { NodeKind::Model => "model", NodeKind::Function => "function" },
                    "modelName": served.model.def.name,
                    "properties": served.props,
                })
            })
            .collect();
        json!({
            "workflowName": self.name,
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
}
