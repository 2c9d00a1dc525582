//! One log event as the log files see it: time, level, logger, thread and message.

use std::fmt::Write;

use chrono::{DateTime, Local};
use tracing::field::{Field, Visit};
use tracing::{Event, Level};

/// The field that names the thread a line is logged under in place of the current one:
/// TorchServe's `W-9000-model_1.0-stdout` for a worker's output.
pub const THREAD_FIELD: &str = "thread";

/// One event, ready to be laid out.
#[derive(Debug, Clone)]
pub struct Record {
    pub time: DateTime<Local>,
    pub level: Level,
    /// The event's target: a module path, or one of TorchServe's logger names.
    pub logger: String,
    pub thread: String,
    /// The message, followed by any other fields as ` name=value`.
    pub message: String,
}

impl Record {
    /// The record of `event`, logged now on the current thread.
    pub fn of(event: &Event<'_>) -> Self {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let thread = fields.thread.unwrap_or_else(|| {
            std::thread::current()
                .name()
                .unwrap_or("unnamed")
                .to_string()
        });
        Self {
            time: Local::now(),
            level: *event.metadata().level(),
            logger: event.metadata().target().to_string(),
            thread,
            message: fields.message,
        }
    }

    /// log4j2's name of the level.
    pub fn level_name(&self) -> &'static str {
        match self.level {
            Level::ERROR => "ERROR",
            Level::WARN => "WARN",
            Level::INFO => "INFO",
            Level::DEBUG => "DEBUG",
            Level::TRACE => "TRACE",
        }
    }
}

/// Collects an event's message, thread and other fields.
#[derive(Default)]
struct Fields {
    message: String,
    thread: Option<String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            THREAD_FIELD => self.thread = Some(value.to_string()),
            _ => self.record_debug(field, &value),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            THREAD_FIELD => self.thread = Some(format!("{value:?}")),
            name => {
                let _ = write!(self.message, " {name}={value:?}");
            }
        }
    }
}
