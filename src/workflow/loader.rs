//! Registering a workflow: unpack the .war, validate spec and DAG, start one node model per
//! node, and roll everything back if any part fails.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::archive::WorkflowArchive;
use super::dag::{Dag, Node, NodeKind};
use super::handler_scan::top_level_names;
use super::plan::Plan;
use super::remote::{RemoteNode, RemoteTarget};
use super::served_workflow::{node_model_name, Runner, Workflow, WorkflowNode};
use super::spec::{ModelSource, NodeProps};
use super::stage::{FusedNodes, ModelNode, Stage};
use crate::error::{ApiError, ApiResult};
use crate::fetch::{open_archive, Opened};
use crate::metrics::NodeLabels;
use crate::model::{
    archive_stem, prepare_model, valid_name, ModelDefinition, ModelSettings, RegisterOptions,
    ServedModel,
};
use crate::state::AppState;
use crate::worker::protocol::SegmentNode;

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
        let Some(_claim) = state.workflow_claims.claim(&name) else {
            return Err(ApiError::conflict(format!(
                "Workflow {name} is already registered."
            )));
        };
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
    let mut remotes = Vec::with_capacity(dag.nodes.len());
    for node in &dag.nodes {
        remotes.push(match spec.models.get(&node.name).map(|m| &m.source) {
            Some(ModelSource::Remote(remote)) => Some(Arc::new(
                RemoteTarget::resolve(state, &node.name, remote, &archive.dir).await?,
            )),
            _ => None,
        });
    }
    let props: Vec<NodeProps> = dag
        .nodes
        .iter()
        .map(|node| {
            spec.models
                .get(&node.name)
                .map_or_else(|| spec.globals.clone(), |m| m.props.clone())
        })
        .collect();
    let mut prepared = prepare_models(state, &name, &archive, &dag).await?;
    let plan = Plan::new(&dag, |i| may_fuse(&props[i], prepared[i].as_ref()));
    let mut starts = Vec::with_capacity(plan.stages.len());
    for stage in &plan.stages {
        let nodes: Vec<(&Node, &NodeProps)> = stage
            .nodes
            .iter()
            .map(|&i| (&dag.nodes[i], &props[i]))
            .collect();
        let model = stage.model.and_then(|m| {
            let at = stage.nodes.iter().position(|&i| i == m)?;
            Some((at, prepared[m].take()))
        });
        let remote = remotes[stage.nodes[0]].clone();
        starts.push(start_stage(
            state,
            (&name, &version),
            &archive,
            nodes,
            model,
            remote,
        ));
    }
    let mut started = Vec::with_capacity(plan.stages.len());
    let mut failures = Vec::new();
    for result in futures::future::join_all(starts).await {
        match result {
            Ok(model) => started.push(model),
            Err(e) => failures.push(e.message),
        }
    }
    if !failures.is_empty() {
        stop_models(state, started.iter()).await;
        return Err(registration_failed(&name, &failures));
    }
    let nodes: Vec<WorkflowNode> = dag
        .nodes
        .iter()
        .zip(props)
        .zip(&plan.stage_of)
        .map(|((node, props), &stage)| WorkflowNode {
            runner: started[stage].runner.clone(),
            owned: started[stage].owned,
            props,
            metrics: Arc::new(state.metrics.for_node(NodeLabels {
                workflow: name.clone(),
                node: node.name.clone(),
            })),
        })
        .collect();
    let stages = plan
        .stages
        .iter()
        .map(|stage| stage_caller(&dag, &nodes, &stage.nodes))
        .collect();
    Ok(Workflow {
        version,
        in_flight: Default::default(),
        url: url.to_string(),
        spec: archive.spec,
        dag,
        nodes,
        plan,
        stages,
        dir: archive.dir,
        owns_dir,
        stored_copy: None,
        metrics: state.metrics.for_workflow(&name),
        name,
    })
}

/// Unpacks the archive of each model node the workflow starts itself (`url:`), concurrently;
/// None for every other node. On a failure nothing stays behind.
async fn prepare_models(
    state: &AppState,
    workflow: &str,
    archive: &WorkflowArchive,
    dag: &Dag,
) -> ApiResult<Vec<Option<ModelDefinition>>> {
    let prepares = dag.nodes.iter().map(|node| async move {
        let source = archive.spec.models.get(&node.name).map(|m| &m.source);
        let (NodeKind::Model, Some(ModelSource::Archive(url))) = (node.kind, source) else {
            return Ok(None);
        };
        let model_name = node_model_name(workflow, &node.name);
        let opts = RegisterOptions {
            url: url.clone(),
            model_name: Some(model_name.clone()),
            ..RegisterOptions::default()
        };
        prepare_model(state, &opts, Some(&archive.dir))
            .await
            .map(Some)
            .map_err(|e| node_failed(&model_name, e))
    });
    let results = futures::future::join_all(prepares).await;
    if results.iter().all(Result::is_ok) {
        return Ok(results.into_iter().map(|r| r.ok().flatten()).collect());
    }
    let mut failures = Vec::new();
    for result in results {
        match result {
            Ok(def) => {
                if let Some(def) = def {
                    def.remove_files().await;
                }
            }
            Err(e) => failures.push(e.message),
        }
    }
    Err(registration_failed(workflow, &failures))
}

/// The error of a workflow some of whose nodes could not be registered.
fn registration_failed(workflow: &str, failures: &[String]) -> ApiError {
    ApiError::internal(format!(
        "Workflow {workflow} has failed to register. Failures: [{}]",
        failures.join(", ")
    ))
}

/// Whether a model node may run its prelude and postlude functions in its own workers: only
/// a model the workflow starts itself from its archive (`prepared`), on the server's Python
/// without packages of its own (its workers import the workflow's handler file), unless its
/// `fuse` property says no.
fn may_fuse(props: &NodeProps, prepared: Option<&ModelDefinition>) -> bool {
    props.fuse
        && prepared.is_some_and(|def| {
            def.runtime == "python" && def.deps_dir.is_none() && def.venv.is_none()
        })
}

/// What runs a stage, and whether the workflow started it.
struct StageModel {
    runner: Runner,
    owned: bool,
}

/// Registers and starts the model of one stage: a model node's (`model`: its place in
/// `nodes` and its prepared definition, when the workflow starts it), which also runs the
/// stage's other nodes when there are any, or one for a fused chain of function nodes.
async fn start_stage(
    state: &AppState,
    (workflow, version): (&str, &str),
    archive: &WorkflowArchive,
    nodes: Vec<(&Node, &NodeProps)>,
    model: Option<(usize, Option<ModelDefinition>)>,
    remote: Option<Arc<RemoteTarget>>,
) -> ApiResult<StageModel> {
    if let Some(target) = remote {
        return Ok(StageModel {
            runner: Runner::Remote(target),
            owned: false,
        });
    }
    let (lead, prepared) = model.unwrap_or((0, None));
    let (first, props) = nodes[lead];
    // A model node's stuck worker is killed when a try times out; a segment's worker times
    // out each try itself, so its workers are killed only past every try of every node.
    let alone = nodes.len() == 1 && first.kind == NodeKind::Model;
    let response_timeout = if alone {
        Duration::from_millis(props.timeout_ms)
    } else {
        stage_budget(nodes.iter().map(|(_, p)| *p))
    };
    let mut def = match (first.kind, prepared) {
        (NodeKind::Model, Some(mut def)) => {
            if !alone {
                def.segment = Some(segment_nodes(archive, workflow, &nodes, Some((lead, &def))));
            }
            def
        }
        (NodeKind::Model, None) => {
            let source = archive.spec.models.get(&first.name).map(|m| &m.source);
            let Some(ModelSource::Registered(shared)) = source else {
                return Err(ApiError::internal(format!(
                    "workflow node {} has no model to run it",
                    first.name
                )));
            };
            let model_name = node_model_name(workflow, &first.name);
            let model = state
                .registry
                .get(shared, None)
                .map_err(|e| node_failed(&model_name, e))?;
            return Ok(StageModel {
                runner: Runner::Model(model),
                owned: false,
            });
        }
        _ => segment_definition(state, archive, workflow, &nodes),
    };
    def.version = version.to_string();
    def.settings = ModelSettings {
        min_workers: props.min_workers,
        max_workers: props.max_workers,
        batch_size: props.batch_size,
        max_batch_delay: Duration::from_millis(props.max_batch_delay),
        response_timeout,
        ..def.settings
    };
    def.workflow = Some(workflow.to_string());
    let model = state.start_model(def, true).await?;
    Ok(StageModel {
        runner: Runner::Model(model),
        owned: true,
    })
}

/// How long one call of a stage may take: every try of every node.
fn stage_budget<'a>(props: impl Iterator<Item = &'a NodeProps>) -> Duration {
    props
        .map(|p| Duration::from_millis(p.timeout_ms) * (p.retry_attempts as u32 + 1))
        .sum()
}

/// What the executor calls for the stage of `indices`.
fn stage_caller(dag: &Dag, nodes: &[WorkflowNode], indices: &[usize]) -> Box<dyn Stage> {
    let first = &nodes[indices[0]];
    let name = dag.nodes[indices[0]].name.clone();
    let model = match &first.runner {
        Runner::Remote(target) => {
            return Box::new(RemoteNode {
                name,
                target: target.clone(),
                props: first.props.clone(),
                metrics: first.metrics.clone(),
            })
        }
        Runner::Model(model) => model.clone(),
    };
    if indices.len() == 1 && dag.nodes[indices[0]].kind == NodeKind::Model {
        return Box::new(ModelNode {
            name,
            model,
            props: first.props.clone(),
            metrics: first.metrics.clone(),
        });
    }
    Box::new(FusedNodes {
        names: indices.iter().map(|&i| dag.nodes[i].name.clone()).collect(),
        model,
        metrics: indices.iter().map(|&i| nodes[i].metrics.clone()).collect(),
        attempts: first.props.retry_attempts + 1,
        budget: stage_budget(indices.iter().map(|&i| &nodes[i].props)),
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

/// A chain of function nodes runs in workers of its own that import the handler file and
/// call each function in turn; the model is named after the first node, and the caller sets
/// its settings.
fn segment_definition(
    state: &AppState,
    archive: &WorkflowArchive,
    workflow: &str,
    nodes: &[(&Node, &NodeProps)],
) -> ModelDefinition {
    let segment = segment_nodes(archive, workflow, nodes, None);
    let functions: Vec<&str> = nodes.iter().map(|(n, _)| n.name.as_str()).collect();
    // `file.py:a,b,c`: what the model runs, as its workers log it.
    let handler = format!("{}:{}", archive.handler, functions.join(","));
    ModelDefinition {
        manifest: segment[0].manifest.clone(),
        name: segment[0].model_name.clone(),
        version: "1.0".into(),
        url: handler.clone(),
        runtime: "python".into(),
        dir: archive.dir.clone(),
        owns_dir: false,
        handler,
        yaml_config: json!({}),
        settings: ModelSettings::server_defaults(&state.config),
        loaded_at_startup: false,
        deps_dir: None,
        venv: None,
        workflow: Some(workflow.to_string()),
        stored_copy: None,
        segment: Some(segment),
    }
}

/// The nodes of a fused stage as its workers load them: each function from the workflow's
/// handler file, and the model node (`model`: its place in `nodes` and its definition) by the
/// model's own handler.
fn segment_nodes(
    archive: &WorkflowArchive,
    workflow: &str,
    nodes: &[(&Node, &NodeProps)],
    model: Option<(usize, &ModelDefinition)>,
) -> Arc<[SegmentNode]> {
    nodes
        .iter()
        .enumerate()
        .map(|(k, (node, props))| {
            let model_name = node_model_name(workflow, &node.name);
            let own = model.filter(|&(at, _)| at == k).map(|(_, def)| def);
            let (handler, manifest, dir) = match own {
                Some(def) => (def.handler.clone(), def.manifest.clone(), &def.dir),
                None => {
                    let handler = format!("{}:{}", archive.handler, node.name);
                    let manifest = json!({"runtime": "python", "model": {"modelName": model_name, "handler": handler, "modelVersion": "1.0"}});
                    (handler, manifest, &archive.dir)
                }
            };
            SegmentNode {
                manifest,
                node: node.name.clone(),
                model: own.is_some(),
                model_dir: dir.to_string_lossy().into_owned(),
                model_name,
                handler,
                attempts: props.retry_attempts + 1,
                timeout_ms: props.timeout_ms,
            }
        })
        .collect()
}

/// Unregisters the models a workflow started (each once, however many nodes it runs).
async fn stop_models(state: &AppState, models: impl Iterator<Item = &StageModel>) {
    let mut owned: Vec<&Arc<ServedModel>> = Vec::new();
    for model in models.filter(|m| m.owned).filter_map(|m| m.runner.model()) {
        if !owned.iter().any(|o| Arc::ptr_eq(o, model)) {
            owned.push(model);
        }
    }
    let stops = owned.into_iter().map(|model| async move {
        let def = &model.def;
        state.registry.pass_default_from(&def.name, &def.version);
        let _ = state.unregister_model(&def.name, Some(&def.version)).await;
    });
    futures::future::join_all(stops).await;
}

/// Unregisters every node model of a workflow and removes its and their metrics.
pub async fn stop_nodes(state: &AppState, workflow: &Workflow) {
    let models: Vec<StageModel> = workflow
        .nodes
        .iter()
        .map(|node| StageModel {
            runner: node.runner.clone(),
            owned: node.owned,
        })
        .collect();
    stop_models(state, models.iter()).await;
    for node in &workflow.nodes {
        state.metrics.remove_node(&node.metrics.labels);
    }
    state.metrics.remove_workflow(&workflow.name);
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
        let wanted = served.owned && node.is_none_or(|wanted| dag_node.name == wanted);
        let Some(model) = served.runner.model().filter(|_| wanted) else {
            continue;
        };
        // The nodes of a fused segment share one model.
        if !models.iter().any(|m| Arc::ptr_eq(m, model)) {
            models.push(model.clone());
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
