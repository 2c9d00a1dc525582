//! The server's logs as TorchServe writes them: the console, and under `LOG_LOCATION`
//! (`logs/`) `ts_log.log`, `model_log.log` and `access_log.log`, under `METRICS_LOCATION`
//! `ts_metrics.log` and `model_metrics.log`, each rotated by size. Everything logs through
//! `tracing`; TorchServe's logger names are targets (`ACCESS_LOG`, `MODEL_LOG`, `TS_METRICS`,
//! `MODEL_METRICS`), the server's own lines are `org.pytorch.serve`'s. A log4j2 XML file
//! (`--log-config`, or `-Dlog4j.configurationFile` in `vmargs`) may change levels, files,
//! patterns and rotation.

mod access;
mod layout;
mod log4j;
mod record;
mod router;
mod settings;

use std::sync::OnceLock;

use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

pub use access::{log_access, GrpcAccessLog};
pub use log4j::LogConfig;
use log4j::Logger;
pub use router::print;
use router::{Router, GUARDS};
pub use settings::read;

/// torchyard's default configuration: TorchServe's, with access and metrics lines kept out of
/// the console and `ts_log.log`.
const DEFAULT_CONFIG: &str = include_str!("log4j2.xml");
/// The console's pattern until the configuration is read.
const CONSOLE_PATTERN: &str = "%d{ISO8601} [%-5p] %t %c - %m%n";

type Filter = reload::Layer<EnvFilter, Registry>;

/// What [`install`] swaps once the configuration is read.
struct Handles {
    filter: reload::Handle<EnvFilter, Registry>,
    router: reload::Handle<Router, Layered<Filter, Registry>>,
}

static HANDLES: OnceLock<Handles> = OnceLock::new();

/// Writes out every queued line when dropped: keep it until the process ends.
#[must_use = "dropping it writes out the queued lines"]
pub struct Flush;

impl Drop for Flush {
    fn drop(&mut self) {
        GUARDS.lock().map(|mut g| g.clear()).unwrap_or_default();
    }
}

/// Logs to standard output at `RUST_LOG`'s levels (else info) until [`install`]; the lines
/// are kept to be written to the log files too.
pub fn init() -> Flush {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, filter_handle) = reload::Layer::new(filter);
    let (router, router_handle) = reload::Layer::new(Router::early());
    tracing_subscriber::registry()
        .with(filter)
        .with(router)
        .init();
    let _ = HANDLES.set(Handles {
        filter: filter_handle,
        router: router_handle,
    });
    Flush
}

/// Switches to `config`'s appenders and levels, writing what was logged so far (at the
/// levels `config` logs) into its files too.
pub fn install(config: &LogConfig) {
    let Some(handles) = HANDLES.get() else { return };
    let router = Router::new(config);
    let early = handles
        .router
        .with_current(Router::take_early)
        .unwrap_or_default();
    for record in &early {
        if record.level <= config.level_of(Logger::of_target(&record.logger)) {
            router.dispatch(record, false);
        }
    }
    let _ = handles.router.reload(router);
    let _ = handles.filter.reload(filter(config));
}

/// The levels of `config` as tracing directives; `RUST_LOG`, when set, takes the place of the
/// root's and the server's levels.
fn filter(config: &LogConfig) -> EnvFilter {
    let mut directives = match std::env::var("RUST_LOG") {
        Ok(levels) if !levels.trim().is_empty() => vec![levels],
        _ => vec![
            config.level_of(Logger::Root).to_string(),
            format!("torchyard={}", config.level_of(Logger::Server)),
        ],
    };
    for logger in [
        Logger::Access,
        Logger::Model,
        Logger::ModelMetrics,
        Logger::TsMetrics,
    ] {
        if let Some(target) = logger.target() {
            directives.push(format!("{target}={}", config.level_of(logger)));
        }
    }
    EnvFilter::try_new(directives.join(",")).unwrap_or_else(|e| {
        tracing::warn!("RUST_LOG is invalid ({e}): logging at info");
        EnvFilter::new("info")
    })
}
