//! Python worker processes: the wire protocol, the process itself (forked by the fork server or
//! started fresh), and the task that supervises one worker and feeds it batches.

mod async_worker;
mod batcher;
mod continuous;
mod dispatch;
mod fd_passing;
mod fork_server;
mod forked;
mod pinning;
mod process;
pub mod protocol;
mod rank_group;
mod shared_memory;
mod status;
mod supervisor;
mod template;
mod threads;

pub use dispatch::Dispatch;
pub use fork_server::ForkServer;
pub use pinning::{cpu_list, CorePinning};
pub use process::abort_all;
pub use rank_group::Parallelism;
pub use status::{StartMode, WorkerState, WorkerStatus};
pub use supervisor::{spawn_worker, JobTickets, WorkerHandle, WorkerSpec};
pub use threads::TorchThreads;
