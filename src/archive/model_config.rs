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
    pub response_timeout: Option<u64>,
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
        Ok(Self {
            min_workers: known.min_workers,
            max_workers: known.max_workers,
            batch_size: known.batch_size,
            max_batch_delay: known.max_batch_delay,
            response_timeout: known.response_timeout,
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
    fn rejects_wrong_types() {
        assert!(ModelConfig::parse("batchSize: many\n").is_err());
        assert!(ModelConfig::parse("[unclosed\n").is_err());
        let deep = ModelConfig::parse(&"a: [".repeat(50_000)).unwrap_err();
        assert!(deep.to_string().contains("nested deeper"), "{deep}");
    }
}
