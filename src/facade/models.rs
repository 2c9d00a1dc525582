//! Model management: register, scale, describe, list, set the default, unregister.

use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::Value;

use super::{change, described, Gate, Page, Scale, Scaled};
use crate::error::{ApiError, ApiResult};
use crate::job::InferenceRequest;
use crate::model::{register_archive, RegisterOptions, ServedModel};
use crate::snapshot::RecordKind;
use crate::state::AppState;
use crate::versioned::Versioned;

/// Registers the archive at `opts.url` and starts its workers. As in TorchServe, a
/// registration that starts workers without waiting for them is [`Scaled::Accepted`]; else it
/// says what was registered.
pub async fn register(state: &AppState, opts: RegisterOptions) -> ApiResult<Scaled> {
    let synchronous = opts.synchronous;
    change(state, Gate::ModelApi, None, async {
        let model = register_archive(state, opts).await?;
        let workers = model.def.settings.min_workers;
        if workers > 0 && !synchronous {
            return Ok(Scaled::Accepted);
        }
        let hint = if workers == 0 {
            ". Use scale workers API to add workers for the model."
        } else {
            ""
        };
        Ok(Scaled::Done(format!(
            "Model \"{}\" Version: {} registered with {workers} initial workers{hint}",
            model.def.name, model.def.version
        )))
    })
    .await
}

/// The default versions of the models, one page of them.
pub fn list(state: &AppState, page: Page) -> ApiResult<Value> {
    super::list(&state.registry, "models", page)
}

/// Describes a model version (the default when `version` is None, every one for `"all"`);
/// with `customized` each entry also holds `customizedMetadata`, what the handler answers to
/// a request flagged `describe: True` (TorchServe's `describe_handle`).
pub async fn describe(
    state: &AppState,
    name: &str,
    version: Option<&str>,
    customized: bool,
) -> ApiResult<Vec<Value>> {
    let models = described(&state.registry, name, version)?;
    state.gpus.refresh_usage().await;
    let mut described = Vec::with_capacity(models.len());
    for model in models {
        let mut entry = model.describe();
        if customized {
            entry["customizedMetadata"] = customized_metadata(&model).await?;
        }
        described.push(entry);
    }
    Ok(described)
}

/// The handler's answer to a describe request, as JSON when it is JSON.
async fn customized_metadata(model: &ServedModel) -> ApiResult<Value> {
    let request = InferenceRequest {
        id: uuid::Uuid::new_v4().to_string(),
        headers: vec![("describe".into(), "True".into())],
        params: Vec::new(),
    };
    let output = model.submit(request, false).await?.whole().await?;
    Ok(serde_json::from_slice(&output.body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&output.body).into_owned())))
}

/// Sets the workers of a model version (the default when `version` is None).
pub async fn scale(
    state: &AppState,
    name: &str,
    version: Option<&str>,
    scale: Scale,
) -> ApiResult<Scaled> {
    change(state, Gate::Open, None, async {
        let model = state.registry.get(name, version)?;
        let (min, max) = scale.bounds(state.config.max_workers_per_model)?;
        model.scale(min, max, scale.synchronous).await?;
        let what = match version {
            Some(version) => format!("model: {name}, version: {version}"),
            None => format!("model: {name}"),
        };
        Ok(Scaled::new(scale.synchronous, min, &what))
    })
    .await
}

/// Makes `version` the default version of model `name`.
pub async fn set_default(state: &AppState, name: &str, version: &str) -> ApiResult<String> {
    super::set_default(state, &state.registry, name, version).await
}

/// Unregisters a model version (the default when `version` is None) and waits at most
/// `unregister_model_timeout` for its workers to stop: after that it answers TorchServe's 408
/// while the stopping finishes in the background. A workflow's node models go only with
/// their workflow.
pub async fn unregister(
    state: &Arc<AppState>,
    name: &str,
    version: Option<&str>,
) -> ApiResult<String> {
    let unregisters = Some((RecordKind::Model, name, version));
    change(state, Gate::ModelApi, unregisters, async {
        check_not_node(state, name, version)?;
        let limit = state.config.unregister_model_timeout;
        let unregistering = {
            let (state, name) = (state.clone(), name.to_string());
            let version = version.map(String::from);
            tokio::spawn(async move { state.unregister_model(&name, version.as_deref()).await })
        };
        match tokio::time::timeout(limit, unregistering).await {
            Ok(Ok(result)) => result.map(|_| format!("Model \"{name}\" unregistered")),
            Ok(Err(e)) => Err(ApiError::internal(format!("unregistering failed: {e}"))),
            Err(_) => Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "RequestTimeoutException",
                format!("Timed out while cleaning resources: {name}"),
            )),
        }
    })
    .await
}

/// Refuses to unregister a workflow's node model on its own.
fn check_not_node(state: &AppState, name: &str, version: Option<&str>) -> ApiResult<()> {
    match &state.registry.get(name, version)?.def.workflow {
        Some(workflow) => Err(ApiError::bad_request(format!(
            "Model {name} is a node of workflow {workflow}: unregister the workflow instead"
        ))),
        None => Ok(()),
    }
}
