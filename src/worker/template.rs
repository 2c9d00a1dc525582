//! A model's template: a process forked from the fork server that loads the model's handler once
//! (its `initialize`) and then forks the model's workers, so that they share the weights' pages
//! copy-on-write and a new worker is ready in milliseconds (docs/protocol.md, "Model
//! templates"). The first worker of a model starts it; workers asked for while it loads wait for
//! it. It lives as long as the model's registration (scaling to 0 keeps it), is started again
//! by the next worker when it died, and is not used where forking after `initialize` is unsafe
//! or unwanted (see [`fallback_reason`]): those workers start as before.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::net::UnixStream;
use tokio::sync::Mutex;

use super::fd_passing;
use super::fork_server::{exchange, receive, FromForkServer};
use super::forked::ForkedProcess;
use super::process::{bind, connect_forked, WorkerProcess};
use super::protocol::{write_frame, ToWorker};
use super::supervisor::WorkerSpec;

/// How long one fork may take before the template counts as broken.
const FORK_TIMEOUT: Duration = Duration::from_secs(10);

/// The template of one model, started by its first worker.
#[derive(Default)]
pub struct ModelTemplate {
    /// Locked while a template starts or forks (until it replied, not until the worker
    /// connected): workers asked for meanwhile wait their turn.
    state: Mutex<State>,
}

#[derive(Default)]
enum State {
    /// None runs: the next worker starts one.
    #[default]
    Absent,
    Running {
        /// Dropping it kills the template (its lifeline closes).
        _process: ForkedProcess,
        stream: UnixStream,
    },
    /// The model's workers start without a template, for this reason.
    Off,
}

/// Why starting a template did not work out.
enum Launch {
    /// Not now (no fork server ready, the template died): the next worker tries again.
    Failed(String),
    /// Never for this model (the handler failed to load, or forking after it is unsafe).
    Off(String),
}

/// Why a worker of `spec` (on GPU `gpu_id`) must not be forked from a template, if it must not:
/// no fork server, a model with its own packages, CUDA, a torchrun model, or the model's
/// `forkAfterInitialize: false`.
fn fallback_reason(spec: &WorkerSpec, gpu_id: Option<u32>) -> Option<&'static str> {
    let yaml = &spec.model_yaml_config;
    if spec.python.fork_server.is_none() {
        Some("no fork server")
    } else if spec.deps_dir.is_some() {
        Some("the model has packages of its own")
    } else if gpu_id.is_some() {
        Some("the worker runs on a GPU (CUDA cannot cross a fork)")
    } else if yaml.get("torchrun").is_some() || yaml.get("parallelType").is_some() {
        Some("the model runs under torchrun")
    } else if yaml.get("forkAfterInitialize") == Some(&Value::Bool(false)) {
        Some("model-config.yaml sets forkAfterInitialize: false")
    } else {
        None
    }
}

impl ModelTemplate {
    /// Forks a worker of `spec` connected at `socket` from the model's template, starting the
    /// template with `load` first when none runs; `None` when the worker is to start as before.
    /// The worker still answers `load` (at once, its handler being loaded).
    pub(super) async fn fork_worker(
        &self,
        spec: &WorkerSpec,
        load: &ToWorker<'_>,
        socket: &Path,
        label: &str,
        gpu_id: Option<u32>,
    ) -> Option<WorkerProcess> {
        if let Some(reason) = fallback_reason(spec, gpu_id) {
            tracing::debug!("worker {label} starts without a model template: {reason}");
            return None;
        }
        let mut state = self.state.lock().await;
        // A template found dead is started again, once per worker.
        let mut restarted = false;
        loop {
            match &mut *state {
                State::Off => return None,
                State::Absent => match launch(spec, load).await {
                    Ok(running) => *state = running,
                    Err(Launch::Failed(reason)) => {
                        tracing::warn!(
                            "model {}: its template did not start ({reason}); worker {label} \
                             starts without it",
                            spec.model_name
                        );
                        return None;
                    }
                    Err(Launch::Off(reason)) => {
                        tracing::warn!(
                            "model {}: its workers start without a template: {reason}",
                            spec.model_name
                        );
                        *state = State::Off;
                        return None;
                    }
                },
                State::Running { stream, .. } => {
                    let listener = bind(socket).ok()?;
                    let request = json!({"kind": "fork", "socket": socket, "cwd": spec.model_dir});
                    let failure = match tokio::time::timeout(
                        FORK_TIMEOUT,
                        exchange(stream, &request),
                    )
                    .await
                    {
                        Ok(Ok(Ok(forked))) => {
                            // The next worker's fork need not wait until this one connects.
                            drop(state);
                            let connected = connect_forked(forked, label, listener, socket).await;
                            return connected
                                    .map(|(process, stream)| {
                                        WorkerProcess::from_template(process, stream)
                                    })
                                    .map_err(|e| {
                                        tracing::warn!("worker {label}: forked from its model's template, it did not connect: {e}")
                                    })
                                    .ok();
                        }
                        Ok(Ok(Err(refusal))) => format!("it refused: {refusal}"),
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => format!("no answer within {FORK_TIMEOUT:?}"),
                    };
                    tracing::warn!(
                        "model {}: its template failed to fork a worker ({failure}); it is \
                         started again",
                        spec.model_name
                    );
                    *state = State::Absent;
                    if std::mem::replace(&mut restarted, true) {
                        return None;
                    }
                }
            }
        }
    }
}

/// Forks a template from the fork server and has it load the handler.
async fn launch(spec: &WorkerSpec, load: &ToWorker<'_>) -> Result<State, Launch> {
    static SOCKETS: AtomicUsize = AtomicUsize::new(0);
    let fork_server = spec
        .python
        .fork_server
        .as_ref()
        .ok_or_else(|| Launch::Off("no fork server".into()))?;
    let failed = |e: std::io::Error| Launch::Failed(e.to_string());
    let socket = spec
        .python
        .runtime_dir
        .join(format!("t{}.sock", SOCKETS.fetch_add(1, Ordering::Relaxed)));
    let listener = bind(&socket).map_err(failed)?;
    let forked = fork_server
        .fork_template(&socket, &spec.model_dir)
        .await
        .ok_or_else(|| Launch::Failed("no fork server is ready".into()))?;
    let label = format!("T-{}_{}", spec.model_name, spec.model_version);
    let (process, mut stream) = connect_forked(forked, &label, listener, &socket)
        .await
        .map_err(failed)?;
    let loading = async {
        fd_passing::send(&stream, &[]).await?;
        write_frame(&mut stream, load, &[]).await?;
        receive(&mut stream).await
    };
    let reply = tokio::select! {
        reply = tokio::time::timeout(spec.startup_timeout, loading) => reply,
        how = process.exited() => return Err(Launch::Failed(format!("it exited: {how}"))),
    };
    match reply {
        Ok(Ok((FromForkServer::Loaded { pid, metrics }, _))) => {
            spec.metrics.record_handler_metrics(&metrics);
            tracing::info!(
                "model {}: template loaded the handler (pid {pid}); workers fork from it",
                spec.model_name
            );
            Ok(State::Running {
                _process: process,
                stream,
            })
        }
        Ok(Ok((FromForkServer::Unsafe { reason }, _))) => Err(Launch::Off(reason)),
        // Not the exception's text: the model log ends with its traceback, which a repeat of
        // its last line would split (TorchServe's log readers key on that line).
        Ok(Ok((FromForkServer::Error { .. }, _))) => Err(Launch::Off(
            "the handler failed to load in the template (its traceback is in the model log)".into(),
        )),
        Ok(Ok((other, _))) => Err(Launch::Failed(format!("it said {other:?}"))),
        Ok(Err(e)) => Err(Launch::Failed(e.to_string())),
        Err(_) => Err(Launch::Off(format!(
            "the handler did not load within startupTimeout ({}s)",
            spec.startup_timeout.as_secs()
        ))),
    }
}
