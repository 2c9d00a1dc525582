//! Host metrics as TorchServe's `system_metrics.py` reports them (psutil's definitions): CPU,
//! memory and disk of `/` read from `/proc` and `statvfs`, GPUs from `nvidia-smi` where it exists.

use std::ffi::CString;
use std::path::Path;

use crate::gpu::NvidiaSmi;

const MB: f64 = 1024.0 * 1024.0;
const GB: f64 = MB * 1024.0;

/// One reading of the host.
#[derive(Debug, Default, PartialEq)]
pub struct HostSample {
    /// Percent of CPU time busy since the previous reading (since boot for the first).
    pub cpu_utilization: Option<f64>,
    pub memory: Option<Memory>,
    pub disk: Option<Disk>,
    pub gpus: Vec<Gpu>,
}

/// Memory in megabytes, as psutil's `virtual_memory()`.
#[derive(Debug, PartialEq)]
pub struct Memory {
    pub used_mb: f64,
    pub available_mb: f64,
    pub utilization: f64,
}

/// The root filesystem in gigabytes, as psutil's `disk_usage("/")`.
#[derive(Debug, PartialEq)]
pub struct Disk {
    pub used_gb: f64,
    pub available_gb: f64,
    pub utilization: f64,
}

/// One GPU as `nvidia-smi` reports it.
#[derive(Debug, PartialEq)]
pub struct Gpu {
    pub id: String,
    pub utilization: f64,
    pub memory_used_mb: f64,
    pub memory_utilization: f64,
}

/// Reads the host; keeps the CPU counters between readings. Its reads block: call it from a
/// blocking thread.
pub struct Sampler {
    cpu: Option<CpuTimes>,
    nvidia_smi: Option<NvidiaSmi>,
}

impl Sampler {
    /// A sampler that asks `nvidia-smi` about GPUs when it is on the `PATH`.
    pub fn new() -> Self {
        Self {
            cpu: None,
            nvidia_smi: NvidiaSmi::find(),
        }
    }

    /// Takes a reading.
    pub fn sample(&mut self) -> HostSample {
        let cpu = read("/proc/stat").and_then(|s| CpuTimes::parse(&s));
        let cpu_utilization = cpu.map(|now| {
            let since = self.cpu.unwrap_or_default();
            self.cpu = Some(now);
            now.busy_percent_since(since)
        });
        HostSample {
            cpu_utilization,
            memory: read("/proc/meminfo").and_then(|s| Memory::parse(&s)),
            disk: Disk::of(Path::new("/")),
            gpus: self.nvidia_smi.as_ref().map(gpus).unwrap_or_default(),
        }
    }
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// psutil rounds percentages to one decimal.
fn percent(part: f64, whole: f64) -> f64 {
    if whole <= 0.0 {
        return 0.0;
    }
    (part / whole * 1000.0).round() / 10.0
}

/// Cumulative CPU time, in ticks, from the first line of `/proc/stat`.
#[derive(Debug, Default, Clone, Copy)]
struct CpuTimes {
    total: u64,
    idle: u64,
}

impl CpuTimes {
    fn parse(stat: &str) -> Option<Self> {
        let fields: Vec<u64> = stat
            .lines()
            .next()?
            .strip_prefix("cpu ")?
            .split_whitespace()
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        // user nice system idle iowait irq softirq steal; guest time is already in user.
        let total = fields.iter().take(8).sum();
        let idle = fields.get(3)? + fields.get(4).unwrap_or(&0);
        Some(Self { total, idle })
    }

    fn busy_percent_since(self, before: Self) -> f64 {
        let total = self.total.saturating_sub(before.total) as f64;
        let idle = self.idle.saturating_sub(before.idle) as f64;
        percent(total - idle, total)
    }
}

impl Memory {
    fn parse(meminfo: &str) -> Option<Self> {
        let field = |name: &str| -> Option<f64> {
            meminfo.lines().find_map(|line| {
                let kb = line.strip_prefix(name)?.strip_prefix(':')?;
                Some(
                    kb.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<f64>()
                        .ok()?
                        * 1024.0,
                )
            })
        };
        let total = field("MemTotal")?;
        let free = field("MemFree")?;
        let available = field("MemAvailable")?;
        let cached = field("Cached").unwrap_or(0.0) + field("SReclaimable").unwrap_or(0.0);
        let mut used = total - free - cached - field("Buffers").unwrap_or(0.0);
        if used < 0.0 {
            used = total - free;
        }
        Some(Self {
            used_mb: used / MB,
            available_mb: available / MB,
            utilization: percent(total - available, total),
        })
    }
}

impl Disk {
    fn of(mount: &Path) -> Option<Self> {
        let path = CString::new(mount.as_os_str().as_encoded_bytes()).ok()?;
        // SAFETY: statvfs writes a plain struct; the path is a valid C string.
        let stat = unsafe {
            let mut stat: libc::statvfs = std::mem::zeroed();
            (libc::statvfs(path.as_ptr(), &mut stat) == 0).then_some(stat)
        }?;
        let block = stat.f_frsize as f64;
        let used = (stat.f_blocks - stat.f_bfree) as f64 * block;
        let available = stat.f_bavail as f64 * block;
        Some(Self {
            used_gb: used / GB,
            available_gb: available / GB,
            utilization: percent(used, used + available),
        })
    }
}

/// The GPUs `nvidia-smi` lists; none when it fails or takes too long.
fn gpus(nvidia_smi: &NvidiaSmi) -> Vec<Gpu> {
    nvidia_smi
        .query(&[
            "--query-gpu=index,utilization.gpu,memory.used,memory.total",
            "--format=csv,noheader,nounits",
        ])
        .map(|csv| parse_nvidia_smi(&csv))
        .unwrap_or_default()
}

fn parse_nvidia_smi(csv: &str) -> Vec<Gpu> {
    csv.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let [id, utilization, used, total] = fields[..] else {
                return None;
            };
            let used: f64 = used.parse().ok()?;
            Some(Gpu {
                id: id.to_string(),
                utilization: utilization.parse().ok()?,
                memory_used_mb: used,
                memory_utilization: percent(used, total.parse().ok()?),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_busy_share_between_two_readings() {
        let before = CpuTimes::parse("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2\n").unwrap();
        let after = CpuTimes::parse("cpu  200 0 200 1000 200 0 0 0 50 0\n").unwrap();
        // 600 ticks passed, 400 of them idle or waiting for I/O.
        assert_eq!(after.busy_percent_since(before), 33.3);
    }

    #[test]
    fn memory_as_psutil_counts_it() {
        let meminfo = "MemTotal:       1000000 kB\nMemFree:         200000 kB\nMemAvailable:    600000 kB\nBuffers:          50000 kB\nCached:          250000 kB\nSReclaimable:     50000 kB\n";
        let memory = Memory::parse(meminfo).unwrap();
        assert_eq!(memory.used_mb, 450000.0 / 1024.0);
        assert_eq!(memory.available_mb, 600000.0 / 1024.0);
        assert_eq!(memory.utilization, 40.0);
    }

    #[test]
    fn nvidia_smi_rows_become_gpus() {
        let gpus = parse_nvidia_smi("0, 35, 1024, 81920\n1, 0, 0, 81920\nbad line\n");
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[0].id, "0");
        assert_eq!(gpus[0].utilization, 35.0);
        assert_eq!(gpus[0].memory_used_mb, 1024.0);
        assert_eq!(gpus[0].memory_utilization, 1.3);
    }

    #[test]
    fn the_host_reads_plausibly() {
        let mut sampler = Sampler::new();
        let sample = sampler.sample();
        let cpu = sample.cpu_utilization.unwrap();
        assert!((0.0..=100.0).contains(&cpu));
        let memory = sample.memory.unwrap();
        assert!(memory.used_mb > 0.0 && memory.available_mb > 0.0);
        let disk = sample.disk.unwrap();
        assert!(disk.used_gb > 0.0 && (0.0..=100.0).contains(&disk.utilization));
    }
}
