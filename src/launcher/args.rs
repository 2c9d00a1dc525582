//! The flags of TorchServe 0.12's `torchserve` command (`ts/arg_parser.py`), all accepted.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgGroup, Parser};

/// `torchserve`: start or stop a torchyard server as TorchServe's command does.
#[derive(Debug, Parser)]
#[command(
    name = "torchserve",
    about = "TorchServe's command, served by torchyard",
    disable_version_flag = true,
    group(ArgGroup::new("action").args(["version", "start", "stop"]))
)]
pub struct TorchServeArgs {
    /// Print the version and exit.
    #[arg(short = 'v', long)]
    pub version: bool,
    /// Start the model server (the default).
    #[arg(long)]
    pub start: bool,
    /// Stop the model server.
    #[arg(long)]
    pub stop: bool,
    /// Configuration file for the model server (config.properties); `$TS_CONFIG_FILE` wins.
    #[arg(long)]
    pub ts_config: Option<PathBuf>,
    /// Model store location from where local or default models can be loaded.
    #[arg(long)]
    pub model_store: Option<PathBuf>,
    /// Workflow store location from where local or default workflows can be loaded.
    #[arg(long)]
    pub workflow_store: Option<PathBuf>,
    /// Models to load at start, `[model_name=]model_location` or `all`.
    #[arg(long, num_args = 1.., value_name = "MODEL_PATH1 MODEL_NAME=MODEL_PATH2...")]
    pub models: Vec<OsString>,
    /// Log4j2 configuration file: its levels and file paths are honoured.
    #[arg(long)]
    pub log_config: Option<PathBuf>,
    /// Log configuration of TorchServe's C++ backend (torchyard has none: ignored).
    #[arg(long)]
    pub cpp_log_config: Option<PathBuf>,
    /// Run in the foreground; with `--stop`, wait until the server has stopped.
    #[arg(long)]
    pub foreground: bool,
    /// Do not restore or write configuration snapshots.
    #[arg(long, visible_alias = "ncs")]
    pub no_config_snapshots: bool,
    /// Java plugin jars (torchyard cannot load them: ignored with a warning).
    #[arg(long, visible_alias = "ppath")]
    pub plugins_path: Option<PathBuf>,
    /// Serve the APIs without token authorization.
    #[arg(long, visible_alias = "dt")]
    pub disable_token_auth: bool,
    /// Allow registering and unregistering models through the management API.
    #[arg(long)]
    pub enable_model_api: bool,
}
