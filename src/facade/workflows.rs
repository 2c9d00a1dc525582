//! Workflow management: register, update, scale, describe, list, set the default,
//! unregister.

use serde_json::Value;

use super::{change, described, Gate, Page, Scale, Scaled};
use crate::error::ApiResult;
use crate::snapshot::RecordKind;
use crate::state::AppState;
use crate::versioned::Versioned;
use crate::workflow::{self, WorkflowOptions};

/// Registers the workflow archive at `opts.url` with its node models; says so.
pub async fn register(state: &AppState, opts: WorkflowOptions) -> ApiResult<String> {
    change(state, Gate::ModelApi, None, async {
        let workflow = workflow::register_workflow(state, opts).await?;
        Ok(format!(
            "Workflow {} has been registered and scaled successfully.",
            workflow.name
        ))
    })
    .await
}

/// Replaces the default version of `name` by the archive at `url`, without dropping a
/// request.
pub async fn update(state: &AppState, name: &str, url: String) -> ApiResult<String> {
    change(state, Gate::ModelApi, None, async {
        let workflow = workflow::update_workflow(state, name, url).await?;
        Ok(format!(
            "Workflow {name} updated to version {}",
            workflow.version
        ))
    })
    .await
}

/// The default versions of the workflows, one page of them.
pub fn list(state: &AppState, page: Page) -> ApiResult<Value> {
    super::list(&state.workflows, "workflows", page)
}

/// Describes a workflow version (the default when `version` is None, every one for `"all"`).
pub fn describe(state: &AppState, name: &str, version: Option<&str>) -> ApiResult<Vec<Value>> {
    let workflows = described(&state.workflows, name, version)?;
    Ok(workflows.iter().map(|w| w.describe()).collect())
}

/// The picture of a workflow version (the default when `version` is None); with `stats`,
/// each node's calls and median latency.
pub fn picture(
    state: &AppState,
    name: &str,
    version: Option<&str>,
    stats: bool,
) -> ApiResult<workflow::Picture> {
    Ok(workflow::Picture::of(
        &*state.workflows.get(name, version)?,
        stats,
    ))
}

/// Sets the workers of a workflow version's node models: every one it owns, or `node`.
pub async fn scale(
    state: &AppState,
    name: &str,
    version: Option<&str>,
    node: Option<&str>,
    scale: Scale,
) -> ApiResult<Scaled> {
    change(state, Gate::Open, None, async {
        let workflow = state.workflows.get(name, version)?;
        let (min, max) = scale.bounds(state.config.max_workers_per_model)?;
        workflow::scale_workflow(&workflow, node, min, max, scale.synchronous).await?;
        Ok(Scaled::new(
            scale.synchronous,
            min,
            &format!("workflow: {name}"),
        ))
    })
    .await
}

/// Makes `version` the default version of workflow `name`.
pub async fn set_default(state: &AppState, name: &str, version: &str) -> ApiResult<String> {
    super::set_default(state, &state.workflows, name, version).await
}

/// Unregisters a workflow version (the default when `version` is None) once its requests in
/// flight have finished.
pub async fn unregister(state: &AppState, name: &str, version: Option<&str>) -> ApiResult<String> {
    let unregisters = Some((RecordKind::Workflow, name, version));
    change(state, Gate::ModelApi, unregisters, async {
        workflow::unregister_workflow(state, name, version).await?;
        Ok(match version {
            Some(version) => format!("Workflow \"{name}\" version {version} unregistered"),
            None => format!("Workflow \"{name}\" unregistered"),
        })
    })
    .await
}
