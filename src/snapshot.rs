//! Snapshots: what is registered (models and workflows, with their scale and settings),
//! written atomically after every change and restored at start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::model::{prepare_model, RegisterOptions};
use crate::state::AppState;
use crate::workflow::{register_workflow, scale_workflow, WorkflowOptions};

/// Everything a snapshot holds.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub models: Vec<ModelRecord>,
    pub workflows: Vec<WorkflowRecord>,
}

/// A model registered on its own (workflow nodes come back with their workflow).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelRecord {
    pub name: String,
    pub version: String,
    pub url: String,
    pub handler: String,
    pub is_default: bool,
    pub min_workers: usize,
    pub max_workers: usize,
    pub batch_size: usize,
    pub max_batch_delay_ms: u64,
    pub response_timeout_ms: u64,
}

/// A workflow version with the worker bounds of each node.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowRecord {
    pub name: String,
    pub version: String,
    pub url: String,
    pub is_default: bool,
    pub node_workers: BTreeMap<String, (usize, usize)>,
}

/// Writes snapshots into one directory, one write at a time.
pub struct Snapshotter {
    path: Option<PathBuf>,
    writing: tokio::sync::Mutex<()>,
}

impl Snapshotter {
    /// Snapshots in `dir/snapshot.json`; `None` turns them off.
    pub fn new(dir: Option<&Path>) -> Self {
        Self {
            path: dir.map(|d| d.join("snapshot.json")),
            writing: tokio::sync::Mutex::new(()),
        }
    }

    /// The last snapshot, if snapshots are on and one exists.
    pub fn load(&self) -> Result<Option<Snapshot>> {
        let Some(path) = &self.path else {
            return Ok(None);
        };
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("bad snapshot {}", path.display()))
                .map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Records the current state; a failure is logged, never fatal to the change itself.
    pub async fn save(&self, state: &AppState) {
        let Some(path) = self.path.clone() else {
            return;
        };
        let _writing = self.writing.lock().await;
        let snapshot = capture(state);
        let written = tokio::task::spawn_blocking(move || write_atomically(&path, &snapshot)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("cannot write snapshot: {e:#}"),
            Err(e) => tracing::error!("snapshot writer failed: {e}"),
        }
    }
}

fn write_atomically(path: &Path, snapshot: &Snapshot) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().context("snapshot path has no directory")?;
    std::fs::create_dir_all(dir)?;
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    serde_json::to_writer_pretty(&mut file, snapshot)?;
    file.flush()?;
    file.as_file().sync_all()?;
    file.persist(path)?;
    Ok(())
}

/// What is registered now.
fn capture(state: &AppState) -> Snapshot {
    let models = state
        .registry
        .all()
        .iter()
        .filter(|m| m.def.workflow.is_none())
        .map(|m| {
            let (min_workers, max_workers) = m.worker_bounds();
            let s = &m.def.settings;
            ModelRecord {
                name: m.def.name.clone(),
                version: m.def.version.clone(),
                url: m.def.url.clone(),
                handler: m.def.handler.clone(),
                is_default: state.registry.is_default(&m.def.name, &m.def.version),
                min_workers,
                max_workers,
                batch_size: s.batch_size,
                max_batch_delay_ms: s.max_batch_delay.as_millis() as u64,
                response_timeout_ms: s.response_timeout.as_millis() as u64,
            }
        })
        .collect();
    let workflows = state
        .workflows
        .all()
        .iter()
        .map(|w| WorkflowRecord {
            name: w.name.clone(),
            version: w.version.clone(),
            url: w.url.clone(),
            is_default: state.workflows.is_default(&w.name, &w.version),
            node_workers: w
                .dag
                .nodes
                .iter()
                .zip(&w.nodes)
                .filter(|(_, served)| served.owned)
                .map(|(n, served)| (n.name.clone(), served.model.worker_bounds()))
                .collect(),
        })
        .collect();
    Snapshot { models, workflows }
}

/// Registers everything in `snapshot` again, with its scale and default versions. Failures
/// are logged and skipped, so one missing archive does not keep the rest down.
pub async fn restore(state: &AppState, snapshot: Snapshot) {
    for record in &snapshot.models {
        if let Err(e) = restore_model(state, record).await {
            tracing::error!("cannot restore model {}: {e}", record.name);
        }
    }
    for record in &snapshot.workflows {
        let opts = WorkflowOptions {
            url: record.url.clone(),
            workflow_name: Some(record.name.clone()),
        };
        let workflow = match register_workflow(state, opts).await {
            Ok(w) => w,
            Err(e) => {
                tracing::error!("cannot restore workflow {}: {e}", record.name);
                continue;
            }
        };
        for (node, &(min, max)) in &record.node_workers {
            if let Err(e) = scale_workflow(&workflow, Some(node), min, max, false).await {
                tracing::error!("cannot restore scale of {}:{node}: {e}", record.name);
            }
        }
    }
    for record in snapshot.models.iter().filter(|r| r.is_default) {
        let _ = state.registry.set_default(&record.name, &record.version);
    }
    for record in snapshot.workflows.iter().filter(|r| r.is_default) {
        let _ = state.workflows.set_default(&record.name, &record.version);
    }
}

async fn restore_model(state: &AppState, record: &ModelRecord) -> crate::error::ApiResult<()> {
    let opts = RegisterOptions {
        url: record.url.clone(),
        model_name: Some(record.name.clone()),
        handler: Some(record.handler.clone()),
        ..RegisterOptions::default()
    };
    let mut def = prepare_model(state, &opts, None).await?;
    def.settings.min_workers = record.min_workers;
    def.settings.max_workers = record.max_workers;
    def.settings.batch_size = record.batch_size;
    def.settings.max_batch_delay = Duration::from_millis(record.max_batch_delay_ms);
    def.settings.response_timeout = Duration::from_millis(record.response_timeout_ms);
    state.start_model(def, false).await.map(|_| ())
}
