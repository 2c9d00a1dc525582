//! `torchyard archive workflow`: a `.war` with `WAR-INF/MANIFEST.json`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde_json::json;

use super::model::handler_entry;
use super::writer::Contents;
use super::{created_on, OutputArgs};

/// Flags of torch-workflow-archiver.
#[derive(Debug, Args)]
pub struct WorkflowArgs {
    /// Workflow name; also the archive's file name.
    #[arg(long)]
    pub workflow_name: String,
    /// The workflow specification (YAML).
    #[arg(long)]
    pub spec_file: PathBuf,
    /// The Python file with the workflow's functions.
    #[arg(long)]
    pub handler: String,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Workflow version (a torchyard extension; TorchServe ignores it).
    #[arg(short = 'v', long, default_value = "1.0")]
    pub version: String,
}

/// Builds the workflow archive and returns its path.
pub fn build(args: &WorkflowArgs) -> Result<PathBuf> {
    let mut contents = Contents::default();
    let spec = contents.add_file(&args.spec_file)?;
    let handler = handler_entry(&args.handler, &mut contents)?;
    args.output.add_extra_files(&mut contents)?;
    let manifest = json!({
        "createdOn": created_on(),
        "workflow": {
            "workflowName": args.workflow_name,
            "workflowVersion": args.version,
            "specFile": spec,
            "handler": handler,
        },
        "archiverVersion": env!("CARGO_PKG_VERSION"),
    });
    contents.add_bytes(
        "WAR-INF/MANIFEST.json",
        serde_json::to_vec_pretty(&manifest)?,
    );
    args.output.write(&contents, &args.workflow_name, ".war")
}
