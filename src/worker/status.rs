//! The observable state of one worker, shared between its task and the management API.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

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

/// A worker's id, GPU, start time, process id and state.
#[derive(Debug)]
pub struct WorkerStatus {
    pub id: usize,
    /// The GPU the worker runs on, for all its restarts; `None`: the CPU.
    pub gpu_id: Option<u32>,
    pub started: DateTime<Utc>,
    pid: AtomicU32,
    state: watch::Sender<WorkerState>,
    failure: Mutex<Option<(u16, String)>>,
}

impl WorkerStatus {
    pub fn new(id: usize, gpu_id: Option<u32>) -> Self {
        Self {
            id,
            gpu_id,
            started: Utc::now(),
            pid: AtomicU32::new(0),
            state: watch::Sender::new(WorkerState::Starting),
            failure: Mutex::new(None),
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

    pub fn set_pid(&self, pid: u32) {
        self.pid.store(pid, Ordering::Relaxed);
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
