//! What the server prints as it starts, in TorchServe's words: the configuration summary
//! (`ConfigManager.dumpConfigurations`) and the "Model server started." line that TorchServe's
//! launcher and its test harness wait for on standard output.

use std::path::Path;

use crate::config::ServerConfig;

/// The line printed once the listeners are up and the start-up models are loaded.
pub const STARTED: &str = "Model server started.";

/// The configuration summary logged at start.
pub fn summary(
    config: &ServerConfig,
    config_file: Option<&Path>,
    python: &Path,
    gpus: usize,
) -> String {
    let dir = |path: Option<&Path>| path.map_or("N/A".into(), |p| p.display().to_string());
    let cwd = std::env::current_dir().ok();
    let lines = [
        ("torchyard version", env!("CARGO_PKG_VERSION").to_string()),
        ("Current directory", dir(cwd.as_deref())),
        ("Temp directory", std::env::temp_dir().display().to_string()),
        ("Number of GPUs", gpus.to_string()),
        ("Number of CPUs", crate::model::usable_cores().to_string()),
        ("Python executable", python.display().to_string()),
        ("Config file", dir(config_file)),
        ("Inference address", config.inference_address.to_string()),
        ("Management address", config.management_address.to_string()),
        ("Metrics address", config.metrics_address.to_string()),
        (
            "gRPC inference address",
            config.grpc_inference_address.to_string(),
        ),
        (
            "gRPC management address",
            config.grpc_management_address.to_string(),
        ),
        ("Model Store", dir(config.model_store.as_deref())),
        ("Workflow Store", dir(config.workflow_store.as_deref())),
        ("Initial Models", list(&config.load_models)),
        ("Initial Workflows", list(&config.load_workflows)),
        (
            "Default workers per model",
            config.default_workers_per_model.to_string(),
        ),
        ("Token authorization", enabled(config.token_auth)),
        ("Model API enabled", config.model_api_enabled.to_string()),
        (
            "Metrics mode",
            format!("{:?}", config.metrics_mode).to_lowercase(),
        ),
    ];
    lines.iter().fold(String::new(), |text, (name, value)| {
        text + "\n" + name + ": " + value
    })
}

fn list(entries: &[String]) -> String {
    match entries.is_empty() {
        true => "N/A".into(),
        false => entries.join(","),
    }
}

fn enabled(on: bool) -> String {
    match on {
        true => "enabled".into(),
        false => "disabled".into(),
    }
}
