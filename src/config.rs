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
use crate::tls::CertificateSource;
use crate::worker::CorePinning;

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
    /// Whether the gRPC listeners speak TLS with the configured certificate
    /// (`enable_grpc_ssl`, as in TorchServe).
    pub grpc_tls: bool,
    /// Which HTTP listeners speak HTTPS: those whose address is `https://`.
    pub https: HttpsListeners,
    pub model_store: Option<PathBuf>,
    pub workflow_store: Option<PathBuf>,
    /// Archives to load at start: `name=file.mar`, `file.mar` or `all`.
    pub load_models: Vec<String>,
    /// Workflow archives to load at start, in the same forms.
    pub load_workflows: Vec<String>,
    /// Workers of each model loaded at start: `default_workers_per_model`, else (as in
    /// TorchServe) one per GPU, else one per core; see [`ServerConfig::resolve_default_workers`].
    pub default_workers_per_model: usize,
    /// Workers of a model registered through the API without `initial_workers`:
    /// `default_workers_per_model` when the configuration sets it, else 0 (as TorchServe).
    pub api_default_workers: usize,
    pub job_queue_size: usize,
    pub default_response_timeout: Duration,
    /// How long a worker may take to load its handler (`default_startup_timeout`, 120 s).
    pub default_startup_timeout: Duration,
    pub max_request_size: usize,
    /// How long a client has to send a request head once the server waits for one; this also
    /// bounds keep-alive idling between requests and the TLS handshake.
    pub connection_header_read_timeout: Duration,
    /// The longest the server waits for the next bytes of a request body.
    pub connection_idle_timeout: Duration,
    /// The longest the server waits for a whole request body, however it trickles in.
    pub connection_body_timeout: Duration,
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
    /// Torch threads of each worker (`threads_per_worker`, else the server's `OMP_NUM_THREADS`);
    /// `None`: the cores shared among a model's workers (src/worker/threads.rs).
    pub threads_per_worker: Option<usize>,
    /// How workers are pinned to cores: `cpu_launcher_enable` with `cpu_launcher_args`;
    /// `None`: they are not.
    pub cpu_pinning: Option<CorePinning>,
    /// Request bodies and handler outputs of at least this many bytes travel between server
    /// and workers in shared memory (`shared_memory_threshold`, default 65536; 0 or less: never).
    pub shared_memory_threshold: usize,
    /// Whether an archive's requirements.txt is installed for its model.
    pub install_py_dep_per_model: bool,
    /// Whether the APIs require the Bearer keys of key_file.json.
    pub token_auth: bool,
    /// How long a management or inference key works (`token_expiration_min`, default 60).
    pub token_lifetime: Duration,
    /// Whether models and workflows may be registered and unregistered through the API.
    pub model_api_enabled: bool,
    /// Regular expressions a registration url outside the stores must match in full.
    pub allowed_urls: Vec<String>,
    /// The environment variables a workflow's remote node may name in `token-env`
    /// (`remote_token_env_allowlist`, comma-separated; empty: none).
    pub remote_token_env_allowlist: Vec<String>,
    /// Largest answer a remote workflow node may send (`max_remote_response_size`, bytes).
    pub max_remote_response_size: usize,
    /// The certificate of the HTTPS and gRPC TLS listeners: `keystore`, else
    /// `certificate_file` and `private_key_file`.
    pub certificate: Option<CertificateSource>,
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
    /// How many series (label value sets) one handler metric may have
    /// (`handler_metric_max_series`); updates that would make more are dropped and counted.
    pub handler_metric_max_series: usize,
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

/// Which of the HTTP listeners speak HTTPS.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HttpsListeners {
    pub inference: bool,
    pub management: bool,
    pub metrics: bool,
}

impl HttpsListeners {
    /// Whether any listener speaks HTTPS.
    pub fn any(&self) -> bool {
        self.inference || self.management || self.metrics
    }
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
                    .clone()
                    .unwrap_or_else(|| default_snapshot_dir(None));
                crate::snapshot_file::latest(&resolve(&dir))
            })
            .flatten();
        let props = Properties::load(
            args.config.as_deref().map(resolve).as_deref(),
            last_snapshot.as_deref(),
        )?;
        let get = |key: &str| props.get(key);
        let address = |key: &str, default: &str| -> Result<(SocketAddr, bool)> {
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
        // `--disable-token-auth` and `--enable-model-api` set their key over the file's, and a
        // `TS_*` variable sets it over both (TorchServe's order).
        let switch = |key: &str, cli: bool| {
            // Read the key even when the flag decides, so it is not reported as ignored.
            let file = flag(key);
            (cli && !props.set_by_env(key)) || file
        };
        let unless_false =
            |key: &str| !get(key).is_some_and(|v| v.trim().eq_ignore_ascii_case("false"));
        // A flag wins over the file, a `TS_*` variable over both (TorchServe's order).
        let path = |key: &str, flag: &Option<PathBuf>| {
            let file = get(key).map(|p| resolve(Path::new(p)));
            match flag {
                Some(flag) if !props.set_by_env(key) => Some(resolve(flag)),
                _ => file,
            }
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
        let default_workers_per_model = number("default_workers_per_model", 0)?;
        if default_workers_per_model > max_workers_per_model {
            bail!("default_workers_per_model ({default_workers_per_model}) is above max_workers_per_model ({max_workers_per_model})");
        }
        let logging = logging::read(&props, args.log_config.as_deref(), cwd)?;
        let (inference_address, inference_https) =
            address("inference_address", "http://127.0.0.1:8080")?;
        let (management_address, management_https) =
            address("management_address", "http://127.0.0.1:8081")?;
        let (metrics_address, metrics_https) = address("metrics_address", "http://127.0.0.1:8082")?;
        let https = HttpsListeners {
            inference: inference_https,
            management: management_https,
            metrics: metrics_https,
        };
        let grpc_tls = flag("enable_grpc_ssl");
        let certificate = certificate_source(
            get("keystore"),
            get("keystore_pass"),
            get("keystore_type"),
            get("certificate_file").zip(get("private_key_file")),
            &resolve,
        )?;
        if certificate.is_none() && (https.any() || grpc_tls) {
            let users = [
                ("inference_address", https.inference),
                ("management_address", https.management),
                ("metrics_address", https.metrics),
                ("enable_grpc_ssl", grpc_tls),
            ];
            let users: Vec<&str> = users.iter().filter(|u| u.1).map(|u| u.0).collect();
            bail!(
                "no certificate for {}: set keystore (with keystore_pass), or certificate_file \
                 and private_key_file",
                users.join(", ")
            );
        }
        let config = Self {
            logging,
            inference_address,
            management_address,
            metrics_address,
            https,
            certificate,
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
            grpc_tls,
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
            default_startup_timeout: Duration::from_secs(limit("default_startup_timeout", 120)?),
            max_request_size: number("max_request_size", 6_553_500)?,
            connection_header_read_timeout: Duration::from_millis(
                number("connection_header_read_timeout_ms", 10_000)?.max(1) as u64,
            ),
            connection_idle_timeout: Duration::from_millis(
                number("connection_idle_timeout_ms", 60_000)?.max(1) as u64,
            ),
            connection_body_timeout: Duration::from_millis(
                number("connection_body_timeout_ms", 300_000)?.max(1) as u64,
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
            handler_metric_max_series: number(
                "handler_metric_max_series",
                crate::metrics::DEFAULT_MAX_SERIES,
            )?,
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
            threads_per_worker: match get("threads_per_worker") {
                Some(_) => Some(limit("threads_per_worker", 1)? as usize),
                None => std::env::var("OMP_NUM_THREADS")
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .filter(|&n: &usize| n > 0),
            },
            cpu_pinning: {
                // Read even when off, so the key is not reported as unsupported.
                let args = get("cpu_launcher_args");
                let enabled = flag("cpu_launcher_enable");
                if args.is_some() && !enabled {
                    tracing::warn!(
                        "cpu_launcher_args has no effect without cpu_launcher_enable=true"
                    );
                }
                enabled
                    .then(|| CorePinning::from_args(args.unwrap_or_default()))
                    .transpose()?
            },
            shared_memory_threshold: get("shared_memory_threshold").map_or(
                Ok(DEFAULT_SHARED_MEMORY_THRESHOLD),
                |v| {
                    v.trim()
                        .parse::<i64>()
                        .map(|n| usize::try_from(n).unwrap_or(0))
                        .with_context(|| format!("invalid shared_memory_threshold: {v:?}"))
                },
            )?,
            token_auth: !switch("disable_token_authorization", args.disable_token_auth),
            token_lifetime: token_lifetime(get("token_expiration_min"))?,
            model_api_enabled: switch("enable_model_api", args.enable_model_api),
            allowed_urls: get("allowed_urls").map(split_list).unwrap_or_default(),
            remote_token_env_allowlist: get("remote_token_env_allowlist")
                .map(split_list)
                .unwrap_or_default(),
            max_remote_response_size: limit("max_remote_response_size", 64 << 20)? as usize,
            install_py_dep_per_model: flag("install_py_dep_per_model"),
            decode_input_request: unless_false("decode_input_request"),
            service_envelope: get("service_envelope")
                .map(service_envelope)
                .transpose()?
                .flatten(),
            snapshot_dir: (!args.ncs).then(|| {
                let dir = args
                    .snapshot_dir
                    .clone()
                    .or_else(|| get("snapshot_dir").map(PathBuf::from));
                resolve(&dir.unwrap_or_else(|| default_snapshot_dir(get("log_location"))))
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

/// Where the listeners' certificate comes from, as TorchServe chooses: the keystore when
/// `keystore` is set (PKCS12 only), else the PEM files when both are set.
fn certificate_source(
    keystore: Option<&str>,
    password: Option<&str>,
    kind: Option<&str>,
    pem: Option<(&str, &str)>,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<Option<CertificateSource>> {
    if let Some(path) = keystore {
        let kind = kind.unwrap_or("PKCS12").trim();
        if !kind.eq_ignore_ascii_case("PKCS12") {
            bail!(
                "keystore_type {kind} is not supported: torchyard reads PKCS12 keystores \
                 (convert with keytool -importkeystore -deststoretype PKCS12)"
            );
        }
        return Ok(Some(CertificateSource::Keystore {
            path: resolve(Path::new(path.trim())),
            password: password.unwrap_or("changeit").to_string(),
        }));
    }
    Ok(pem.map(|(cert, key)| CertificateSource::Pem {
        cert: resolve(Path::new(cert.trim())),
        key: resolve(Path::new(key.trim())),
    }))
}

/// `token_expiration_min`: minutes, fractions allowed, counted in whole seconds as
/// TorchServe does; 60 when not set.
fn token_lifetime(value: Option<&str>) -> Result<Duration> {
    let Some(value) = value else {
        return Ok(Duration::from_secs(3600));
    };
    let minutes: f64 = value
        .trim()
        .parse()
        .ok()
        .filter(|m: &f64| m.is_finite() && *m >= 0.0)
        .ok_or_else(|| {
            anyhow!("invalid token_expiration_min: {value:?}, expected minutes such as 60 or 0.5")
        })?;
    Ok(Duration::from_secs((minutes * 60.0) as u64))
}

impl ServerConfig {
    /// Settles the workers of models loaded at start when `default_workers_per_model` is
    /// unset (or 0): one per GPU when there are `gpus`, else one per usable core, as
    /// TorchServe does, at most `max_workers_per_model`.
    pub fn resolve_default_workers(&mut self, gpus: usize) {
        if self.default_workers_per_model == 0 {
            let per_device = if gpus > 0 { gpus } else { usable_cores() };
            self.default_workers_per_model = per_device.min(self.max_workers_per_model);
        }
    }
}

/// Where snapshots go when `snapshot_dir` is not set: `config/` under the log location, as
/// TorchServe writes them (`$LOG_LOCATION`, else the `log_location` key, else `logs`).
fn default_snapshot_dir(log_location_key: Option<&str>) -> PathBuf {
    let location = std::env::var("LOG_LOCATION")
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| log_location_key.map(|v| v.trim().to_string()))
        .unwrap_or_else(|| "logs".into());
    Path::new(&location).join("config")
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

/// `shared_memory_threshold` unless set: 64 KiB. Through the reused regions, 64 KiB and 256 KiB
/// echoes measured 7–37% faster than through the socket, 1 MB ones as fast (docs/performance.md,
/// "Big bodies").
const DEFAULT_SHARED_MEMORY_THRESHOLD: usize = 64 * 1024;

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

/// Parses `http://host:port`, `https://host:port` or `host:port` (the scheme in any case);
/// says whether the listener speaks HTTPS.
fn parse_address(value: &str) -> Result<(SocketAddr, bool)> {
    let value = value.trim();
    let (https, rest) = match value.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => (true, rest),
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => (false, rest),
        Some(_) => bail!("expected http:// or https://, got {value:?}"),
        None => (false, value),
    };
    let rest = rest.trim_end_matches('/').replace("localhost", "127.0.0.1");
    let addr = rest
        .parse()
        .map_err(|_| anyhow!("expected http://host:port, got {value:?}"))?;
    Ok((addr, https))
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
    fn start_up_workers_default_to_one_per_gpu_else_per_core() {
        let resolved = |text: &str, gpus| {
            let mut c = config(text).unwrap();
            c.resolve_default_workers(gpus);
            (c.default_workers_per_model, c.api_default_workers)
        };
        assert_eq!(resolved("", 0), (usable_cores().min(128), 0));
        assert_eq!(resolved("", 3), (3, 0));
        assert_eq!(resolved("max_workers_per_model=2\n", 4), (2, 0));
        assert_eq!(resolved("default_workers_per_model=1\n", 4), (1, 1));
        let startup = config("default_startup_timeout=7\n").unwrap();
        assert_eq!(startup.default_startup_timeout, Duration::from_secs(7));
        assert!(config("default_startup_timeout=0\n").is_err());
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
        assert_eq!(defaults.connection_body_timeout, Duration::from_secs(300));
        assert_eq!(defaults.max_connections, None);
        assert!(defaults.fork_workers);
        assert_eq!(defaults.shared_memory_threshold, 65536);
        let set = config(
            "connection_header_read_timeout_ms=1000\nmax_connections=50\nfork_workers=False\n",
        );
        assert_eq!(set.connection_header_read_timeout, Duration::from_secs(1));
        assert_eq!(set.max_connections, Some(50));
        assert!(!set.fork_workers);
    }

    #[test]
    fn shared_memory_threshold_zero_or_less_is_off() {
        for (text, threshold) in [("0", 0), ("-1", 0), (" 1000 ", 1000)] {
            let set = config(&format!("shared_memory_threshold={text}\n")).unwrap();
            assert_eq!(set.shared_memory_threshold, threshold);
        }
        let bad = config("shared_memory_threshold=big").unwrap_err();
        assert!(bad.to_string().contains("shared_memory_threshold"), "{bad}");
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
        assert_eq!(
            config.certificate,
            Some(CertificateSource::Pem {
                cert: cwd.join("tls/cert.pem"),
                key: PathBuf::from("/etc/key.pem")
            })
        );
    }

    #[test]
    fn snapshots_go_under_the_log_location_unless_set() {
        let under_logs = config("log_location=/var/log/ts\n").unwrap();
        assert_eq!(
            under_logs.snapshot_dir,
            Some(PathBuf::from("/var/log/ts/config"))
        );
        let own = config("log_location=/var/log/ts\nsnapshot_dir=/srv/snapshots\n").unwrap();
        assert_eq!(own.snapshot_dir, Some(PathBuf::from("/srv/snapshots")));
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
             grpc_management_address=localhost\ngrpc_management_port=9001\nenable_grpc_ssl=true\n\
             certificate_file=c.pem\nprivate_key_file=k.pem\n",
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
            ("0.0.0.0:8080".parse().unwrap(), false)
        );
        assert_eq!(
            parse_address("HTTPS://127.0.0.1:8443/").unwrap(),
            ("127.0.0.1:8443".parse().unwrap(), true)
        );
        assert_eq!(
            parse_address("localhost:81").unwrap(),
            ("127.0.0.1:81".parse().unwrap(), false)
        );
        assert!(parse_address("http://nohost").is_err());
        assert!(parse_address("ftp://127.0.0.1:21").is_err());
    }

    #[test]
    fn https_listeners_by_scheme_need_a_certificate() {
        let pem = "certificate_file=/c.pem\nprivate_key_file=/k.pem\n";
        let set = config(&format!("{pem}inference_address=https://127.0.0.1:8443\n")).unwrap();
        let https = HttpsListeners {
            inference: true,
            ..Default::default()
        };
        assert_eq!(set.https, https);
        let missing = config("management_address=https://127.0.0.1:8444\nenable_grpc_ssl=true\n")
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("no certificate for management_address, enable_grpc_ssl: set"),
            "{missing}"
        );
        let half = config("certificate_file=/c.pem\nmetrics_address=https://127.0.0.1:1\n");
        assert!(half.is_err());
        // the keystore wins over the PEM files, as in TorchServe
        let store = config(&format!("{pem}keystore=/ks.p12\n")).unwrap();
        assert_eq!(
            store.certificate,
            Some(CertificateSource::Keystore {
                path: "/ks.p12".into(),
                password: "changeit".into()
            })
        );
        let jks = config("keystore=/ks.jks\nkeystore_type=JKS\n").unwrap_err();
        assert!(jks.to_string().contains("PKCS12"), "{jks}");
    }

    #[test]
    fn token_expiration_is_minutes_in_whole_seconds() {
        let lifetime = |text: &str| config(text).map(|c| c.token_lifetime);
        assert_eq!(lifetime("").unwrap(), Duration::from_secs(3600));
        assert_eq!(
            lifetime("token_expiration_min=0.05").unwrap(),
            Duration::from_secs(3)
        );
        assert_eq!(
            lifetime("token_expiration_min=0.001").unwrap(),
            Duration::ZERO
        );
        assert!(lifetime("token_expiration_min=-1").is_err());
        assert!(lifetime("token_expiration_min=soon").is_err());
    }
}
