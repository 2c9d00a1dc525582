//! `torchyard archive model`: a `.mar` with `MAR-INF/MANIFEST.json`.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use serde_json::{json, Map, Value};

use super::writer::{base_name, Contents};
use super::{created_on, OutputArgs};

/// Flags of torch-model-archiver.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Model name; also the archive's file name.
    #[arg(long)]
    pub model_name: String,
    /// Serialized model: a TorchScript file or an eager model's state dict.
    #[arg(long)]
    pub serialized_file: Option<PathBuf>,
    /// Python file defining the eager model's class.
    #[arg(long)]
    pub model_file: Option<PathBuf>,
    /// Handler: a .py file (optionally `file.py:function`) or a built-in handler name.
    #[arg(long)]
    pub handler: String,
    /// Runtime recorded in the manifest.
    #[arg(long, default_value = "python")]
    pub runtime: String,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Model version.
    #[arg(short = 'v', long, default_value = "1.0")]
    pub version: String,
    /// requirements.txt for the model's Python dependencies.
    #[arg(short = 'r', long)]
    pub requirements_file: Option<PathBuf>,
    /// model-config.yaml with the model's serving settings.
    #[arg(short = 'c', long)]
    pub config_file: Option<PathBuf>,
}

/// Builds the model archive and returns its path.
pub fn build(args: &ModelArgs) -> Result<PathBuf> {
    let mut contents = Contents::default();
    let mut model = Map::new();
    model.insert("modelName".into(), json!(args.model_name));
    let mut add = |key: &str, path: &Option<PathBuf>, contents: &mut Contents| -> Result<()> {
        if let Some(path) = path {
            model.insert(key.into(), json!(contents.add_file(path)?));
        }
        Ok(())
    };
    add("serializedFile", &args.serialized_file, &mut contents)?;
    add("modelFile", &args.model_file, &mut contents)?;
    add("requirementsFile", &args.requirements_file, &mut contents)?;
    add("configFile", &args.config_file, &mut contents)?;
    model.insert(
        "handler".into(),
        json!(handler_entry(&args.handler, &mut contents)?),
    );
    model.insert("modelVersion".into(), json!(args.version));
    args.output.add_extra_files(&mut contents)?;
    let manifest = json!({
        "createdOn": created_on(),
        "runtime": args.runtime,
        "model": Value::Object(model),
        "archiverVersion": env!("CARGO_PKG_VERSION"),
    });
    contents.add_bytes(
        "MAR-INF/MANIFEST.json",
        serde_json::to_vec_pretty(&manifest)?,
    );
    args.output.write(&contents, &args.model_name, ".mar")
}

/// Adds a handler file to the archive and returns the manifest's handler value; a name that
/// is no file (a built-in handler or a module path) is recorded as given.
pub fn handler_entry(handler: &str, contents: &mut Contents) -> Result<String> {
    let (file, function) = match handler.rsplit_once(':') {
        Some((file, function)) if file.ends_with(".py") => (file, Some(function)),
        _ => (handler, None),
    };
    let path = Path::new(file);
    if !path.is_file() {
        return Ok(handler.to_string());
    }
    let name = base_name(path)?;
    contents.add_path(&name, path)?;
    Ok(match function {
        Some(function) => format!("{name}:{function}"),
        None => name,
    })
}
