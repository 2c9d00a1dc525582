//! What a model is before it runs: files, handler and serving settings.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::ServerConfig;
use crate::error::{ApiError, ApiResult};
use crate::worker::protocol::SegmentNode;

/// Serving settings of a model.
#[derive(Debug, Clone)]
pub struct ModelSettings {
    pub min_workers: usize,
    pub max_workers: usize,
    pub batch_size: usize,
    pub max_batch_delay: Duration,
    pub response_timeout: Duration,
    /// How long a worker may take to load the handler before it is killed.
    pub startup_timeout: Duration,
    pub job_queue_size: usize,
    /// How long a worker that keeps failing is restarted before the model gives up on it.
    pub max_retry_timeout: Duration,
    /// How long a request may wait in the queue before it is dropped; `None`: for ever.
    pub client_timeout: Option<Duration>,
    /// Whether a request is refused at once unless a worker is free to take it.
    pub use_job_ticket: bool,
    /// Torch threads of each worker when configured (`threadsPerWorker`, the server's
    /// `threads_per_worker`); `None`: the cores shared among the workers.
    pub threads_per_worker: Option<usize>,
}

impl ModelSettings {
    /// How long TorchServe restarts a failing worker by default (`maxRetryTimeoutInSec`).
    pub const DEFAULT_MAX_RETRY_TIMEOUT: Duration = Duration::from_secs(300);

    /// The settings of a model that names none: one worker, no batching, the server's
    /// timeouts and queue size.
    pub fn server_defaults(config: &ServerConfig) -> Self {
        Self {
            min_workers: 1,
            max_workers: 1,
            batch_size: 1,
            max_batch_delay: Duration::from_millis(100),
            response_timeout: config.default_response_timeout,
            startup_timeout: config.default_startup_timeout,
            job_queue_size: config.job_queue_size,
            max_retry_timeout: Self::DEFAULT_MAX_RETRY_TIMEOUT,
            client_timeout: None,
            use_job_ticket: false,
            threads_per_worker: config.threads_per_worker,
        }
    }

    /// Refuses worker counts above `limit` (the server's `max_workers_per_model`).
    pub fn check_workers(&self, limit: usize) -> ApiResult<()> {
        check_worker_limit(self.min_workers, self.max_workers, limit)
    }
}

/// Refuses a `min`..`max` worker range that goes above `limit`, the server's
/// `max_workers_per_model`.
pub fn check_worker_limit(min: usize, max: usize, limit: usize) -> ApiResult<()> {
    let wanted = min.max(max);
    if wanted > limit {
        return Err(ApiError::bad_request(format!(
            "Cannot run {wanted} workers for one model: max_workers_per_model is {limit}"
        )));
    }
    Ok(())
}

/// Everything needed to start a model's workers.
#[derive(Debug, Clone)]
pub struct ModelDefinition {
    pub name: String,
    pub version: String,
    /// What the model was registered from, as the user gave it.
    pub url: String,
    pub runtime: String,
    /// Directory holding the model's files (the unpacked archive).
    pub dir: PathBuf,
    /// Set when `dir` was unpacked by the server and is removed with the model.
    pub owns_dir: bool,
    pub handler: String,
    pub manifest: serde_json::Value,
    pub yaml_config: serde_json::Value,
    pub settings: ModelSettings,
    pub loaded_at_startup: bool,
    /// Directory of Python packages installed from the archive's requirements file.
    pub deps_dir: Option<PathBuf>,
    /// The model's own virtual environment (`useVenv`), whose interpreter runs its workers.
    pub venv: Option<PathBuf>,
    /// The workflow this model is a node of; such models go with their workflow.
    pub workflow: Option<String>,
    /// The copy of a downloaded (or `file://`) archive kept in the model store, removed with
    /// the model.
    pub stored_copy: Option<PathBuf>,
    /// Set for a fused segment of workflow function nodes, which its workers run in turn.
    pub segment: Option<Arc<[SegmentNode]>>,
}

impl ModelDefinition {
    /// Removes what the server made for a model that will not start: its unpacked archive
    /// and its stored copy.
    pub async fn remove_files(&self) {
        if self.owns_dir {
            let _ = tokio::fs::remove_dir_all(&self.dir).await;
        }
        if let Some(copy) = &self.stored_copy {
            let _ = tokio::fs::remove_file(copy).await;
        }
        if let Some(venv) = &self.venv {
            let _ = tokio::fs::remove_dir_all(venv).await;
        }
    }
}

/// Whether `name` is a valid model name: letters, digits, `_`, `-` and `.`, not starting with
/// a punctuation mark.
pub fn valid_name(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    #[test]
    fn validates_names() {
        assert!(super::valid_name("resnet-18_v1.2"));
        assert!(!super::valid_name(""));
        assert!(!super::valid_name("../x"));
        assert!(!super::valid_name("a b"));
    }
}
