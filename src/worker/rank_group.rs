//! torchrun workers (TorchServe's `parallelType`, `parallelLevel` and `torchrun:` in
//! `model-config.yaml`): one worker is `nproc-per-node` Python processes, its ranks, each
//! with torchrun's environment (`LOCAL_RANK`, `RANK`, `WORLD_SIZE`, `MASTER_ADDR`, ...).
//!
//! The server starts the ranks itself, each on a socket of its own, instead of running
//! `torchrun`: rank 0 is the worker the supervisor talks to, and every message it gets goes
//! to the other ranks too; their replies are read and dropped, and any of them dying (or
//! failing its load) breaks the whole worker, which the supervisor then restarts as one.
//! See docs/protocol.md, "torchrun workers".

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use serde_json::Value;
use tokio::net::unix::OwnedWriteHalf;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::process::{Process, WorkerProcess};
use super::protocol::{write_frame, FromWorker};
use super::supervisor::WorkerSpec;

/// TorchServe's `parallelType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParallelType {
    Pp,
    Tp,
    Pptp,
    /// The handler parallelises itself: one process that sees the worker's GPUs.
    Custom,
}

impl ParallelType {
    fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "pp" => Some(Self::Pp),
            "tp" => Some(Self::Tp),
            "pptp" => Some(Self::Pptp),
            "custom" => Some(Self::Custom),
            _ => None,
        }
    }

    /// The name TorchServe's describe shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pp => "pp",
            Self::Tp => "tp",
            Self::Pptp => "pptp",
            Self::Custom => "custom",
        }
    }
}

/// A model's parallelism: how many GPUs (and, but for `custom`, processes) a worker has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parallelism {
    pub kind: ParallelType,
    /// `parallelLevel`, or `torchrun.nproc-per-node` when given.
    pub level: usize,
    /// `torchrun.master-addr`; `127.0.0.1` when unset.
    master_addr: String,
    /// `torchrun.master-port`; a free port per start of each worker when unset.
    master_port: Option<u16>,
    /// `torchrun.OMP_NUMBER_THREADS` (TorchServe's default 1), each rank's `OMP_NUM_THREADS`.
    omp_threads: u64,
}

impl Parallelism {
    /// The parallelism `model-config.yaml` asks for, `None` for plain workers: as in
    /// TorchServe, only a `parallelType` of `pp`, `tp`, `pptp` or `custom` with a level above 0
    /// (`torchrun.nproc-per-node`, else `parallelLevel`) makes one. Invalid values are ignored
    /// with a warning, as there.
    pub fn from_yaml(name: &str, config: &Value) -> Option<Self> {
        let kind = match config.get("parallelType") {
            None => None,
            Some(Value::String(kind)) => ParallelType::parse(kind).or_else(|| {
                tracing::warn!(
                    "model {name}: parallelType {kind} is ignored: it is pp, tp, pptp or custom"
                );
                None
            }),
            Some(other) => {
                tracing::warn!("model {name}: parallelType {other} is ignored: it is a string");
                None
            }
        };
        let torchrun = config.get("torchrun").and_then(|t| {
            t.as_object().or_else(|| {
                tracing::warn!("model {name}: torchrun {t} is ignored: it is a map of settings");
                None
            })
        });
        let setting = |key: &str| torchrun.and_then(|t| t.get(key));
        let number = |key: &str, value: Option<&Value>| {
            value.and_then(|v| {
                v.as_u64().or_else(|| {
                    tracing::warn!("model {name}: {key} {v} is ignored: it is a whole number");
                    None
                })
            })
        };
        let level = number("torchrun.nproc-per-node", setting("nproc-per-node"))
            .or_else(|| number("parallelLevel", config.get("parallelLevel")))
            .unwrap_or(0);
        if let Some(nodes) = number("torchrun.nnodes", setting("nnodes")).filter(|&n| n > 1) {
            tracing::warn!(
                "model {name}: torchrun.nnodes {nodes} is ignored: a worker runs on one node"
            );
        }
        let Some(kind) = kind else {
            if torchrun.is_some() || config.get("parallelLevel").is_some() {
                tracing::warn!(
                    "model {name}: torchrun and parallelLevel are ignored without a parallelType \
                     of pp, tp, pptp or custom"
                );
            }
            return None;
        };
        if level == 0 {
            return None;
        }
        let master_addr = match setting("master-addr") {
            Some(Value::String(addr)) => addr.clone(),
            _ => Ipv4Addr::LOCALHOST.to_string(),
        };
        let master_port = number("torchrun.master-port", setting("master-port"))
            .and_then(|p| u16::try_from(p).ok());
        let omp_threads =
            number("torchrun.OMP_NUMBER_THREADS", setting("OMP_NUMBER_THREADS")).unwrap_or(1);
        Some(Self {
            kind,
            level: level as usize,
            master_addr,
            master_port,
            omp_threads,
        })
    }

    /// How many processes a worker has: `level`, or one for `custom`.
    pub fn ranks(&self) -> usize {
        match self.kind {
            ParallelType::Custom => 1,
            _ => self.level,
        }
    }

    /// Starts the ranks of a worker of `spec` (logging as `label`, on the GPUs `gpu_ids`),
    /// each `python -m torchyard.worker` on a socket of its own derived from `socket`, with
    /// torchrun's environment and, when the worker has GPUs, `CUDA_VISIBLE_DEVICES` listing
    /// them all. The worker returned is rank 0, leading the others. `restarts` is torchrun's
    /// `TORCHELASTIC_RESTART_COUNT`.
    pub(super) async fn start(
        &self,
        spec: &WorkerSpec,
        label: &str,
        socket: &Path,
        gpu_ids: &[u32],
        restarts: usize,
    ) -> std::io::Result<WorkerProcess> {
        let (env, deps_dir, work_dir) = (&spec.python, spec.deps_dir.as_deref(), &spec.model_dir);
        let cuda_devices = spec.gpus.cuda_names(gpu_ids);
        let world = self.ranks();
        let port = match self.master_port {
            Some(port) => port,
            None => free_port()?,
        };
        let mut common = vec![("OMP_NUM_THREADS".to_string(), self.omp_threads.to_string())];
        if !cuda_devices.is_empty() {
            common.push(("CUDA_VISIBLE_DEVICES".into(), cuda_devices.join(",")));
        }
        if self.kind != ParallelType::Custom {
            common.extend(
                [
                    ("WORLD_SIZE", world.to_string()),
                    ("LOCAL_WORLD_SIZE", world.to_string()),
                    ("ROLE_WORLD_SIZE", world.to_string()),
                    ("GROUP_RANK", "0".into()),
                    ("ROLE_NAME", "default".into()),
                    ("MASTER_ADDR", self.master_addr.clone()),
                    ("MASTER_PORT", port.to_string()),
                    ("TORCHELASTIC_RESTART_COUNT", restarts.to_string()),
                    ("TORCHELASTIC_RUN_ID", label.to_string()),
                    ("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1".into()),
                ]
                .map(|(k, v)| (k.to_string(), v)),
            );
        }
        let starts = (0..world).map(|rank| {
            let mut vars = common.clone();
            if self.kind != ParallelType::Custom {
                for key in ["LOCAL_RANK", "RANK", "ROLE_RANK"] {
                    vars.push((key.to_string(), rank.to_string()));
                }
            }
            let (label, socket) = match rank {
                0 => (label.to_string(), socket.to_path_buf()),
                _ => (
                    format!("{label}-rank{rank}"),
                    socket.with_extension(format!("r{rank}.sock")),
                ),
            };
            async move {
                WorkerProcess::spawn_with(env, deps_dir, &label, &socket, work_dir, &vars).await
            }
        });
        let mut ranks = futures::future::try_join_all(starts).await?.into_iter();
        let first = ranks.next().expect("a worker has one rank at least");
        let others: Vec<WorkerProcess> = ranks.collect();
        Ok(if others.is_empty() {
            first
        } else {
            first.lead(OtherRanks::new(others))
        })
    }
}

/// A port no one listens on now, for a worker's `MASTER_PORT`.
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// The ranks of a torchrun worker after rank 0: their sockets' write halves and processes,
/// and a task per rank that reads and drops its replies until it dies.
pub(super) struct OtherRanks {
    ranks: Vec<OtherRank>,
    /// Cancelled when one of them died or failed its load; `reason` then says which and why.
    broken: CancellationToken,
    reason: Arc<OnceLock<String>>,
}

struct OtherRank {
    process: Process,
    out: OwnedWriteHalf,
    reader: JoinHandle<()>,
}

impl OtherRanks {
    /// Takes over `ranks` (rank 1 onwards, in order).
    fn new(ranks: Vec<WorkerProcess>) -> Self {
        let broken = CancellationToken::new();
        let reason = Arc::new(OnceLock::new());
        let ranks = ranks
            .into_iter()
            .enumerate()
            .map(|(i, rank)| {
                let (process, mut frames, out) = rank.into_parts();
                let (broken, reason) = (broken.clone(), reason.clone());
                let reader = tokio::spawn(async move {
                    let rank = i + 1;
                    let mut loaded = false;
                    let why = loop {
                        let frame = match frames.next().await {
                            Ok(frame) => frame,
                            Err(e) => break format!("rank {rank} is gone: {e}"),
                        };
                        if loaded {
                            continue;
                        }
                        match frame.message::<FromWorker>() {
                            Ok(FromWorker::Loaded { .. }) => loaded = true,
                            Ok(FromWorker::Error { message, .. }) => {
                                break format!("rank {rank} failed to load: {message}")
                            }
                            _ => {}
                        }
                    };
                    let _ = reason.set(why);
                    broken.cancel();
                });
                OtherRank {
                    process,
                    out,
                    reader,
                }
            })
            .collect();
        Self {
            ranks,
            broken,
            reason,
        }
    }

    /// Sends one message to every rank.
    pub(super) async fn send(
        &mut self,
        header: &impl serde::Serialize,
        blobs: &[&bytes::Bytes],
    ) -> std::io::Result<()> {
        for (i, rank) in self.ranks.iter_mut().enumerate() {
            write_frame(&mut rank.out, header, blobs)
                .await
                .map_err(|e| std::io::Error::other(format!("rank {} is gone: {e}", i + 1)))?;
        }
        Ok(())
    }

    /// Resolves, with the reason, once a rank died or failed its load.
    pub(super) async fn broken(&self) -> String {
        self.broken.cancelled().await;
        self.reason.get().cloned().unwrap_or_default()
    }

    /// [`OtherRanks::broken`] of `ranks`, never without any.
    pub(super) async fn broken_in(ranks: Option<&Self>) -> String {
        match ranks {
            Some(ranks) => ranks.broken().await,
            None => std::future::pending().await,
        }
    }

    /// Closes every rank's socket, lets them exit for a moment, then kills those left.
    pub(super) async fn stop(self) {
        let stops = self.ranks.into_iter().map(|rank| async move {
            let OtherRank {
                mut process,
                out,
                reader,
            } = rank;
            drop(out);
            reader.abort();
            let exited = tokio::time::timeout(std::time::Duration::from_secs(5), process.exited());
            if exited.await.is_err() {
                process.kill().await;
            }
        });
        futures::future::join_all(stops).await;
    }

    /// Kills every rank at once.
    pub(super) async fn kill(self) {
        let kills = self.ranks.into_iter().map(|mut rank| async move {
            rank.reader.abort();
            rank.process.kill().await;
        });
        futures::future::join_all(kills).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Option<Parallelism> {
        Parallelism::from_yaml("m", &serde_yaml_ng::from_str(yaml).unwrap())
    }

    #[test]
    fn torchrun_nproc_per_node_sets_the_level_of_a_parallel_type() {
        let p = parse("parallelType: tp\ntorchrun:\n  nproc-per-node: 4\n").unwrap();
        assert_eq!((p.kind, p.level, p.ranks()), (ParallelType::Tp, 4, 4));
        assert_eq!(p.master_addr, "127.0.0.1");
        assert_eq!((p.master_port, p.omp_threads), (None, 1));
        let p = parse("parallelType: PP\nparallelLevel: 2\n").unwrap();
        assert_eq!((p.kind, p.level), (ParallelType::Pp, 2));
        let p = parse(
            "parallelType: pptp\nparallelLevel: 8\ntorchrun:\n  nproc-per-node: 2\n  \
             master-addr: 10.0.0.1\n  master-port: 29600\n  OMP_NUMBER_THREADS: 3\n",
        )
        .unwrap();
        assert_eq!(p.level, 2);
        assert_eq!(
            (p.master_addr.as_str(), p.master_port),
            ("10.0.0.1", Some(29600))
        );
        assert_eq!(p.omp_threads, 3);
    }

    #[test]
    fn custom_is_one_process_with_the_levels_gpus() {
        let p = parse("parallelType: custom\nparallelLevel: 2\n").unwrap();
        assert_eq!((p.level, p.ranks()), (2, 1));
    }

    #[test]
    fn no_valid_type_or_no_level_is_no_parallelism() {
        for yaml in [
            "torchrun:\n  nproc-per-node: 2\n",
            "parallelType: dp\nparallelLevel: 2\n",
            "parallelType: 3\nparallelLevel: 2\n",
            "parallelType: tp\n",
            "parallelType: tp\nparallelLevel: -1\n",
            "parallelType: tp\nparallelLevel: two\n",
            "parallelType: tp\ntorchrun: 2\n",
            "batchSize: 4\n",
        ] {
            assert_eq!(parse(yaml), None, "{yaml}");
        }
    }

    #[test]
    fn free_ports_are_bindable() {
        let port = free_port().unwrap();
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
    }
}
