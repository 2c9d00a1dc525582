//! Server settings: TorchServe's `config.properties` keys merged with the command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::archive::UnpackLimits;
use crate::cli::ServeArgs;
use crate::logging::{self, LogConfig};
use crate::metrics::{MetricsConfig, MetricsMode};
use crate::model::{usable_cores, ModelPresets, ScalingSettings};
use crate::properties::Properties;

/// Everything the server needs to start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub inference_address: SocketAddr,
    pub management_address: SocketAddr,
    pub metrics_address: SocketAddr,
    /// TorchServe's gRPC inference listener: `grpc_inference_address` (a host, default
    /// 127.0.0.1) and `grpc_inference_port` (default 7070).
    pub grpc_inference_address: SocketAddr,
    /// The gRPC management listener: `grpc_management_address` and `grpc_management_port`
    /// (default 7071).
    pub grpc_management_address: SocketAddr,
    /// Whether the gRPC listeners speak TLS with `certificate_file` and `private_key_file`
    /// (`enable_grpc_ssl`, as in TorchServe).
    pub grpc_tls: bool,
    pub model_store: Option<PathBuf>,
    pub workflow_store: Option<PathBuf>,
    /// Archives to load at start: `name=file.mar`, `file.mar` or `all`.
    pub load_models: Vec<String>,
    /// Workflow archives to load at start, in the same forms.
    pub load_workflows: Vec<String>,
    pub default_workers_per_model: usize,
    /// Workers of a model registered through the API without `initial_workers`:
    /// `default_workers_per_model` when the configuration sets it, else 0 (as TorchServe).
    pub api_default_workers: usize,
    pub job_queue_size: usize,
    pub default_response_timeout: Duration,
    pub max_request_size: usize,
    /// How long a client has to send a request head once the server waits for one; this also
    /// bounds keep-alive idling between requests and the TLS handshake.
    pub connection_header_read_timeout: Duration,
    /// The longest the server waits for the next bytes of a request body.
    pub connection_idle_timeout: Duration,
    /// Connections open at once per listener; `None`: derived from the open-file limit.
    pub max_connections: Option<usize>,
    /// At most this many of the visible GPUs get workers (`number_of_gpu`); `None`: all.
    pub number_of_gpu: Option<usize>,
    pub python: Option<PathBuf>,
    /// The autoscaler's knobs: the worker budget, its measurement window, hold and idle time.
    pub autoscale: ScalingSettings,
    /// Whether workers are forked from a fork server that has imported torch already
    /// (`fork_workers`, default true), rather than each started as a fresh interpreter.
    pub fork_workers: bool,
    /// Whether an archive's requirements.txt is installed for its model.
    pub install_py_dep_per_model: bool,
    /// Whether the APIs require the Bearer keys of key_file.json.
    pub token_auth: bool,
    /// Whether models and workflows may be registered and unregistered through the API.
    pub model_api_enabled: bool,
    /// Regular expressions a registration url outside the stores must match in full.
    pub allowed_urls: Vec<String>,
    /// PEM certificate and private key: when both are set, every listener speaks HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Where snapshots go; `None` when they are off (`--ncs`).
    pub snapshot_dir: Option<PathBuf>,
    /// Most workers one model (or workflow node) may have.
    pub max_workers_per_model: usize,
    /// How long downloading one archive may take, redirects included.
    pub download_timeout: Duration,
    /// How long `DELETE /models/...` waits for the workers to stop before answering 408
    /// (`unregister_model_timeout`, seconds, default 120 as in TorchServe); stopping goes on.
    pub unregister_model_timeout: Duration,
    /// Largest archive a download may bring.
    pub max_download_size: u64,
    /// Whether workers decode JSON and text parameters for handlers (else raw bytes).
    pub decode_input_request: bool,
    /// TorchServe's `service_envelope` (`TS_SERVICE_ENVELOPE`): the request envelope every
    /// model's handler is wrapped in, one of [`ENVELOPES`]; `None` when unset or empty.
    pub service_envelope: Option<String>,
    /// What the metrics API exports (`metrics_mode`).
    pub metrics_mode: MetricsMode,
    /// TorchServe's `metrics_config` YAML, or its default `metrics.yaml` when not set.
    pub metrics_config: MetricsConfig,
    /// Whether handler metrics nobody declared are exported (`model_metrics_auto_detect`,
    /// true unless set to false).
    pub model_metrics_auto_detect: bool,
    /// How often host metrics are read (`metric_time_interval`, seconds); `None` when
    /// `disable_system_metrics` is true.
    pub system_metrics_interval: Option<Duration>,
    /// How much one archive may unpack to.
    pub archive_limits: UnpackLimits,
    /// How long SIGTERM waits for requests in flight before failing them and killing workers.
    pub shutdown_timeout: Duration,
    /// TorchServe's `model_snapshot` JSON, when the configuration carries one (KServe's does).
    pub model_snapshot: Option<String>,
    /// torchyard's `workflow_snapshot` JSON, beside `model_snapshot`.
    pub workflow_snapshot: Option<String>,
    /// Every setting as read, written into snapshots as TorchServe does.
    pub settings: Vec<(String, String)>,
    /// Cross-origin requests: `cors_allowed_origin`, `_methods`, `_headers`.
    pub cors: Cors,
    /// Per-model settings of the models loaded at start (`models`).
    pub models: ModelPresets,
    /// The log files and levels: `--log-config` or vmargs' log4j2 XML, else the default.
    pub logging: LogConfig,
}

/// TorchServe's CORS settings; all `None` turns CORS off.
#[derive(Debug, Clone, Default)]
pub struct Cors {
    pub allowed_origin: Option<String>,
    pub allowed_methods: Option<String>,
    pub allowed_headers: Option<String>,
}

impl ServerConfig {
    /// Reads the config file named by the arguments (if any) and applies the flags over it.
    /// Relative paths, from the flags and the file alike, are resolved once against the
    /// directory the server was started in: workers run in their model's directory.
    pub fn from_args(args: &ServeArgs) -> Result<Self> {
        let cwd = std::env::current_dir().context("cannot read the current directory")?;
        Self::from_args_in(args, &cwd)
    }

    /// [`ServerConfig::from_args`] with relative paths resolved against `cwd`.
    fn from_args_in(args: &ServeArgs, cwd: &Path) -> Result<Self> {
        let resolve = |p: &Path| cwd.join(p);
        // With no configuration file at all, TorchServe starts from its newest snapshot.
        let last_snapshot = (!args.ncs)
            .then(|| {
                let dir = args
                    .snapshot_dir
                    .as_deref()
                    .unwrap_or(Path::new("logs/config"));
                crate::snapshot_file::latest(&resolve(dir))
            })
            .flatten();
        let props = Properties::load(
            args.config.as_deref().map(resolve).as_deref(),
            last_snapshot.as_deref(),
        )?;
        let get = |key: &str| props.get(key);
        let address = |key: &str, default: &str| -> Result<SocketAddr> {
            parse_address(get(key).unwrap_or(default)).with_context(|| format!("invalid {key}"))
        };
        let grpc_address = |host_key: &str, port_key: &str, default_port: u16| {
            let host = get(host_key).unwrap_or("127.0.0.1").trim();
            let port = get(port_key).map_or(Ok(default_port), |p| {
                p.trim()
                    .parse()
                    .with_context(|| format!("invalid {port_key}: {p:?}"))
            })?;
            parse_host(host, port).with_context(|| format!("invalid {host_key}"))
        };
        let number = |key: &str, default: usize| -> Result<usize> {
            get(key).map_or(Ok(default), |v| {
                v.trim()
                    .parse()
                    .with_context(|| format!("invalid {key}: {v:?}"))
            })
        };
        let limit = |key: &str, default: u64| -> Result<u64> {
            get(key).map_or(Ok(default), |v| {
                v.trim()
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| anyhow!("invalid {key}: {v:?}, expected a positive integer"))
            })
        };
        let flag = |key: &str| get(key).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        let unless_false =
            |key: &str| !get(key).is_some_and(|v| v.trim().eq_ignore_ascii_case("false"));
        // A flag wins over the file, a `TS_*` variable over both (TorchServe's order).
        let path = |key: &str, flag: &Option<PathBuf>| match flag {
            Some(flag) if !props.set_by_env(key) => Some(resolve(flag)),
            _ => get(key).map(|p| resolve(Path::new(p))),
        };
        // `--models` over `load_models`, `--workflows` over `load_workflows`, unless a `TS_*`
        // variable set the key.
        let entries = |key: &str, flag: &[String]| -> Vec<String> {
            match get(key) {
                Some(value) if flag.is_empty() || props.set_by_env(key) => split_list(value),
                _ => flag.iter().flat_map(|m| split_list(m)).collect(),
            }
        };
        let load_models = entries("load_models", &args.models);
        let load_workflows = entries("load_workflows", &args.workflows);
        let model_store = path("model_store", &args.model_store);
        let workflow_store =
            path("workflow_store", &args.workflow_store).or_else(|| model_store.clone());
        let max_workers_per_model = number("max_workers_per_model", 128)?;
        let default_workers_per_model = number("default_workers_per_model", 1)?;
        if default_workers_per_model > max_workers_per_model {
            bail!("default_workers_per_model ({default_workers_per_model}) is above max_workers_per_model ({max_workers_per_model})");
        }
        let logging = logging::read(&props, args.log_config.as_deref(), cwd)?;
        let config = Self {
            logging,
            inference_address: address("inference_address", "http://127.0.0.1:8080")?,
            management_address: address("management_address", "http://127.0.0.1:8081")?,
            metrics_address: address("metrics_address", "http://127.0.0.1:8082")?,
            grpc_inference_address: grpc_address(
                "grpc_inference_address",
                "grpc_inference_port",
                7070,
            )?,
            grpc_management_address: grpc_address(
                "grpc_management_address",
                "grpc_management_port",
                7071,
            )?,
            grpc_tls: flag("enable_grpc_ssl"),
            model_store,
            workflow_store,
            load_models,
            load_workflows,
            default_workers_per_model,
            api_default_workers: get("default_workers_per_model")
                .map_or(0, |_| default_workers_per_model),
            max_workers_per_model,
            download_timeout: Duration::from_secs(number("download_timeout", 300)? as u64),
            unregister_model_timeout: Duration::from_secs(
                number("unregister_model_timeout", 120)? as u64
            ),
            max_download_size: number("max_download_size", 10 << 30)? as u64,
            job_queue_size: number("job_queue_size", 100)?.max(1),
            default_response_timeout: Duration::from_secs(
                number("default_response_timeout", 120)? as u64
            ),
            max_request_size: number("max_request_size", 6_553_500)?,
            connection_header_read_timeout: Duration::from_millis(
                number("connection_header_read_timeout_ms", 10_000)?.max(1) as u64,
            ),
            connection_idle_timeout: Duration::from_millis(
                number("connection_idle_timeout_ms", 60_000)?.max(1) as u64,
            ),
            max_connections: get("max_connections")
                .map(|_| number("max_connections", 0))
                .transpose()?,
            number_of_gpu: get("number_of_gpu")
                .map(|_| number("number_of_gpu", 0))
                .transpose()?,
            metrics_mode: get("metrics_mode")
                .map_or(Ok(MetricsMode::Prometheus), str::parse)
                .map_err(|e: String| anyhow!(e))?,
            metrics_config: get("metrics_config").map_or_else(
                || Ok(MetricsConfig::defaults()),
                |path| MetricsConfig::load(Path::new(path.trim())),
            )?,
            model_metrics_auto_detect: get("model_metrics_auto_detect")
                .is_none_or(|v| !v.trim().eq_ignore_ascii_case("false")),
            system_metrics_interval: (!flag("disable_system_metrics")).then_some(
                Duration::from_secs(number("metric_time_interval", 60)?.max(1) as u64),
            ),
            python: args
                .python
                .clone()
                .or_else(|| std::env::var_os("TORCHYARD_PYTHON").map(PathBuf::from))
                .map(|python| program_path(cwd, python)),
            autoscale: ScalingSettings {
                worker_budget: number("autoscale_worker_budget", usable_cores())?,
                window: Duration::from_millis(limit("autoscale_window_ms", 2_000)?),
                hold: Duration::from_millis(number("autoscale_hold_ms", 30_000)? as u64),
                scale_down_idle: Duration::from_millis(number("scale_down_idle_ms", 10_000)? as u64),
            },
            fork_workers: unless_false("fork_workers"),
            token_auth: !(flag("disable_token_authorization") || args.disable_token_auth),
            model_api_enabled: flag("enable_model_api") || args.enable_model_api,
            allowed_urls: get("allowed_urls").map(split_list).unwrap_or_default(),
            install_py_dep_per_model: flag("install_py_dep_per_model"),
            decode_input_request: unless_false("decode_input_request"),
            service_envelope: get("service_envelope")
                .map(service_envelope)
                .transpose()?
                .flatten(),
            tls: get("certificate_file")
                .zip(get("private_key_file"))
                .map(|(cert, key)| (resolve(Path::new(cert)), resolve(Path::new(key)))),
            snapshot_dir: (!args.ncs).then(|| {
                resolve(
                    args.snapshot_dir
                        .as_deref()
                        .or_else(|| get("snapshot_dir").map(Path::new))
                        .unwrap_or(Path::new("logs/config")),
                )
            }),
            archive_limits: UnpackLimits {
                max_bytes: limit(
                    "max_archive_unpacked_bytes",
                    UnpackLimits::default().max_bytes,
                )?,
                max_entries: limit("max_archive_entries", UnpackLimits::default().max_entries)?,
            },
            shutdown_timeout: Duration::from_secs(number("shutdown_timeout", 30)? as u64),
            model_snapshot: get("model_snapshot").map(String::from),
            workflow_snapshot: get("workflow_snapshot").map(String::from),
            settings: props.entries(),
            models: get("models")
                .map(ModelPresets::parse)
                .transpose()?
                .unwrap_or_default(),
            cors: Cors {
                allowed_origin: get("cors_allowed_origin").map(String::from),
                allowed_methods: get("cors_allowed_methods").map(String::from),
                allowed_headers: get("cors_allowed_headers").map(String::from),
            },
        };
        props.warn_unused();
        Ok(config)
    }
}

/// A program to run: a bare name (`python3`) stays a `PATH` lookup, any other relative path is
/// resolved against `cwd`.
fn program_path(cwd: &Path, program: PathBuf) -> PathBuf {
    if program.components().count() > 1 || program.is_absolute() {
        cwd.join(program)
    } else {
        program
    }
}

/// TorchServe's request envelopes (ts/torch_handler/request_envelope/), which the worker
/// implements (python/torchyard/envelopes.py).
pub const ENVELOPES: [&str; 4] = ["body", "json", "kserve", "kservev2"];

/// A `service_envelope` value: one of [`ENVELOPES`], or `None` when empty (KServe's runtime
/// sets `TS_SERVICE_ENVELOPE` from a label that may be unset, and TorchServe then uses none).
fn service_envelope(value: &str) -> Result<Option<String>> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    if !ENVELOPES.contains(&value) {
        bail!(
            "invalid service_envelope: {value:?}, expected one of {}",
            ENVELOPES.join(", ")
        );
    }
    Ok(Some(value.to_string()))
}

fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// Parses `http://host:port`, `https://host:port` or `host:port`.
fn parse_address(value: &str) -> Result<SocketAddr> {
    let value = value.trim();
    let rest = value
        .strip_prefix("http://")
        .or_else(|| value.strip_prefix("https://"))
        .unwrap_or(value)
        .trim_end_matches('/');
    let rest = rest.replace("localhost", "127.0.0.1");
    rest.parse()
        .map_err(|_| anyhow!("expected http://host:port, got {value:?}"))
}

/// A listener address from a host (an IP address or `localhost`, as TorchServe's gRPC
/// address keys hold) and a port.
fn parse_host(host: &str, port: u16) -> Result<SocketAddr> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip = match host {
        "localhost" => std::net::Ipv4Addr::LOCALHOST.into(),
        host => host
            .parse::<std::net::IpAddr>()
            .map_err(|_| anyhow!("expected an IP address, got {host:?}"))?,
    };
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    /// The settings a config file with `text` gives.
    fn config(text: &str) -> Result<ServerConfig> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.properties");
        std::fs::write(&path, text).unwrap();
        let argv = ["torchyard", "serve", "--config", path.to_str().unwrap()];
        let Command::Serve(args) = Cli::parse_from(argv).command else {
            unreachable!("parsed as serve")
        };
        ServerConfig::from_args(&args)
    }

    #[test]
    fn service_envelope_is_one_of_torchserves() {
        let envelope = |text: &str| config(text).unwrap().service_envelope;
        assert_eq!(envelope(""), None);
        assert_eq!(envelope("service_envelope="), None);
        assert_eq!(
            envelope("service_envelope = kservev2 "),
            Some("kservev2".into())
        );
        for name in ENVELOPES {
            assert_eq!(
                envelope(&format!("service_envelope={name}")),
                Some(name.into())
            );
        }
        let bad = config("service_envelope=kserve3").unwrap_err().to_string();
        assert!(
            bad.contains("service_envelope") && bad.contains("kservev2"),
            "{bad}"
        );
    }

    #[test]
    fn number_of_gpu_is_a_cap_when_set() {
        assert_eq!(config("").unwrap().number_of_gpu, None);
        assert_eq!(config("number_of_gpu=2").unwrap().number_of_gpu, Some(2));
        assert_eq!(config("number_of_gpu=0").unwrap().number_of_gpu, Some(0));
        let bad = config("number_of_gpu=-1").unwrap_err();
        assert!(bad.to_string().contains("number_of_gpu"), "{bad}");
    }

    #[test]
    fn connection_settings_have_defaults() {
        let config = |text: &str| config(text).unwrap();
        let defaults = config("");
        assert_eq!(
            defaults.connection_header_read_timeout,
            Duration::from_secs(10)
        );
        assert_eq!(defaults.connection_idle_timeout, Duration::from_secs(60));
        assert_eq!(defaults.max_connections, None);
        assert!(defaults.fork_workers);
        let set = config(
            "connection_header_read_timeout_ms=1000\nmax_connections=50\nfork_workers=False\n",
        );
        assert_eq!(set.connection_header_read_timeout, Duration::from_secs(1));
        assert_eq!(set.max_connections, Some(50));
        assert!(!set.fork_workers);
    }

    #[test]
    fn autoscaling_knobs_have_defaults() {
        let defaults = config("").unwrap().autoscale;
        assert_eq!(defaults.worker_budget, usable_cores());
        assert_eq!(defaults.window, Duration::from_secs(2));
        assert_eq!(defaults.hold, Duration::from_secs(30));
        assert_eq!(defaults.scale_down_idle, Duration::from_secs(10));
        let set = config(
            "autoscale_worker_budget=7\nautoscale_window_ms=500\nautoscale_hold_ms=0\nscale_down_idle_ms=100\n",
        )
        .unwrap()
        .autoscale;
        assert_eq!(set.worker_budget, 7);
        assert_eq!(set.window, Duration::from_millis(500));
        assert_eq!(set.hold, Duration::ZERO);
        assert_eq!(set.scale_down_idle, Duration::from_millis(100));
        assert!(config("autoscale_worker_budget=many\n").is_err());
        assert!(config("autoscale_window_ms=0\n").is_err());
    }

    #[test]
    fn programs_resolve_against_the_start_directory_unless_bare_names() {
        let cwd = Path::new("/srv/app");
        let resolve = |p: &str| program_path(cwd, PathBuf::from(p));
        assert_eq!(
            resolve(".venv/bin/python"),
            Path::new("/srv/app/.venv/bin/python")
        );
        assert_eq!(resolve("./python"), Path::new("/srv/app/python"));
        assert_eq!(resolve("/usr/bin/python3"), Path::new("/usr/bin/python3"));
        assert_eq!(resolve("python3"), Path::new("python3"));
    }

    #[test]
    fn paths_resolve_against_the_start_directory() {
        let cwd = tempfile::tempdir().unwrap();
        let cwd = cwd.path();
        std::fs::write(
            cwd.join("ts.properties"),
            "model_store=store\ncertificate_file=tls/cert.pem\nprivate_key_file=/etc/key.pem\n",
        )
        .unwrap();
        let argv = [
            "torchyard",
            "serve",
            "--config",
            "ts.properties",
            "--python",
            "venv/bin/python",
            "--workflow-store",
            "wf",
        ];
        let Command::Serve(args) = Cli::parse_from(argv).command else {
            unreachable!("parsed as serve")
        };
        let config = ServerConfig::from_args_in(&args, cwd).unwrap();
        assert_eq!(config.model_store, Some(cwd.join("store")));
        assert_eq!(config.workflow_store, Some(cwd.join("wf")));
        assert_eq!(config.python, Some(cwd.join("venv/bin/python")));
        assert_eq!(config.snapshot_dir, Some(cwd.join("logs/config")));
        let (cert, key) = config.tls.unwrap();
        assert_eq!(
            (cert, key),
            (cwd.join("tls/cert.pem"), PathBuf::from("/etc/key.pem"))
        );
    }

    #[test]
    fn grpc_listeners_default_to_torchserve_ports() {
        let defaults = config("").unwrap();
        assert_eq!(
            defaults.grpc_inference_address,
            "127.0.0.1:7070".parse().unwrap()
        );
        assert_eq!(
            defaults.grpc_management_address,
            "127.0.0.1:7071".parse().unwrap()
        );
        assert!(!defaults.grpc_tls);
        let set = config(
            "grpc_inference_address=0.0.0.0\ngrpc_inference_port=9000\n\
             grpc_management_address=localhost\ngrpc_management_port=9001\nenable_grpc_ssl=true\n",
        )
        .unwrap();
        assert_eq!(set.grpc_inference_address, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(
            set.grpc_management_address,
            "127.0.0.1:9001".parse().unwrap()
        );
        assert!(set.grpc_tls);
        assert!(config("grpc_inference_port=x").is_err());
        assert!(config("grpc_management_address=nohost").is_err());
        assert_eq!(parse_host("::1", 1).unwrap(), "[::1]:1".parse().unwrap());
    }

    #[test]
    fn parses_addresses() {
        assert_eq!(
            parse_address("http://0.0.0.0:8080").unwrap(),
            "0.0.0.0:8080".parse().unwrap()
        );
        assert_eq!(
            parse_address("localhost:81").unwrap(),
            "127.0.0.1:81".parse().unwrap()
        );
        assert!(parse_address("http://nohost").is_err());
    }
}
