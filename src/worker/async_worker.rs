//! Async workers (`asyncCommunication: true` in model-config.yaml), as TorchServe's
//! `AsyncWorkerThread`: every batch goes to the worker as soon as it is formed, however many
//! are unanswered, and the worker answers each when it is done, in any order; its replies name
//! the batch by the number its `predict` carried. When the worker breaks, every batch in flight
//! gets the error.

use std::collections::HashMap;

use async_channel::Receiver;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::batcher;
use super::process::WorkerProcess;
use super::protocol::Frame;
use super::supervisor::{self, Exit, Flight, WorkerSpec};
use crate::job::Job;

/// Whether a model's workers are async (`asyncCommunication: true`; never a fused workflow
/// segment's).
pub fn enabled(spec: &WorkerSpec) -> bool {
    spec.segment.is_none()
        && spec
            .model_yaml_config
            .get("asyncCommunication")
            .and_then(serde_json::Value::as_bool)
            == Some(true)
}

/// The batch a reply frame belongs to.
fn batch_number(frame: &Frame) -> Result<u64, String> {
    #[derive(Deserialize)]
    struct Tag {
        batch: Option<u64>,
    }
    frame
        .message::<Tag>()
        .map_err(|e| format!("bad reply: {e}"))?
        .batch
        .ok_or_else(|| "a reply without its batch number".to_string())
}

/// Sends batches and routes replies until the worker is cancelled (and has answered every
/// batch in flight) or breaks. Requests of the sequences pinned to this worker go first. With
/// job tickets, the worker offers one whenever it waits for work, since it takes any.
pub(super) async fn serve(
    spec: &WorkerSpec,
    process: &mut WorkerProcess,
    cancel: &CancellationToken,
    pinned: &Receiver<Job>,
) -> Exit {
    let mut flights: HashMap<u64, Flight> = HashMap::new();
    let mut next: u64 = 0;
    let mut offered = false;
    let mut queue_done = false;
    // No frame from the worker for `response_timeout` while batches are in flight: it hangs.
    let deadline = tokio::time::sleep(spec.response_timeout);
    tokio::pin!(deadline);
    let crash = |flights: HashMap<u64, Flight>, message: String| {
        supervisor::crash_all(spec, flights.into_values(), message)
    };
    loop {
        let taking = !cancel.is_cancelled() && !queue_done;
        if !taking && flights.is_empty() {
            break;
        }
        if let (Some(tickets), true, false) = (&spec.tickets, taking, offered) {
            tickets.offer();
            offered = true;
        }
        let (first, source) = tokio::select! {
            biased;
            frame = process.receive(), if !flights.is_empty() => {
                deadline.as_mut().reset(tokio::time::Instant::now() + spec.response_timeout);
                let frame = match frame {
                    Ok(frame) => frame,
                    Err(e) => return crash(flights, format!("worker connection lost: {e}")),
                };
                let number = match batch_number(&frame) {
                    Ok(number) => number,
                    Err(message) => return crash(flights, message),
                };
                let Some(flight) = flights.get_mut(&number) else {
                    return crash(flights, format!("a reply to batch {number}, which is not in flight"));
                };
                let Some(outcome) = flight.take(frame, spec).await else { continue };
                let flight = flights.remove(&number).expect("in flight");
                if let Err(message) = flight.finish(spec, outcome) {
                    return crash(flights, message);
                }
                continue;
            }
            () = &mut deadline, if !flights.is_empty() => {
                let message = format!("no response within {}s", spec.response_timeout.as_secs_f64());
                return crash(flights, message);
            }
            () = cancel.cancelled(), if taking => continue,
            Ok(job) = pinned.recv(), if taking => (job, pinned),
            job = spec.queue.recv(), if taking => match job {
                Ok(job) => (job, &spec.queue),
                Err(_) => {
                    queue_done = true;
                    continue;
                }
            },
        };
        offered = false;
        let mut batch =
            batcher::collect(source, first, spec.batch_size, spec.max_batch_delay).await;
        batch.retain(|job| !job.reply.is_closed());
        if let Some(limit) = spec.client_timeout {
            supervisor::drop_expired(spec, &mut batch, limit);
        }
        if batch.is_empty() {
            continue;
        }
        spec.metrics.record_batch(batch.len());
        if flights.is_empty() {
            deadline
                .as_mut()
                .reset(tokio::time::Instant::now() + spec.response_timeout);
        }
        let number = next;
        next += 1;
        let flight = flights.entry(number).or_insert(Flight::new(batch, false));
        if let Err(message) = supervisor::dispatch(spec, process, flight, Some(number)).await {
            return crash(flights, message);
        }
    }
    if let (Some(tickets), true) = (&spec.tickets, offered) {
        tickets.take();
    }
    Exit::Cancelled
}
