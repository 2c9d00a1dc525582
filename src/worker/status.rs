//! The observable state of one worker, shared between its task and the management API.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use super::pinning;

/// Life-cycle state of a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    Starting,
    Ready,
    Failed,
    Stopped,
}

impl WorkerState {
    /// The name TorchServe's describe API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "STARTING",
            Self::Ready => "READY",
            Self::Failed => "FAILED",
            Self::Stopped => "STOPPED",
        }
    }
}

/// How a worker's process was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartMode {
    /// Forked from the fork server, which had imported torch already.
    Fork,
    /// A fresh interpreter.
    Spawn,
    /// Forked from its model's template, whose handler was initialised already: it shares the
    /// weights' memory with its siblings.
    Template,
}

impl StartMode {
    /// The name describe shows as `startMode`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fork => "fork",
            Self::Spawn => "spawn",
            Self::Template => "template",
        }
    }
}

/// A worker's id, GPU, start time, process id, how its process started, and state.
#[derive(Debug)]
pub struct WorkerStatus {
    pub id: usize,
    /// The GPU the worker runs on, for all its restarts; `None`: the CPU. A torchrun
    /// worker's first GPU.
    pub gpu_id: Option<u32>,
    /// Every GPU of the worker: one, a torchrun worker's one per rank, or none.
    pub gpu_ids: Vec<u32>,
    pub started: DateTime<Utc>,
    pid: AtomicU32,
    start_mode: Mutex<Option<StartMode>>,
    state: watch::Sender<WorkerState>,
    failure: Mutex<Option<(u16, String)>>,
    /// The cores its processes are pinned to (`cpu_launcher_enable`); empty: not pinned.
    cores: Mutex<Vec<usize>>,
}

impl WorkerStatus {
    /// Worker `id` on the GPUs `gpu_ids` (none: the CPU).
    pub fn new(id: usize, gpu_ids: Vec<u32>) -> Self {
        Self {
            id,
            gpu_id: gpu_ids.first().copied(),
            gpu_ids,
            started: Utc::now(),
            pid: AtomicU32::new(0),
            start_mode: Mutex::new(None),
            state: watch::Sender::new(WorkerState::Starting),
            failure: Mutex::new(None),
            cores: Mutex::new(Vec::new()),
        }
    }

    pub fn state(&self) -> WorkerState {
        *self.state.borrow()
    }

    pub fn set_state(&self, state: WorkerState) {
        self.state.send_replace(state);
    }

    /// Process id of the current worker process; 0 while none runs.
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::Relaxed)
    }

    /// Records the current process (0: none), and pins it to the worker's cores if it has
    /// some.
    pub fn set_pid(&self, pid: u32) {
        self.pid.store(pid, Ordering::Relaxed);
        if pid != 0 {
            self.pin(&self.cores.lock().expect("cores lock"));
        }
    }

    /// The cores the worker is pinned to; empty when it is not.
    pub fn cores(&self) -> Vec<usize> {
        self.cores.lock().expect("cores lock").clone()
    }

    /// Pins the worker to `cores`: its running process now, every thread of it, and each
    /// process it restarts with.
    pub fn set_cores(&self, cores: Vec<usize>) {
        let mut pinned = self.cores.lock().expect("cores lock");
        if *pinned != cores {
            *pinned = cores;
            self.pin(&pinned);
        }
    }

    /// Pins the current process to `cores`, under the cores lock: the last pin of a process
    /// is always its latest cores, whichever of `set_pid` and `set_cores` comes last.
    fn pin(&self, cores: &[usize]) {
        let pid = self.pid();
        if pid == 0 || cores.is_empty() {
            return;
        }
        match pinning::pin(pid, cores) {
            Ok(()) => tracing::debug!(
                "worker {} (pid {pid}) pinned to cores {}",
                self.id,
                pinning::cpu_list(cores)
            ),
            Err(e) => tracing::warn!(
                "cannot pin worker {} (pid {pid}) to cores {}: {e}",
                self.id,
                pinning::cpu_list(cores)
            ),
        }
    }

    /// How the current (or last) process started; `None` before the first one connected.
    pub fn start_mode(&self) -> Option<StartMode> {
        *self.start_mode.lock().expect("start mode lock")
    }

    pub fn set_start_mode(&self, mode: StartMode) {
        *self.start_mode.lock().expect("start mode lock") = Some(mode);
    }

    /// Records why the last load failed: the worker's status (507 for a `MemoryError`, else
    /// 500) and its text. Set before the state turns `Failed`.
    pub fn set_failure(&self, status: u16, message: String) {
        *self.failure.lock().expect("failure lock") = Some((status, message));
    }

    /// Why the last load failed, if one did.
    pub fn failure(&self) -> Option<(u16, String)> {
        self.failure.lock().expect("failure lock").clone()
    }

    /// Waits until the worker has finished a load attempt (ready, failed or stopped).
    pub async fn settled(&self) -> WorkerState {
        let mut rx = self.state.subscribe();
        let state = rx
            .wait_for(|s| *s != WorkerState::Starting)
            .await
            .map(|s| *s);
        state.unwrap_or(WorkerState::Stopped)
    }
}
