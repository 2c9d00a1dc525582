//! GPUs: which ones the server may use (`number_of_gpu` of those visible), which GPU each
//! worker gets (TorchServe's round robin, `deviceType`/`deviceIds` in `model-config.yaml`),
//! and what describe says about them (`gpuUsage`). See docs/gpus.md.

mod assign;
mod nvidia_smi;
mod usage;
mod visible;

use std::sync::atomic::AtomicUsize;

pub use assign::ModelGpus;
pub use nvidia_smi::NvidiaSmi;

/// The GPUs workers are placed on, with the round-robin counter every model shares.
pub struct Gpus {
    /// The GPUs in use, as `nvidia-smi` names them (index or UUID): the first
    /// `number_of_gpu` visible ones. Worker `gpu_id` N runs on entry N.
    devices: Vec<String>,
    /// TorchServe's `WorkLoadManager.gpuCounter`: the GPU given last to a worker of a model
    /// without `deviceIds`.
    counter: AtomicUsize,
    usage: usage::UsageCache,
}

impl Gpus {
    /// Finds the visible GPUs and keeps the first `number_of_gpu` (all when unset), as
    /// TorchServe takes the smaller of the configured and available counts. Blocks: may run
    /// `nvidia-smi`.
    pub fn detect(number_of_gpu: Option<usize>) -> Self {
        let (visible, source) = visible::detect();
        let seen = visible.len();
        let gpus = Self::new(usable(visible, number_of_gpu));
        tracing::info!(
            "number of GPUs: {} ({seen} visible by {source}, number_of_gpu {})",
            gpus.count(),
            number_of_gpu.map_or("unset".into(), |n| n.to_string())
        );
        gpus
    }

    /// Workers are placed on `devices` (`nvidia-smi` names), in this order.
    pub fn new(devices: Vec<String>) -> Self {
        Self {
            devices,
            counter: AtomicUsize::new(0),
            usage: usage::UsageCache::new(),
        }
    }

    /// How many GPUs workers are placed on: TorchServe's `number_of_gpu` after detection.
    pub fn count(&self) -> usize {
        self.devices.len()
    }
}

/// The visible GPUs workers may use: at most `configured` of them.
fn usable(mut visible: Vec<String>, configured: Option<usize>) -> Vec<String> {
    visible.truncate(configured.unwrap_or(usize::MAX));
    visible
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_of_gpu_caps_the_visible_gpus() {
        let visible = || vec!["3".to_string(), "1".into(), "2".into()];
        assert_eq!(usable(visible(), None), ["3", "1", "2"]);
        assert_eq!(usable(visible(), Some(2)), ["3", "1"]);
        assert_eq!(usable(visible(), Some(8)).len(), 3);
        assert!(usable(visible(), Some(0)).is_empty());
    }
}
