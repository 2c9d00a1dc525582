//! Python worker processes: the wire protocol, the process itself (forked by the fork server or
//! started fresh), and the task that supervises one worker and feeds it batches.

mod batcher;
mod fd_passing;
mod fork_server;
mod forked;
mod process;
pub mod protocol;
mod status;
mod supervisor;
mod template;

pub use fork_server::ForkServer;
pub use process::abort_all;
pub use status::{StartMode, WorkerState, WorkerStatus};
pub use supervisor::{fail_queued, spawn_worker, JobTickets, WorkerHandle, WorkerSpec};
