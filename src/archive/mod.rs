//! Model and workflow archives: unpacking (zip, tar.gz or directory) and their manifests.

mod extract;
mod manifest;
mod member;
mod model_config;
mod yaml;

pub use extract::{unpack, UnpackLimits};
pub use manifest::MarManifest;
pub use member::{member_path, read_member};
pub use model_config::ModelConfig;
pub use yaml::parse_yaml;

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

/// Unpacks `source` under `work_dir` within `limits` (see [`unpack`]) and reads what the
/// caller needs from the unpacked directory with `read`; when that fails, removes what was
/// unpacked. Blocking: call from a blocking thread.
pub fn open_with<T>(
    source: &Path,
    work_dir: &Path,
    limits: &UnpackLimits,
    read: impl FnOnce(&Path) -> Result<T, ArchiveError>,
) -> Result<T, ArchiveError> {
    let dir = unpack(source, work_dir, limits)?;
    let opened = read(&dir);
    if opened.is_err() && dir != source {
        let _ = std::fs::remove_dir_all(&dir);
    }
    opened
}

/// A model archive unpacked on disk, with its manifest and model-config.yaml.
#[derive(Debug)]
pub struct ModelArchive {
    pub dir: PathBuf,
    pub manifest: MarManifest,
    pub config: ModelConfig,
    /// The handler: the registration's, else the manifest's.
    pub handler: Option<String>,
    /// The manifest's requirements file inside `dir`.
    pub requirements: Option<PathBuf>,
}

impl ModelArchive {
    /// Opens `source` (see [`open_with`]) and reads its manifest and config; `handler`
    /// overrides the manifest's. Every file they name must be inside the archive.
    pub fn open(
        source: &Path,
        work_dir: &Path,
        limits: &UnpackLimits,
        handler: Option<String>,
    ) -> Result<Self, ArchiveError> {
        open_with(source, work_dir, limits, |dir| {
            let manifest = MarManifest::read(dir)?;
            let model = &manifest.model;
            let config = match &model.config_file {
                Some(name) => ModelConfig::parse(&read_member(dir, name)?)?,
                None => ModelConfig::default(),
            };
            let handler = handler.or_else(|| model.handler.clone());
            if let Some(file) = handler.as_deref().and_then(handler_file) {
                member_path(dir, file)?;
            }
            let requirements = model
                .requirements_file
                .as_deref()
                .map(|name| member_path(dir, name))
                .transpose()?;
            Ok(Self {
                dir: dir.to_path_buf(),
                manifest,
                config,
                handler,
                requirements,
            })
        })
    }
}

/// The file a handler string loads (`x.py` or `x.py:function`), if it names one rather than
/// a module.
pub fn handler_file(handler: &str) -> Option<&str> {
    let file = handler.split(':').next().unwrap_or_default();
    file.ends_with(".py").then_some(file)
}
