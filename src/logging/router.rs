//! The tracing layer that lays each event out and hands it to the appenders of its logger,
//! each writing on its own thread so that no request waits on a disk.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::{Mutex, OnceLock};

use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::{ContentLimit, FileRotate};
use tracing::{Event, Subscriber};
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

use super::layout::Layout;
use super::log4j::{LogConfig, Logger, Output};
use super::record::Record;

/// The writer threads' guards: dropping them writes out what is still queued.
pub static GUARDS: Mutex<Vec<WorkerGuard>> = Mutex::new(Vec::new());

/// Lines kept from before the log files are open, at most.
const EARLY_LINES: usize = 10_000;

/// One appender, ready to write.
struct Sink {
    layout: Layout,
    writer: NonBlocking,
    console: bool,
}

/// Routes events to appenders as a log configuration says.
pub struct Router {
    sinks: Vec<Sink>,
    /// The sinks of each logger, indexed by [`Logger`].
    routes: [Vec<usize>; Logger::ALL.len()],
    /// Lines logged before the log files were opened, written to them once they are.
    early: Option<Mutex<Vec<Record>>>,
}

impl Router {
    /// Before the configuration is read: every line to standard output, and kept.
    pub fn early() -> Self {
        let mut unsupported = Vec::new();
        let layout = Layout::parse(super::CONSOLE_PATTERN, &mut unsupported);
        Self {
            sinks: vec![Sink {
                layout,
                writer: console(&Output::Stdout),
                console: true,
            }],
            routes: std::array::from_fn(|_| vec![0]),
            early: Some(Mutex::new(Vec::new())),
        }
    }

    /// The appenders of `config`; one whose file cannot be opened is left out with a warning.
    pub fn new(config: &LogConfig) -> Self {
        let mut sinks = Vec::new();
        let mut names = Vec::new();
        for appender in &config.appenders {
            let writer = match &appender.output {
                Output::File {
                    path,
                    max_size,
                    max_files,
                } => match open_file(path, *max_size, *max_files) {
                    Ok(writer) => writer,
                    Err(e) => {
                        tracing::warn!(
                            "cannot write log file {}: {e}; appender {} is off",
                            path.display(),
                            appender.name
                        );
                        continue;
                    }
                },
                console_output => console(console_output),
            };
            names.push(appender.name.as_str());
            sinks.push(Sink {
                layout: appender.layout.clone(),
                writer,
                console: !matches!(appender.output, Output::File { .. }),
            });
        }
        let routes = Logger::ALL.map(|logger| {
            config
                .appenders_of(logger)
                .into_iter()
                .filter_map(|name| names.iter().position(|n| *n == name))
                .collect()
        });
        Self {
            sinks,
            routes,
            early: None,
        }
    }

    /// The lines kept from before the log files were opened.
    pub fn take_early(&self) -> Vec<Record> {
        self.early
            .as_ref()
            .map(|early| std::mem::take(&mut *early.lock().expect("early log lock")))
            .unwrap_or_default()
    }

    /// Writes `record` to its logger's appenders; to the consoles too when `console` is set.
    pub fn dispatch(&self, record: &Record, console: bool) {
        let logger = Logger::of_target(&record.logger);
        for &sink in &self.routes[logger as usize] {
            let sink = &self.sinks[sink];
            if console || !sink.console {
                let line = sink.layout.format(record);
                let _ = sink.writer.clone().write_all(line.as_bytes());
            }
        }
    }
}

impl<S: Subscriber> Layer<S> for Router {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let record = Record::of(event);
        self.dispatch(&record, true);
        if let Some(early) = &self.early {
            let mut early = early.lock().expect("early log lock");
            if early.len() < EARLY_LINES {
                early.push(record);
            }
        }
    }
}

/// A writer on its own thread; lines are dropped, not waited for, when it falls 128k lines
/// behind.
fn writer(inner: impl Write + Send + 'static) -> NonBlocking {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .thread_name("torchyard-log")
        .finish(inner);
    GUARDS.lock().expect("log guards lock").push(guard);
    writer
}

/// Prints `line` on standard output through the console's writer, so after every console line
/// logged before it.
pub fn print(line: &str) {
    let _ = console(&Output::Stdout).write_all(format!("{line}\n").as_bytes());
}

/// The one writer of standard output or standard error, shared by every configuration.
fn console(output: &Output) -> NonBlocking {
    static STDOUT: OnceLock<NonBlocking> = OnceLock::new();
    static STDERR: OnceLock<NonBlocking> = OnceLock::new();
    match output {
        Output::Stderr => STDERR.get_or_init(|| writer(std::io::stderr())),
        _ => STDOUT.get_or_init(|| writer(std::io::stdout())),
    }
    .clone()
}

/// A file that is rotated once it passes `max_size` bytes (`name.1` the newest of the
/// `max_files` kept), opened now so that an unwritable place is known at start.
fn open_file(
    path: &std::path::Path,
    max_size: u64,
    max_files: usize,
) -> std::io::Result<NonBlocking> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new().create(true).append(true).open(path)?;
    let file = FileRotate::new(
        path,
        AppendCount::new(max_files.max(1)),
        ContentLimit::BytesSurpassed(max_size.max(1) as usize),
        Compression::None,
        None,
    );
    Ok(writer(file))
}
