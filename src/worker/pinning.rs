//! Core pinning of workers, TorchServe's `cpu_launcher_enable` without Intel's launcher: each
//! worker of a model runs on its own slice of the server's cores, and the slices are dealt
//! again, to the live processes, whenever the pool grows or shrinks (docs/autoscaling.md,
//! "Threads per worker").

use std::collections::BTreeSet;
use std::io;

use anyhow::{bail, Context, Result};

/// The cores workers are pinned to, and how many each gets (`cpu_launcher_args`).
#[derive(Debug, Clone, PartialEq)]
pub struct CorePinning {
    /// The cores to share, lowest first: one logical CPU per physical core unless
    /// `--use_logical_core`.
    cores: Vec<usize>,
    /// Cores per worker (`--ncores_per_instance`); `None`: the cores ÷ the workers.
    per_worker: Option<usize>,
}

impl CorePinning {
    /// Reads `cpu_launcher_args` against the CPUs the server may run on and their topology
    /// under /sys; warns once about the arguments that have no effect here.
    pub fn from_args(args: &str) -> Result<Self> {
        let topology = Topology {
            siblings: |cpu| {
                read_list(&format!(
                    "/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list"
                ))
            },
            node: |node| read_list(&format!("/sys/devices/system/node/node{node}/cpulist")),
        };
        Self::from_topology(args, &server_cpus()?, &topology)
    }

    fn from_topology(args: &str, allowed: &[usize], topology: &Topology) -> Result<Self> {
        let args = LauncherArgs::parse(args)?;
        if !args.ignored.is_empty() {
            tracing::warn!(
                "cpu_launcher_args {:?} have no effect: torchyard pins each worker's cores itself, \
                 without Intel's launcher, so numactl, memory allocator and KMP settings do not apply",
                args.ignored.join(" ")
            );
        }
        let node = match args.node {
            Some(node) => Some(
                (topology.node)(node)
                    .with_context(|| format!("cpu_launcher_args: no NUMA node {node}"))?,
            ),
            None => None,
        };
        let candidates: Vec<usize> = allowed
            .iter()
            .copied()
            .filter(|cpu| node.as_ref().is_none_or(|n| n.contains(cpu)))
            .filter(|cpu| args.core_list.as_ref().is_none_or(|l| l.contains(cpu)))
            .collect();
        let cores: Vec<usize> = if args.logical {
            candidates
        } else {
            // The lowest of each physical core's logical CPUs that is a candidate.
            candidates
                .iter()
                .copied()
                .filter(|&cpu| {
                    (topology.siblings)(cpu).map_or(true, |siblings| {
                        !siblings.iter().any(|s| *s < cpu && candidates.contains(s))
                    })
                })
                .collect()
        };
        if cores.is_empty() {
            bail!(
                "cpu_launcher_args {:?} leave no core the server may run on (it may run on {})",
                args.text,
                cpu_list(allowed)
            );
        }
        tracing::info!(
            "cpu_launcher_enable: each worker is pinned to its own slice of cores {} ({} cores, {})",
            cpu_list(&cores),
            cores.len(),
            match args.per_worker {
                Some(n) => format!("{n} per worker"),
                None => "shared among a model's workers".into(),
            }
        );
        Ok(Self {
            cores,
            per_worker: args.per_worker,
        })
    }

    /// How many cores are shared out.
    pub fn cores(&self) -> usize {
        self.cores.len()
    }

    /// The cores per worker when `--ncores_per_instance` fixes them (at most every core).
    pub fn fixed_slice(&self) -> Option<usize> {
        self.per_worker.map(|n| n.min(self.cores.len()))
    }

    /// The cores of worker `rank` (its place in the pool, from 0) of `workers`: the next
    /// slice of the slice size (fixed, else the cores ÷ the workers, at least one), starting
    /// over from the first core once the cores run out.
    pub fn slice(&self, rank: usize, workers: usize) -> Vec<usize> {
        let size = self
            .fixed_slice()
            .unwrap_or(self.cores.len() / workers.max(1))
            .max(1);
        (0..size)
            .map(|i| self.cores[(rank * size + i) % self.cores.len()])
            .collect()
    }
}

/// Where the CPU topology comes from: /sys, or a test's made-up machine.
struct Topology {
    /// The logical CPUs of a CPU's physical core, itself included.
    siblings: fn(usize) -> io::Result<Vec<usize>>,
    /// The CPUs of a NUMA node.
    node: fn(usize) -> io::Result<Vec<usize>>,
}

/// `cpu_launcher_args` as torchyard reads them (Intel's `run_cpu` flags).
#[derive(Debug, Default)]
struct LauncherArgs {
    text: String,
    logical: bool,
    per_worker: Option<usize>,
    node: Option<usize>,
    core_list: Option<Vec<usize>>,
    /// The arguments that have no effect, values included.
    ignored: Vec<String>,
}

impl LauncherArgs {
    /// Reads `--flag`, `--flag value` and `--flag=value` words; `-` and `_` are the same in
    /// flag names, as in `run_cpu`.
    fn parse(text: &str) -> Result<Self> {
        let mut args = Self {
            text: text.trim().to_string(),
            ..Self::default()
        };
        let mut words = text.split_whitespace().peekable();
        while let Some(word) = words.next() {
            let (flag, inline) = match word.split_once('=') {
                Some((flag, value)) => (flag, Some(value)),
                None => (word, None),
            };
            let mut value = |needed: bool| {
                inline
                    .or_else(|| words.next_if(|w| !w.starts_with('-') || needed))
                    .ok_or_else(|| anyhow::anyhow!("cpu_launcher_args: {flag} needs a value"))
            };
            let number = |value: &str| {
                value
                    .parse::<usize>()
                    .with_context(|| format!("cpu_launcher_args: {flag} {value:?} is not a number"))
            };
            match flag.trim_start_matches('-').replace('-', "_").as_str() {
                "use_logical_core" => args.logical = true,
                "ncores_per_instance" => match value(true)? {
                    // run_cpu's default, -1, is the cores ÷ the workers.
                    "-1" => args.per_worker = None,
                    n => match number(n)? {
                        0 => bail!("cpu_launcher_args: {flag} must be at least 1"),
                        n => args.per_worker = Some(n),
                    },
                },
                "node_id" => {
                    let node = value(true)?;
                    // run_cpu's default, -1, is every node.
                    if node != "-1" {
                        args.node = Some(number(node)?);
                    }
                }
                "core_list" => {
                    let list = value(true)?;
                    args.core_list = Some(parse_list(list).with_context(|| {
                        format!("cpu_launcher_args: {flag} {list:?} is not a CPU list")
                    })?);
                }
                _ => match value(false) {
                    Ok(value) if inline.is_none() => args.ignored.push(format!("{word} {value}")),
                    _ => args.ignored.push(word.to_string()),
                },
            }
        }
        Ok(args)
    }
}

/// The CPUs the server process may run on (its affinity mask).
fn server_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set, which sched_getaffinity fills.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size given.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: reads a bit of `set` below CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Pins every thread of process `pid` to `cores`. A thread started meanwhile inherits its
/// starter's cores, so the threads are listed again until no new one shows up.
pub fn pin(pid: u32, cores: &[usize]) -> io::Result<()> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &core in cores {
        // SAFETY: sets a bit of `set`; cores come from the server's own mask, below CPU_SETSIZE.
        unsafe { libc::CPU_SET(core, &mut set) };
    }
    let mut pinned = BTreeSet::new();
    loop {
        let mut fresh = false;
        for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let name = entry?.file_name();
            let Some(tid) = name.to_str().and_then(|n| n.parse::<libc::pid_t>().ok()) else {
                continue;
            };
            if !pinned.insert(tid) {
                continue;
            }
            fresh = true;
            // SAFETY: `set` is a valid cpu_set_t of the size given.
            let done = unsafe {
                libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set)
            };
            let error = io::Error::last_os_error();
            // A thread that ended meanwhile needs no pinning.
            if done != 0 && error.raw_os_error() != Some(libc::ESRCH) {
                return Err(error);
            }
        }
        if !fresh {
            return Ok(());
        }
    }
}

/// Linux's CPU list form: `0-3,6`.
pub fn cpu_list(cores: &[usize]) -> String {
    let cores: BTreeSet<usize> = cores.iter().copied().collect();
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for core in cores {
        match ranges.last_mut() {
            Some((_, end)) if *end + 1 == core => *end = core,
            _ => ranges.push((core, core)),
        }
    }
    ranges
        .iter()
        .map(|&(start, end)| match start == end {
            true => start.to_string(),
            false => format!("{start}-{end}"),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads a CPU list in Linux's form (`0-3,6`).
fn parse_list(text: &str) -> Result<Vec<usize>, std::num::ParseIntError> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((start, end)) => cpus.extend(start.trim().parse::<usize>()?..=end.trim().parse()?),
            None => cpus.push(part.trim().parse()?),
        }
    }
    Ok(cpus)
}

fn read_list(path: &str) -> io::Result<Vec<usize>> {
    parse_list(&std::fs::read_to_string(path)?).map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Eight logical CPUs: four physical cores of two threads (0 and 4 share a core, ...),
    /// cores 0-1 on NUMA node 0 and 2-3 on node 1.
    const MACHINE: Topology = Topology {
        siblings: |cpu| Ok(vec![cpu % 4, cpu % 4 + 4]),
        node: |node| match node {
            0 => Ok(vec![0, 1, 4, 5]),
            1 => Ok(vec![2, 3, 6, 7]),
            _ => Err(io::ErrorKind::NotFound.into()),
        },
    };

    fn pinning(args: &str) -> CorePinning {
        CorePinning::from_topology(args, &(0..8).collect::<Vec<_>>(), &MACHINE).unwrap()
    }

    fn slices(pinning: &CorePinning, workers: usize) -> Vec<String> {
        (0..workers)
            .map(|rank| cpu_list(&pinning.slice(rank, workers)))
            .collect()
    }

    #[test]
    fn workers_share_physical_cores_in_disjoint_slices() {
        let physical = pinning("");
        assert_eq!(physical.cores(), 4);
        assert_eq!(slices(&physical, 1), ["0-3"]);
        assert_eq!(slices(&physical, 2), ["0-1", "2-3"]);
        // Three workers take a core each; the fourth is left over, as with run_cpu.
        assert_eq!(slices(&physical, 3), ["0", "1", "2"]);
        // More workers than cores: one core each, round robin.
        assert_eq!(slices(&physical, 6), ["0", "1", "2", "3", "0", "1"]);
        assert_eq!(physical.fixed_slice(), None);
    }

    #[test]
    fn logical_cores_and_a_fixed_slice_size() {
        let logical = pinning("--use_logical_core");
        assert_eq!(logical.cores(), 8);
        assert_eq!(slices(&logical, 2), ["0-3", "4-7"]);
        let fixed = pinning("--ncores_per_instance 3 --use_logical_core");
        assert_eq!(fixed.fixed_slice(), Some(3));
        assert_eq!(slices(&fixed, 1), ["0-2"]);
        assert_eq!(slices(&fixed, 3), ["0-2", "3-5", "0,6-7"]);
        // A slice never holds more than every core.
        assert_eq!(
            slices(&pinning("--ncores-per-instance=9"), 2),
            ["0-3", "0-3"]
        );
        assert_eq!(pinning("--ncores_per_instance -1").fixed_slice(), None);
    }

    #[test]
    fn node_and_core_list_narrow_the_cores() {
        assert_eq!(slices(&pinning("--node_id 1"), 2), ["2", "3"]);
        assert_eq!(slices(&pinning("--node_id=-1"), 1), ["0-3"]);
        let listed = pinning("--core_list 1-2,5 --use_logical_core");
        assert_eq!(slices(&listed, 1), ["1-2,5"]);
        // CPU 5 is core 1's second thread: physical cores only keep 1 and 2.
        assert_eq!(slices(&pinning("--core_list 1-2,5"), 1), ["1-2"]);
    }

    #[test]
    fn intel_only_arguments_are_accepted_and_bad_values_refused() {
        let args = LauncherArgs::parse(
            "--disable_numactl --enable_jemalloc --log_path /tmp/x --ninstances 2 --use_logical_core",
        )
        .unwrap();
        assert!(args.logical);
        assert_eq!(
            args.ignored,
            [
                "--disable_numactl",
                "--enable_jemalloc",
                "--log_path /tmp/x",
                "--ninstances 2"
            ]
        );
        let all = (0..8).collect::<Vec<_>>();
        for bad in [
            "--ncores_per_instance 0",
            "--ncores_per_instance x",
            "--ncores_per_instance",
            "--node_id 7",
            "--core_list 9",
        ] {
            assert!(
                CorePinning::from_topology(bad, &all, &MACHINE).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn cpu_lists_read_and_write_linux_form() {
        assert_eq!(cpu_list(&[6, 0, 1, 2, 3]), "0-3,6");
        assert_eq!(cpu_list(&[5]), "5");
        assert_eq!(parse_list("0-3,6\n").unwrap(), [0, 1, 2, 3, 6]);
        assert!(parse_list("a").is_err());
    }

    #[test]
    fn a_process_is_pinned_to_its_cores() {
        let all = server_cpus().unwrap();
        let first = &all[..1];
        let mut process = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pinned = pin(process.id(), first);
        let status = std::fs::read_to_string(format!("/proc/{}/status", process.id()));
        process.kill().unwrap();
        process.wait().unwrap();
        pinned.unwrap();
        let status = status.unwrap();
        let allowed = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap();
        assert_eq!(allowed.trim(), cpu_list(first));
    }
}
