//! Command-line interface: `torchyard serve` (with TorchServe's start flags) and `torchyard archive`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// torchyard: serve PyTorch models and workflows over TorchServe's REST APIs.
#[derive(Debug, Parser)]
#[command(name = "torchyard", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the server (runs in the foreground; Ctrl-C or SIGTERM drains and stops it).
    Serve(ServeArgs),
    /// Build model (.mar) and workflow (.war) archives.
    #[command(subcommand)]
    Archive(crate::archiver::ArchiveCommand),
    /// TorchServe's `torchserve` command (`--start`, `--stop`, its flags): what the installed
    /// `torchserve` runs.
    Torchserve(crate::launcher::TorchServeArgs),
}

/// Flags of `torchyard serve`; TorchServe's names are accepted so start scripts keep working.
/// Relative paths are taken from the directory the server is started in.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Directory holding model archives (.mar).
    #[arg(long)]
    pub model_store: Option<PathBuf>,
    /// Directory holding workflow archives (.war); defaults to the model store.
    #[arg(long)]
    pub workflow_store: Option<PathBuf>,
    /// TorchServe config.properties file.
    #[arg(long, visible_alias = "ts-config")]
    pub config: Option<PathBuf>,
    /// Models to load at start: `name=file.mar`, `file.mar` or `all`.
    #[arg(long, num_args = 1..)]
    pub models: Vec<String>,
    /// Workflows to load at start: `name=file.war`, `file.war` or `all`.
    #[arg(long, num_args = 1..)]
    pub workflows: Vec<String>,
    /// Python interpreter for workers (default: $TORCHYARD_PYTHON, the repo's .venv, then
    /// python3); a bare name is looked up on PATH.
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Directory for snapshots of what is registered (default: logs/config).
    #[arg(long)]
    pub snapshot_dir: Option<PathBuf>,
    /// Do not restore or write snapshots.
    #[arg(long, visible_alias = "no-snapshot")]
    pub ncs: bool,
    /// Restore the newest snapshot only when no configuration file is given (`--config` or
    /// $TS_CONFIG_FILE), as TorchServe does; the `torchserve` command passes it.
    #[arg(long)]
    pub restore_only_without_config: bool,
    /// Serve the APIs without token authorization (keys are otherwise written to
    /// key_file.json at start).
    #[arg(long)]
    pub disable_token_auth: bool,
    /// Allow registering and unregistering models and workflows through the API.
    #[arg(long)]
    pub enable_model_api: bool,
    /// TorchServe's log4j2 XML: its loggers' levels and its appenders' files, patterns and
    /// rotation are used (see docs/logging.md); wins over vmargs' -Dlog4j.configurationFile.
    #[arg(long)]
    pub log_config: Option<PathBuf>,
    /// Accepted for TorchServe compatibility: torchyard always runs in the foreground.
    #[arg(long)]
    pub foreground: bool,
}
