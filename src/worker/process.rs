//! One Python worker process and its socket.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::{Child, Command};

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
        let mut child = Command::new(&env.interpreter)
            .args(["-m", "torchyard.worker", "--socket"])
            .arg(socket_path)
            .env("PYTHONPATH", import_path)
            .env("PYTHONUNBUFFERED", "1")
            .current_dir(work_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
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

    /// Sends one message and waits for the reply.
    pub async fn call(
        &mut self,
        header: &impl serde::Serialize,
        blobs: &[&bytes::Bytes],
    ) -> std::io::Result<Frame> {
        write_frame(&mut self.stream, header, blobs).await?;
        read_frame(&mut self.stream).await
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
