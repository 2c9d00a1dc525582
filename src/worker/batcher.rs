//! Dynamic batching as TorchServe does it: a batch leaves when it is full or when its oldest
//! request has waited `max_batch_delay` since it was queued.

use std::time::Duration;

use async_channel::Receiver;
use tokio::time::{timeout_at, Instant};

use crate::job::Job;

/// Builds a batch starting with `first`, the oldest queued job: takes up to `max` jobs, waiting
/// for more until `first` has been queued for `delay`. A batch of one never waits, and a delay
/// of zero takes only what is queued already.
pub async fn collect(queue: &Receiver<Job>, first: Job, max: usize, delay: Duration) -> Vec<Job> {
    let deadline = Instant::from_std(first.enqueued) + delay;
    let mut batch = Vec::with_capacity(max);
    batch.push(first);
    while batch.len() < max {
        match queue.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
    // A deadline already passed (always so with delay 0) must not reach the timer: tokio
    // fires even a past deadline only on its next millisecond tick.
    while batch.len() < max && Instant::now() < deadline {
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

    /// A job queued now, on tokio's (possibly paused) clock.
    fn job() -> Job {
        let (reply, _) = tokio::sync::oneshot::channel();
        Job {
            request: InferenceRequest::default(),
            reply,
            enqueued: Instant::now().into_std(),
            version_named: false,
            segment: false,
        }
    }

    /// Sends a job after each of `gaps` in turn.
    fn send_after(tx: async_channel::Sender<Job>, gaps: &[u64]) -> tokio::task::JoinHandle<()> {
        let gaps = gaps.to_vec();
        tokio::spawn(async move {
            for gap in gaps {
                tokio::time::sleep(Duration::from_millis(gap)).await;
                tx.send(job()).await.unwrap();
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn full_batch_leaves_at_once() {
        let (tx, rx) = async_channel::unbounded();
        for _ in 0..5 {
            tx.try_send(job()).unwrap();
        }
        let first = rx.recv().await.unwrap();
        let started = Instant::now();
        let batch = collect(&rx, first, 4, Duration::from_secs(60)).await;
        assert_eq!(batch.len(), 4);
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(rx.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn batch_of_one_never_waits() {
        let (tx, rx) = async_channel::unbounded();
        let sender = send_after(tx, &[1]);
        let started = Instant::now();
        let batch = collect(&rx, job(), 1, Duration::from_secs(60)).await;
        assert_eq!(batch.len(), 1);
        assert_eq!(started.elapsed(), Duration::ZERO);
        sender.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn batch_fills_with_requests_arriving_within_the_delay() {
        let (tx, rx) = async_channel::unbounded();
        let sender = send_after(tx, &[10, 10, 10]);
        let started = Instant::now();
        let batch = collect(&rx, job(), 4, Duration::from_secs(3)).await;
        assert_eq!(batch.len(), 4);
        assert_eq!(started.elapsed(), Duration::from_millis(30));
        sender.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn partial_batch_leaves_when_its_oldest_request_has_waited_the_delay() {
        let (tx, rx) = async_channel::unbounded();
        let first = job();
        // The worker was busy: the first request has been queued 40 ms already.
        tokio::time::sleep(Duration::from_millis(40)).await;
        let sender = send_after(tx, &[10, 200]);
        let batch = collect(&rx, first, 8, Duration::from_millis(100)).await;
        assert_eq!(batch.len(), 2);
        assert_eq!(
            Instant::now() - Instant::from_std(batch[0].enqueued),
            Duration::from_millis(100)
        );
        sender.await.unwrap();
        assert_eq!(rx.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn request_older_than_the_delay_takes_what_is_queued() {
        let (tx, rx) = async_channel::unbounded();
        let first = job();
        tokio::time::sleep(Duration::from_millis(500)).await;
        tx.try_send(job()).unwrap();
        let sender = send_after(tx, &[1]);
        let started = Instant::now();
        let batch = collect(&rx, first, 8, Duration::from_millis(100)).await;
        assert_eq!(batch.len(), 2);
        assert_eq!(started.elapsed(), Duration::ZERO);
        sender.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn zero_delay_takes_what_is_queued() {
        let (tx, rx) = async_channel::unbounded();
        tx.try_send(job()).unwrap();
        tx.try_send(job()).unwrap();
        let sender = send_after(tx, &[1]);
        let started = Instant::now();
        let batch = collect(&rx, job(), 8, Duration::ZERO).await;
        assert_eq!(batch.len(), 3);
        assert_eq!(started.elapsed(), Duration::ZERO);
        sender.await.unwrap();
        assert_eq!(rx.len(), 1);
    }
}
