//! `WAR-INF/MANIFEST.json` and the files a workflow archive holds.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::spec::WorkflowSpec;
use crate::archive::{open_with, read_member, ArchiveError, UnpackLimits};

/// A workflow archive unpacked on disk, its spec parsed.
#[derive(Debug)]
pub struct WorkflowArchive {
    pub dir: PathBuf,
    pub name: Option<String>,
    pub version: Option<String>,
    pub spec: WorkflowSpec,
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
    /// Unpacks `source` under `work_dir` within `limits` and reads the manifest, spec and
    /// handler, each confined to the archive; removes what it unpacked if any is invalid.
    /// Blocking.
    pub fn open(
        source: &Path,
        work_dir: &Path,
        limits: &UnpackLimits,
    ) -> Result<Self, ArchiveError> {
        open_with(source, work_dir, limits, |dir| {
            let manifest = read_member(dir, "WAR-INF/MANIFEST.json")?;
            let manifest: ManifestFile = serde_json::from_str(&manifest)
                .map_err(|e| ArchiveError::Invalid(format!("bad WAR-INF/MANIFEST.json: {e}")))?;
            let section = manifest.workflow;
            let handler = section
                .handler
                .split(':')
                .next()
                .unwrap_or_default()
                .to_string();
            let spec =
                WorkflowSpec::parse(&read_member(dir, &section.spec_file)?).map_err(|e| {
                    ArchiveError::Invalid(format!("Invalid workflow specification: {e}"))
                })?;
            Ok(Self {
                spec,
                handler_source: read_member(dir, &handler)?,
                handler,
                name: section.workflow_name,
                version: section.workflow_version,
                dir: dir.to_path_buf(),
            })
        })
    }
}
