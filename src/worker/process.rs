//! One Python worker process and its socket.

use std::path::Path;
use std::process::Stdio;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::protocol::{read_frame, write_frame, Frame};
use crate::python_env::PythonEnv;

/// How long a new process may take to connect to its socket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(120);

/// A running worker process connected to the server.
pub struct WorkerProcess {
    child: Child,
    stream: UnixStream,
}

impl WorkerProcess {
    /// Starts `python -m torchyard.worker` and waits for it to connect to `socket_path`.
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
        let _ = std::fs::remove_file(socket_path);
        let listener = UnixListener::bind(socket_path)?;
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
            .args(["-m", "torchyard.worker", "--socket"])
            .arg(socket_path)
            .env("PYTHONPATH", import_path)
            .env("PYTHONUNBUFFERED", "1")
            .current_dir(work_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = spawn_dying_with_server(command).await?;
        forward_logs(child.stdout.take(), label.to_string());
        forward_logs(child.stderr.take(), label.to_string());
        let accepted = tokio::select! {
            accepted = tokio::time::timeout(CONNECT_TIMEOUT, listener.accept()) => accepted,
            status = child.wait() => {
                let _ = std::fs::remove_file(socket_path);
                return Err(std::io::Error::other(format!("worker exited at start: {}", status?)));
            }
        };
        let _ = std::fs::remove_file(socket_path);
        match accepted {
            Ok(Ok((stream, _))) => Ok(Self { child, stream }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "worker did not connect in time",
            )),
        }
    }

    /// Sends one message and waits for the reply; fails at once after [`abort_all`].
    pub async fn call(
        &mut self,
        header: &impl serde::Serialize,
        blobs: &[&bytes::Bytes],
    ) -> std::io::Result<Frame> {
        let call = async {
            write_frame(&mut self.stream, header, blobs).await?;
            read_frame(&mut self.stream).await
        };
        tokio::select! {
            reply = call => reply,
            () = ABORT.cancelled() => Err(aborted()),
        }
    }

    /// Closes the socket, lets the worker exit for a moment, then kills it.
    pub async fn stop(self) {
        let Self { mut child, stream } = self;
        drop(stream);
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_err()
        {
            kill(&mut child).await;
        }
    }

    /// Kills the process at once.
    pub async fn kill(mut self) {
        kill(&mut self.child).await;
    }
}

/// Cancelled when the server gives up waiting for its workers.
static ABORT: LazyLock<CancellationToken> = LazyLock::new(CancellationToken::new);

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

async fn kill(child: &mut Child) {
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// Copies a worker's output lines into the server log.
fn forward_logs(pipe: Option<impl AsyncRead + Unpin + Send + 'static>, label: String) {
    let Some(pipe) = pipe else { return };
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::info!(target: "torchyard::worker_log", "[{label}] {line}");
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
