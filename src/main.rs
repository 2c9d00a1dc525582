//! torchyard: a model server for PyTorch models and workflows, drop-in for TorchServe.

mod api;
mod archive;
mod archiver;
mod auth;
mod banner;
mod cli;
mod config;
mod download;
mod error;
mod facade;
mod fetch;
mod gpu;
mod grpc;
mod job;
mod json_depth;
mod kserve;
mod launcher;
mod listener;
mod logging;
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

/// mimalloc: a request allocates and frees many small buffers across two runtime threads,
/// which glibc's allocator makes a fifth of the server's instructions (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let (command, _flush) = match cli::Cli::parse().command {
        // TorchServe's launcher neither logs nor needs a runtime: it starts or stops a server.
        cli::Command::Torchserve(args) => return launcher::run(args),
        command => (command, logging::init()),
    };
    let result = match command {
        cli::Command::Serve(args) => serve(args),
        cli::Command::Archive(command) => {
            archiver::run(command).map(|path| println!("{}", path.display()))
        }
        cli::Command::Torchserve(_) => unreachable!("the launcher returned above"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn serve(args: cli::ServeArgs) -> anyhow::Result<()> {
    server::serve(args).await
}
