//! Describe's `gpuUsage` for a worker, in TorchServe's `WorkerThread.getGpuUsage` format:
//! `gpuId::0 utilization.gpu [%]::35 % utilization.memory [%]::10 % memory.used [MiB]::1024 MiB`,
//! `N/A` for a worker without GPU, and TorchServe's `failed to obtained gpu usage` when
//! `nvidia-smi` cannot tell. One `nvidia-smi` reading serves every worker for a second.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Gpus, NvidiaSmi};

/// How long one reading answers describe calls.
const FRESH: Duration = Duration::from_secs(1);

/// TorchServe's text when `nvidia-smi` fails (sic).
const FAILED: &str = "failed to obtained gpu usage";

/// The latest `nvidia-smi` reading.
pub(super) struct UsageCache {
    nvidia_smi: Option<NvidiaSmi>,
    latest: Mutex<Option<(Instant, Vec<GpuUsage>)>>,
}

/// One GPU's row: how `nvidia-smi` names it and its usage text (without `gpuId`).
#[derive(Debug, PartialEq)]
struct GpuUsage {
    index: String,
    uuid: String,
    text: String,
}

impl UsageCache {
    pub(super) fn new() -> Self {
        Self {
            nvidia_smi: NvidiaSmi::find(),
            latest: Mutex::new(None),
        }
    }

    fn is_fresh(&self) -> bool {
        let latest = self.latest.lock().expect("usage lock");
        latest.as_ref().is_some_and(|(at, _)| at.elapsed() < FRESH)
    }

    /// Takes a reading. Blocks on `nvidia-smi`.
    fn read(&self) {
        let rows = self
            .nvidia_smi
            .as_ref()
            .and_then(|smi| {
                smi.query(&[
                    "--query-gpu=index,uuid,utilization.gpu,utilization.memory,memory.used",
                    "--format=csv",
                ])
            })
            .map(|csv| parse(&csv))
            .unwrap_or_default();
        *self.latest.lock().expect("usage lock") = Some((Instant::now(), rows));
    }
}

impl Gpus {
    /// Reads the GPUs' usage for describe unless a reading is under a second old; nothing
    /// without GPUs. `nvidia-smi` runs on a blocking thread.
    pub async fn refresh_usage(self: &Arc<Self>) {
        if self.devices.is_empty() || self.usage.is_fresh() {
            return;
        }
        let gpus = self.clone();
        let _ = tokio::task::spawn_blocking(move || gpus.usage.read()).await;
    }

    /// Describe's `gpuUsage` for a worker on `gpu_id`, from the latest reading.
    pub fn usage(&self, gpu_id: Option<u32>) -> String {
        let Some(id) = gpu_id else {
            return "N/A".into();
        };
        let latest = self.usage.latest.lock().expect("usage lock");
        let device = self.devices.get(id as usize);
        let row = latest.as_ref().zip(device).and_then(|((_, rows), device)| {
            rows.iter().find(|row| {
                row.index == *device
                    || (device.starts_with("GPU-") && row.uuid.starts_with(device.as_str()))
            })
        });
        row.map_or(FAILED.into(), |row| format!("gpuId::{id} {}", row.text))
    }
}

/// The rows of `nvidia-smi --query-gpu=index,uuid,… --format=csv` (a header line, then one
/// line per GPU): each field after index and uuid becomes `header::value`.
fn parse(csv: &str) -> Vec<GpuUsage> {
    let mut lines = csv.lines();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let header: Vec<&str> = header.split(',').map(str::trim).collect();
    lines
        .filter_map(|line| {
            let values: Vec<&str> = line.split(',').map(str::trim).collect();
            let [index, uuid, rest @ ..] = &values[..] else {
                return None;
            };
            if values.len() != header.len() {
                return None;
            }
            let text = header[2..]
                .iter()
                .zip(rest)
                .map(|(name, value)| format!("{name}::{value}"))
                .collect::<Vec<_>>()
                .join(" ");
            Some(GpuUsage {
                index: index.to_string(),
                uuid: uuid.to_string(),
                text,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str =
        "index, uuid, utilization.gpu [%], utilization.memory [%], memory.used [MiB]\n\
        0, GPU-aaaa-1111, 35 %, 10 %, 1024 MiB\n\
        1, GPU-bbbb-2222, 0 %, 0 %, 3 MiB\n";

    fn with_reading(devices: &[&str], csv: &str) -> Gpus {
        let gpus = Gpus::new(devices.iter().map(|d| d.to_string()).collect());
        *gpus.usage.latest.lock().unwrap() = Some((Instant::now(), parse(csv)));
        gpus
    }

    #[test]
    fn usage_reads_as_torchserve_writes_it() {
        let gpus = with_reading(&["0", "1"], CSV);
        assert_eq!(
            gpus.usage(Some(0)),
            "gpuId::0 utilization.gpu [%]::35 % utilization.memory [%]::10 % memory.used [MiB]::1024 MiB"
        );
        assert!(gpus
            .usage(Some(1))
            .starts_with("gpuId::1 utilization.gpu [%]::0 %"));
        assert_eq!(gpus.usage(None), "N/A");
    }

    #[test]
    fn worker_gpus_are_found_through_cuda_visible_devices() {
        // CUDA_VISIBLE_DEVICES=1,GPU-aaaa: worker GPU 0 is nvidia-smi's 1, GPU 1 its 0.
        let gpus = with_reading(&["1", "GPU-aaaa"], CSV);
        assert!(gpus.usage(Some(0)).ends_with("memory.used [MiB]::3 MiB"));
        assert!(gpus
            .usage(Some(1))
            .starts_with("gpuId::1 utilization.gpu [%]::35 %"));
    }

    #[test]
    fn without_a_reading_usage_failed() {
        let gpus = with_reading(&["0", "7"], CSV);
        assert_eq!(gpus.usage(Some(1)), FAILED);
        assert_eq!(gpus.usage(Some(5)), FAILED);
        let none = Gpus::new(vec!["0".into()]);
        assert_eq!(none.usage(Some(0)), FAILED);
        assert!(parse("").is_empty());
        assert!(parse("index, uuid, x\n0, GPU-a\n").is_empty());
    }
}
