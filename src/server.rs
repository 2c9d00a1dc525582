//! `torchyard serve`: binds the three HTTP and two gRPC listeners, loads start-up models, and shuts down
//! gracefully on Ctrl-C or SIGTERM.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use axum::middleware;

use crate::api;
use crate::auth::{self, KeyKind, TokenAuth};
use crate::banner;
use crate::cli::ServeArgs;
use crate::config::ServerConfig;
use crate::gpu::Gpus;
use crate::grpc;
use crate::listener::{self, ConnectionLimits};
use crate::logging;
use crate::metrics::Metrics;
use crate::model::{register_archive, Autoscaler, RegisterOptions};
use crate::python_env::PythonEnv;
use crate::runtime_dir;
use crate::snapshot::{self, Snapshotter};
use crate::state::AppState;
use crate::tls::Identity;
use crate::worker;
use crate::workflow::{register_workflow, WorkflowOptions};

/// Runs the server until a shutdown signal, then drains requests and stops the workers.
pub async fn serve(args: ServeArgs) -> Result<()> {
    let mut config = ServerConfig::from_args(&args)?;
    logging::install(&config.logging);
    let identity = match &config.certificate {
        Some(source) if config.https.any() || config.grpc_tls => Some(Identity::load(source)?),
        Some(_) => {
            tracing::warn!("a certificate is configured but no listener uses it: an address must be https:// (or enable_grpc_ssl set) for TLS");
            None
        }
        None => None,
    };
    let runtime_dir = runtime_dir::create()?;
    runtime_dir::remove_stale();
    let mut python = PythonEnv::prepare(runtime_dir.path(), config.python.as_deref())?;
    python.shared_memory_threshold = config.shared_memory_threshold;
    if config.fork_workers {
        python = python.with_fork_server();
    }
    let bind = |addr| async move {
        TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))
    };
    let inference = bind(config.inference_address).await?;
    // KServe's configuration puts both APIs on one address: one listener then serves both.
    let shared_port = config.management_address == config.inference_address;
    let management = match shared_port {
        true => None,
        false => Some(bind(config.management_address).await?),
    };
    let metrics = bind(config.metrics_address).await?;
    let grpc_inference = bind(config.grpc_inference_address).await?;
    let grpc_management = bind(config.grpc_management_address).await?;
    let number_of_gpu = config.number_of_gpu;
    let gpus = tokio::task::spawn_blocking(move || Gpus::detect(number_of_gpu)).await?;
    config.resolve_default_workers(gpus.count());
    let state = Arc::new(AppState {
        registry: Default::default(),
        workflows: Default::default(),
        workflow_claims: Default::default(),
        metrics: Metrics::new(
            config.metrics_mode,
            config.metrics_config.clone(),
            config.model_metrics_auto_detect,
            config.handler_metric_max_series,
        ),
        python,
        gpus: Arc::new(gpus),
        snapshots: Snapshotter::new(config.snapshot_dir.as_deref(), config.settings.clone()),
        autoscaler: Autoscaler::start(config.autoscale),
        starting: true.into(),
        config,
    });
    tracing::info!(
        "{}",
        banner::summary(
            &state.config,
            args.config.as_deref(),
            &state.python.interpreter,
            state.gpus.count(),
        )
    );
    state
        .metrics
        .collect_host_metrics(state.config.system_metrics_interval);
    let restored = match snapshot::from_config(&state.config)? {
        Some(carried) => Some(carried),
        None if restores_newest_snapshot(&args) => state.snapshots.load(&state.config)?,
        None => None,
    };
    if let Some(snapshot) = &restored {
        snapshot::check_archives(snapshot, state.config.model_store.as_deref())?;
    }
    load_startup_archives(&state, restored);

    let stop = CancellationToken::new();
    tokio::spawn(wait_for_signal(stop.clone()));
    let acceptor = identity.as_ref().map(Identity::acceptor);
    // The HTTP listeners (inference and management may share one), metrics, and two gRPC.
    let listeners = if management.is_some() { 5 } else { 4 };
    let limits = ConnectionLimits::new(
        state.config.connection_header_read_timeout,
        state.config.max_connections,
        listeners,
    );
    let serve = |listener: TcpListener, router: axum::Router, https: bool| {
        // Outermost, so token refusals carry a request id and count too, and preflight
        // requests need no token.
        let mut router = router.layer(middleware::from_fn(api::request_id::tag));
        if let Some(cors) = api::cors::layer(&state.config.cors) {
            router = router.layer(cors);
        }
        let router = api::count_responses(router, &state.metrics)
            .layer(middleware::from_fn(logging::log_access));
        // The configuration refuses https:// without a certificate.
        let tls = acceptor.clone().filter(|_| https);
        let serving = listener::serve(listener, router, tls, limits.clone(), stop.clone());
        tokio::spawn(serving)
    };
    let auth = if state.config.token_auth {
        let lifetime = state.config.token_lifetime;
        let auth = TokenAuth::start(Path::new("key_file.json"), lifetime)?;
        tracing::info!("token authorization is on: keys are in key_file.json");
        Some(auth)
    } else {
        None
    };
    let auth = auth.as_ref();
    let inference_routes =
        api::inference_routes().layer(middleware::from_fn(api::server_timing::total));
    let management_routes = match auth {
        Some(auth) => api::management_routes().merge(auth::token_route(auth)),
        None => api::management_routes(),
    };
    let router = |routes| api::listener_router(routes, state.clone());
    let https = state.config.https;
    let http_servers = match management {
        // Each API's key guards its routes; TorchServe's description routes are guarded too.
        None => vec![serve(
            inference,
            router(
                auth::guard(inference_routes, auth, KeyKind::Inference)
                    .merge(auth::guard(management_routes, auth, KeyKind::Management))
                    .merge(api::shared_listener_routes()),
            ),
            https.inference,
        )],
        // The listener's key guards everything it serves, unknown paths included, as in
        // TorchServe.
        Some(management) => vec![
            serve(
                inference,
                auth::guard(
                    router(inference_routes.merge(api::inference_description())),
                    auth,
                    KeyKind::Inference,
                ),
                https.inference,
            ),
            serve(
                management,
                auth::guard(
                    router(management_routes.merge(api::management_description())),
                    auth,
                    KeyKind::Management,
                ),
                https.management,
            ),
        ],
    };
    let grpc_tls = identity
        .as_ref()
        .filter(|_| state.config.grpc_tls)
        .map(Identity::grpc_acceptor);
    let serve_grpc = |which, listener| {
        let serving = grpc::serve(
            which,
            listener,
            state.clone(),
            auth.cloned(),
            grpc_tls.clone(),
            limits.clone(),
            stop.clone(),
        );
        tokio::spawn(serving)
    };
    let servers = http_servers.into_iter().chain([
        serve(metrics, api::metrics_router(state.clone()), https.metrics),
        serve_grpc(grpc::Listener::Inference, grpc_inference),
        serve_grpc(grpc::Listener::Management, grpc_management),
    ]);
    drain(&state, servers, &stop).await
}

/// How long requests cut off at the shutdown deadline have to send their error replies.
const CUT_OFF_GRACE: Duration = Duration::from_secs(2);

/// Waits for the listeners to finish their requests, then stops the workers. If that is not
/// done `shutdown_timeout` after the shutdown signal, fails what still runs, kills the
/// workers, and returns at most [`CUT_OFF_GRACE`] later.
async fn drain(
    state: &AppState,
    servers: impl IntoIterator<Item = JoinHandle<()>>,
    stop: &CancellationToken,
) -> Result<()> {
    let finished = async {
        for server in servers {
            server.await?;
        }
        tracing::info!("stopping workers");
        state.snapshots.close(state).await;
        futures::future::join_all(state.registry.all().iter().map(|m| m.shutdown())).await;
        Ok(())
    };
    tokio::pin!(finished);
    let timeout = state.config.shutdown_timeout;
    tokio::select! {
        done = &mut finished => return done,
        () = async { stop.cancelled().await; tokio::time::sleep(timeout).await } => {}
    }
    tracing::warn!("still draining {timeout:?} after the shutdown signal: failing what is left and killing the workers");
    worker::abort_all();
    if tokio::time::timeout(CUT_OFF_GRACE, finished).await.is_err() {
        tracing::warn!("exiting with requests still open");
    }
    Ok(())
}

/// Whether a start whose configuration carries no `model_snapshot` restores the newest snapshot
/// file: always, unless `--restore-only-without-config` asks for TorchServe's rule (only when
/// no configuration file is given).
fn restores_newest_snapshot(args: &ServeArgs) -> bool {
    !args.restore_only_without_config
        || (args.config.is_none() && std::env::var_os("TS_CONFIG_FILE").is_none())
}

/// In the background: restores the snapshot (the configuration's `model_snapshot`, else the
/// newest snapshot file), or, when there is none, registers the models and workflows named
/// by `--models`, `load_models` and `--workflows` (models first: workflow nodes may need
/// them); TorchServe too ignores those when it restores a snapshot. Management changes wait until the restore has finished (see
/// [`snapshot::Snapshotter::wait_restored`]), so no snapshot can drop what is not restored yet.
fn load_startup_archives(state: &Arc<AppState>, restored: Option<snapshot::Snapshot>) {
    let config = &state.config;
    let (models, workflows) = match &restored {
        Some(_) => (Vec::new(), Vec::new()),
        None => (
            startup_entries(&config.load_models, config.model_store.as_deref(), MAR),
            startup_entries(
                &config.load_workflows,
                config.workflow_store.as_deref(),
                WAR,
            ),
        ),
    };
    let state = state.clone();
    tokio::spawn(async move {
        let mut failed = snapshot::Snapshot::default();
        if let Some(snapshot) = restored {
            tracing::info!(
                "restoring a snapshot: --models, load_models and --workflows are not loaded"
            );
            let restoring = state.clone();
            let all = snapshot.clone();
            let restore = async move { snapshot::restore(&restoring, &snapshot).await };
            // Should the restore panic, everything stays pending and changes are not held.
            failed = tokio::spawn(restore).await.unwrap_or(all);
        }
        state.snapshots.finish_restore(failed);
        let loads = models.into_iter().map(|(model_name, url)| {
            let opts = RegisterOptions {
                url,
                model_name,
                loaded_at_startup: true,
                ..RegisterOptions::default()
            };
            let state = &state;
            async move {
                let url = opts.url.clone();
                if let Err(e) = register_archive(state, opts).await {
                    tracing::error!("cannot load {url} at start: {e}");
                }
            }
        });
        futures::future::join_all(loads).await;
        for (name, version) in state.config.models.default_versions() {
            if state.registry.contains(name, version) {
                let _ = state.registry.set_default(name, version);
            }
        }
        for (workflow_name, url) in workflows {
            let opts = WorkflowOptions { url, workflow_name };
            let url = opts.url.clone();
            if let Err(e) = register_workflow(&state, opts).await {
                tracing::error!("cannot load workflow {url} at start: {e}");
            }
        }
        state.started();
        // The startup snapshot is on disk when a launcher reads the line below.
        state.snapshots.save_startup(&state).await;
        // After the lines logged so far, which the console's writer may still hold.
        logging::print(banner::STARTED);
    });
}

/// A kind of archive: its file extension and manifest directory.
type ArchiveKind = (&'static str, &'static str);
const MAR: ArchiveKind = (".mar", "MAR-INF");
const WAR: ArchiveKind = (".war", "WAR-INF");

/// `(name, url)` pairs from `name=url`, `url` or `all` (every archive in `store`).
fn startup_entries(
    entries: &[String],
    store: Option<&Path>,
    kind: ArchiveKind,
) -> Vec<(Option<String>, String)> {
    let mut entries = entries.to_vec();
    if entries.iter().any(|e| e.eq_ignore_ascii_case("all")) {
        entries = store.map(|s| archives_in(s, kind)).unwrap_or_default();
    }
    entries
        .into_iter()
        .map(|entry| match entry.split_once('=') {
            Some((name, url)) => (Some(name.to_string()), url.to_string()),
            None => (None, entry),
        })
        .collect()
}

/// Archive names in a store: files of the archive's kind and unpacked archive directories.
fn archives_in(store: &Path, (ext, manifest_dir): ArchiveKind) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(store) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.ends_with(ext) || e.path().join(manifest_dir).join("MANIFEST.json").is_file()
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
