//! `model-config.yaml`: per-model settings shipped inside an archive.

use serde::Deserialize;

use super::{parse_yaml, ArchiveError};

/// The settings the server reads; the whole document also goes to the handler as
/// `context.model_yaml_config`.
#[derive(Debug, Clone, Default)]
pub struct ModelConfig {
    pub min_workers: Option<usize>,
    pub max_workers: Option<usize>,
    pub batch_size: Option<usize>,
    pub max_batch_delay: Option<u64>,
    /// Seconds.
    pub response_timeout: Option<u64>,
    /// Seconds a worker may take to load the handler.
    pub startup_timeout: Option<u64>,
    /// Seconds a failing worker keeps being restarted.
    pub max_retry_timeout: Option<u64>,
    /// Milliseconds a request may wait in the queue.
    pub client_timeout_ms: Option<u64>,
    pub job_queue_size: Option<usize>,
    pub use_job_ticket: bool,
    pub use_venv: bool,
    /// Torch threads of each worker (`threadsPerWorker`, at least 1).
    pub threads_per_worker: Option<usize>,
    pub raw: serde_json::Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Known {
    min_workers: Option<usize>,
    max_workers: Option<usize>,
    batch_size: Option<usize>,
    max_batch_delay: Option<u64>,
    response_timeout: Option<u64>,
    startup_timeout: Option<u64>,
    max_retry_timeout_in_sec: Option<u64>,
    client_timeout_in_mills: Option<u64>,
    job_queue_size: Option<usize>,
    #[serde(default)]
    use_job_ticket: bool,
    #[serde(default)]
    use_venv: bool,
    threads_per_worker: Option<usize>,
    /// Only checked to be a boolean here; the worker's model template reads it from `raw`.
    #[serde(default, rename = "forkAfterInitialize")]
    _fork_after_initialize: Option<bool>,
}

impl ModelConfig {
    /// Parses and validates the text of a model-config.yaml.
    pub fn parse(text: &str) -> Result<Self, ArchiveError> {
        let bad = |e: &dyn std::fmt::Display| {
            ArchiveError::Invalid(format!("bad model-config.yaml: {e}"))
        };
        let raw: serde_json::Value = parse_yaml(text).map_err(|e| bad(&e))?;
        let raw = if raw.is_null() {
            serde_json::json!({})
        } else {
            raw
        };
        let known: Known = serde_json::from_value(raw.clone()).map_err(|e| bad(&e))?;
        let positive = |n: Option<u64>| n.filter(|&n| n > 0);
        Ok(Self {
            min_workers: known.min_workers,
            max_workers: known.max_workers,
            batch_size: known.batch_size,
            max_batch_delay: known.max_batch_delay,
            response_timeout: positive(known.response_timeout),
            startup_timeout: positive(known.startup_timeout),
            max_retry_timeout: known.max_retry_timeout_in_sec,
            client_timeout_ms: positive(known.client_timeout_in_mills),
            job_queue_size: known.job_queue_size.filter(|&n| n > 0),
            use_job_ticket: known.use_job_ticket,
            use_venv: known.use_venv,
            threads_per_worker: known.threads_per_worker.filter(|&n| n > 0),
            raw,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_keys_and_keeps_the_rest() {
        let c = ModelConfig::parse("minWorkers: 2\nbatchSize: 4\nhandler:\n  threshold: 0.5\n")
            .unwrap();
        assert_eq!(c.min_workers, Some(2));
        assert_eq!(c.batch_size, Some(4));
        assert_eq!(c.raw["handler"]["threshold"], 0.5);
    }

    #[test]
    fn parses_lifecycle_keys_as_torchserve_does() {
        let c = ModelConfig::parse(
            "startupTimeout: 2\nmaxRetryTimeoutInSec: 0\nclientTimeoutInMills: 500\n\
             jobQueueSize: 3\nuseJobTicket: true\nuseVenv: true\n",
        )
        .unwrap();
        assert_eq!(c.startup_timeout, Some(2));
        assert_eq!(c.max_retry_timeout, Some(0));
        assert_eq!(c.client_timeout_ms, Some(500));
        assert_eq!(c.job_queue_size, Some(3));
        assert!(c.use_job_ticket && c.use_venv);
        // As in TorchServe, 0 keeps the default: no timeout, the server's queue size.
        let zero =
            ModelConfig::parse("startupTimeout: 0\nclientTimeoutInMills: 0\njobQueueSize: 0\n")
                .unwrap();
        assert_eq!(
            (
                zero.startup_timeout,
                zero.client_timeout_ms,
                zero.job_queue_size
            ),
            (None, None, None)
        );
    }

    #[test]
    fn rejects_wrong_types() {
        assert!(ModelConfig::parse("batchSize: many\n").is_err());
        assert!(ModelConfig::parse("startupTimeout: soon\n").is_err());
        assert!(ModelConfig::parse("useJobTicket: maybe\n").is_err());
        assert!(ModelConfig::parse("forkAfterInitialize: never\n").is_err());
        assert!(ModelConfig::parse("forkAfterInitialize: false\n").is_ok());
        assert!(ModelConfig::parse("[unclosed\n").is_err());
        let deep = ModelConfig::parse(&"a: [".repeat(50_000)).unwrap_err();
        assert!(deep.to_string().contains("nested deeper"), "{deep}");
    }
}
