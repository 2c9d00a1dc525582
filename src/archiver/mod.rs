//! `torchyard archive`: builds `.mar` and `.war` archives with the flags of TorchServe's
//! `torch-model-archiver` and `torch-workflow-archiver`.

mod model;
mod workflow;
mod writer;

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use writer::Contents;

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

/// Flags both archivers share: extra files, and where and how the archive is written.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Comma-separated extra files or directories.
    #[arg(long)]
    pub extra_files: Option<String>,
    /// Where to write the archive.
    #[arg(long, default_value = ".")]
    pub export_path: PathBuf,
    /// Archive format.
    #[arg(long, value_enum, default_value = "default")]
    pub archive_format: ArchiveFormat,
    /// Overwrite an existing archive.
    #[arg(short = 'f', long)]
    pub force: bool,
}

impl OutputArgs {
    /// Adds each of `--extra-files` under its base name.
    fn add_extra_files(&self, contents: &mut Contents) -> anyhow::Result<()> {
        let list = self.extra_files.as_deref().unwrap_or_default();
        for extra in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            contents.add_file(std::path::Path::new(extra))?;
        }
        Ok(())
    }

    /// Writes `contents` as `{export_path}/{stem}{ext}` in the chosen format.
    fn write(&self, contents: &Contents, stem: &str, ext: &str) -> anyhow::Result<PathBuf> {
        contents.write(
            &self.export_path,
            stem,
            ext,
            self.archive_format,
            self.force,
        )
    }
}
