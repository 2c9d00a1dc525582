//! `WAR-INF/MANIFEST.json` and the files a workflow archive holds.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::archive::{unpack, ArchiveError};

/// A workflow archive unpacked on disk.
#[derive(Debug)]
pub struct WorkflowArchive {
    pub dir: PathBuf,
    pub name: Option<String>,
    pub version: Option<String>,
    pub spec_text: String,
    /// The handler file's name inside `dir`.
    pub handler: String,
    pub handler_source: String,
}

#[derive(Deserialize)]
struct ManifestFile {
    workflow: WorkflowSection,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WorkflowSection {
    workflow_name: Option<String>,
    workflow_version: Option<String>,
    spec_file: String,
    handler: String,
}

impl WorkflowArchive {
    /// Unpacks `source` under `work_dir` and reads the manifest, spec and handler. Blocking.
    pub fn open(source: &Path, work_dir: &Path) -> Result<Self, ArchiveError> {
        let dir = unpack(source, work_dir)?;
        let read = |name: &str, what: &str| {
            std::fs::read_to_string(dir.join(name))
                .map_err(|e| ArchiveError::Invalid(format!("cannot read {what} {name}: {e}")))
        };
        let manifest = read("WAR-INF/MANIFEST.json", "manifest")?;
        let manifest: ManifestFile = serde_json::from_str(&manifest)
            .map_err(|e| ArchiveError::Invalid(format!("bad WAR-INF/MANIFEST.json: {e}")))?;
        let section = manifest.workflow;
        let handler = section
            .handler
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string();
        Ok(Self {
            spec_text: read(&section.spec_file, "spec file")?,
            handler_source: read(&handler, "handler file")?,
            handler,
            name: section.workflow_name,
            version: section.workflow_version,
            dir,
        })
    }
}
