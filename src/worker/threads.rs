//! Torch threads per worker: each worker's intra-op and inter-op thread counts, so that a
//! model's workers together fit the cores instead of each running torch's default of one
//! thread per core. A configured count is used as is; otherwise the cores are shared among
//! the workers the pool has now, and a worker takes a new count with its next batch when the
//! pool grows or shrinks (docs/autoscaling.md, "Threads per worker").

use std::sync::atomic::{AtomicUsize, Ordering};

/// How many torch threads each worker of one model runs.
#[derive(Debug)]
pub struct TorchThreads {
    /// Set by configuration (`threadsPerWorker`, `threads_per_worker`, `OMP_NUM_THREADS`).
    configured: Option<usize>,
    cores: usize,
    /// The count for the pool's current size.
    current: AtomicUsize,
}

impl TorchThreads {
    /// Threads for a pool on `cores` cores: `configured`, or the cores shared out.
    pub fn new(configured: Option<usize>, cores: usize) -> Self {
        let threads = Self {
            configured,
            cores: cores.max(1),
            current: AtomicUsize::new(0),
        };
        threads.resize(1);
        threads
    }

    /// Shares the cores among `workers` workers (at least one thread each), unless configured.
    pub fn resize(&self, workers: usize) {
        let threads = self
            .configured
            .unwrap_or_else(|| (self.cores / workers.max(1)).max(1));
        self.current.store(threads, Ordering::Relaxed);
    }

    /// Threads each worker runs now.
    pub fn per_worker(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    /// Whether the count is configured rather than derived from the pool's size.
    pub fn configured(&self) -> bool {
        self.configured.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::TorchThreads;

    #[test]
    fn workers_share_the_cores_unless_configured() {
        let auto = TorchThreads::new(None, 8);
        assert_eq!(auto.per_worker(), 8);
        auto.resize(3);
        assert_eq!(auto.per_worker(), 2);
        auto.resize(16);
        assert_eq!(auto.per_worker(), 1);
        auto.resize(0);
        assert_eq!(auto.per_worker(), 8);
        let set = TorchThreads::new(Some(3), 8);
        set.resize(4);
        assert_eq!((set.per_worker(), set.configured()), (3, true));
    }
}
