//! Registering a model from an archive: resolve the url, unpack, read settings, start workers.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::definition::{valid_name, ModelDefinition, ModelSettings};
use super::dependencies::{create_venv, install_requirements};
use super::served_model::ServedModel;
use crate::archive::ModelArchive;
use crate::error::{ApiError, ApiResult};
use crate::fetch::{open_archive, stored_name, Opened};
use crate::state::AppState;

/// Query parameters of `POST /models`, also used for models loaded at start.
#[derive(Debug, Default, Deserialize)]
pub struct RegisterOptions {
    /// Missing reads as empty, which registration answers with "Parameter url is required.".
    #[serde(default)]
    pub url: String,
    pub model_name: Option<String>,
    pub handler: Option<String>,
    pub runtime: Option<String>,
    pub batch_size: Option<usize>,
    pub max_batch_delay: Option<u64>,
    pub initial_workers: Option<usize>,
    /// Whether to answer once the workers are up; over REST it defaults to true, as in
    /// TorchServe.
    #[serde(default = "answer_when_ready")]
    pub synchronous: bool,
    pub response_timeout: Option<u64>,
    /// Seconds a worker may take to load the handler.
    pub startup_timeout: Option<u64>,
    #[serde(skip)]
    pub loaded_at_startup: bool,
}

fn answer_when_ready() -> bool {
    true
}

/// Registers the archive named by `opts.url` and starts its workers.
pub async fn register_archive(
    state: &AppState,
    opts: RegisterOptions,
) -> ApiResult<Arc<ServedModel>> {
    let def = prepare_model(state, &opts, None).await?;
    state.start_model(def, opts.synchronous).await
}

/// Finds and unpacks the archive named by `opts.url` (in the model store, else in
/// `fallback_dir`, or at an http(s) URL) and builds the model's definition.
pub async fn prepare_model(
    state: &AppState,
    opts: &RegisterOptions,
    fallback_dir: Option<&Path>,
) -> ApiResult<ModelDefinition> {
    if let Some(runtime) = &opts.runtime {
        check_runtime(runtime)?;
    }
    if opts.batch_size == Some(0) {
        return Err(ApiError::bad_request("batch_size must be at least 1"));
    }
    crate::fetch::refuse_parent_paths(&opts.url, "model")?;
    check_not_fetched(state, &opts.url)?;
    let dirs: Vec<&Path> = state
        .config
        .model_store
        .as_deref()
        .into_iter()
        .chain(fallback_dir)
        .collect();
    let limits = state.config.archive_limits;
    let handler = opts.handler.clone();
    let Opened {
        archive,
        source,
        stored_copy,
    } = open_archive(
        state,
        &opts.url,
        &dirs,
        "models",
        "model",
        move |source, work_dir| ModelArchive::open(source, work_dir, &limits, handler),
    )
    .await?;
    let unpacked = (archive.dir != source).then(|| archive.dir.clone());
    let requirements = archive.requirements.clone();
    let use_venv = archive.config.use_venv;
    let mut def = definition(state, opts, &source, archive);
    if let Ok(d) = &mut def {
        d.stored_copy = stored_copy.clone();
    }
    if let Ok(d) = &mut def {
        if let Err(e) = install_packages(state, d, requirements, use_venv).await {
            def = Err(e);
        }
    }
    if def.is_err() {
        if let Some(dir) = unpacked {
            let _ = tokio::fs::remove_dir_all(dir).await;
        }
        if let Some(copy) = stored_copy {
            let _ = tokio::fs::remove_file(copy).await;
        }
    }
    def
}

/// Refuses, before anything is downloaded, an http(s) or `file://` url whose archive a
/// registered model came from already (same url, a copy of that name in the store, or, for
/// http(s), the store's own archive of that name): TorchServe's 500 "Model file already exists
/// NAME".
fn check_not_fetched(state: &AppState, url: &str) -> ApiResult<()> {
    let Some(name) = stored_name(url) else {
        return Ok(());
    };
    let downloaded = ["http://", "https://"].iter().any(|scheme| {
        url.get(..scheme.len())
            .is_some_and(|u| u.eq_ignore_ascii_case(scheme))
    });
    let store_archive = |registered: &str| {
        downloaded
            && !registered.contains("://")
            && Path::new(registered)
                .file_name()
                .is_some_and(|n| n == name.as_str())
    };
    let fetched = state.registry.all().iter().any(|m| {
        m.def.url == url
            || store_archive(&m.def.url)
            || m.def
                .stored_copy
                .as_ref()
                .is_some_and(|copy| copy.file_name().is_some_and(|n| n == name.as_str()))
    });
    if fetched {
        return Err(ApiError::internal(format!(
            "Model file already exists {name}"
        )));
    }
    Ok(())
}

/// Gives the model its own packages: a virtual environment with `useVenv` (requirements
/// installed into it), else the requirements in a directory of its own; requirements only
/// with `install_py_dep_per_model`, as in TorchServe.
async fn install_packages(
    state: &AppState,
    def: &mut ModelDefinition,
    requirements: Option<std::path::PathBuf>,
    use_venv: bool,
) -> ApiResult<()> {
    let install = state.config.install_py_dep_per_model;
    if let (Some(file), false) = (&requirements, install) {
        tracing::warn!(
            "model {} ships {}, not installed: set install_py_dep_per_model=true",
            def.name,
            file.display()
        );
    }
    let requirements = requirements.filter(|_| install);
    if use_venv {
        def.venv = Some(create_venv(&state.python, &def.name, requirements.as_deref()).await?);
    } else if let Some(file) = requirements {
        def.deps_dir = Some(install_requirements(&state.python, &file, &def.name).await?);
    }
    Ok(())
}

/// A time a client gave in `unit`s (made a duration by `unit`), refused with a 400 beyond
/// TorchServe's range (a Java `int`), so no deadline computed from it can overflow.
fn bounded(name: &str, value: u64, unit: fn(u64) -> Duration) -> ApiResult<Duration> {
    const MAX: u64 = i32::MAX as u64;
    if value > MAX {
        return Err(ApiError::bad_request(format!(
            "Invalid {name} {value}: at most {MAX}"
        )));
    }
    Ok(unit(value))
}

/// Builds the definition from the archive and the request's overrides.
fn definition(
    state: &AppState,
    opts: &RegisterOptions,
    source: &Path,
    archive: ModelArchive,
) -> ApiResult<ModelDefinition> {
    let model = &archive.manifest.model;
    let stem = source
        .file_name()
        .and_then(|n| n.to_str())
        .map(archive_stem);
    let name = opts
        .model_name
        .clone()
        .or_else(|| model.model_name.clone())
        .or(stem)
        .unwrap_or_default();
    if !valid_name(&name) {
        return Err(ApiError::bad_request(format!(
            "Invalid model name {name:?}: use letters, digits, '_', '-' and '.'"
        )));
    }
    let handler = archive
        .handler
        .clone()
        .ok_or_else(|| ApiError::bad_request("The archive names no handler"))?;
    let config = &archive.config;
    let version = model.model_version.clone().unwrap_or_else(|| "1.0".into());
    let preset = opts
        .loaded_at_startup
        .then(|| state.config.models.get(&name, &version))
        .flatten()
        .cloned()
        .unwrap_or_default();
    let min_workers = opts
        .initial_workers
        .or(config.min_workers)
        .or(preset.min_workers)
        .unwrap_or(if opts.loaded_at_startup {
            state.config.default_workers_per_model
        } else {
            state.config.api_default_workers
        });
    let defaults = ModelSettings::server_defaults(&state.config);
    let settings = ModelSettings {
        min_workers,
        max_workers: config
            .max_workers
            .or(preset.max_workers)
            .unwrap_or(min_workers)
            .max(min_workers),
        batch_size: opts
            .batch_size
            .or(config.batch_size)
            .or(preset.batch_size)
            .unwrap_or(1)
            .max(1),
        max_batch_delay: bounded(
            "max_batch_delay",
            opts.max_batch_delay
                .or(config.max_batch_delay)
                .or(preset.max_batch_delay)
                .unwrap_or(100),
            Duration::from_millis,
        )?,
        response_timeout: opts
            .response_timeout
            .or(config.response_timeout)
            .or(preset.response_timeout)
            .map_or(Ok(defaults.response_timeout), |s| {
                bounded("response_timeout", s, Duration::from_secs)
            })?,
        startup_timeout: opts
            .startup_timeout
            .filter(|&s| s > 0)
            .or(config.startup_timeout)
            .or(preset.startup_timeout.filter(|&s| s > 0))
            .map_or(Ok(defaults.startup_timeout), |s| {
                bounded("startup_timeout", s, Duration::from_secs)
            })?,
        job_queue_size: config.job_queue_size.unwrap_or(defaults.job_queue_size),
        max_retry_timeout: config
            .max_retry_timeout
            .map_or(Ok(defaults.max_retry_timeout), |s| {
                bounded("maxRetryTimeoutInSec", s, Duration::from_secs)
            })?,
        client_timeout: config
            .client_timeout_ms
            .map(|ms| bounded("clientTimeoutInMills", ms, Duration::from_millis))
            .transpose()?,
        use_job_ticket: config.use_job_ticket,
        threads_per_worker: config.threads_per_worker.or(defaults.threads_per_worker),
    };
    Ok(ModelDefinition {
        version,
        url: opts.url.clone(),
        runtime: opts
            .runtime
            .clone()
            .unwrap_or_else(|| archive.manifest.runtime.clone()),
        owns_dir: archive.dir != source,
        handler,
        manifest: archive.manifest.raw.clone(),
        yaml_config: archive.config.raw.clone(),
        settings,
        loaded_at_startup: opts.loaded_at_startup,
        deps_dir: None,
        venv: None,
        workflow: None,
        stored_copy: None,
        segment: None,
        dir: archive.dir,
        name,
    })
}

/// Refuses a `runtime` TorchServe does not know.
fn check_runtime(runtime: &str) -> ApiResult<()> {
    match runtime {
        "python" | "python3" | "lsp" => Ok(()),
        other => Err(ApiError::bad_request(format!(
            "Invalid RuntimeType value: {other}"
        ))),
    }
}

/// A file name without its archive extension: `resnet.mar` → `resnet`.
pub fn archive_stem(file_name: &str) -> String {
    [".tar.gz", ".tgz", ".mar", ".war", ".zip"]
        .iter()
        .find_map(|ext| file_name.strip_suffix(ext))
        .unwrap_or(file_name)
        .to_string()
}
