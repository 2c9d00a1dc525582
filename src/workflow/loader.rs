//! Registering a workflow: unpack the .war, validate spec and DAG, start one node model per
//! node, and roll everything back if any part fails.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::archive::WorkflowArchive;
use super::dag::{Dag, NodeKind};
use super::handler_scan::top_level_names;
use super::served_workflow::{node_model_name, Workflow, WorkflowNode};
use super::spec::{ModelSource, NodeProps, WorkflowSpec};
use crate::error::{ApiError, ApiResult};
use crate::fetch::{open_archive, Opened};
use crate::metrics::NodeLabels;
use crate::model::{
    archive_stem, prepare_model, valid_name, ModelDefinition, ModelSettings, RegisterOptions,
    ServedModel,
};
use crate::state::AppState;

/// Query parameters of `POST /workflows`.
#[derive(Debug, Default, Deserialize)]
pub struct WorkflowOptions {
    /// Missing reads as empty, which registration answers with "Parameter url is required.".
    #[serde(default)]
    pub url: String,
    pub workflow_name: Option<String>,
}

/// Registers the workflow archive named by `opts.url` with all its node models.
pub async fn register_workflow(
    state: &AppState,
    opts: WorkflowOptions,
) -> ApiResult<Arc<Workflow>> {
    let dirs: Vec<&Path> = state.config.workflow_store.as_deref().into_iter().collect();
    let limits = state.config.archive_limits;
    let Opened {
        archive,
        source,
        stored_copy,
    } = open_archive(
        state,
        &opts.url,
        &dirs,
        "workflows",
        "workflow",
        move |source, work_dir| WorkflowArchive::open(source, work_dir, &limits),
    )
    .await?;
    let owns_dir = archive.dir != source;
    let stem = source
        .file_name()
        .and_then(|n| n.to_str())
        .map(archive_stem);
    let name = opts
        .workflow_name
        .clone()
        .or_else(|| archive.name.clone())
        .or(stem)
        .unwrap_or_default();
    let version = archive.version.clone().unwrap_or_else(|| "1.0".into());
    let dir = archive.dir.clone();
    let registered = async {
        let mut workflow = build(state, &opts.url, name, version, archive, owns_dir).await?;
        workflow.stored_copy = stored_copy.clone();
        let workflow = Arc::new(workflow);
        if let Err(e) = state.workflows.insert(workflow.clone()) {
            stop_nodes(state, &workflow).await;
            return Err(e);
        }
        Ok(workflow)
    }
    .await;
    if registered.is_err() {
        if owns_dir {
            let _ = tokio::fs::remove_dir_all(dir).await;
        }
        if let Some(copy) = stored_copy {
            let _ = tokio::fs::remove_file(copy).await;
        }
    }
    registered
}

/// Validates and starts everything; on failure stops whatever it started.
async fn build(
    state: &AppState,
    url: &str,
    name: String,
    version: String,
    archive: WorkflowArchive,
    owns_dir: bool,
) -> ApiResult<Workflow> {
    if !valid_name(&name) || name.contains("__") {
        return Err(ApiError::bad_request(format!(
            "Invalid workflow name {name:?}: use letters, digits, '_', '-' and '.', without '__'"
        )));
    }
    if state.workflows.contains(&name, &version) {
        return Err(ApiError::conflict(format!(
            "Workflow {name} is already registered."
        )));
    }
    let spec = &archive.spec;
    let dag = Dag::build(spec, &top_level_names(&archive.handler_source))
        .map_err(|e| ApiError::bad_request(format!("Invalid workflow specification: {e}")))?;
    let starts = dag.nodes.iter().map(|node| {
        let props = spec
            .models
            .get(&node.name)
            .map_or_else(|| spec.globals.clone(), |m| m.props.clone());
        start_node(state, (&name, &version), &archive, spec, node, props)
    });
    let started = futures::future::join_all(starts).await;
    let mut nodes = Vec::with_capacity(started.len());
    let mut failures = Vec::new();
    for result in started {
        match result {
            Ok(node) => nodes.push(node),
            Err(e) => failures.push(e.message),
        }
    }
    let workflow = Workflow {
        version,
        in_flight: Default::default(),
        url: url.to_string(),
        spec: archive.spec,
        dag,
        nodes,
        dir: archive.dir,
        owns_dir,
        stored_copy: None,
        name,
    };
    if !failures.is_empty() {
        stop_nodes(state, &workflow).await;
        return Err(ApiError::internal(format!(
            "Workflow {} has failed to register. Failures: [{}]",
            workflow.name,
            failures.join(", ")
        )));
    }
    Ok(workflow)
}

/// Registers and starts the node model of one DAG node.
async fn start_node(
    state: &AppState,
    (workflow, version): (&str, &str),
    archive: &WorkflowArchive,
    spec: &WorkflowSpec,
    node: &super::dag::Node,
    props: NodeProps,
) -> ApiResult<WorkflowNode> {
    let model_name = node_model_name(workflow, &node.name);
    let settings = ModelSettings {
        min_workers: props.min_workers,
        max_workers: props.max_workers,
        batch_size: props.batch_size,
        max_batch_delay: Duration::from_millis(props.max_batch_delay),
        response_timeout: Duration::from_millis(props.timeout_ms),
        job_queue_size: state.config.job_queue_size,
    };
    let metrics = state.metrics.for_node(NodeLabels {
        workflow: workflow.to_string(),
        node: node.name.clone(),
    });
    let mut def = match (node.kind, &spec.models.get(&node.name).map(|m| &m.source)) {
        (NodeKind::Model, Some(ModelSource::Registered(shared))) => {
            let model = state
                .registry
                .get(shared, None)
                .map_err(|e| node_failed(&model_name, e))?;
            return Ok(WorkflowNode {
                model,
                owned: false,
                props,
                metrics,
            });
        }
        (NodeKind::Model, Some(ModelSource::Archive(url))) => {
            let opts = RegisterOptions {
                url: url.clone(),
                model_name: Some(model_name.clone()),
                ..RegisterOptions::default()
            };
            prepare_model(state, &opts, Some(&archive.dir))
                .await
                .map_err(|e| node_failed(&model_name, e))?
        }
        _ => function_definition(archive, &node.name, model_name, workflow),
    };
    def.version = version.to_string();
    def.settings = settings;
    def.workflow = Some(workflow.to_string());
    let model: Arc<ServedModel> = state.start_model(def, true).await?;
    Ok(WorkflowNode {
        model,
        owned: true,
        props,
        metrics,
    })
}

/// TorchServe's account of a node that could not be registered.
fn node_failed(model_name: &str, error: ApiError) -> ApiError {
    let message = format!(
        "Workflow Node {model_name} failed to register. Details: {}",
        error.message
    );
    error.with_message(message)
}

/// A function node runs the handler file's function in workers of its own; the caller sets
/// its settings.
fn function_definition(
    archive: &WorkflowArchive,
    function: &str,
    model_name: String,
    workflow: &str,
) -> ModelDefinition {
    let handler = format!("{}:{function}", archive.handler);
    ModelDefinition {
        manifest: json!({"runtime": "python", "model": {"modelName": model_name, "handler": handler, "modelVersion": "1.0"}}),
        name: model_name,
        version: "1.0".into(),
        url: format!("{}:{function}", archive.handler),
        runtime: "python".into(),
        dir: archive.dir.clone(),
        owns_dir: false,
        handler,
        yaml_config: json!({}),
        settings: ModelSettings::default(),
        loaded_at_startup: false,
        deps_dir: None,
        workflow: Some(workflow.to_string()),
        stored_copy: None,
    }
}

/// Unregisters every node model of a workflow and removes their metrics.
pub async fn stop_nodes(state: &AppState, workflow: &Workflow) {
    let stops = workflow.nodes.iter().map(|node| async move {
        if node.owned {
            let def = &node.model.def;
            state.registry.pass_default_from(&def.name, &def.version);
            let _ = state.unregister_model(&def.name, Some(&def.version)).await;
        }
        state.metrics.remove_node(&node.metrics.labels);
    });
    futures::future::join_all(stops).await;
}

/// How long an unregistered workflow version may take to finish its requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Unregisters one version of a workflow (the default when `version` is None): new requests
/// stop at once, requests in flight finish, then its node models and archive go.
pub async fn unregister_workflow(
    state: &AppState,
    name: &str,
    version: Option<&str>,
) -> ApiResult<Arc<Workflow>> {
    let workflow = state.workflows.remove(name, version)?;
    if tokio::time::timeout(DRAIN_TIMEOUT, workflow.in_flight.idle())
        .await
        .is_err()
    {
        tracing::warn!("workflow {name} still had requests in flight after {DRAIN_TIMEOUT:?}");
    }
    stop_nodes(state, &workflow).await;
    if workflow.owns_dir {
        let _ = tokio::fs::remove_dir_all(&workflow.dir).await;
    }
    if let Some(copy) = &workflow.stored_copy {
        let _ = tokio::fs::remove_file(copy).await;
    }
    Ok(workflow)
}

/// Replaces the default version of `name` by the archive at `url` without dropping a
/// request: the new version starts, becomes the default, and the old one drains and stops.
pub async fn update_workflow(
    state: &AppState,
    name: &str,
    url: String,
) -> ApiResult<Arc<Workflow>> {
    let old = state.workflows.get(name, None)?;
    let opts = WorkflowOptions {
        url,
        workflow_name: Some(name.to_string()),
    };
    let new = register_workflow(state, opts).await?;
    state.workflows.set_default(name, &new.version)?;
    unregister_workflow(state, name, Some(&old.version)).await?;
    Ok(new)
}

/// Scales the node models of a workflow: all of them, or the one named `node`. Shared
/// models keep their own scale.
pub async fn scale_workflow(
    workflow: &Workflow,
    node: Option<&str>,
    min: usize,
    max: usize,
    synchronous: bool,
) -> ApiResult<()> {
    let mut models: Vec<Arc<ServedModel>> = Vec::new();
    for (dag_node, served) in workflow.dag.nodes.iter().zip(&workflow.nodes) {
        if served.owned && node.is_none_or(|wanted| dag_node.name == wanted) {
            models.push(served.model.clone());
        }
    }
    if models.is_empty() {
        return Err(ApiError::bad_request(format!(
            "Workflow {} has no node {} of its own to scale",
            workflow.name,
            node.unwrap_or_default()
        )));
    }
    let mut scaling = Vec::with_capacity(models.len());
    for model in &models {
        scaling.push(model.scale(min, max, synchronous));
    }
    for result in futures::future::join_all(scaling).await {
        result?;
    }
    Ok(())
}
