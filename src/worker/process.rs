//! One Python worker process and its socket: forked by the fork server where it can be, else a
//! fresh interpreter.

use std::future::Future;
use std::path::Path;
use std::process::Stdio;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::fd_passing::DescriptorReader;
use super::fork_server::ForkedWorker;
use super::forked::ForkedProcess;
use super::protocol::{Frame, FrameReader};
use super::rank_group::OtherRanks;
use super::shared_memory::{write_shared_frame, RegionLease, RequestRegions};
use super::status::StartMode;
use crate::python_env::PythonEnv;

/// How long a new process may take to connect to its socket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(120);

/// A running worker process connected to the server.
pub struct WorkerProcess {
    process: Process,
    frames: FrameReader<DescriptorReader>,
    out: OwnedWriteHalf,
    /// The server's shared-memory regions for this worker's request blobs.
    regions: RequestRegions,
    /// A torchrun worker's ranks after the first, which this process (rank 0) speaks for.
    ranks: Option<OtherRanks>,
    /// The torch threads per worker the worker was last told; `None`: it is not told (a
    /// torchrun worker, whose ranks take `OMP_NUM_THREADS`).
    pub(super) threads: Option<usize>,
}

/// A worker's process, as the server holds it.
pub(super) enum Process {
    /// A fresh interpreter: the server's own child.
    Spawned(Child),
    /// Forked by the fork server (`Fork`) or by its model's template (`Template`).
    Forked(ForkedProcess, StartMode),
}

impl Process {
    /// Waits until the process has exited; says how it ended.
    pub(super) async fn exited(&mut self) -> String {
        match self {
            Self::Spawned(child) => exit_of(child).await,
            Self::Forked(process, _) => process.exited().await,
        }
    }

    pub(super) async fn kill(&mut self) {
        match self {
            Self::Spawned(child) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
            Self::Forked(process, _) => process.kill().await,
        }
    }
}

impl WorkerProcess {
    /// Starts a worker that connects to `socket_path`: forked by the environment's fork server
    /// when it has a ready one and the model brings no packages of its own (`deps_dir`), else
    /// `python -m torchyard.worker`. Either way it runs in `work_dir` and its output goes to
    /// the server log under `label`.
    pub async fn start(
        env: &PythonEnv,
        deps_dir: Option<&Path>,
        label: &str,
        socket_path: &Path,
        work_dir: &Path,
    ) -> std::io::Result<Self> {
        if ABORT.is_cancelled() {
            return Err(aborted());
        }
        if let (Some(fork_server), None) = (&env.fork_server, deps_dir) {
            let listener = bind(socket_path)?;
            if let Some(forked) = fork_server.fork(socket_path, work_dir).await {
                let (process, stream) =
                    connect_forked(forked, label, listener, socket_path).await?;
                return Ok(Self::connected(
                    Process::Forked(process, StartMode::Fork),
                    stream,
                ));
            }
        }
        Self::spawn_with(env, deps_dir, label, socket_path, work_dir, &[]).await
    }

    /// Starts `python -m torchyard.worker` with the extra environment `vars` (never forked:
    /// the fork server's children inherit its environment), as [`WorkerProcess::start`] does
    /// otherwise.
    pub(super) async fn spawn_with(
        env: &PythonEnv,
        deps_dir: Option<&Path>,
        label: &str,
        socket_path: &Path,
        work_dir: &Path,
        vars: &[(String, String)],
    ) -> std::io::Result<Self> {
        if ABORT.is_cancelled() {
            return Err(aborted());
        }
        let module = "torchyard.worker";
        let (child, stream) =
            spawn_connected(env, deps_dir, module, label, socket_path, work_dir, vars).await?;
        Ok(Self::connected(Process::Spawned(child), stream))
    }

    /// A worker its model's template forked, connected on `stream`.
    pub(super) fn from_template(process: ForkedProcess, stream: UnixStream) -> Self {
        Self::connected(Process::Forked(process, StartMode::Template), stream)
    }

    fn connected(process: Process, stream: UnixStream) -> Self {
        let (input, out) = stream.into_split();
        Self {
            process,
            frames: FrameReader::new(DescriptorReader::new(input)),
            out,
            regions: RequestRegions::default(),
            ranks: None,
            threads: None,
        }
    }

    /// Makes this process rank 0 of a torchrun worker: every message goes to `ranks` too, and
    /// a rank that dies breaks the whole worker.
    pub(super) fn lead(mut self, ranks: OtherRanks) -> Self {
        self.ranks = Some(ranks);
        self
    }

    /// The process, its frames and its socket's write half.
    pub(super) fn into_parts(self) -> (Process, FrameReader<DescriptorReader>, OwnedWriteHalf) {
        (self.process, self.frames, self.out)
    }

    /// Whether the process was forked or started fresh.
    pub fn start_mode(&self) -> StartMode {
        match self.process {
            Process::Spawned(_) => StartMode::Spawn,
            Process::Forked(_, mode) => mode,
        }
    }

    /// Sends one message and waits for the reply; fails at once after [`abort_all`].
    pub async fn call(
        &mut self,
        header: &impl serde::Serialize,
        blobs: &[&bytes::Bytes],
    ) -> std::io::Result<Frame> {
        self.send(header, blobs, 0).await?;
        self.receive().await
    }

    /// Sends one message without waiting for a reply, blobs of at least `share_above` bytes
    /// (0: none) in a shared-memory region while one is free (other ranks of a torchrun worker
    /// get them in the frame), and tells the worker which of its regions the server is done
    /// with; fails at once after [`abort_all`]. The region stays busy while the lease returned
    /// lives: until the reply to this message has come.
    pub async fn send(
        &mut self,
        header: &impl serde::Serialize,
        blobs: &[&bytes::Bytes],
        share_above: usize,
    ) -> std::io::Result<Option<RegionLease>> {
        let freed = self.frames.take_freed();
        let sent = async {
            let (out, regions) = (&mut self.out, &mut self.regions);
            let lease =
                write_shared_frame(out, regions, header, blobs, share_above, &freed).await?;
            if let Some(ranks) = &mut self.ranks {
                ranks.send(header, blobs).await?;
            }
            Ok(lease)
        };
        tokio::select! {
            sent = sent => sent,
            () = ABORT.cancelled() => Err(aborted()),
        }
    }

    /// Whether request blobs of `len` bytes in all would go into a shared-memory region now.
    pub fn can_share(&self, len: usize) -> bool {
        self.regions.can_take(len)
    }

    /// Reads the next frame from the worker: a reply, or a streaming handler's chunk (rank 0's,
    /// for a torchrun worker, which fails when another rank dies). Cancel safe: a frame partly
    /// read when the future is dropped is read on by the next call.
    pub async fn receive(&mut self) -> std::io::Result<Frame> {
        let ranks = self.ranks.as_ref();
        tokio::select! {
            frame = self.frames.next() => frame,
            () = ABORT.cancelled() => Err(aborted()),
            reason = OtherRanks::broken_in(ranks) => Err(std::io::Error::other(reason)),
        }
    }

    /// With a message unanswered (`busy`), [`WorkerProcess::receive`]; idle, an error once the
    /// worker broke (its socket closed because its process died, it spoke out of turn, or, for a
    /// torchrun worker, any of its ranks did), so that it is restarted before it gets work and
    /// describe never shows a dead worker `READY`. Cancel safe.
    pub async fn receive_or_break(&mut self, busy: bool) -> std::io::Result<Frame> {
        if busy {
            return self.receive().await;
        }
        let idle_frame = |frame: std::io::Result<Frame>| match frame {
            Ok(_) => "the worker sent a frame while idle".to_string(),
            Err(e) => format!("the worker is gone: {e}"),
        };
        let reason = match &self.ranks {
            None => idle_frame(self.frames.next().await),
            Some(ranks) => tokio::select! {
                frame = self.frames.next() => format!("rank 0: {}", idle_frame(frame)),
                reason = ranks.broken() => reason,
            },
        };
        Err(std::io::Error::other(reason))
    }

    /// Closes the socket, lets the worker exit for a moment, then kills it (every rank of a
    /// torchrun worker).
    pub async fn stop(self) {
        let Self {
            mut process,
            frames,
            out,
            ranks,
            ..
        } = self;
        drop((frames, out));
        let first = async {
            if tokio::time::timeout(Duration::from_secs(5), process.exited())
                .await
                .is_err()
            {
                process.kill().await;
            }
        };
        match ranks {
            Some(ranks) => drop(tokio::join!(first, ranks.stop())),
            None => first.await,
        }
    }

    /// Kills the process at once (every rank of a torchrun worker).
    pub async fn kill(mut self) {
        match self.ranks.take() {
            Some(ranks) => drop(tokio::join!(self.process.kill(), ranks.kill())),
            None => self.process.kill().await,
        }
    }
}

/// Forwards the output of a process just forked to the server log under `label` and waits
/// for it to connect to `listener`, bound at `socket_path` before the fork.
pub(super) async fn connect_forked(
    forked: ForkedWorker,
    label: &str,
    listener: UnixListener,
    socket_path: &Path,
) -> std::io::Result<(ForkedProcess, UnixStream)> {
    forward_logs(Some(forked.stdout), label, Stream::Stdout);
    forward_logs(Some(forked.stderr), label, Stream::Stderr);
    let process = forked.process;
    let stream = accept(listener, socket_path, process.exited()).await?;
    Ok((process, stream))
}

/// Binds a fresh listener at `path`.
pub(super) fn bind(path: &Path) -> std::io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path)
}

/// Starts `python -m {module} --socket {socket_path}` in `work_dir` (packages of `deps_dir`
/// first on its import path, the extra environment `vars`, its output in the server log under
/// `label`), dying with the server, and waits for it to connect.
pub(super) async fn spawn_connected(
    env: &PythonEnv,
    deps_dir: Option<&Path>,
    module: &str,
    label: &str,
    socket_path: &Path,
    work_dir: &Path,
    vars: &[(String, String)],
) -> std::io::Result<(Child, UnixStream)> {
    let listener = bind(socket_path)?;
    let mut import_path = env.import_path.clone().into_os_string();
    if let Some(deps) = deps_dir {
        import_path = [deps.as_os_str(), &import_path].join(std::ffi::OsStr::new(":"));
    }
    if let Some(existing) = std::env::var_os("PYTHONPATH") {
        import_path.push(":");
        import_path.push(existing);
    }
    let mut command = Command::new(&env.interpreter);
    command
        .args(["-m", module, "--socket"])
        .arg(socket_path)
        .env("PYTHONPATH", import_path)
        .env("PYTHONUNBUFFERED", "1")
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .current_dir(work_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = spawn_dying_with_server(command).await?;
    forward_logs(child.stdout.take(), label, Stream::Stdout);
    forward_logs(child.stderr.take(), label, Stream::Stderr);
    let stream = accept(listener, socket_path, exit_of(&mut child)).await?;
    Ok((child, stream))
}

/// Waits until `child` has exited; says how it ended.
pub(super) async fn exit_of(child: &mut Child) -> String {
    match child.wait().await {
        Ok(status) => status.to_string(),
        Err(e) => e.to_string(),
    }
}

/// Accepts the one connection of a process just started, unless it exits first (`exited`
/// says how) or takes longer than [`CONNECT_TIMEOUT`]; removes the socket file either way.
async fn accept(
    listener: UnixListener,
    socket_path: &Path,
    exited: impl Future<Output = String>,
) -> std::io::Result<UnixStream> {
    let accepted = tokio::select! {
        accepted = tokio::time::timeout(CONNECT_TIMEOUT, listener.accept()) => accepted,
        how = exited => Ok(Err(std::io::Error::other(format!("the process exited at start: {how}")))),
    };
    let _ = std::fs::remove_file(socket_path);
    match accepted {
        Ok(Ok((stream, _))) => {
            widen_buffers(&stream);
            Ok(stream)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the process did not connect in time",
        )),
    }
}

/// Bytes either end of a worker's socket may have queued: a megabyte body then crosses in one
/// write and one read instead of five of the default 208 KB each, with a wake-up between them.
const SOCKET_BUFFER: usize = 4 << 20;

/// Asks for [`SOCKET_BUFFER`] bytes of send and receive buffer on `stream` (the kernel caps it
/// at `net.core.wmem_max`/`rmem_max`); a refusal only costs speed.
fn widen_buffers(stream: &UnixStream) {
    let socket = socket2::SockRef::from(stream);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
}

/// Cancelled when the server gives up waiting for its workers.
pub(super) static ABORT: LazyLock<CancellationToken> = LazyLock::new(CancellationToken::new);

/// Fails every worker call in progress and refuses to start workers: the server is exiting
/// and will not wait any longer. Each worker's supervisor then kills its process.
pub fn abort_all() {
    ABORT.cancel();
}

fn aborted() -> std::io::Error {
    std::io::Error::other("the server is shutting down")
}

/// What the spawner thread is asked: a command to start, and where the child goes.
type SpawnRequest = (Command, oneshot::Sender<std::io::Result<Child>>);

/// Starts `command` so that the process is killed when the server dies, however it dies.
///
/// The parent-death signal fires when the *thread* that forked the child ends, and tokio's
/// threads may come and go; so every worker is forked by one thread that lives as long as
/// the server.
async fn spawn_dying_with_server(mut command: Command) -> std::io::Result<Child> {
    let server = std::process::id() as libc::pid_t;
    // SAFETY: the closure only makes async-signal-safe system calls and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The server died before the signal was armed: the child has a new parent already.
            if libc::getppid() != server {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    static SPAWNER: Mutex<Option<std::sync::mpsc::Sender<SpawnRequest>>> = Mutex::new(None);
    let (reply, child) = oneshot::channel();
    {
        let mut spawner = SPAWNER.lock().unwrap_or_else(PoisonError::into_inner);
        let sender = match spawner.as_ref() {
            Some(sender) => sender,
            None => spawner.insert(start_spawner()?),
        };
        sender
            .send((command, reply))
            .map_err(|_| std::io::Error::other("the worker spawner thread is gone"))?;
    }
    child
        .await
        .map_err(|_| std::io::Error::other("the worker spawner thread is gone"))?
}

/// Starts the thread that spawns every worker, in the current tokio runtime.
fn start_spawner() -> std::io::Result<std::sync::mpsc::Sender<SpawnRequest>> {
    let (sender, requests) = std::sync::mpsc::channel::<SpawnRequest>();
    let runtime = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("worker-spawner".into())
        .spawn(move || {
            let _runtime = runtime.enter();
            for (mut command, reply) in requests {
                let _ = reply.send(command.spawn());
            }
        })?;
    Ok(sender)
}

/// One of a worker's output streams.
#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// Copies a worker's output lines into TorchServe's `MODEL_LOG`, as logged by the thread
/// `{label}-stdout` or `{label}-stderr`: standard output at INFO, standard error at WARN.
fn forward_logs(
    pipe: Option<impl AsyncRead + Unpin + Send + 'static>,
    label: &str,
    stream: Stream,
) {
    let Some(pipe) = pipe else { return };
    let thread = match stream {
        Stream::Stdout => format!("{label}-stdout"),
        Stream::Stderr => format!("{label}-stderr"),
    };
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let thread = thread.as_str();
            match stream {
                Stream::Stdout => tracing::info!(target: "MODEL_LOG", thread, "{line}"),
                Stream::Stderr => tracing::warn!(target: "MODEL_LOG", thread, "{line}"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn workers_outlive_the_thread_that_asked_for_them() {
        let runtime = tokio::runtime::Handle::current();
        let asking = std::thread::spawn(move || {
            let mut command = Command::new("sleep");
            command.arg("30").kill_on_drop(true);
            runtime.block_on(spawn_dying_with_server(command))
        });
        let mut child = asking.join().unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            child.try_wait().unwrap().is_none(),
            "the worker died with the thread that asked for it"
        );
    }
}
