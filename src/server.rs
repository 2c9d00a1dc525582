//! `torchyard serve`: binds the three listeners, loads start-up models, and shuts down
//! gracefully on Ctrl-C or SIGTERM.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api;
use crate::cli::ServeArgs;
use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::model::{register_archive, RegisterOptions, Registry};
use crate::python_env::PythonEnv;
use crate::state::AppState;
use crate::workflow::WorkflowRegistry;

/// Runs the server until a shutdown signal, then drains requests and stops the workers.
pub async fn serve(args: ServeArgs) -> Result<()> {
    let config = ServerConfig::from_args(&args)?;
    let runtime_dir = tempfile::Builder::new()
        .prefix("torchyard-")
        .tempdir()
        .context("cannot create the runtime directory")?;
    let python = PythonEnv::prepare(runtime_dir.path(), config.python.as_deref())?;
    tracing::info!("workers run {}", python.interpreter.display());
    let bind = |addr| async move {
        TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))
    };
    let inference = bind(config.inference_address).await?;
    let management = bind(config.management_address).await?;
    let metrics = bind(config.metrics_address).await?;
    let state = Arc::new(AppState {
        registry: Registry::default(),
        workflows: WorkflowRegistry::default(),
        metrics: Metrics::default(),
        python,
        http: reqwest::Client::new(),
        config,
    });
    tracing::info!(
        "inference API on {}, management API on {}, metrics API on {}",
        state.config.inference_address,
        state.config.management_address,
        state.config.metrics_address
    );
    load_startup_models(&state);

    let stop = CancellationToken::new();
    tokio::spawn(wait_for_signal(stop.clone()));
    let serve = |listener: TcpListener, router: axum::Router| {
        let stop = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        })
    };
    let servers = [
        serve(inference, api::inference_router(state.clone())),
        serve(management, api::management_router(state.clone())),
        serve(metrics, api::metrics_router(state.clone())),
    ];
    for server in servers {
        server.await??;
    }
    tracing::info!("stopping workers");
    futures::future::join_all(state.registry.all().iter().map(|m| m.shutdown())).await;
    Ok(())
}

/// Registers the models named by `--models` / `load_models` in the background.
fn load_startup_models(state: &Arc<AppState>) {
    let mut entries = state.config.load_models.clone();
    if entries.iter().any(|e| e == "all") {
        entries = state
            .config
            .model_store
            .as_deref()
            .map(archives_in)
            .unwrap_or_default();
    }
    for entry in entries {
        let (model_name, url) = match entry.split_once('=') {
            Some((name, url)) => (Some(name.to_string()), url.to_string()),
            None => (None, entry),
        };
        let opts = RegisterOptions {
            url,
            model_name,
            loaded_at_startup: true,
            ..RegisterOptions::default()
        };
        let state = state.clone();
        tokio::spawn(async move {
            let url = opts.url.clone();
            if let Err(e) = register_archive(&state, opts).await {
                tracing::error!("cannot load {url} at start: {e}");
            }
        });
    }
}

/// Archive names in the model store: `.mar`, `.tar.gz` files and unpacked archive directories.
fn archives_in(store: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(store) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.ends_with(".mar")
                || name.ends_with(".tar.gz")
                || e.path().join("MAR-INF/MANIFEST.json").is_file()
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

async fn wait_for_signal(stop: CancellationToken) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("cannot install the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown requested: draining in-flight requests");
    stop.cancel();
}
