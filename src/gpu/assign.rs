//! Which GPU each new worker gets, exactly as TorchServe 0.12 decides (`Model`'s constructor
//! and `WorkLoadManager.addThreads`):
//! - no GPU, or `deviceType: cpu` in `model-config.yaml`: none;
//! - `deviceIds: [..]` (every id below `number_of_gpu`): those ids in turn, from the model's
//!   own counter, starting with the first;
//! - otherwise the round robin over all GPUs that every model shares: the counter goes one
//!   further for each new worker and the worker gets where it lands, so the server's very
//!   first GPU worker gets GPU 1 (of 2 or more), the next one GPU 2, …
//!
//! A worker keeps its GPU when it is restarted; a worker added later (a scale call, the
//! autoscaler) continues the counting.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use serde_json::Value;

use super::Gpus;

/// How the workers of one model get GPUs.
pub struct ModelGpus {
    gpus: Arc<Gpus>,
    plan: Plan,
    /// GPUs per worker of a torchrun model (`parallelLevel`), 0 otherwise.
    group: usize,
    /// TorchServe's `Model.gpuCounter` for such a model: where the next worker's GPUs start.
    group_start: AtomicUsize,
}

enum Plan {
    /// No GPU for any worker.
    Cpu,
    /// The round robin shared by every model.
    Shared,
    /// The model's `deviceIds` in turn; `next` indexes them.
    Listed { ids: Vec<u32>, next: AtomicUsize },
}

impl ModelGpus {
    /// The plan for model `name` from its `model-config.yaml` (`deviceType`, `deviceIds`).
    /// Settings TorchServe ignores are ignored with a warning, as there.
    pub fn new(gpus: Arc<Gpus>, name: &str, model_config: &Value) -> Self {
        let count = gpus.count();
        let cpu = match model_config.get("deviceType") {
            None => false,
            Some(Value::String(kind)) if kind.eq_ignore_ascii_case("cpu") => true,
            Some(Value::String(kind)) if kind.eq_ignore_ascii_case("gpu") => false,
            Some(other) => {
                tracing::warn!("model {name}: deviceType {other} is ignored: it is cpu or gpu");
                false
            }
        };
        let ids = model_config
            .get("deviceIds")
            .and_then(|ids| device_ids(name, ids, count));
        let plan = match ids {
            _ if count == 0 || cpu => Plan::Cpu,
            Some(ids) => Plan::Listed {
                ids,
                next: AtomicUsize::new(0),
            },
            None => Plan::Shared,
        };
        Self {
            gpus,
            plan,
            group: 0,
            group_start: AtomicUsize::new(0),
        }
    }

    /// Gives each worker `level` GPUs, as TorchServe does for `parallelLevel` (0: one).
    pub fn in_groups_of(mut self, level: usize) -> Self {
        self.group = level;
        self
    }

    /// The GPUs of the next worker started: none on the CPU, one, or a torchrun worker's
    /// `parallelLevel` of them. Such a group takes the next `parallelLevel` GPUs (of the
    /// model's `deviceIds` when it has them, else of all) from the model's own counter,
    /// wrapping around, as TorchServe's `WorkLoadManager` steps it by `parallelLevel`.
    pub fn next_ids(&self) -> Vec<u32> {
        if self.group == 0 {
            return self.next().into_iter().collect();
        }
        let all: Vec<u32> = match &self.plan {
            Plan::Cpu => return Vec::new(),
            Plan::Shared => (0..self.gpus.count() as u32).collect(),
            Plan::Listed { ids, .. } => ids.clone(),
        };
        let (n, level) = (all.len(), self.group);
        let start = self
            .group_start
            .fetch_update(SeqCst, SeqCst, |i| Some((i + level) % n))
            .unwrap_or(0);
        (0..level).map(|i| all[(start + i) % n]).collect()
    }

    /// CUDA's names of the GPUs `ids` (as `CUDA_VISIBLE_DEVICES` lists them).
    pub fn cuda_names(&self, ids: &[u32]) -> Vec<String> {
        ids.iter()
            .filter_map(|&id| self.gpus.devices.get(id as usize).cloned())
            .collect()
    }

    /// The GPU of the next worker started, if any.
    pub fn next(&self) -> Option<u32> {
        let step = |n: usize| move |i: usize| Some((i + 1) % n);
        match &self.plan {
            Plan::Cpu => None,
            Plan::Shared => {
                let n = self.gpus.count();
                let last = self.gpus.counter.fetch_update(SeqCst, SeqCst, step(n));
                Some(((last.unwrap_or(0) + 1) % n) as u32)
            }
            Plan::Listed { ids, next } => {
                let at = next.fetch_update(SeqCst, SeqCst, step(ids.len()));
                Some(ids[at.unwrap_or(0)])
            }
        }
    }

    /// Describe's `gpuUsage` for a worker on `gpu_id`.
    pub fn usage(&self, gpu_id: Option<u32>) -> String {
        self.gpus.usage(gpu_id)
    }
}

/// `deviceIds` when it is a non-empty list of GPUs in use; else `None` and, as TorchServe,
/// a warning (an id outside the GPUs drops the whole list).
fn device_ids(name: &str, ids: &Value, count: usize) -> Option<Vec<u32>> {
    let Some(list) = ids.as_array() else {
        tracing::warn!("model {name}: deviceIds {ids} is ignored: it is a list of integers");
        return None;
    };
    let mut valid = Vec::with_capacity(list.len());
    for id in list {
        match id.as_u64().filter(|&id| id < count as u64) {
            Some(id) => valid.push(id as u32),
            None => {
                tracing::warn!(
                    "model {name}: deviceIds {ids} is ignored: {id} is not one of the \
                     {count} GPUs in use (number_of_gpu)"
                );
                return None;
            }
        }
    }
    (!valid.is_empty()).then_some(valid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gpus(count: usize) -> Arc<Gpus> {
        Arc::new(Gpus::new((0..count).map(|i| i.to_string()).collect()))
    }

    fn model(gpus: &Arc<Gpus>, config: Value) -> ModelGpus {
        ModelGpus::new(gpus.clone(), "m", &config)
    }

    /// The GPUs of the next `n` workers of `model`.
    fn take(model: &ModelGpus, n: usize) -> Vec<Option<u32>> {
        (0..n).map(|_| model.next()).collect()
    }

    #[test]
    fn the_round_robin_starts_at_gpu_1_and_is_shared_by_every_model() {
        let gpus = gpus(3);
        let (a, b) = (
            model(&gpus, json!({})),
            model(&gpus, json!({"batchSize": 4})),
        );
        assert_eq!(take(&a, 2), [Some(1), Some(2)]);
        assert_eq!(take(&b, 2), [Some(0), Some(1)]);
        assert_eq!(take(&a, 1), [Some(2)]);
        assert_eq!(take(&b, 3), [Some(0), Some(1), Some(2)]);
    }

    #[test]
    fn one_gpu_serves_every_worker_and_none_serves_none() {
        let one = gpus(1);
        assert_eq!(take(&model(&one, json!({})), 3), [Some(0); 3]);
        let none = gpus(0);
        for config in [json!({}), json!({"deviceType": "gpu", "deviceIds": [0]})] {
            assert_eq!(take(&model(&none, config), 2), [None, None]);
        }
    }

    #[test]
    fn device_type_cpu_gets_no_gpu_and_leaves_the_round_robin_alone() {
        let gpus = gpus(2);
        let shared = model(&gpus, json!({}));
        assert_eq!(take(&shared, 1), [Some(1)]);
        for kind in ["cpu", "CPU"] {
            let cpu = model(&gpus, json!({"deviceType": kind, "deviceIds": [1]}));
            assert_eq!(take(&cpu, 2), [None, None]);
        }
        assert_eq!(take(&shared, 1), [Some(0)]);
    }

    #[test]
    fn device_type_gpu_or_anything_else_uses_the_gpus() {
        let gpus = gpus(2);
        for kind in [json!("gpu"), json!("GPU"), json!("neuron"), json!(3)] {
            let m = model(&gpus, json!({ "deviceType": kind }));
            assert!(m.next().is_some(), "{kind}");
        }
    }

    #[test]
    fn device_ids_take_turns_from_the_models_own_counter() {
        let gpus = gpus(3);
        let shared = model(&gpus, json!({}));
        let listed = model(&gpus, json!({"deviceIds": [2, 0]}));
        assert_eq!(take(&shared, 1), [Some(1)]);
        assert_eq!(take(&listed, 3), [Some(2), Some(0), Some(2)]);
        let again = model(&gpus, json!({"deviceType": "gpu", "deviceIds": [1, 1, 0]}));
        assert_eq!(take(&again, 4), [Some(1), Some(1), Some(0), Some(1)]);
        // The shared counter did not move.
        assert_eq!(take(&shared, 1), [Some(2)]);
    }

    #[test]
    fn torchrun_workers_take_parallel_level_gpus_from_the_models_counter() {
        let gpus = gpus(4);
        let shared = model(&gpus, json!({}));
        let grouped = model(&gpus, json!({})).in_groups_of(2);
        let ids = |m: &ModelGpus| (0..3).map(|_| m.next_ids()).collect::<Vec<_>>();
        assert_eq!(ids(&grouped), [vec![0, 1], vec![2, 3], vec![0, 1]]);
        // The shared round robin did not move.
        assert_eq!(take(&shared, 1), [Some(1)]);
        let listed = model(&gpus, json!({"deviceIds": [3, 1, 2]})).in_groups_of(2);
        assert_eq!(ids(&listed), [vec![3, 1], vec![2, 3], vec![1, 2]]);
        assert_eq!(grouped.cuda_names(&[2, 3]), ["2", "3"]);
        let cpu = model(&gpus, json!({"deviceType": "cpu"})).in_groups_of(2);
        assert_eq!(cpu.next_ids(), Vec::<u32>::new());
        assert_eq!(model(&gpus, json!({})).next_ids(), [2]);
    }

    #[test]
    fn invalid_device_ids_fall_back_to_the_round_robin() {
        let gpus = gpus(2);
        for ids in [
            json!([0, 2]),
            json!([-1]),
            json!([1.5]),
            json!(["0"]),
            json!([]),
            json!(1),
        ] {
            let fresh = Arc::new(Gpus::new(vec!["0".into(), "1".into()]));
            let m = model(&fresh, json!({ "deviceIds": ids }));
            assert_eq!(take(&m, 3), [Some(1), Some(0), Some(1)], "{ids}");
        }
        // number_of_gpu=2 of 3 visible: GPU 2 is not in use.
        assert_eq!(take(&model(&gpus, json!({"deviceIds": [2]})), 1), [Some(1)]);
    }

    #[test]
    fn concurrent_workers_get_an_even_share() {
        let gpus = gpus(4);
        let m = Arc::new(model(&gpus, json!({})));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || take(&m, 100))
            })
            .collect();
        let mut per_gpu = [0; 4];
        for thread in threads {
            for gpu in thread.join().unwrap() {
                per_gpu[gpu.unwrap() as usize] += 1;
            }
        }
        assert_eq!(per_gpu, [200; 4]);
    }
}
