//! Dynamic batching: gather up to `max` queued jobs, waiting at most `delay` for stragglers.

use std::time::Duration;

use async_channel::Receiver;
use tokio::time::{timeout_at, Instant};

use crate::job::Job;

/// Builds a batch starting with `first`: takes what is queued already, then, if that made a
/// batch of several requests (so requests are arriving together), waits up to `delay` for more
/// while the batch is not full. A lone request never waits: there is nothing to wait for, and
/// at low load waiting would only add `delay` to every request.
pub async fn collect(queue: &Receiver<Job>, first: Job, max: usize, delay: Duration) -> Vec<Job> {
    let mut batch = Vec::with_capacity(max);
    batch.push(first);
    while batch.len() < max {
        match queue.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
    if batch.len() == 1 {
        return batch;
    }
    let deadline = Instant::now() + delay;
    while batch.len() < max {
        match timeout_at(deadline, queue.recv()).await {
            Ok(Ok(job)) => batch.push(job),
            _ => break,
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::InferenceRequest;

    fn job() -> Job {
        let (reply, _) = tokio::sync::oneshot::channel();
        Job {
            request: InferenceRequest::default(),
            reply,
            enqueued: std::time::Instant::now(),
            version_named: false,
        }
    }

    #[tokio::test]
    async fn full_batch_does_not_wait() {
        let (tx, rx) = async_channel::unbounded();
        for _ in 0..5 {
            tx.try_send(job()).unwrap();
        }
        let first = rx.recv().await.unwrap();
        let started = Instant::now();
        let batch = collect(&rx, first, 4, Duration::from_secs(60)).await;
        assert_eq!(batch.len(), 4);
        assert!(started.elapsed() < Duration::from_secs(30));
        assert_eq!(rx.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn lone_request_does_not_wait() {
        let (tx, rx) = async_channel::unbounded();
        let started = Instant::now();
        let batch = collect(&rx, job(), 8, Duration::from_secs(60)).await;
        assert_eq!(batch.len(), 1);
        assert_eq!(started.elapsed(), Duration::ZERO);
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn waits_for_stragglers_until_the_delay() {
        let (tx, rx) = async_channel::unbounded();
        tx.try_send(job()).unwrap();
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            tx.send(job()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
            tx.send(job()).await.unwrap();
        });
        let batch = collect(&rx, job(), 8, Duration::from_millis(100)).await;
        assert_eq!(batch.len(), 3);
        sender.await.unwrap();
    }
}
