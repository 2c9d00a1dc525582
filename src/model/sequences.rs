//! Stateful sequences (`sequenceBatching` in model-config.yaml), as TorchServe's sequence
//! batching: each sequence is pinned to one worker, whose handler keeps its state, and its
//! requests reach that worker in the order they came.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::{ApiError, ApiResult};
use crate::job::InferenceRequest;

/// The request header naming a request's sequence (TorchServe's `ts_request_sequence_id`).
pub const ID_HEADER: &str = "ts_request_sequence_id";
/// Set to "true" on the first request of a sequence whose id the server issued.
pub const START_HEADER: &str = "ts_request_sequence_start";
/// Sent by the client on a sequence's last request, which closes the sequence.
pub const END_HEADER: &str = "ts_request_sequence_end";

/// A stateful model's sequence settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceSettings {
    /// How long a sequence may be idle before it is closed (`sequenceMaxIdleMSec`; 0: never).
    pub max_idle: Option<Duration>,
    /// How long a sequence may stay open in all (`sequenceTimeoutMSec`; 0: for ever).
    pub max_life: Option<Duration>,
    /// Requests of one sequence that may wait at once (`maxSequenceJobQueueSize`).
    pub max_queued: usize,
    /// Sequences open at once (`maxNumSequence`, at least `batchSize` × `maxWorkers`).
    pub max_open: usize,
}

impl SequenceSettings {
    /// The settings of a model whose configuration sets `sequenceBatching: true`, with
    /// TorchServe's defaults (one queued request, one sequence per batch slot).
    pub fn from_yaml(yaml: &Value, batch_size: usize, max_workers: usize) -> Option<Self> {
        if yaml.get("sequenceBatching").and_then(Value::as_bool) != Some(true) {
            return None;
        }
        let number = |key: &str| yaml.get(key).and_then(Value::as_u64);
        let at_least_one = |key: &str| number(key).map_or(1, |n| n.max(1) as usize);
        Some(Self {
            max_idle: number("sequenceMaxIdleMSec")
                .filter(|&ms| ms > 0)
                .map(Duration::from_millis),
            max_life: number("sequenceTimeoutMSec")
                .filter(|&ms| ms > 0)
                .map(Duration::from_millis),
            max_queued: at_least_one("maxSequenceJobQueueSize"),
            max_open: at_least_one("maxNumSequence").max(batch_size * max_workers),
        })
    }
}

/// The open sequences of one model.
pub struct Sequences {
    pub settings: SequenceSettings,
    open: Mutex<Book>,
}

/// The open sequences, and the ids of the latest that expired (idle or past their lifetime),
/// which later requests may not reopen: the handler's state for them may be gone.
#[derive(Default)]
struct Book {
    open: HashMap<String, Open>,
    expired: HashSet<String>,
    expired_order: VecDeque<String>,
}

/// Expired ids remembered at most, oldest forgotten first.
const EXPIRED_REMEMBERED: usize = 4096;

impl Book {
    /// Closes the sequences past `settings`' idle time or lifetime and remembers their ids.
    fn expire(&mut self, settings: &SequenceSettings) {
        let now = Instant::now();
        let idle = |s: &Open| {
            s.pending == 0
                && settings
                    .max_idle
                    .is_some_and(|limit| now.duration_since(s.last_used) >= limit)
        };
        let old = |s: &Open| {
            settings
                .max_life
                .is_some_and(|limit| now.duration_since(s.opened) >= limit)
        };
        let gone: Vec<String> = self
            .open
            .iter()
            .filter(|(_, s)| idle(s) || old(s))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            self.open.remove(&id);
            if self.expired.insert(id.clone()) {
                self.expired_order.push_back(id);
            }
            if self.expired_order.len() > EXPIRED_REMEMBERED {
                if let Some(oldest) = self.expired_order.pop_front() {
                    self.expired.remove(&oldest);
                }
            }
        }
    }
}

/// An open sequence: the worker it is pinned to, its requests not yet answered, and when it
/// was last answered.
struct Open {
    worker: usize,
    pending: usize,
    last_used: Instant,
    opened: Instant,
}

/// A request admitted to a sequence; give it back with [`Sequences::leave`] once answered.
pub struct Admitted {
    pub id: String,
    /// The id of the worker that serves the sequence.
    pub worker: usize,
    ends: bool,
}

impl Sequences {
    pub fn new(settings: SequenceSettings) -> Self {
        Self {
            settings,
            open: Mutex::new(Book::default()),
        }
    }

    /// Admits `request` to its sequence, issuing an id (and marking the start) when it names
    /// none, and opening the sequence on the least busy of `workers` (ids) when it is not
    /// open. `refused` is the error for a request over the limits; a request naming a sequence
    /// that expired (`sequenceMaxIdleMSec`, `sequenceTimeoutMSec`) is a 400.
    pub fn enter(
        &self,
        request: &mut InferenceRequest,
        workers: &[usize],
        refused: impl Fn() -> ApiError,
    ) -> ApiResult<Admitted> {
        let named = header(request, ID_HEADER).filter(|id| !id.is_empty());
        let id = match named {
            Some(id) => id.to_string(),
            None => {
                let id = format!("ts-seq-{}", uuid::Uuid::new_v4());
                request.headers.retain(|(name, _)| name != ID_HEADER);
                request.headers.push((START_HEADER.into(), "true".into()));
                request.headers.push((ID_HEADER.into(), id.clone()));
                id
            }
        };
        let ends = header(request, END_HEADER).is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let mut book = self.open.lock().expect("sequences lock");
        book.expire(&self.settings);
        if book.expired.contains(&id) {
            return Err(ApiError::bad_request(format!(
                "Sequence {id} has expired: start a new one"
            )));
        }
        let open = &mut book.open;
        // A sequence whose worker is gone starts again on another.
        open.retain(|_, s| workers.contains(&s.worker));
        if !open.contains_key(&id) {
            if open.len() >= self.settings.max_open {
                return Err(refused());
            }
            let load = |worker: &usize| open.values().filter(|s| s.worker == *worker).count();
            let least_busy = workers.iter().copied().min_by_key(|w| load(w));
            let worker = least_busy.ok_or_else(&refused)?;
            let now = Instant::now();
            open.insert(
                id.clone(),
                Open {
                    worker,
                    pending: 0,
                    last_used: now,
                    opened: now,
                },
            );
        }
        let sequence = open.get_mut(&id).expect("sequence just opened");
        if sequence.pending >= self.settings.max_queued {
            return Err(refused());
        }
        sequence.pending += 1;
        Ok(Admitted {
            id,
            worker: sequence.worker,
            ends,
        })
    }

    /// Records that an admitted request was answered; its sequence closes when the request
    /// carried the end header or the handler's answer did (`handler_ended`, as TorchServe's
    /// sequence continuous batching reads it).
    pub fn leave(&self, admitted: &Admitted, handler_ended: bool) {
        let open = &mut self.open.lock().expect("sequences lock").open;
        if admitted.ends || handler_ended {
            open.remove(&admitted.id);
        } else if let Some(sequence) = open.get_mut(&admitted.id) {
            sequence.pending = sequence.pending.saturating_sub(1);
            sequence.last_used = Instant::now();
        }
    }
}

/// The value of request header `name` (lower-case).
fn header<'a>(request: &'a InferenceRequest, name: &str) -> Option<&'a str> {
    request
        .headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_idle_ms: u64, max_open: usize) -> SequenceSettings {
        SequenceSettings {
            max_idle: (max_idle_ms > 0).then(|| Duration::from_millis(max_idle_ms)),
            max_life: None,
            max_queued: 1,
            max_open,
        }
    }

    fn request(id: Option<&str>) -> InferenceRequest {
        let mut request = InferenceRequest::default();
        if let Some(id) = id {
            request.headers.push((ID_HEADER.into(), id.into()));
        }
        request
    }

    #[test]
    fn reads_torchserve_keys_and_defaults() {
        let yaml = serde_json::json!({"sequenceBatching": true, "sequenceMaxIdleMSec": 500,
                                      "sequenceTimeoutMSec": 900,
                                      "maxNumSequence": 4, "maxSequenceJobQueueSize": 10});
        assert_eq!(
            SequenceSettings::from_yaml(&yaml, 1, 2),
            Some(SequenceSettings {
                max_idle: Some(Duration::from_millis(500)),
                max_life: Some(Duration::from_millis(900)),
                max_queued: 10,
                max_open: 4
            })
        );
        let bare = serde_json::json!({"sequenceBatching": true});
        assert_eq!(
            SequenceSettings::from_yaml(&bare, 2, 3).unwrap().max_open,
            6
        );
        assert_eq!(
            SequenceSettings::from_yaml(&serde_json::json!({}), 1, 1),
            None
        );
    }

    #[test]
    fn issues_an_id_and_spreads_sequences_over_workers() {
        let sequences = Sequences::new(settings(0, 4));
        let mut first = request(None);
        let a = sequences
            .enter(&mut first, &[1, 2], || ApiError::unavailable("full"))
            .unwrap();
        assert!(a.id.starts_with("ts-seq-"));
        assert_eq!(header(&first, START_HEADER), Some("true"));
        assert_eq!(header(&first, ID_HEADER), Some(a.id.as_str()));
        let b = sequences.enter(&mut request(Some("b")), &[1, 2], || {
            ApiError::unavailable("full")
        });
        assert_ne!(a.worker, b.unwrap().worker);
    }

    #[test]
    fn refuses_past_the_limits_until_a_sequence_ends() {
        let sequences = Sequences::new(settings(0, 1));
        let refused = || ApiError::unavailable("full");
        let a = sequences
            .enter(&mut request(Some("a")), &[1], refused)
            .unwrap();
        assert!(sequences
            .enter(&mut request(Some("a")), &[1], refused)
            .is_err());
        assert!(sequences
            .enter(&mut request(Some("b")), &[1], refused)
            .is_err());
        sequences.leave(&a, false);
        let mut last = request(Some("a"));
        last.headers.push((END_HEADER.into(), "true".into()));
        let a = sequences.enter(&mut last, &[1], refused).unwrap();
        sequences.leave(&a, false);
        let b = sequences
            .enter(&mut request(Some("b")), &[1], refused)
            .unwrap();
        // The handler's answer may end its sequence too.
        sequences.leave(&b, true);
        assert!(sequences
            .enter(&mut request(Some("c")), &[1], refused)
            .is_ok());
    }

    #[test]
    fn expired_sequences_are_refused_and_others_go_on() {
        let mut with_life = settings(40, 4);
        with_life.max_life = Some(Duration::from_millis(120));
        let sequences = Sequences::new(with_life);
        let refused = || ApiError::unavailable("full");
        let enter = |id: &str| sequences.enter(&mut request(Some(id)), &[1], refused);
        let idle = enter("idle").unwrap();
        sequences.leave(&idle, false);
        let busy = enter("busy").unwrap();
        std::thread::sleep(Duration::from_millis(60));
        // Idle past sequenceMaxIdleMSec: closed, and its id is not reopened.
        let error = enter("idle").err().expect("expired");
        assert_eq!(error.status, axum::http::StatusCode::BAD_REQUEST);
        // A request still waiting keeps its sequence open however long it takes...
        sequences.leave(&busy, false);
        let busy = enter("busy").unwrap();
        sequences.leave(&busy, false);
        // ...but not past sequenceTimeoutMSec.
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(30));
            if let Ok(again) = enter("busy") {
                sequences.leave(&again, false);
            }
        }
        assert!(enter("busy").is_err());
        assert!(enter("fresh").is_ok());
    }
}
