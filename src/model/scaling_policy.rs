//! The server-wide autoscaling policy as pure logic: given what every model's pool and queue
//! looked like at each tick, it says which pool gets a worker and which loses one.
//!
//! - Busy CPU workers (the CPU workers of every model that has had work within
//!   `scale_down_idle`) never grow beyond the worker budget; when shifting load pushes them
//!   over it, workers the autoscaler added (above a pool's minimum) go first from the queue
//!   that waits least.
//! - The next worker goes to the queue that waits longest, one at a time, among the pools
//!   whose queue held more than a batch on average and never ran empty over the last window
//!   (so the throughput before is what the pool can do): the queue wait is the mean queue
//!   length over the window divided by the answers per second (Little's law).
//! - A scale-up is a trial: once the new worker is ready, answers per second are measured for
//!   one window; unless the model and the whole server both answered at least 5% of the
//!   model's rate more, the worker goes again and the model is not grown for `hold`.
//! - A pool never drops below its minimum; after an explicit scale call the model is not grown
//!   for `hold`; a worker above the minimum goes after `scale_down_idle` of empty queue.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// The autoscaler's knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScalingSettings {
    /// Most busy CPU workers autoscaling grows to, across all models and workflow nodes.
    pub worker_budget: usize,
    /// How long one throughput measurement lasts: before a scale-up, and after its worker is
    /// ready.
    pub window: Duration,
    /// How long a model is not grown after a backed-out scale-up or an explicit scale call.
    pub hold: Duration,
    /// How long a queue must stay empty before a worker above the minimum goes.
    pub scale_down_idle: Duration,
}

/// A new worker that has not loaded within this long is backed out.
const START_LIMIT: Duration = Duration::from_secs(60);
/// A kept worker must raise the model's answers per second, and the server's, by this share
/// of the model's answers per second before it.
const MIN_GAIN: f64 = 0.05;

/// What the autoscaler saw of one model at one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelSample {
    /// The model's key, stable while it is watched.
    pub id: u64,
    /// Workers in the pool.
    pub workers: usize,
    /// Of those, the workers that take a share of the CPU budget.
    pub cpu_workers: usize,
    /// Whether every worker in the pool has loaded its handler.
    pub ready: bool,
    pub min: usize,
    pub max: usize,
    pub batch_size: usize,
    /// Jobs waiting in the queue.
    pub queued: usize,
    /// Requests answered successfully since the model started.
    pub answered: u64,
    /// Explicit scale calls so far; a change means the pool was scaled by request.
    pub scale_calls: u64,
}

/// A change the policy asks for: one worker more or one fewer for the model with this key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Grow(u64),
    Shrink(u64),
}

/// What the policy says about one model, for describe.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelView {
    /// Estimated time a request queued now waits for a worker (mean over the window).
    pub queue_wait: Option<Duration>,
    /// Requests answered per second over the window.
    pub answered_per_sec: Option<f64>,
    /// How much longer the model is not grown.
    pub held_for: Option<Duration>,
    /// Whether a scale-up of this model is being measured.
    pub on_trial: bool,
    /// The policy's last change to this model, in words.
    pub last_decision: Option<String>,
}

/// One tick's reading of a model's counters.
#[derive(Debug, Clone, Copy)]
struct Point {
    at: Instant,
    answered: u64,
    queued: usize,
}

/// What the policy remembers of one model.
#[derive(Debug)]
struct Track {
    /// Readings covering the last window (the oldest at or before its start, once old enough).
    history: VecDeque<Point>,
    scale_calls: u64,
    held_until: Option<Instant>,
    quiet_since: Option<Instant>,
    /// When the model last had a queue or answered a request.
    last_active: Option<Instant>,
    last_decision: Option<String>,
}

/// A scale-up being measured.
#[derive(Debug, Clone, Copy)]
struct Trial {
    id: u64,
    started: Instant,
    workers_before: usize,
    rate_before: f64,
    total_before: f64,
    ready_at: Option<Instant>,
}

/// A model's figures at one tick, derived from its track.
#[derive(Debug, Clone, Copy)]
struct Figures {
    /// Answers per second over the window; `None` until the track covers a window.
    rate: Option<f64>,
    mean_queued: f64,
    /// Whether every reading in the window had a queue: the pool answered all it could.
    backlog: bool,
    /// Seconds a request queued now is expected to wait; `None` with `rate`.
    wait: Option<f64>,
    active: bool,
    held: bool,
}

/// The server-wide policy: feed it every model's sample at each tick with [`Policy::step`].
#[derive(Debug)]
pub struct Policy {
    settings: ScalingSettings,
    models: HashMap<u64, Track>,
    trial: Option<Trial>,
    busy: usize,
}

impl Policy {
    pub fn new(settings: ScalingSettings) -> Self {
        Self {
            settings,
            models: HashMap::new(),
            trial: None,
            busy: 0,
        }
    }

    /// Busy CPU workers at the last step.
    pub fn busy_cpu_workers(&self) -> usize {
        self.busy
    }

    /// Takes in the samples of every watched model at `now` and returns the changes to make
    /// (at most one per model).
    pub fn step(&mut self, now: Instant, samples: &[ModelSample]) -> Vec<Decision> {
        self.models
            .retain(|id, _| samples.iter().any(|s| s.id == *id));
        if self.trial.is_some_and(|t| !self.models.contains_key(&t.id)) {
            self.trial = None;
        }
        for sample in samples {
            self.observe(now, sample);
        }
        let figures: HashMap<u64, Figures> = samples
            .iter()
            .map(|s| (s.id, self.figures(now, s)))
            .collect();
        self.busy = samples
            .iter()
            .filter(|s| figures[&s.id].active)
            .map(|s| s.cpu_workers)
            .sum();
        let mut decisions = Vec::new();
        self.judge_trial(now, samples, &figures, &mut decisions);
        self.scale_down_idle(now, samples, &figures, &mut decisions);
        self.shed_over_budget(samples, &figures, &mut decisions);
        self.grow(now, samples, &figures, &mut decisions);
        decisions
    }

    /// Tells the policy that a change it asked for could not be made (the pool changed
    /// meanwhile): a refused scale-up ends its trial.
    pub fn refused(&mut self, decision: Decision) {
        if let Decision::Grow(id) = decision {
            if self.trial.is_some_and(|t| t.id == id) {
                self.trial = None;
                self.note(id, "could not add a worker: the pool was changing".into());
            }
        }
    }

    /// What the policy says about the model with key `id` at `now`.
    pub fn view(&self, id: u64, now: Instant, sample: &ModelSample) -> ModelView {
        let Some(track) = self.models.get(&id) else {
            return ModelView::default();
        };
        let figures = self.figures(now, sample);
        ModelView {
            queue_wait: figures.wait.map(Duration::from_secs_f64),
            answered_per_sec: figures.rate,
            held_for: track
                .held_until
                .filter(|until| *until > now)
                .map(|until| until - now),
            on_trial: self.trial.is_some_and(|t| t.id == id),
            last_decision: track.last_decision.clone(),
        }
    }

    /// Records one sample in the model's track.
    fn observe(&mut self, now: Instant, sample: &ModelSample) {
        let window = self.settings.window;
        let track = self.models.entry(sample.id).or_insert_with(|| Track {
            history: VecDeque::new(),
            scale_calls: sample.scale_calls,
            held_until: None,
            quiet_since: None,
            last_active: None,
            last_decision: None,
        });
        if sample.scale_calls != track.scale_calls {
            track.scale_calls = sample.scale_calls;
            track.held_until = Some(now + self.settings.hold);
            track.quiet_since = None;
            track.last_decision = Some(format!(
                "scaled by request to {} workers: not grown for {} ms",
                sample.workers,
                self.settings.hold.as_millis()
            ));
            if self.trial.is_some_and(|t| t.id == sample.id) {
                self.trial = None;
            }
        }
        let answered_before = track.history.back().map_or(0, |p| p.answered);
        let answered_more = sample.answered > answered_before;
        if sample.queued > 0 || answered_more {
            track.last_active = Some(now);
        }
        track.history.push_back(Point {
            at: now,
            answered: sample.answered,
            queued: sample.queued,
        });
        while track.history.len() > 2 && track.history[1].at + window <= now {
            track.history.pop_front();
        }
    }

    fn figures(&self, now: Instant, sample: &ModelSample) -> Figures {
        let track = &self.models[&sample.id];
        let window = self.settings.window;
        let (first, last) = (track.history.front(), track.history.back());
        let rate = first.zip(last).and_then(|(first, last)| {
            let span = last.at.saturating_duration_since(first.at);
            (first.at + window <= now && !span.is_zero())
                .then(|| last.answered.saturating_sub(first.answered) as f64 / span.as_secs_f64())
        });
        let mean_queued = track.history.iter().map(|p| p.queued as f64).sum::<f64>()
            / track.history.len().max(1) as f64;
        let backlog = track.history.iter().all(|p| p.queued > 0);
        // A queue that answered nothing in the window waits at least the window.
        let floor = 1.0 / window.as_secs_f64().max(f64::EPSILON);
        Figures {
            rate,
            mean_queued,
            backlog,
            wait: rate.map(|rate| mean_queued / rate.max(floor)),
            active: sample.queued > 0
                || track
                    .last_active
                    .is_some_and(|at| at + self.settings.scale_down_idle > now),
            held: track.held_until.is_some_and(|until| until > now),
        }
    }

    fn note(&mut self, id: u64, text: String) {
        if let Some(track) = self.models.get_mut(&id) {
            track.last_decision = Some(text);
        }
    }

    /// Keeps or backs out the worker on trial once it has been measured for a window.
    fn judge_trial(
        &mut self,
        now: Instant,
        samples: &[ModelSample],
        figures: &HashMap<u64, Figures>,
        decisions: &mut Vec<Decision>,
    ) {
        let Some(mut trial) = self.trial else { return };
        let Some(sample) = samples.iter().find(|s| s.id == trial.id) else {
            return;
        };
        let added = trial.workers_before + 1;
        let verdict = match trial.ready_at {
            None if sample.ready && sample.workers > trial.workers_before => {
                trial.ready_at = Some(now);
                self.trial = Some(trial);
                return;
            }
            None if now.saturating_duration_since(trial.started) < START_LIMIT => return,
            None => Err(format!(
                "backed out worker {added}: not ready within {} s",
                START_LIMIT.as_secs()
            )),
            Some(ready) if ready + self.settings.window > now => return,
            Some(_) => {
                let rate = figures[&trial.id].rate.unwrap_or(0.0);
                let total = total_rate(figures);
                let needed = trial.rate_before * MIN_GAIN;
                let text = format!(
                    "worker {added}: {:.1} -> {rate:.1} answers/s (server {:.1} -> {total:.1})",
                    trial.rate_before, trial.total_before
                );
                if rate - trial.rate_before >= needed && total - trial.total_before >= needed {
                    Ok(format!("kept {text}"))
                } else {
                    Err(format!("backed out {text}"))
                }
            }
        };
        self.trial = None;
        match verdict {
            Ok(text) => self.note(trial.id, text),
            Err(text) => {
                if sample.workers > sample.min {
                    decisions.push(Decision::Shrink(trial.id));
                    if sample.cpu_workers > 0 {
                        self.busy = self.busy.saturating_sub(1);
                    }
                }
                if let Some(track) = self.models.get_mut(&trial.id) {
                    track.held_until = Some(now + self.settings.hold);
                }
                self.note(trial.id, text);
            }
        }
    }

    /// Removes one worker above the minimum from each pool whose queue stayed empty for
    /// `scale_down_idle`.
    fn scale_down_idle(
        &mut self,
        now: Instant,
        samples: &[ModelSample],
        figures: &HashMap<u64, Figures>,
        decisions: &mut Vec<Decision>,
    ) {
        let idle = self.settings.scale_down_idle;
        let on_trial = self.trial.map(|t| t.id);
        for sample in samples {
            let track = self.models.get_mut(&sample.id).expect("observed");
            if sample.queued > 0 || sample.workers <= sample.min || on_trial == Some(sample.id) {
                track.quiet_since = None;
                continue;
            }
            let since = *track.quiet_since.get_or_insert(now);
            if decided(decisions, sample.id) || since + idle > now {
                continue;
            }
            track.quiet_since = None;
            track.last_decision = Some(format!(
                "removed worker {}: queue empty for {} ms",
                sample.workers,
                idle.as_millis()
            ));
            decisions.push(Decision::Shrink(sample.id));
            if figures[&sample.id].active && sample.cpu_workers > 0 {
                self.busy = self.busy.saturating_sub(1);
            }
        }
    }

    /// While busy CPU workers exceed the budget, removes one worker above its pool's minimum
    /// from the busy queue that waits least.
    fn shed_over_budget(
        &mut self,
        samples: &[ModelSample],
        figures: &HashMap<u64, Figures>,
        decisions: &mut Vec<Decision>,
    ) {
        let budget = self.settings.worker_budget;
        if self.busy <= budget || self.trial.is_some() {
            return;
        }
        let victim = samples
            .iter()
            .filter(|s| {
                let f = &figures[&s.id];
                f.active && s.cpu_workers > 0 && s.workers > s.min && !decided(decisions, s.id)
            })
            .min_by(|a, b| wait_of(figures, a).total_cmp(&wait_of(figures, b)));
        if let Some(victim) = victim {
            let text = format!(
                "removed worker {}: {} busy CPU workers, over the budget of {budget}",
                victim.workers, self.busy
            );
            decisions.push(Decision::Shrink(victim.id));
            self.busy -= 1;
            self.note(victim.id, text);
        }
    }

    /// Starts a trial of one more worker for the queue that waits longest, if the budget
    /// has room and no trial runs.
    fn grow(
        &mut self,
        now: Instant,
        samples: &[ModelSample],
        figures: &HashMap<u64, Figures>,
        decisions: &mut Vec<Decision>,
    ) {
        if self.trial.is_some() {
            return;
        }
        let budget_left = self.busy < self.settings.worker_budget;
        let chosen = samples
            .iter()
            .filter(|s| {
                let f = &figures[&s.id];
                // A pool all on GPUs is taken to get its next worker on a GPU too.
                (budget_left || s.cpu_workers == 0)
                    && !f.held
                    && f.rate.is_some()
                    && s.ready
                    && s.workers > 0
                    && s.workers < s.max
                    && f.backlog
                    && f.mean_queued > s.batch_size as f64
                    && !decided(decisions, s.id)
            })
            .max_by(|a, b| wait_of(figures, a).total_cmp(&wait_of(figures, b)));
        let Some(chosen) = chosen else { return };
        let f = figures[&chosen.id];
        self.trial = Some(Trial {
            id: chosen.id,
            started: now,
            workers_before: chosen.workers,
            rate_before: f.rate.unwrap_or(0.0),
            total_before: total_rate(figures),
            ready_at: None,
        });
        decisions.push(Decision::Grow(chosen.id));
        if chosen.cpu_workers > 0 {
            self.busy += 1;
        }
        self.note(
            chosen.id,
            format!(
                "added worker {}: queue wait {:.0} ms, the longest",
                chosen.workers + 1,
                f.wait.unwrap_or(0.0) * 1000.0
            ),
        );
    }
}

fn decided(decisions: &[Decision], id: u64) -> bool {
    decisions
        .iter()
        .any(|d| matches!(d, Decision::Grow(x) | Decision::Shrink(x) if *x == id))
}

fn wait_of(figures: &HashMap<u64, Figures>, sample: &ModelSample) -> f64 {
    figures[&sample.id].wait.unwrap_or(0.0)
}

fn total_rate(figures: &HashMap<u64, Figures>) -> f64 {
    figures.values().filter_map(|f| f.rate).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(250);
    const SETTINGS: ScalingSettings = ScalingSettings {
        worker_budget: 4,
        window: Duration::from_secs(2),
        hold: Duration::from_secs(30),
        scale_down_idle: Duration::from_secs(10),
    };

    /// A model driven by the simulation: `queued` stays as set, and each ready worker answers
    /// `per_worker` requests per second up to `cap` for the whole pool.
    #[derive(Clone)]
    struct SimModel {
        sample: ModelSample,
        per_worker: f64,
        cap: f64,
        /// Ticks until the newest worker is ready.
        loading: u32,
        /// Whether every worker of the pool runs on a GPU.
        on_gpu: bool,
        carry: f64,
    }

    fn model(id: u64, workers: usize, min: usize, max: usize, queued: usize) -> SimModel {
        SimModel {
            sample: ModelSample {
                id,
                workers,
                cpu_workers: workers,
                ready: true,
                min,
                max,
                batch_size: 1,
                queued,
                answered: 0,
                scale_calls: 0,
            },
            per_worker: 10.0,
            cap: f64::INFINITY,
            loading: 0,
            on_gpu: false,
            carry: 0.0,
        }
    }

    struct Sim {
        policy: Policy,
        models: Vec<SimModel>,
        now: Instant,
        decisions: Vec<(u32, Decision)>,
        tick: u32,
    }

    impl Sim {
        fn new(settings: ScalingSettings, models: Vec<SimModel>) -> Self {
            Self {
                policy: Policy::new(settings),
                models,
                now: Instant::now(),
                decisions: Vec::new(),
                tick: 0,
            }
        }

        /// Advances one tick: the models answer, then the policy decides and the decisions
        /// are applied as the pool would (a shrink below the minimum fails the test).
        fn step(&mut self) -> Vec<Decision> {
            self.tick += 1;
            self.now += TICK;
            for m in &mut self.models {
                m.loading = m.loading.saturating_sub(1);
                m.sample.ready = m.loading == 0;
                let ready = m.sample.workers - usize::from(!m.sample.ready);
                if m.sample.queued > 0 {
                    let rate = (ready as f64 * m.per_worker).min(m.cap);
                    m.carry += rate * TICK.as_secs_f64();
                    m.sample.answered += m.carry as u64;
                    m.carry -= m.carry.floor();
                }
            }
            let samples: Vec<ModelSample> = self.models.iter().map(|m| m.sample).collect();
            let decisions = self.policy.step(self.now, &samples);
            for decision in &decisions {
                let (Decision::Grow(id) | Decision::Shrink(id)) = *decision;
                let m = self.models.iter_mut().find(|m| m.sample.id == id).unwrap();
                match decision {
                    Decision::Grow(_) => {
                        assert!(m.sample.workers < m.sample.max, "grew beyond max");
                        m.sample.workers += 1;
                        m.loading = 3;
                        m.sample.ready = false;
                    }
                    Decision::Shrink(_) => {
                        assert!(m.sample.workers > m.sample.min, "shrank below min");
                        m.sample.workers -= 1;
                    }
                }
                m.sample.cpu_workers = if m.on_gpu { 0 } else { m.sample.workers };
                self.decisions.push((self.tick, *decision));
            }
            decisions
        }

        fn run(&mut self, ticks: u32) {
            for _ in 0..ticks {
                self.step();
            }
        }

        fn workers(&self, id: u64) -> usize {
            self.models[id as usize].sample.workers
        }

        fn last_decision(&self, id: u64) -> String {
            let sample = &self.models[id as usize].sample;
            self.policy
                .view(id, self.now, sample)
                .last_decision
                .unwrap_or_default()
        }
    }

    fn ticks(d: Duration) -> u32 {
        (d.as_millis() / TICK.as_millis()) as u32
    }

    #[test]
    fn busy_workers_never_exceed_the_budget_across_models() {
        let models = (0..3).map(|id| model(id, 1, 1, 8, 50)).collect();
        let mut sim = Sim::new(SETTINGS, models);
        for _ in 0..ticks(Duration::from_secs(120)) {
            sim.step();
            let total: usize = sim.models.iter().map(|m| m.sample.workers).sum();
            assert!(total <= SETTINGS.worker_budget, "{total} workers");
        }
        let total: usize = sim.models.iter().map(|m| m.sample.workers).sum();
        assert_eq!(total, SETTINGS.worker_budget, "the budget was not used");
        assert_eq!(sim.policy.busy_cpu_workers(), SETTINGS.worker_budget);
    }

    #[test]
    fn the_queue_that_waits_longest_gets_the_worker() {
        let settings = ScalingSettings {
            worker_budget: 3,
            ..SETTINGS
        };
        // The same queue length, but b answers four times faster: a's requests wait longer.
        let mut b = model(1, 1, 1, 8, 20);
        b.per_worker = 40.0;
        let mut sim = Sim::new(settings, vec![model(0, 1, 1, 8, 20), b]);
        sim.run(ticks(Duration::from_secs(60)));
        assert_eq!(sim.decisions[0].1, Decision::Grow(0));
        assert_eq!((sim.workers(0), sim.workers(1)), (2, 1));
        assert!(sim.last_decision(0).starts_with("kept worker 2"));
    }

    #[test]
    fn a_scale_up_that_does_not_raise_throughput_is_backed_out_and_held() {
        let mut flat = model(0, 1, 1, 4, 30);
        flat.cap = 10.0;
        let mut sim = Sim::new(SETTINGS, vec![flat]);
        sim.run(ticks(SETTINGS.window) + 1);
        let grown = sim.decisions.clone();
        assert_eq!(grown.len(), 1);
        assert_eq!(grown[0].1, Decision::Grow(0));
        // Ready after three ticks, measured for a window, then removed.
        sim.run(3 + ticks(SETTINGS.window) + 1);
        assert_eq!(sim.decisions.len(), 2, "{:?}", sim.decisions);
        assert_eq!(sim.decisions[1].1, Decision::Shrink(0));
        assert_eq!(sim.workers(0), 1);
        assert!(sim.last_decision(0).starts_with("backed out worker 2"));
        let backed_out = sim.decisions[1].0;
        // Left alone for the hold, then tried again.
        sim.run(ticks(SETTINGS.hold) - 2);
        assert_eq!(sim.decisions.len(), 2);
        let view = sim.policy.view(0, sim.now, &sim.models[0].sample);
        assert!(view.held_for.is_some());
        sim.run(4);
        assert_eq!(sim.decisions.len(), 3);
        assert_eq!(sim.decisions[2].1, Decision::Grow(0));
        assert!(sim.decisions[2].0 >= backed_out + ticks(SETTINGS.hold));
    }

    #[test]
    fn growth_waits_for_a_full_window_of_backlog() {
        let mut sim = Sim::new(SETTINGS, vec![model(0, 1, 1, 4, 0)]);
        sim.run(ticks(SETTINGS.window) * 2);
        sim.models[0].sample.queued = 30;
        sim.run(ticks(SETTINGS.window));
        assert!(sim.decisions.is_empty(), "{:?}", sim.decisions);
        sim.run(2);
        assert_eq!(sim.decisions[0].1, Decision::Grow(0));
    }

    #[test]
    fn a_scale_up_must_raise_the_whole_servers_throughput_too() {
        // Two models on a machine that answers 20/s in all: a second worker for one slows
        // the other down as much as it speeds itself up.
        let mut sim = Sim::new(SETTINGS, vec![model(0, 1, 1, 4, 30), model(1, 1, 1, 4, 5)]);
        sim.run(ticks(SETTINGS.window) + 1);
        assert_eq!(sim.decisions[0].1, Decision::Grow(0));
        sim.models[1].per_worker = 0.0;
        sim.run(3 + ticks(SETTINGS.window) + 1);
        assert_eq!(sim.decisions[1].1, Decision::Shrink(0));
        assert!(sim.last_decision(0).contains("server"));
    }

    #[test]
    fn idle_pools_shrink_to_their_minimum_and_no_further() {
        let mut sim = Sim::new(SETTINGS, vec![model(0, 4, 2, 4, 0)]);
        // The clock starts at the first empty sample.
        let idle = ticks(SETTINGS.scale_down_idle);
        sim.run(idle);
        assert_eq!(sim.workers(0), 4);
        sim.run(1);
        assert_eq!(sim.workers(0), 3);
        sim.run(idle * 5);
        assert_eq!(sim.workers(0), 2);
        assert!(sim
            .last_decision(0)
            .starts_with("removed worker 3: queue empty"));
    }

    #[test]
    fn a_held_pool_still_shrinks_when_idle() {
        let mut sim = Sim::new(SETTINGS, vec![model(0, 3, 1, 4, 0)]);
        sim.run(1);
        sim.models[0].sample.scale_calls += 1;
        sim.run(ticks(SETTINGS.scale_down_idle) * 2 + 3);
        assert_eq!(sim.workers(0), 1);
        let view = sim.policy.view(0, sim.now, &sim.models[0].sample);
        assert!(view.held_for.is_some());
    }

    #[test]
    fn a_queue_restarts_the_idle_clock() {
        let mut sim = Sim::new(SETTINGS, vec![model(0, 2, 1, 2, 0)]);
        sim.run(ticks(SETTINGS.scale_down_idle) - 2);
        sim.models[0].sample.queued = 1;
        sim.run(1);
        sim.models[0].sample.queued = 0;
        sim.run(ticks(SETTINGS.scale_down_idle));
        assert_eq!(sim.workers(0), 2);
        sim.run(1);
        assert_eq!(sim.workers(0), 1);
    }

    #[test]
    fn an_explicit_scale_is_left_alone_for_the_hold() {
        let mut sim = Sim::new(SETTINGS, vec![model(0, 1, 1, 4, 30)]);
        sim.run(2);
        sim.models[0].sample.scale_calls += 1;
        sim.run(ticks(SETTINGS.hold) - 1);
        assert!(sim.decisions.is_empty(), "{:?}", sim.decisions);
        assert!(sim.last_decision(0).starts_with("scaled by request"));
        sim.run(2);
        assert_eq!(sim.decisions[0].1, Decision::Grow(0));
    }

    #[test]
    fn an_explicit_scale_ends_a_trial() {
        let mut sim = Sim::new(SETTINGS, vec![model(0, 1, 1, 4, 30)]);
        sim.run(ticks(SETTINGS.window) + 1);
        assert_eq!(sim.decisions.len(), 1);
        sim.models[0].sample.scale_calls += 1;
        sim.models[0].sample.workers = 3;
        sim.run(ticks(SETTINGS.window) * 3);
        assert_eq!(sim.decisions.len(), 1, "{:?}", sim.decisions);
        assert_eq!(sim.workers(0), 3);
    }

    #[test]
    fn over_the_budget_added_workers_go_from_the_shortest_wait_first() {
        let settings = ScalingSettings {
            worker_budget: 8,
            ..SETTINGS
        };
        // b: 3 workers, long wait; a: 3 workers, short wait; c: at its minimum of 2;
        // d: idle, so its 4 workers are not busy, until load arrives.
        let mut sim = Sim::new(
            settings,
            vec![
                model(0, 3, 1, 4, 40),
                model(1, 3, 1, 4, 2),
                model(2, 2, 2, 2, 10),
                model(3, 4, 1, 4, 0),
            ],
        );
        sim.run(ticks(SETTINGS.window) * 2);
        assert!(sim.decisions.is_empty(), "{:?}", sim.decisions);
        assert_eq!(sim.policy.busy_cpu_workers(), 8);
        sim.models[3].sample.queued = 10;
        sim.run(ticks(SETTINGS.window));
        let shed: Vec<Decision> = sim.decisions.iter().map(|d| d.1).collect();
        assert_eq!(shed[..2], [Decision::Shrink(1), Decision::Shrink(1)]);
        assert!(shed.iter().all(|d| matches!(d, Decision::Shrink(_))));
        let busy: usize = (0..4).map(|id| sim.workers(id)).sum();
        assert_eq!(busy, 8);
        assert_eq!(sim.policy.busy_cpu_workers(), 8);
        assert_eq!((sim.workers(1), sim.workers(2)), (1, 2));
        assert!(sim.last_decision(1).contains("over the budget of 8"));
    }

    #[test]
    fn a_model_is_busy_until_it_has_been_idle_for_scale_down_idle() {
        let mut sim = Sim::new(SETTINGS, vec![model(0, 2, 2, 2, 5)]);
        sim.run(1);
        assert_eq!(sim.policy.busy_cpu_workers(), 2);
        sim.models[0].sample.queued = 0;
        sim.run(ticks(SETTINGS.scale_down_idle) - 1);
        assert_eq!(sim.policy.busy_cpu_workers(), 2);
        sim.run(1);
        assert_eq!(sim.policy.busy_cpu_workers(), 0);
    }

    #[test]
    fn minimum_workers_are_kept_even_over_the_budget() {
        let settings = ScalingSettings {
            worker_budget: 2,
            ..SETTINGS
        };
        let models = (0..4).map(|id| model(id, 1, 1, 2, 20)).collect();
        let mut sim = Sim::new(settings, models);
        sim.run(ticks(Duration::from_secs(60)));
        assert!(sim.decisions.is_empty(), "{:?}", sim.decisions);
        assert_eq!(sim.policy.busy_cpu_workers(), 4);
    }

    #[test]
    fn gpu_workers_take_no_share_of_the_cpu_budget() {
        let settings = ScalingSettings {
            worker_budget: 1,
            ..SETTINGS
        };
        let mut gpu = model(1, 2, 1, 4, 30);
        gpu.sample.cpu_workers = 0;
        gpu.on_gpu = true;
        let mut sim = Sim::new(settings, vec![model(0, 1, 1, 4, 60), gpu]);
        sim.run(ticks(Duration::from_secs(30)));
        assert_eq!(sim.policy.busy_cpu_workers(), 1);
        assert_eq!(sim.workers(0), 1, "the CPU budget is full");
        assert_eq!(sim.workers(1), 4, "the GPU pool grew to its maximum");
    }

    #[test]
    fn a_pool_without_workers_or_at_its_maximum_is_not_grown() {
        let models = vec![model(0, 0, 0, 4, 20), model(1, 2, 1, 2, 20)];
        let mut sim = Sim::new(SETTINGS, models);
        sim.run(ticks(Duration::from_secs(10)));
        assert!(sim.decisions.is_empty(), "{:?}", sim.decisions);
    }

    #[test]
    fn a_refused_scale_up_ends_its_trial() {
        let mut sim = Sim::new(SETTINGS, vec![model(0, 1, 1, 4, 30), model(1, 1, 1, 4, 20)]);
        sim.run(ticks(SETTINGS.window) + 1);
        assert_eq!(sim.decisions[0].1, Decision::Grow(0));
        // The pool did not grow after all.
        sim.models[0].sample.workers = 1;
        sim.models[0].loading = 0;
        sim.policy.refused(Decision::Grow(0));
        sim.run(1);
        assert_eq!(sim.decisions[1].1, Decision::Grow(0));
    }

    #[test]
    fn queue_wait_is_queue_length_over_answer_rate() {
        let mut sim = Sim::new(SETTINGS, vec![model(0, 2, 2, 2, 30)]);
        sim.run(ticks(SETTINGS.window) + 1);
        let view = sim.policy.view(0, sim.now, &sim.models[0].sample);
        let rate = view.answered_per_sec.unwrap();
        assert!((rate - 20.0).abs() < 1.0, "{rate}");
        let wait = view.queue_wait.unwrap().as_secs_f64();
        assert!((wait - 1.5).abs() < 0.1, "{wait}");
    }
}
