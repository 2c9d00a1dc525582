//! Snapshots: what is registered (models and workflows, with their scale and settings),
//! written atomically after every change and restored at start, in TorchServe's layout
//! (see [`crate::snapshot_file`]).
//!
//! Records that fail to restore (an archive missing for a moment, a download failing) stay
//! in every later snapshot as pending records, and are tried again at the next start, until
//! the same name and version is registered again or the name is unregistered.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::ServerConfig;
use crate::model::{prepare_model, ModelDefinition, RegisterOptions};
use crate::snapshot_file;
use crate::state::AppState;
use crate::workflow::{register_workflow, scale_workflow, WorkflowOptions};

/// Everything a snapshot holds.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub models: Vec<ModelRecord>,
    pub workflows: Vec<WorkflowRecord>,
}

/// A model registered on its own (workflow nodes come back with their workflow).
#[derive(Debug, Clone)]
pub struct ModelRecord {
    pub name: String,
    pub version: String,
    pub url: String,
    /// The handler given at registration, when it is not the archive's own.
    pub handler: Option<String>,
    pub is_default: bool,
    pub min_workers: usize,
    pub max_workers: usize,
    pub batch_size: usize,
    pub max_batch_delay_ms: u64,
    pub response_timeout_ms: u64,
    pub startup_timeout_s: u64,
}

/// A workflow version with the worker bounds of each node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowRecord {
    pub name: String,
    pub version: String,
    pub url: String,
    pub is_default: bool,
    pub node_workers: BTreeMap<String, (usize, usize)>,
}

/// The two kinds of record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    Model,
    Workflow,
}

/// What identifies a record: its name and version.
trait Record: Clone {
    fn key(&self) -> (&str, &str);
}

impl Record for ModelRecord {
    fn key(&self) -> (&str, &str) {
        (&self.name, &self.version)
    }
}

impl Record for WorkflowRecord {
    fn key(&self) -> (&str, &str) {
        (&self.name, &self.version)
    }
}

/// Writes snapshots into one directory, one write at a time, none before the restore at
/// start has finished.
pub struct Snapshotter {
    dir: Option<PathBuf>,
    /// The settings the server started with, written into every snapshot as TorchServe does.
    settings: Vec<(String, String)>,
    writing: tokio::sync::Mutex<()>,
    /// Records of the restored snapshot that failed to restore, carried into every snapshot.
    pending: std::sync::Mutex<Snapshot>,
    /// Whether the restore at start has finished.
    restored: tokio::sync::watch::Sender<bool>,
    /// Set when the server stops its models: their scale is no longer the user's.
    closed: std::sync::atomic::AtomicBool,
}

impl Snapshotter {
    /// Snapshots in `dir` (`None` turns them off), each holding `settings` as well.
    pub fn new(dir: Option<&Path>, settings: Vec<(String, String)>) -> Self {
        Self {
            dir: dir.map(Path::to_path_buf),
            settings,
            writing: tokio::sync::Mutex::new(()),
            pending: Default::default(),
            restored: tokio::sync::watch::Sender::new(false),
            closed: Default::default(),
        }
    }

    /// Records the state as the server stops (`<time>-shutdown.cfg`, as TorchServe does on
    /// `torchserve --stop`), then writes no more snapshots: the server is stopping its models,
    /// and their workers scaled to zero must not be recorded.
    pub async fn close(&self, state: &AppState) {
        self.write(state, "shutdown").await;
        let _writing = self.writing.lock().await;
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Waits until the restore at start has finished; returns at once afterwards.
    pub async fn wait_restored(&self) {
        let mut restored = self.restored.subscribe();
        let _ = restored.wait_for(|done| *done).await;
    }

    /// Ends the restore at start: snapshots may be written from now on, and carry `failed`.
    pub fn finish_restore(&self, failed: Snapshot) {
        *self.pending() = failed;
        self.restored.send_replace(true);
    }

    /// Drops the pending records of `name` (of `version`, or all its versions): the user
    /// unregistered it. True when there was one.
    pub fn forget_pending(&self, kind: RecordKind, name: &str, version: Option<&str>) -> bool {
        let matches = |(n, v): (&str, &str)| n == name && version.is_none_or(|wanted| v == wanted);
        let mut pending = self.pending();
        let before = pending.models.len() + pending.workflows.len();
        match kind {
            RecordKind::Model => pending.models.retain(|r| !matches(r.key())),
            RecordKind::Workflow => pending.workflows.retain(|r| !matches(r.key())),
        }
        pending.models.len() + pending.workflows.len() < before
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Snapshot> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The newest snapshot in the directory, if snapshots are on and one exists.
    pub fn load(&self, config: &ServerConfig) -> Result<Option<Snapshot>> {
        let Some(path) = self.dir.as_deref().and_then(snapshot_file::latest) else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let props = crate::properties::parse(&text)
            .with_context(|| format!("bad snapshot {}", path.display()))?;
        read_settings(
            props.get(snapshot_file::MODEL_SNAPSHOT).map(String::as_str),
            props
                .get(snapshot_file::WORKFLOW_SNAPSHOT)
                .map(String::as_str),
            config,
        )
        .with_context(|| format!("bad snapshot {}", path.display()))
    }

    /// Records the current state and the pending records after a change
    /// (`<time>-snapshot.cfg`); see [`Self::write`].
    pub async fn save(&self, state: &AppState) {
        self.write(state, "snapshot").await
    }

    /// Records the state once start-up loading is done (`<time>-startup.cfg`).
    pub async fn save_startup(&self, state: &AppState) {
        self.write(state, "startup").await
    }

    /// Writes a snapshot file of `kind`; a failure is logged, never fatal to the change
    /// itself. Waits for the restore at start to finish; does nothing once closed.
    async fn write(&self, state: &AppState, kind: &str) {
        let Some(dir) = self.dir.clone() else {
            return;
        };
        self.wait_restored().await;
        let _writing = self.writing.lock().await;
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let mut snapshot = capture(state);
        {
            let mut pending = self.pending();
            carry_over(&mut pending.models, &mut snapshot.models);
            carry_over(&mut pending.workflows, &mut snapshot.workflows);
        }
        let name = snapshot_file::file_name(kind);
        let text = snapshot_file::render(&self.settings, &snapshot, &name);
        let written = tokio::task::spawn_blocking(move || {
            write_atomically(&dir.join(name), text.as_bytes())?;
            snapshot_file::prune(&dir);
            Ok::<_, anyhow::Error>(())
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("cannot write snapshot: {e:#}"),
            Err(e) => tracing::error!("snapshot writer failed: {e}"),
        }
    }
}

/// The snapshot a configuration carries in `model_snapshot` / `workflow_snapshot` (as
/// KServe's generated config and TorchServe's snapshot files do), if any.
pub fn from_config(config: &ServerConfig) -> Result<Option<Snapshot>> {
    read_settings(
        config.model_snapshot.as_deref(),
        config.workflow_snapshot.as_deref(),
        config,
    )
}

fn read_settings(
    models: Option<&str>,
    workflows: Option<&str>,
    config: &ServerConfig,
) -> Result<Option<Snapshot>> {
    let defaults = snapshot_file::EntryDefaults {
        workers: config.default_workers_per_model,
        response_timeout_ms: config.default_response_timeout.as_millis() as u64,
        startup_timeout_s: config.default_startup_timeout.as_secs(),
    };
    snapshot_file::read(models, workflows, defaults)
}

fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().context("snapshot path has no directory")?;
    std::fs::create_dir_all(dir)?;
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(contents)?;
    file.flush()?;
    file.as_file().sync_all()?;
    file.persist(path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Appends the pending records to `live`; those registered again leave `pending`.
fn carry_over<R: Record>(pending: &mut Vec<R>, live: &mut Vec<R>) {
    pending.retain(|p| !live.iter().any(|l| l.key() == p.key()));
    live.extend(pending.iter().cloned());
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
                handler: handler_override(&m.def),
                is_default: state.registry.is_default(&m.def.name, &m.def.version),
                min_workers,
                max_workers,
                batch_size: s.batch_size,
                max_batch_delay_ms: s.max_batch_delay.as_millis() as u64,
                response_timeout_ms: s.response_timeout.as_millis() as u64,
                startup_timeout_s: s.startup_timeout.as_secs(),
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
                .filter_map(|(n, served)| {
                    Some((n.name.clone(), served.runner.model()?.worker_bounds()))
                })
                .collect(),
        })
        .collect();
    Snapshot { models, workflows }
}

/// The model's handler when it is not the one its manifest names.
fn handler_override(def: &ModelDefinition) -> Option<String> {
    let own = def
        .manifest
        .pointer("/model/handler")
        .and_then(|h| h.as_str());
    (own != Some(def.handler.as_str())).then(|| def.handler.clone())
}

/// Refuses a snapshot naming a model archive that is not in the model store, as TorchServe
/// does before it restores one: the server does not start with models silently missing.
/// Archives from URLs and absolute paths are fetched by the restore itself, and a failure
/// there keeps the record pending instead.
pub fn check_archives(snapshot: &Snapshot, model_store: Option<&Path>) -> Result<()> {
    for record in &snapshot.models {
        let url = Path::new(&record.url);
        if record.url.contains("://") || url.is_absolute() {
            continue;
        }
        if !model_store.is_some_and(|store| store.join(url).exists()) {
            anyhow::bail!(
                "Model archive file for model :{}, version :{} not found in model store",
                record.name,
                record.version
            );
        }
    }
    Ok(())
}

/// Registers everything in `snapshot` again, with its scale and default versions, and
/// returns the records that failed. Failures are logged and skipped, so one missing archive
/// does not keep the rest down.
pub async fn restore(state: &AppState, snapshot: &Snapshot) -> Snapshot {
    let mut failed = Snapshot::default();
    for record in &snapshot.models {
        if let Err(e) = restore_model(state, record).await {
            tracing::error!(
                "cannot restore model {} (kept for the next start): {e}",
                record.name
            );
            failed.models.push(record.clone());
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
                tracing::error!(
                    "cannot restore workflow {} (kept for the next start): {e}",
                    record.name
                );
                failed.workflows.push(record.clone());
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
    failed
}

async fn restore_model(state: &AppState, record: &ModelRecord) -> crate::error::ApiResult<()> {
    let opts = RegisterOptions {
        url: record.url.clone(),
        model_name: Some(record.name.clone()),
        handler: record.handler.clone(),
        ..RegisterOptions::default()
    };
    let mut def = prepare_model(state, &opts, None).await?;
    def.settings.min_workers = record.min_workers;
    def.settings.max_workers = record.max_workers;
    def.settings.batch_size = record.batch_size;
    def.settings.max_batch_delay = Duration::from_millis(record.max_batch_delay_ms);
    def.settings.response_timeout = Duration::from_millis(record.response_timeout_ms);
    def.settings.startup_timeout = Duration::from_secs(record.startup_timeout_s);
    state.start_model(def, false).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(name: &str, version: &str) -> ModelRecord {
        ModelRecord {
            name: name.into(),
            version: version.into(),
            url: format!("{name}.mar"),
            handler: None,
            is_default: true,
            min_workers: 1,
            max_workers: 1,
            batch_size: 1,
            max_batch_delay_ms: 100,
            response_timeout_ms: 1000,
            startup_timeout_s: 120,
        }
    }

    fn keys(records: &[ModelRecord]) -> Vec<(&str, &str)> {
        records.iter().map(Record::key).collect()
    }

    #[test]
    fn pending_records_are_carried_until_registered_again() {
        let mut pending = vec![model("a", "1.0"), model("b", "1.0")];
        let mut live = vec![model("b", "1.0"), model("c", "1.0")];
        carry_over(&mut pending, &mut live);
        assert_eq!(keys(&live), [("b", "1.0"), ("c", "1.0"), ("a", "1.0")]);
        assert_eq!(keys(&pending), [("a", "1.0")]);
    }

    #[test]
    fn unregistering_forgets_pending_records() {
        let snapshots = Snapshotter::new(None, Vec::new());
        snapshots.finish_restore(Snapshot {
            models: vec![model("a", "1.0"), model("a", "2.0"), model("b", "1.0")],
            workflows: Vec::new(),
        });
        assert!(!snapshots.forget_pending(RecordKind::Workflow, "a", None));
        assert!(snapshots.forget_pending(RecordKind::Model, "a", Some("2.0")));
        assert_eq!(
            keys(&snapshots.pending().models),
            [("a", "1.0"), ("b", "1.0")]
        );
        assert!(snapshots.forget_pending(RecordKind::Model, "a", None));
        assert_eq!(keys(&snapshots.pending().models), [("b", "1.0")]);
    }

    /// A server state with no models, snapshots in `dir`.
    fn state(dir: &Path) -> AppState {
        use clap::Parser;
        let cli = crate::cli::Cli::parse_from(["torchyard", "serve"]);
        let crate::cli::Command::Serve(args) = cli.command else {
            unreachable!("parsed a serve command")
        };
        let config = crate::config::ServerConfig::from_args(&args).unwrap();
        AppState {
            autoscaler: crate::model::Autoscaler::start(config.autoscale),
            config,
            registry: Default::default(),
            workflows: Default::default(),
            workflow_claims: Default::default(),
            metrics: Default::default(),
            python: crate::python_env::PythonEnv {
                interpreter: "python3".into(),
                import_path: dir.into(),
                runtime_dir: dir.into(),
                fork_server: None,
                shared_memory_threshold: 0,
            },
            gpus: std::sync::Arc::new(crate::gpu::Gpus::new(Vec::new())),
            snapshots: Snapshotter::new(Some(dir), Vec::new()),
            starting: true.into(),
        }
    }

    #[tokio::test]
    async fn writes_only_between_the_restore_and_close() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path());
        let snapshots = &state.snapshots;
        let early = tokio::time::timeout(Duration::from_millis(50), snapshots.save(&state));
        assert!(early.await.is_err(), "a save must wait for the restore");
        snapshots.finish_restore(Snapshot {
            models: vec![model("missing", "1.0")],
            workflows: Vec::new(),
        });
        snapshots.save(&state).await;
        let written = snapshots.load(&state.config).unwrap().unwrap();
        assert_eq!(keys(&written.models), [("missing", "1.0")]);
        for file in std::fs::read_dir(dir.path()).unwrap() {
            std::fs::remove_file(file.unwrap().path()).unwrap();
        }
        snapshots.close(&state).await;
        let names = |dir: &Path| -> Vec<String> {
            let files = std::fs::read_dir(dir).unwrap();
            files
                .map(|f| f.unwrap().file_name().to_string_lossy().into())
                .collect()
        };
        let closing = names(dir.path());
        assert!(
            matches!(&closing[..], [name] if name.ends_with("-shutdown.cfg")),
            "{closing:?}"
        );
        snapshots.save(&state).await;
        assert_eq!(names(dir.path()), closing, "closed, yet written");
    }
}
