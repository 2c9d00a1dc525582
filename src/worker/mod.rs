//! Python worker processes: the wire protocol, the process itself, and the task that supervises
//! one worker and feeds it batches.

mod batcher;
mod process;
pub mod protocol;
mod status;
mod supervisor;

pub use process::abort_all;
pub use status::{WorkerState, WorkerStatus};
pub use supervisor::{fail_queued, spawn_worker, WorkerHandle, WorkerSpec};
