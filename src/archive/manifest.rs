//! `MAR-INF/MANIFEST.json`, the manifest of a model archive.

use std::path::Path;

use serde::Deserialize;

use super::{read_member, ArchiveError};

/// The parts of a model archive manifest the server uses, plus the raw JSON for handlers.
#[derive(Debug, Clone)]
pub struct MarManifest {
    pub runtime: String,
    pub model: ModelSection,
    pub raw: serde_json::Value,
}

/// The `model` object of the manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelSection {
    pub model_name: Option<String>,
    pub model_version: Option<String>,
    pub handler: Option<String>,
    pub config_file: Option<String>,
    pub requirements_file: Option<String>,
}

#[derive(Deserialize)]
struct ManifestFile {
    #[serde(default = "python")]
    runtime: String,
    model: ModelSection,
}

fn python() -> String {
    "python".into()
}

impl MarManifest {
    /// Reads `MAR-INF/MANIFEST.json` from an unpacked archive.
    pub fn read(dir: &Path) -> Result<Self, ArchiveError> {
        Self::parse(read_member(dir, "MAR-INF/MANIFEST.json")?.as_bytes())
    }

    fn parse(text: &[u8]) -> Result<Self, ArchiveError> {
        let bad = |e: serde_json::Error| ArchiveError::Invalid(format!("bad MANIFEST.json: {e}"));
        let raw: serde_json::Value = serde_json::from_slice(text).map_err(bad)?;
        let file: ManifestFile = serde_json::from_value(raw.clone()).map_err(bad)?;
        Ok(Self {
            runtime: file.runtime,
            model: file.model,
            raw,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_torchserve_manifest() {
        let m = MarManifest::parse(br#"{"createdOn":"x","runtime":"python","model":{"modelName":"double","serializedFile":"double.pt","handler":"h.py","modelVersion":"1.0"},"archiverVersion":"0.12.0"}"#).unwrap();
        assert_eq!(m.model.model_name.as_deref(), Some("double"));
        assert_eq!(m.model.handler.as_deref(), Some("h.py"));
        assert_eq!(m.raw["archiverVersion"], "0.12.0");
    }

    #[test]
    fn rejects_manifest_without_model() {
        assert!(MarManifest::parse(br#"{"runtime":"python"}"#).is_err());
    }
}
