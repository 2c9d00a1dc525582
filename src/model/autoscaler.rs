//! The server's one autoscaler: every tick it samples the pool and queue of every model and
//! workflow node model, asks the [`Policy`] what to change, makes the change, and leaves each
//! model the policy's view of it for describe. Nothing here runs on the request path: it
//! reads the queue length and the counters the metrics keep anyway.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::time::MissedTickBehavior;

use super::scaling_policy::{Decision, ModelView, Policy, ScalingSettings};
use super::ServedModel;
use crate::worker::WorkerStatus;

/// How often the autoscaler samples.
const TICK: Duration = Duration::from_millis(250);

/// The policy in a sentence, for describe.
const POLICY: &str = "one worker at a time to the queue that waits longest while busy CPU \
     workers stay within workerBudget; kept only if answers/s rose over windowMs, else removed \
     and the model not grown for holdMs (nor after a scale call); never below minWorkers; a \
     worker above it goes after scaleDownIdleMs of empty queue";

/// Whether a worker takes a share of the CPU worker budget: the one place that decides it.
/// A worker placed on a GPU does not.
pub fn counts_against_budget(worker: &WorkerStatus) -> bool {
    worker.gpu_id.is_none()
}

/// Cores this process may run on: the standard library's count honours the scheduler
/// affinity mask and a cgroup CPU quota (v1 and v2) where one is set.
pub fn usable_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Scales every watched model's pool within one budget of busy CPU workers.
pub struct Autoscaler {
    settings: ScalingSettings,
    watched: Mutex<Vec<(u64, Weak<ServedModel>)>>,
    next_id: AtomicU64,
}

impl Autoscaler {
    /// Starts the autoscaler's task, which ends when the autoscaler is dropped.
    pub fn start(settings: ScalingSettings) -> Arc<Self> {
        let autoscaler = Arc::new(Self {
            settings,
            watched: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
        });
        let weak = Arc::downgrade(&autoscaler);
        tokio::spawn(async move {
            let mut policy = Policy::new(settings);
            let mut ticks = tokio::time::interval(TICK);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(autoscaler) = weak.upgrade() else {
                    break;
                };
                autoscaler.tick(&mut policy);
            }
        });
        autoscaler
    }

    /// Puts a model's pool, as it is now, under the autoscaler until the model shuts down.
    pub fn watch(&self, model: &Arc<ServedModel>) {
        model.set_autoscaling(describe(&self.settings, None, &ModelView::default()));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.watched
            .lock()
            .expect("watch lock")
            .push((id, Arc::downgrade(model)));
    }

    /// Samples every model, applies the policy's decisions and updates the models' views.
    fn tick(&self, policy: &mut Policy) {
        let models: Vec<(u64, Arc<ServedModel>)> = {
            let mut watched = self.watched.lock().expect("watch lock");
            watched.retain(|(_, model)| model.upgrade().is_some_and(|m| !m.is_closed()));
            watched
                .iter()
                .filter_map(|(id, model)| Some((*id, model.upgrade()?)))
                .collect()
        };
        let samples: Vec<_> = models
            .iter()
            .map(|(id, model)| model.sample(*id, counts_against_budget))
            .collect();
        let now = Instant::now();
        for decision in policy.step(now, &samples) {
            let (Decision::Grow(id) | Decision::Shrink(id)) = decision;
            let Some((_, model)) = models.iter().find(|(m, _)| *m == id) else {
                continue;
            };
            let applied = match decision {
                Decision::Grow(_) => model.add_worker(),
                Decision::Shrink(_) => model.remove_worker(),
            };
            if !applied {
                policy.refused(decision);
            }
        }
        let busy = policy.busy_cpu_workers();
        for ((id, model), sample) in models.iter().zip(&samples) {
            let view = policy.view(*id, now, sample);
            let before = model.autoscaling();
            if let Some(text) = &view.last_decision {
                if before["lastDecision"].as_str() != Some(text) {
                    tracing::info!(
                        "autoscaler: {} {}: {text}",
                        model.def.name,
                        model.def.version
                    );
                }
            }
            model.set_autoscaling(describe(&self.settings, Some(busy), &view));
        }
    }
}

/// The `autoscaling` entry of a model's describe: the policy, its knobs, and what it sees.
fn describe(settings: &ScalingSettings, busy: Option<usize>, view: &ModelView) -> Value {
    let ms = |d: Duration| d.as_millis() as u64;
    json!({
        "policy": POLICY,
        "workerBudget": settings.worker_budget,
        "busyCpuWorkers": busy,
        "windowMs": ms(settings.window),
        "holdMs": ms(settings.hold),
        "scaleDownIdleMs": ms(settings.scale_down_idle),
        "queueWaitMs": view.queue_wait.map(|w| (w.as_secs_f64() * 1e4).round() / 10.0),
        "answeredPerSecond": view.answered_per_sec.map(|r| (r * 10.0).round() / 10.0),
        "heldForMs": view.held_for.map_or(0, ms),
        "onTrial": view.on_trial,
        "lastDecision": view.last_decision,
    })
}
