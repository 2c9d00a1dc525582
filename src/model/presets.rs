//! Per-model settings from `config.properties`' `models` key (TorchServe's JSON
//! `{"name": {"version": {"minWorkers": 1, ...}}}`), applied to the models loaded at start.
//! A model's own `model-config.yaml` and the registration's parameters take precedence.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::Deserialize;

/// One version's settings; what is left out keeps its usual default.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ModelPreset {
    pub min_workers: Option<usize>,
    pub max_workers: Option<usize>,
    pub batch_size: Option<usize>,
    pub max_batch_delay: Option<u64>,
    /// Seconds.
    pub response_timeout: Option<u64>,
    /// Seconds.
    pub startup_timeout: Option<u64>,
    #[serde(default)]
    pub default_version: bool,
}

/// The settings of every model named in `models`, by name and version.
#[derive(Debug, Clone, Default)]
pub struct ModelPresets(BTreeMap<String, BTreeMap<String, ModelPreset>>);

impl ModelPresets {
    /// Parses the `models` value; an unknown key inside is an error, as a typo would be.
    pub fn parse(text: &str) -> Result<Self> {
        serde_json::from_str(text)
            .map(Self)
            .context("models must be TorchServe's JSON {\"name\": {\"version\": {...}}}")
    }

    /// The `(name, version)` pairs marked `defaultVersion`.
    pub fn default_versions(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().flat_map(|(name, versions)| {
            versions
                .iter()
                .filter(|(_, preset)| preset.default_version)
                .map(move |(version, _)| (name.as_str(), version.as_str()))
        })
    }

    /// The settings for `name` at `version`, if any.
    pub fn get(&self, name: &str, version: &str) -> Option<&ModelPreset> {
        self.0.get(name)?.get(version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_torchserve_models_json() {
        let presets = ModelPresets::parse(
            r#"{"noop": {"1.0": {"defaultVersion": true, "marName": "noop.mar", "minWorkers": 2,
                "maxWorkers": 3, "batchSize": 4, "maxBatchDelay": 100, "responseTimeout": 120,
                "startupTimeout": 30}}}"#,
        )
        .unwrap();
        let noop = presets.get("noop", "1.0").unwrap();
        assert_eq!((noop.min_workers, noop.batch_size), (Some(2), Some(4)));
        assert!(noop.default_version);
        assert_eq!(noop.startup_timeout, Some(30));
        assert_eq!(
            presets.default_versions().collect::<Vec<_>>(),
            [("noop", "1.0")]
        );
        assert!(presets.get("noop", "2.0").is_none());
        assert!(ModelPresets::parse("[1]").is_err());
    }
}
