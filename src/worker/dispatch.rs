//! How a model's workers share its queue fairly: which of them wait idle for work (a busy
//! worker sends a next batch ahead only while none does), which of them forms the next batch,
//! and the requests that a dying worker never started, retried by the others before anything
//! newer.

use async_channel::{Receiver, RecvError, Sender};
use tokio::sync::{watch, Mutex, MutexGuard};

use crate::error::ApiError;
use crate::job::Job;

/// The workers' shared dispatch state; one per model version.
pub struct Dispatch {
    /// How many workers wait for work with no batch in flight.
    idle: watch::Sender<usize>,
    retry: Sender<Job>,
    /// Requests to run again: a worker took them, then died before it started them.
    pub retried: Receiver<Job>,
    /// Held by the worker that waits for the queue's next request and then for its batch to
    /// fill, as TorchServe's model lock: requests that come meanwhile join that batch instead
    /// of going to another idle worker.
    forming: Mutex<()>,
}

impl Default for Dispatch {
    fn default() -> Self {
        let (retry, retried) = async_channel::unbounded();
        Self {
            idle: watch::Sender::new(0),
            retry,
            retried,
            forming: Mutex::new(()),
        }
    }
}

impl Dispatch {
    /// The next request of `queue`, taken once this worker is the one that forms a batch; the
    /// guard is held until the batch is formed.
    pub async fn next_to_form(
        &self,
        queue: &Receiver<Job>,
    ) -> (MutexGuard<'_, ()>, Result<Job, RecvError>) {
        let forming = self.forming.lock().await;
        (forming, queue.recv().await)
    }

    /// How many workers wait idle now.
    pub fn idle_workers(&self) -> usize {
        *self.idle.borrow()
    }

    /// A receiver that sees the count of idle workers change.
    pub fn watch_idle(&self) -> watch::Receiver<usize> {
        self.idle.subscribe()
    }

    /// A worker's own entry in the idle count, off until [`IdleMark::set`].
    pub fn idle_mark(&self) -> IdleMark<'_> {
        IdleMark {
            dispatch: self,
            idle: false,
        }
    }

    /// Takes back the jobs of a batch that a dying worker of `model` never started: the next
    /// free worker runs them, ahead of the model's queue. The requests of sequences pinned to
    /// that worker (`pinned`) fail instead: their sequence's state died with it.
    pub fn retry_unstarted(&self, jobs: Vec<Job>, pinned: bool, model: &str) {
        for job in jobs {
            if pinned {
                job.finish(Err(ApiError::internal(format!(
                    "Worker for model {model} stopped before it ran the request: the state of \
                     its sequence was lost with the worker"
                ))));
            } else {
                // Unbounded, and this struct holds the receiver: sending cannot fail.
                let _ = self.retry.try_send(job);
            }
        }
    }
}

/// Counts one worker as idle while set; dropping it takes the worker off the count.
pub struct IdleMark<'a> {
    dispatch: &'a Dispatch,
    idle: bool,
}

impl IdleMark<'_> {
    /// Says whether the worker now waits for work with nothing in flight.
    pub fn set(&mut self, idle: bool) {
        if idle != self.idle {
            self.idle = idle;
            self.dispatch
                .idle
                .send_modify(|n| if idle { *n += 1 } else { *n -= 1 });
        }
    }
}

impl Drop for IdleMark<'_> {
    fn drop(&mut self) {
        self.set(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_count_idle_workers_until_dropped() {
        let dispatch = Dispatch::default();
        let mut a = dispatch.idle_mark();
        let mut b = dispatch.idle_mark();
        a.set(true);
        a.set(true);
        b.set(true);
        assert_eq!(dispatch.idle_workers(), 2);
        b.set(false);
        assert_eq!(dispatch.idle_workers(), 1);
        drop(a);
        assert_eq!(dispatch.idle_workers(), 0);
    }
}
