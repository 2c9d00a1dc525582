//! torchyard: a model server for PyTorch models and workflows, drop-in for TorchServe.

mod api;
mod archive;
mod archiver;
mod auth;
mod cli;
mod config;
mod download;
mod error;
mod facade;
mod fetch;
mod gpu;
mod grpc;
mod job;
mod kserve;
mod listener;
mod metrics;
mod model;
mod properties;
mod python_env;
mod request;
mod runtime_dir;
mod server;
mod snapshot;
mod snapshot_file;
mod state;
mod timing;
mod tls;
mod versioned;
mod worker;
mod workflow;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// mimalloc: a request allocates and frees many small buffers across two runtime threads,
/// which glibc's allocator makes a fifth of the server's instructions (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Serve(args) => server::serve(args).await,
        cli::Command::Archive(command) => archiver::run(command).map(|path| {
            println!("{}", path.display());
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
