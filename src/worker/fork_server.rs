//! The fork server: one Python process per interpreter that has imported torch and the worker's
//! modules, and forks each new worker on request (docs/protocol.md, "Fork server"). A forked
//! worker is ready in milliseconds and shares those modules' memory with its siblings. It is
//! started in the background when the server starts and again whenever it dies. A worker asked
//! for while it starts waits for it (at most [`START_WAIT`]); while none is ready otherwise
//! (between restarts, or never where forking is unsafe), workers start as fresh processes.

use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::unix::pipe;
use tokio::net::UnixStream;
use tokio::sync::{watch, Mutex};
use tokio_util::sync::CancellationToken;

use super::fd_passing;
use super::forked::ForkedProcess;
use super::process::{exit_of, spawn_connected, ABORT};
use super::protocol::{read_frame, write_frame};
use crate::python_env::PythonEnv;

/// How long the fork server may take to import torch and say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a fork request waits for a fork server that is starting before the worker starts
/// as a fresh process instead (which would import torch itself, competing with the fork server
/// for the same cores).
const START_WAIT: Duration = Duration::from_secs(120);
/// How long one fork may take before the fork server counts as broken.
const FORK_TIMEOUT: Duration = Duration::from_secs(10);
/// Restart delays: 1 s, doubling up to 60 s; a fork server that ran longer than that starts
/// the series again.
const RESTART_FIRST: Duration = Duration::from_secs(1);
const RESTART_MAX: Duration = Duration::from_secs(60);

/// The fork server of one Python environment.
pub struct ForkServer {
    /// The ready fork server's control connection; `None` while none is ready.
    control: Mutex<Option<Control>>,
    /// True while a fork server is being started and has not said whether it is ready.
    starting: watch::Sender<bool>,
}

struct Control {
    stream: UnixStream,
    /// Cancelled to have this fork server killed and another one started.
    broken: CancellationToken,
}

/// A worker just forked: its process, and the server's ends of its stdout and stderr.
pub struct ForkedWorker {
    pub process: ForkedProcess,
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
}

/// Messages from the fork server, and from a model template.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(super) enum FromForkServer {
    Ready {
        pid: u32,
        preloaded: Vec<String>,
    },
    /// A template's handler loaded; `metrics`: what its `initialize` recorded.
    Loaded {
        pid: u32,
        #[serde(default)]
        metrics: Vec<crate::metrics::HandlerSample>,
    },
    Unsafe {
        reason: String,
    },
    Forked {
        pid: u32,
    },
    Error {
        message: String,
    },
}

/// Why a fork server stopped.
enum Stopped {
    /// It cannot fork safely in this environment: none is started again.
    Unsafe(String),
    /// The server is giving up on its workers.
    Aborted,
    Failed(String),
}

impl std::fmt::Debug for ForkServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ForkServer")
    }
}

impl ForkServer {
    /// Starts the fork server of `env` in the background and keeps one running.
    pub fn launch(env: PythonEnv) -> Arc<Self> {
        let server = Arc::new(Self {
            control: Mutex::new(None),
            starting: watch::Sender::new(true),
        });
        tokio::spawn(server.clone().keep_running(env));
        server
    }

    /// Forks a worker that connects to `socket` from `work_dir`; `None` when no fork server is
    /// ready or the fork failed, and the worker should start as a fresh process.
    pub async fn fork(self: &Arc<Self>, socket: &Path, work_dir: &Path) -> Option<ForkedWorker> {
        self.fork_as(json!({"kind": "fork", "socket": socket, "cwd": work_dir}))
            .await
    }

    /// Forks a model template (template.rs) that connects to `socket` from `work_dir`; `None`
    /// as for [`ForkServer::fork`].
    pub(super) async fn fork_template(
        self: &Arc<Self>,
        socket: &Path,
        work_dir: &Path,
    ) -> Option<ForkedWorker> {
        let request =
            json!({"kind": "fork", "role": "template", "socket": socket, "cwd": work_dir});
        self.fork_as(request).await
    }

    async fn fork_as(self: &Arc<Self>, request: Value) -> Option<ForkedWorker> {
        self.started().await;
        // In a task of its own: a caller that gives up mid-request leaves no reply unread.
        let server = self.clone();
        let forking = tokio::spawn(async move { server.fork_now(&request).await });
        forking.await.ok().flatten()
    }

    /// Waits, at most [`START_WAIT`], while a fork server is starting.
    async fn started(&self) {
        let mut starting = self.starting.subscribe();
        let settled = async { drop(starting.wait_for(|starting| !starting).await) };
        tokio::select! {
            settled = tokio::time::timeout(START_WAIT, settled) => if settled.is_err() {
                tracing::warn!(
                    "the fork server is not ready after {START_WAIT:?}: a worker starts as a \
                     fresh process"
                );
            },
            () = ABORT.cancelled() => {}
        }
    }

    async fn fork_now(&self, request: &Value) -> Option<ForkedWorker> {
        let mut control = self.control.lock().await;
        let connection = control.as_mut()?;
        let exchanged = exchange(&mut connection.stream, request);
        let failure = match tokio::time::timeout(FORK_TIMEOUT, exchanged).await {
            Ok(Ok(Ok(worker))) => return Some(worker),
            Ok(Ok(Err(refusal))) => format!("it refused: {refusal}"),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {FORK_TIMEOUT:?}"),
        };
        tracing::warn!(
            "the fork server failed to fork a worker ({failure}): the worker starts as a fresh \
             process and the fork server is restarted"
        );
        connection.broken.cancel();
        *control = None;
        None
    }

    /// Runs fork servers one after another, with growing pauses between failures.
    async fn keep_running(self: Arc<Self>, env: PythonEnv) {
        let mut delay = RESTART_FIRST;
        loop {
            let started = Instant::now();
            let reason = match self.run(&env).await {
                Stopped::Failed(reason) => reason,
                Stopped::Aborted => return,
                Stopped::Unsafe(reason) => {
                    tracing::warn!(
                        "the fork server cannot fork safely ({reason}): workers start as fresh \
                         processes"
                    );
                    return;
                }
            };
            if started.elapsed() > RESTART_MAX {
                delay = RESTART_FIRST;
            }
            tracing::warn!(
                "the fork server stopped ({reason}); workers start as fresh processes until it \
                 is started again in {delay:?}"
            );
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(RESTART_MAX);
        }
    }

    /// Starts one fork server, serves forks through it until it stops, and says why it did.
    async fn run(&self, env: &PythonEnv) -> Stopped {
        if ABORT.is_cancelled() {
            return Stopped::Aborted;
        }
        let started = Instant::now();
        // Fork requests wait until this is dropped: the fork server is ready, or it failed.
        let starting = Starting::new(&self.starting);
        let socket = env.runtime_dir.join("fork-server.sock");
        let module = "torchyard.forkserver";
        let label = "fork-server";
        let (mut child, mut stream) =
            match spawn_connected(env, None, module, label, &socket, &env.runtime_dir, &[]).await {
                Ok(connected) => connected,
                Err(e) => return Stopped::Failed(format!("cannot start it: {e}")),
            };
        let greeting = tokio::select! {
            greeting = tokio::time::timeout(READY_TIMEOUT, receive(&mut stream)) => greeting,
            how = exit_of(&mut child) => return Stopped::Failed(format!("it exited: {how}")),
        };
        match greeting {
            Ok(Ok((FromForkServer::Ready { pid, preloaded }, _))) => tracing::info!(
                "fork server ready in {:.1}s (pid {pid}, preloaded: {})",
                started.elapsed().as_secs_f64(),
                if preloaded.is_empty() {
                    "nothing".to_string()
                } else {
                    preloaded.join(", ")
                }
            ),
            Ok(Ok((FromForkServer::Unsafe { reason }, _))) => return Stopped::Unsafe(reason),
            Ok(Ok((other, _))) => return Stopped::Failed(format!("it said {other:?}")),
            Ok(Err(e)) => return Stopped::Failed(e.to_string()),
            Err(_) => return Stopped::Failed(format!("not ready within {READY_TIMEOUT:?}")),
        }
        let broken = CancellationToken::new();
        *self.control.lock().await = Some(Control {
            stream,
            broken: broken.clone(),
        });
        drop(starting);
        let stopped = tokio::select! {
            how = exit_of(&mut child) => Stopped::Failed(format!("it exited: {how}")),
            () = broken.cancelled() => Stopped::Failed("it failed a fork".into()),
            () = ABORT.cancelled() => Stopped::Aborted,
        };
        self.control.lock().await.take();
        stopped
    }
}

/// Marks a fork server as starting for as long as it lives.
struct Starting<'a>(&'a watch::Sender<bool>);

impl<'a> Starting<'a> {
    fn new(starting: &'a watch::Sender<bool>) -> Self {
        starting.send_replace(true);
        Self(starting)
    }
}

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        self.0.send_replace(false);
    }
}

/// Receives one message and the descriptors that came with it.
pub(super) async fn receive(
    stream: &mut UnixStream,
) -> io::Result<(FromForkServer, Vec<std::os::fd::OwnedFd>)> {
    let fds = fd_passing::receive(stream, 1).await?;
    let message = read_frame(stream).await?.message()?;
    Ok((message, fds))
}

/// One fork request and its reply: the worker, or why the fork server refused to fork.
pub(super) async fn exchange(
    stream: &mut UnixStream,
    request: &Value,
) -> io::Result<Result<ForkedWorker, String>> {
    let (stdout, stdout_end) = std::io::pipe()?;
    let (stderr, stderr_end) = std::io::pipe()?;
    let (lifeline_end, lifeline) = std::io::pipe()?;
    let ends = [stdout_end.as_fd(), stderr_end.as_fd(), lifeline_end.as_fd()];
    fd_passing::send(stream, &ends).await?;
    // Only the worker holds these ends now: its output ends, and it is killed, when it exits.
    drop((stdout_end, stderr_end, lifeline_end));
    write_frame(stream, request, &[]).await?;
    match receive(stream).await? {
        (FromForkServer::Forked { pid }, fds) => {
            let pidfd = fds
                .into_iter()
                .next()
                .ok_or_else(|| io::Error::other("the fork reply carries no pidfd"))?;
            tracing::debug!("the fork server forked worker process {pid}");
            Ok(Ok(ForkedWorker {
                process: ForkedProcess::new(pidfd, lifeline.into())?,
                stdout: pipe::Receiver::from_owned_fd(stdout.into())?,
                stderr: pipe::Receiver::from_owned_fd(stderr.into())?,
            }))
        }
        (FromForkServer::Error { message }, _) => Ok(Err(message)),
        (other, _) => Err(io::Error::other(format!("unexpected reply {other:?}"))),
    }
}
