//! `torchyard archive`: builds `.mar` and `.war` archives with the flags of TorchServe's
//! `torch-model-archiver` and `torch-workflow-archiver`.

mod model;
mod workflow;
mod writer;

use clap::{Subcommand, ValueEnum};

pub use model::ModelArgs;
pub use workflow::WorkflowArgs;

/// What to archive.
#[derive(Debug, Subcommand)]
pub enum ArchiveCommand {
    /// Build a model archive (.mar), as torch-model-archiver does.
    #[command(disable_version_flag = true)]
    Model(ModelArgs),
    /// Build a workflow archive (.war), as torch-workflow-archiver does.
    #[command(disable_version_flag = true)]
    Workflow(WorkflowArgs),
}

/// How the archive is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ArchiveFormat {
    /// A deflate-compressed zip.
    Default,
    /// A tar.gz.
    Tgz,
    /// An unpacked directory.
    NoArchive,
    /// An uncompressed zip.
    ZipStore,
}

/// Runs an archive command; returns the path written.
pub fn run(command: ArchiveCommand) -> anyhow::Result<std::path::PathBuf> {
    match command {
        ArchiveCommand::Model(args) => model::build(&args),
        ArchiveCommand::Workflow(args) => workflow::build(&args),
    }
}

/// The `createdOn` stamp TorchServe's archivers write.
fn created_on() -> String {
    chrono::Local::now().format("%d/%m/%Y %H:%M:%S").to_string()
}

/// Splits a comma-separated file list.
fn file_list(value: Option<&str>) -> Vec<std::path::PathBuf> {
    value
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(std::path::PathBuf::from)
        .collect()
}
