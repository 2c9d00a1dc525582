//! Model and workflow archives: unpacking (zip, tar.gz or directory) and their manifests.

mod extract;
mod manifest;
mod model_config;

pub use extract::unpack;
pub use manifest::MarManifest;
pub use model_config::ModelConfig;

use std::path::{Path, PathBuf};

use thiserror::Error;

/// Why an archive could not be opened.
#[derive(Debug, Error)]
pub enum ArchiveError {
    #[error("archive not found: {0}")]
    NotFound(String),
    #[error("invalid archive: {0}")]
    Invalid(String),
    #[error("I/O error reading archive: {0}")]
    Io(#[from] std::io::Error),
}

/// A model archive unpacked on disk, with its manifest and model-config.yaml.
#[derive(Debug)]
pub struct ModelArchive {
    pub dir: PathBuf,
    pub manifest: MarManifest,
    pub config: ModelConfig,
}

impl ModelArchive {
    /// Unpacks `source` under `work_dir` (unless it is a directory already) and reads its
    /// manifest and config. Blocking: call from a blocking thread.
    pub fn open(source: &Path, work_dir: &Path) -> Result<Self, ArchiveError> {
        let dir = unpack(source, work_dir)?;
        let manifest = MarManifest::read(&dir)?;
        let config = match &manifest.model.config_file {
            Some(name) => ModelConfig::read(&dir.join(name))?,
            None => ModelConfig::default(),
        };
        Ok(Self {
            dir,
            manifest,
            config,
        })
    }
}
