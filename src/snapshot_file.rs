//! Snapshot files in TorchServe's layout: `<dir>/<yyyyMMddHHmmssSSS>-snapshot.cfg`, a
//! properties file holding the server's settings and `model_snapshot`, TorchServe's JSON of
//! the registered models. Workflows, which TorchServe's snapshots lack, go under a key of
//! their own, `workflow_snapshot`, written only when there are workflows, so TorchServe's
//! reader (and its tests) see exactly what they expect.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::properties;
use crate::snapshot::{ModelRecord, Snapshot, WorkflowRecord};

/// The key of TorchServe's model JSON.
pub const MODEL_SNAPSHOT: &str = "model_snapshot";
/// The key of torchyard's workflow JSON.
pub const WORKFLOW_SNAPSHOT: &str = "workflow_snapshot";
/// How many snapshot files are kept; older ones are removed.
const KEPT: usize = 16;

/// The text of a snapshot file named `name`: `settings` (the configuration the server
/// started with), then the snapshot.
pub fn render(settings: &[(String, String)], snapshot: &Snapshot, name: &str) -> String {
    let created = chrono::Utc::now();
    let mut entries: Vec<(String, String)> = settings
        .iter()
        .filter(|(k, _)| k != MODEL_SNAPSHOT && k != WORKFLOW_SNAPSHOT)
        .cloned()
        .collect();
    entries.push((
        MODEL_SNAPSHOT.into(),
        model_json(&snapshot.models, name, created.timestamp_millis()),
    ));
    if !snapshot.workflows.is_empty() {
        let workflows = json!({ "workflows": snapshot.workflows });
        entries.push((WORKFLOW_SNAPSHOT.into(), pretty(&workflows)));
    }
    let mut text = format!("#Saving snapshot\n#{}\n", created.to_rfc2822());
    for (key, value) in &entries {
        text.push_str(&properties::escape(key, true));
        text.push('=');
        text.push_str(&properties::escape(value, false));
        text.push('\n');
    }
    text
}

/// TorchServe's `model_snapshot`: `{"name", "modelCount", "created", "models": {name:
/// {version: {defaultVersion, marName, minWorkers, ...}}}}`.
fn model_json(models: &[ModelRecord], name: &str, created: i64) -> String {
    let mut by_name: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
    for m in models {
        let mut entry = json!({
            "defaultVersion": m.is_default,
            "marName": m.url,
            "minWorkers": m.min_workers,
            "maxWorkers": m.max_workers,
            "batchSize": m.batch_size,
            "maxBatchDelay": m.max_batch_delay_ms,
            "responseTimeout": m.response_timeout_ms / 1000,
            "startupTimeout": m.startup_timeout_s,
            "runtimeType": "python",
        });
        if let Some(handler) = &m.handler {
            entry["handler"] = json!(handler);
        }
        by_name
            .entry(&m.name)
            .or_default()
            .insert(m.version.clone(), entry);
    }
    pretty(&json!({
        "name": name,
        "modelCount": models.len(),
        "created": created,
        "models": by_name,
    }))
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// One version of TorchServe's `model_snapshot` entries.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ModelEntry {
    #[serde(default)]
    default_version: bool,
    mar_name: String,
    min_workers: Option<usize>,
    max_workers: Option<usize>,
    batch_size: Option<usize>,
    max_batch_delay: Option<u64>,
    response_timeout: Option<u64>,
    startup_timeout: Option<u64>,
    handler: Option<String>,
}

#[derive(Deserialize)]
struct ModelSnapshot {
    #[serde(default)]
    models: BTreeMap<String, BTreeMap<String, ModelEntry>>,
}

#[derive(Serialize, Deserialize)]
struct WorkflowSnapshot {
    workflows: Vec<WorkflowRecord>,
}

/// The values a model entry that leaves a field out gets: the server's
/// `default_workers_per_model`, `default_response_timeout` and `default_startup_timeout`.
#[derive(Debug, Clone, Copy)]
pub struct EntryDefaults {
    pub workers: usize,
    pub response_timeout_ms: u64,
    pub startup_timeout_s: u64,
}

/// The snapshot held by settings: `model_snapshot` (TorchServe's, as KServe also writes it)
/// and `workflow_snapshot`. `None` when neither is set. Fields TorchServe leaves out take
/// the `defaults`.
pub fn read(
    model_snapshot: Option<&str>,
    workflow_snapshot: Option<&str>,
    defaults: EntryDefaults,
) -> Result<Option<Snapshot>> {
    if model_snapshot.is_none() && workflow_snapshot.is_none() {
        return Ok(None);
    }
    let mut snapshot = Snapshot::default();
    if let Some(text) = model_snapshot {
        let parsed: ModelSnapshot =
            serde_json::from_str(text).context("model_snapshot is not TorchServe's JSON")?;
        for (name, versions) in parsed.models {
            for (version, m) in versions {
                let min_workers = m.min_workers.unwrap_or(defaults.workers);
                snapshot.models.push(ModelRecord {
                    name: name.clone(),
                    version,
                    url: m.mar_name,
                    handler: m.handler,
                    is_default: m.default_version,
                    min_workers,
                    max_workers: m.max_workers.unwrap_or(min_workers).max(min_workers),
                    batch_size: m.batch_size.unwrap_or(1).max(1),
                    max_batch_delay_ms: m.max_batch_delay.unwrap_or(100),
                    response_timeout_ms: m
                        .response_timeout
                        .map_or(defaults.response_timeout_ms, |s| s * 1000),
                    startup_timeout_s: m
                        .startup_timeout
                        .filter(|&s| s > 0)
                        .unwrap_or(defaults.startup_timeout_s),
                });
            }
        }
    }
    if let Some(text) = workflow_snapshot {
        let parsed: WorkflowSnapshot =
            serde_json::from_str(text).context("workflow_snapshot is not valid")?;
        snapshot.workflows = parsed.workflows;
    }
    Ok(Some(snapshot))
}

/// A new file name: `<yyyyMMddHHmmssSSS>-<kind>.cfg` (`kind`: startup, snapshot or shutdown).
pub fn file_name(kind: &str) -> String {
    format!(
        "{}-{kind}.cfg",
        chrono::Utc::now().format("%Y%m%d%H%M%S%3f")
    )
}

/// The newest snapshot file in `dir`, if any.
pub fn latest(dir: &Path) -> Option<PathBuf> {
    snapshot_files(dir).pop()
}

/// Removes all but the newest [`KEPT`] snapshot files of `dir`.
pub fn prune(dir: &Path) {
    let files = snapshot_files(dir);
    let excess = files.len().saturating_sub(KEPT);
    for old in &files[..excess] {
        let _ = std::fs::remove_file(old);
    }
}

/// The `*.cfg` files of `dir`, oldest first (their names start with the time).
fn snapshot_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "cfg") && p.is_file())
        .collect();
    files.sort();
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, version: &str, default: bool) -> ModelRecord {
        ModelRecord {
            name: name.into(),
            version: version.into(),
            url: format!("{name}.mar"),
            handler: None,
            is_default: default,
            min_workers: 2,
            max_workers: 3,
            batch_size: 4,
            max_batch_delay_ms: 100,
            response_timeout_ms: 120_000,
            startup_timeout_s: 7,
        }
    }

    const DEFAULTS: EntryDefaults = EntryDefaults {
        workers: 1,
        response_timeout_ms: 1,
        startup_timeout_s: 120,
    };

    #[test]
    fn round_trips_through_torchserve_json_and_properties() {
        let snapshot = Snapshot {
            models: vec![record("noop", "1.11", true), record("noop", "2.0", false)],
            workflows: vec![WorkflowRecord {
                name: "wf".into(),
                version: "1.0".into(),
                url: "wf.war".into(),
                is_default: true,
                node_workers: [("pre".to_string(), (1, 2))].into(),
            }],
        };
        let settings = vec![(
            "inference_address".to_string(),
            "http://127.0.0.1:1".to_string(),
        )];
        let text = render(&settings, &snapshot, "x-snapshot.cfg");
        let props = properties::parse(&text).unwrap();
        assert_eq!(props["inference_address"], "http://127.0.0.1:1");
        let models: Value = serde_json::from_str(&props[MODEL_SNAPSHOT]).unwrap();
        assert_eq!(models["modelCount"], 2);
        assert_eq!(models["models"]["noop"]["1.11"]["marName"], "noop.mar");
        assert_eq!(models["models"]["noop"]["1.11"]["responseTimeout"], 120);
        assert_eq!(models["models"]["noop"]["1.11"]["startupTimeout"], 7);
        assert!(models["models"]["noop"]["1.11"].get("handler").is_none());
        let back = read(
            Some(&props[MODEL_SNAPSHOT]),
            Some(&props[WORKFLOW_SNAPSHOT]),
            DEFAULTS,
        )
        .unwrap()
        .unwrap();
        assert_eq!(back.models.len(), 2);
        assert_eq!(back.models[0].response_timeout_ms, 120_000);
        assert_eq!(back.models[0].startup_timeout_s, 7);
        assert_eq!(back.workflows[0].node_workers["pre"], (1, 2));
    }

    #[test]
    fn no_workflow_key_without_workflows() {
        let text = render(&[], &Snapshot::default(), "a.cfg");
        assert!(!text.contains(WORKFLOW_SNAPSHOT));
    }

    #[test]
    fn reads_what_kserve_writes() {
        let kserve = r#"{"name":"startup.cfg","modelCount":1,"models":{"mnist":{"1.0":{"defaultVersion":true,"marName":"mnist.mar","minWorkers":1,"maxWorkers":5,"batchSize":1,"maxBatchDelay":10,"responseTimeout":120}}}}"#;
        let snapshot = read(Some(kserve), None, DEFAULTS).unwrap().unwrap();
        let m = &snapshot.models[0];
        assert_eq!((m.name.as_str(), m.url.as_str()), ("mnist", "mnist.mar"));
        assert_eq!(
            (m.min_workers, m.max_workers, m.max_batch_delay_ms),
            (1, 5, 10)
        );
        assert_eq!(m.startup_timeout_s, 120);
    }

    #[test]
    fn keeps_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..20 {
            std::fs::write(dir.path().join(format!("2026{i:02}-snapshot.cfg")), "").unwrap();
        }
        prune(dir.path());
        assert_eq!(snapshot_files(dir.path()).len(), KEPT);
        assert!(latest(dir.path()).unwrap().ends_with("202619-snapshot.cfg"));
    }
}
