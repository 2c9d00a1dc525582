//! Continuous batching (`continuousBatching: true` in model-config.yaml), as TorchServe's
//! `ContinuousBatching`: the worker runs one step at a time over a running batch. A request
//! whose step answer carries `ts_stream_next: true` stays in the batch and is sent again with
//! the next step, without its parameters (the handler keeps its state by request id); each
//! step's answer streams out to its client at once. New requests join at every step while the
//! batch has room, and a request whose client went away leaves it.

use std::collections::VecDeque;
use std::time::Instant;

use async_channel::Receiver;
use tokio_util::sync::CancellationToken;

use super::batcher;
use super::process::WorkerProcess;
use super::supervisor::{self, Answer, Batched, Exit, Flight, WorkerSpec};
use crate::job::{InferenceResponse, Job};

/// The response header by which a step's answer says that its request goes on.
pub const STREAM_NEXT: &str = "ts_stream_next";

/// Whether a model's workers batch continuously (`continuousBatching: true`; never a fused
/// workflow segment).
pub fn enabled(spec: &WorkerSpec) -> bool {
    spec.segment.is_none()
        && spec
            .model_yaml_config
            .get("continuousBatching")
            .and_then(serde_json::Value::as_bool)
            == Some(true)
}

/// A request of the running batch: its job and where its answer goes.
struct Running {
    job: Batched,
    answer: Answer,
}

/// Runs steps until the worker is cancelled (and its running batch has finished) or breaks.
/// The running batch holds up to `batchSize` requests; with stateful sequences twice that,
/// as TorchServe's `SequenceContinuousBatching` does, so that a sequence's next request (a
/// cancel, say) can join while its stream runs. Requests of the sequences pinned to this
/// worker join first.
pub(super) async fn serve(
    spec: &WorkerSpec,
    process: &mut WorkerProcess,
    cancel: &CancellationToken,
    pinned: &Receiver<Job>,
) -> Exit {
    let sequences =
        spec.model_yaml_config.get("sequenceBatching") == Some(&serde_json::Value::Bool(true));
    let capacity = spec.batch_size.max(1) * if sequences { 2 } else { 1 };
    let mut running: Vec<Running> = Vec::new();
    loop {
        running.retain(|r| !r.answer.is_gone());
        let mut fresh = if running.is_empty() {
            // With job tickets, an idle worker offers one while it waits (and withdraws it
            // when it stops).
            if let Some(tickets) = &spec.tickets {
                tickets.offer();
            }
            let withdraw = || {
                if let Some(tickets) = &spec.tickets {
                    tickets.take();
                }
                Exit::Cancelled
            };
            let (first, source) = tokio::select! {
                biased;
                () = cancel.cancelled() => return withdraw(),
                Ok(job) = pinned.recv() => (job, pinned),
                job = spec.queue.recv() => match job {
                    Ok(job) => (job, &spec.queue),
                    Err(_) => return withdraw(),
                },
            };
            batcher::collect(source, first, capacity, spec.max_batch_delay).await
        } else if cancel.is_cancelled() {
            Vec::new()
        } else {
            let room = capacity.saturating_sub(running.len());
            std::iter::from_fn(|| pinned.try_recv().or_else(|_| spec.queue.try_recv()).ok())
                .take(room)
                .collect()
        };
        fresh.retain(|job| !job.reply.is_closed());
        if let Some(limit) = spec.client_timeout {
            supervisor::drop_expired(spec, &mut fresh, limit);
        }
        if running.is_empty() && fresh.is_empty() {
            continue;
        }
        let joined = running.len();
        let (mut batch, mut answers): (Vec<_>, Vec<_>) =
            running.drain(..).map(|r| (r.job, r.answer)).unzip();
        let new = Flight::new(fresh, false);
        batch.extend(new.batch);
        answers.extend(new.answers);
        let mut flight = Flight {
            batch,
            answers,
            scheduled: Instant::now(),
            pinned: false,
            ended: Vec::new(),
            region: None,
        };
        spec.metrics.record_batch(flight.batch.len());
        if let Err(message) = supervisor::dispatch(spec, process, &mut flight, None).await {
            return supervisor::crash(spec, VecDeque::from([flight]), None, message, true);
        }
        let outcome = loop {
            let failed = match tokio::time::timeout(spec.response_timeout, process.receive()).await
            {
                Ok(Ok(frame)) => match flight.take(frame, spec).await {
                    Some(outcome) => break outcome,
                    None => continue,
                },
                Ok(Err(e)) => format!("worker connection lost: {e}"),
                Err(_) => format!(
                    "no response within {}s",
                    spec.response_timeout.as_secs_f64()
                ),
            };
            return supervisor::crash(spec, VecDeque::from([flight]), None, failed, true);
        };
        match outcome {
            Ok(responses) => running = route(spec, flight, joined, responses).await,
            Err(failure) => {
                if let Err(message) = flight.finish(spec, Err(failure)) {
                    return Exit::Crashed(message);
                }
            }
        }
    }
}

/// Sends each request its step's answer: the last one for a request that ends, a partial one
/// for a request that goes on, which is returned to stay in the running batch. The requests
/// from `joined` on ran their first step: their answer carries their queue and handler time.
async fn route(
    spec: &WorkerSpec,
    flight: Flight,
    joined: usize,
    responses: Vec<InferenceResponse>,
) -> Vec<Running> {
    let answering = Instant::now();
    let mut running = Vec::new();
    let steps = flight.batch.into_iter().zip(flight.answers).zip(responses);
    for (i, ((mut job, mut answer), mut response)) in steps.enumerate() {
        let before = response.headers.len();
        response
            .headers
            .retain(|(name, value)| !(name.eq_ignore_ascii_case(STREAM_NEXT) && value == "true"));
        let goes_on = response.headers.len() < before;
        if i >= joined {
            job.record_answered(
                spec,
                flight.scheduled,
                answering - flight.scheduled,
                &mut response,
            );
        }
        if goes_on {
            answer.partial(response, spec.response_timeout).await;
            job.request.params = Vec::new();
            running.push(Running { job, answer });
        } else {
            answer.finish(Ok(response));
        }
    }
    running
}
