//! TorchServe's log configuration, a log4j2 XML file: its appenders (consoles and rolling
//! files, with their patterns, sizes and counts) and its loggers (levels, appender references,
//! additivity). What has no counterpart in torchyard is named, so it can be warned about.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use roxmltree::Node;
use tracing::level_filters::LevelFilter;

use super::layout::Layout;

/// TorchServe's default: 100 MB per file.
pub const DEFAULT_MAX_SIZE: u64 = 100 * 1024 * 1024;
/// TorchServe's default: five rotated files kept.
pub const DEFAULT_MAX_FILES: usize = 5;
/// log4j2's layout when an appender names none.
const DEFAULT_PATTERN: &str = "%m%n";

/// Where an appender writes.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Stdout,
    Stderr,
    /// A file rotated once it passes `max_size` bytes, keeping `max_files` old ones.
    File {
        path: PathBuf,
        max_size: u64,
        max_files: usize,
    },
}

/// A named destination with its layout.
#[derive(Debug, Clone)]
pub struct Appender {
    pub name: String,
    pub output: Output,
    pub layout: Layout,
}

/// TorchServe's loggers that torchyard logs under, each a tracing target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logger {
    /// `ACCESS_LOG`: one line per request.
    Access,
    /// `MODEL_LOG`: what workers print.
    Model,
    /// `MODEL_METRICS`: handler metrics in log mode.
    ModelMetrics,
    /// `TS_METRICS`: frontend and host metrics in log mode.
    TsMetrics,
    /// `org.pytorch.serve`: the server's own lines (targets `torchyard::...`).
    Server,
    /// Everything else (the libraries the server uses).
    Root,
}

impl Logger {
    /// Every logger, in declaration order: `logger as usize` is its index here.
    pub const ALL: [Logger; 6] = [
        Self::Access,
        Self::Model,
        Self::ModelMetrics,
        Self::TsMetrics,
        Self::Server,
        Self::Root,
    ];

    /// The logger of an event's tracing target.
    pub fn of_target(target: &str) -> Self {
        match target {
            "ACCESS_LOG" => Self::Access,
            "MODEL_LOG" => Self::Model,
            "MODEL_METRICS" => Self::ModelMetrics,
            "TS_METRICS" => Self::TsMetrics,
            t if t == "torchyard" || t.starts_with("torchyard::") => Self::Server,
            _ => Self::Root,
        }
    }

    /// The tracing target of the logger; `None` for the root.
    pub fn target(self) -> Option<&'static str> {
        match self {
            Self::Access => Some("ACCESS_LOG"),
            Self::Model => Some("MODEL_LOG"),
            Self::ModelMetrics => Some("MODEL_METRICS"),
            Self::TsMetrics => Some("TS_METRICS"),
            Self::Server => Some("torchyard"),
            Self::Root => None,
        }
    }

    /// The logger of a log4j2 logger name: `None` when torchyard has no such logger.
    fn of_name(name: &str) -> Option<Self> {
        match name {
            "org.pytorch.serve" => Some(Self::Server),
            n if n.starts_with("org.pytorch.serve.") => Some(Self::Server),
            n => Self::ALL.into_iter().find(|l| l.target() == Some(n)),
        }
    }
}

/// A logger's settings: level, appenders and whether the root's appenders get its lines too.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggerSpec {
    /// `None`: the root's level.
    pub level: Option<LevelFilter>,
    pub appenders: Vec<String>,
    pub additive: bool,
}

/// A parsed log configuration.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub appenders: Vec<Appender>,
    pub loggers: Vec<(Logger, LoggerSpec)>,
    pub root: LoggerSpec,
}

impl LogConfig {
    /// The names of the appenders that get the lines of `logger`, as log4j2 decides: the
    /// logger's own, then the root's if it is additive; the root's alone if it is not set.
    pub fn appenders_of(&self, logger: Logger) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        let spec = self.loggers.iter().find(|(l, _)| *l == logger);
        let root = self.root.appenders.iter();
        let refs: Vec<&String> = match spec {
            Some((_, spec)) if spec.additive => spec.appenders.iter().chain(root).collect(),
            Some((_, spec)) => spec.appenders.iter().collect(),
            None => root.collect(),
        };
        for name in refs {
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
        names
    }

    /// The level a logger logs at: its own, else the root's.
    pub fn level_of(&self, logger: Logger) -> LevelFilter {
        self.loggers
            .iter()
            .find(|(l, _)| *l == logger)
            .and_then(|(_, spec)| spec.level)
            .or(self.root.level)
            .unwrap_or(LevelFilter::ERROR)
    }

    /// Applies `log_max_file_size` and `log_max_files` to every file appender.
    pub fn set_rotation(&mut self, size: Option<u64>, files: Option<usize>) {
        for appender in &mut self.appenders {
            if let Output::File {
                max_size,
                max_files,
                ..
            } = &mut appender.output
            {
                *max_size = size.unwrap_or(*max_size);
                *max_files = files.unwrap_or(*max_files);
            }
        }
    }
}

/// What a configuration's `${...}` lookups and relative paths resolve against.
pub struct Context<'a> {
    /// The value of `${env:NAME}` (and `${sys:NAME}`).
    pub lookup: &'a dyn Fn(&str) -> Option<String>,
    /// Relative file names are taken from here.
    pub cwd: &'a Path,
    properties: Vec<(String, String)>,
    /// What the configuration asks for that torchyard does not do, each named once.
    pub unsupported: Vec<String>,
}

impl<'a> Context<'a> {
    pub fn new(lookup: &'a dyn Fn(&str) -> Option<String>, cwd: &'a Path) -> Self {
        Self {
            lookup,
            cwd,
            properties: Vec::new(),
            unsupported: Vec::new(),
        }
    }

    fn unsupported(&mut self, what: String) {
        if !self.unsupported.contains(&what) {
            self.unsupported.push(what);
        }
    }

    /// `text` with log4j2's `${env:NAME:-default}`, `${sys:NAME}` and `${property}` lookups
    /// replaced; one that resolves to nothing is left as written, as log4j2 does.
    fn substitute(&self, text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let Some(len) = rest[start..].find('}') else {
                break;
            };
            let inner = &rest[start + 2..start + len];
            let (key, default) = match inner.split_once(":-") {
                Some((key, default)) => (key, Some(default)),
                None => (inner, None),
            };
            let value = match key.split_once(':') {
                Some(("env" | "sys", name)) => (self.lookup)(name),
                Some(_) => None,
                None => self
                    .properties
                    .iter()
                    .find(|(name, _)| name == key)
                    .map(|(_, value)| value.clone()),
            };
            match value.or(default.map(String::from)) {
                Some(value) => out.push_str(&value),
                None => out.push_str(&rest[start..start + len + 1]),
            }
            rest = &rest[start + len + 1..];
        }
        out.push_str(rest);
        out
    }
}

/// Parses a log4j2 XML configuration.
pub fn parse(xml: &str, context: &mut Context) -> Result<LogConfig> {
    let doc = roxmltree::Document::parse(xml).context("invalid XML")?;
    let configuration = doc.root_element();
    if !configuration.has_tag_name("Configuration") {
        bail!(
            "expected a log4j2 <Configuration>, found <{}>",
            configuration.tag_name().name()
        );
    }
    let mut config = LogConfig {
        appenders: Vec::new(),
        loggers: Vec::new(),
        root: LoggerSpec {
            level: Some(LevelFilter::ERROR),
            appenders: Vec::new(),
            additive: false,
        },
    };
    for section in elements(configuration) {
        match section.tag_name().name() {
            "Properties" => {
                for property in elements(section).filter(|p| p.has_tag_name("Property")) {
                    let name = property.attribute("name").unwrap_or_default();
                    let value = context.substitute(property.text().unwrap_or_default());
                    context.properties.push((name.to_string(), value));
                }
            }
            "Appenders" => {
                for node in elements(section) {
                    if let Some(appender) = appender(node, context) {
                        config.appenders.push(appender);
                    }
                }
            }
            "Loggers" => {
                for node in elements(section) {
                    logger(node, context, &mut config);
                }
            }
            other => context.unsupported(format!("<{other}>")),
        }
    }
    let known: Vec<String> = config.appenders.iter().map(|a| a.name.clone()).collect();
    let specs = config
        .loggers
        .iter_mut()
        .map(|(_, spec)| spec)
        .chain([&mut config.root]);
    for spec in specs {
        spec.appenders.retain(|name| {
            let found = known.contains(name);
            if !found {
                context.unsupported(format!("appender reference {name} (no such appender)"));
            }
            found
        });
    }
    Ok(config)
}

fn elements<'a, 'input>(node: Node<'a, 'input>) -> impl Iterator<Item = Node<'a, 'input>> {
    node.children().filter(Node::is_element)
}

/// One appender, or `None` (named in `context`) when torchyard has no such kind.
fn appender(node: Node, context: &mut Context) -> Option<Appender> {
    let kind = node.tag_name().name();
    let name = node.attribute("name").unwrap_or_default().to_string();
    let mut output = match kind {
        "Console" => match node.attribute("target") {
            Some("SYSTEM_ERR") => Output::Stderr,
            _ => Output::Stdout,
        },
        "RollingFile" | "RollingRandomAccessFile" | "File" | "RandomAccessFile" => {
            let Some(file) = node.attribute("fileName") else {
                context.unsupported(format!("appender {name} ({kind} without fileName)"));
                return None;
            };
            Output::File {
                path: context.cwd.join(context.substitute(file)),
                max_size: DEFAULT_MAX_SIZE,
                max_files: DEFAULT_MAX_FILES,
            }
        }
        _ => {
            context.unsupported(format!("appender {name} ({kind})"));
            return None;
        }
    };
    let mut pattern = DEFAULT_PATTERN.to_string();
    for child in elements(node) {
        match child.tag_name().name() {
            "PatternLayout" => {
                let text = child.attribute("pattern").map(String::from).or_else(|| {
                    elements(child)
                        .find(|p| p.has_tag_name("Pattern"))
                        .and_then(|p| p.text().map(String::from))
                });
                pattern = context.substitute(&text.unwrap_or(pattern));
            }
            "Policies" | "DefaultRolloverStrategy" => rotation(child, &name, &mut output, context),
            "SizeBasedTriggeringPolicy" => rotation(child, &name, &mut output, context),
            other => context.unsupported(format!("{other} of appender {name}")),
        }
    }
    let mut unsupported = Vec::new();
    let layout = Layout::parse(&pattern, &mut unsupported);
    for what in unsupported {
        context.unsupported(format!("{what} in the pattern of appender {name}"));
    }
    Some(Appender {
        name,
        output,
        layout,
    })
}

/// Applies a rolling file's `SizeBasedTriggeringPolicy` and `DefaultRolloverStrategy`.
fn rotation(node: Node, appender: &str, output: &mut Output, context: &mut Context) {
    let Output::File {
        max_size,
        max_files,
        ..
    } = output
    else {
        context.unsupported(format!("{} of appender {appender}", node.tag_name().name()));
        return;
    };
    match node.tag_name().name() {
        "Policies" => {
            for policy in elements(node) {
                rotation(policy, appender, output, context);
            }
        }
        "SizeBasedTriggeringPolicy" => {
            let size = node.attribute("size").unwrap_or_default();
            match parse_size(size) {
                Some(size) => *max_size = size,
                None => context.unsupported(format!("size {size:?} of appender {appender}")),
            }
        }
        "DefaultRolloverStrategy" => {
            let max = node.attribute("max").unwrap_or("7");
            match max.trim().parse() {
                Ok(max) => *max_files = max,
                Err(_) => context.unsupported(format!("max {max:?} of appender {appender}")),
            }
        }
        other => context.unsupported(format!("{other} of appender {appender}")),
    }
}

/// One `<Logger>` or `<Root>` into `config`.
fn logger(node: Node, context: &mut Context, config: &mut LogConfig) {
    let kind = node.tag_name().name();
    let name = node.attribute("name").unwrap_or_default();
    let level = node.attribute("level").and_then(|level| {
        let parsed = parse_level(level);
        if parsed.is_none() {
            context.unsupported(format!("level {level:?} of logger {name}"));
        }
        parsed
    });
    let mut appenders = Vec::new();
    for child in elements(node) {
        match (child.tag_name().name(), child.attribute("ref")) {
            ("AppenderRef", Some(name)) => appenders.push(name.to_string()),
            (other, _) => context.unsupported(format!("{other} of logger {name}")),
        }
    }
    let spec = LoggerSpec {
        level,
        appenders,
        additive: node.attribute("additivity") != Some("false"),
    };
    match kind {
        "Root" | "AsyncRoot" => config.root = spec,
        "Logger" | "AsyncLogger" => match Logger::of_name(name) {
            Some(logger) => {
                config.loggers.retain(|(l, _)| *l != logger);
                config.loggers.push((logger, spec));
            }
            // Java libraries TorchServe's own configuration quiets: nothing to map.
            None if name.starts_with("io.netty") || name.starts_with("org.apache") => {}
            None => context.unsupported(format!("logger {name}")),
        },
        other => context.unsupported(format!("<{other}> in <Loggers>")),
    }
}

/// log4j2's level names; `ALL` is everything, `FATAL` is `ERROR`.
fn parse_level(level: &str) -> Option<LevelFilter> {
    Some(match level.trim().to_ascii_lowercase().as_str() {
        "off" => LevelFilter::OFF,
        "fatal" | "error" => LevelFilter::ERROR,
        "warn" => LevelFilter::WARN,
        "info" => LevelFilter::INFO,
        "debug" => LevelFilter::DEBUG,
        "trace" | "all" => LevelFilter::TRACE,
        _ => return None,
    })
}

/// A log4j2 file size: `100 MB`, `10KB`, `512` (bytes).
pub fn parse_size(size: &str) -> Option<u64> {
    let size = size.trim();
    let split = size
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(size.len());
    let (number, unit) = size.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return None,
    };
    let bytes = (number * scale as f64) as u64;
    (bytes > 0).then_some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(xml: &str) -> (LogConfig, Vec<String>) {
        let lookup = |name: &str| (name == "LOG_LOCATION").then(|| "/var/ts".to_string());
        let mut context = Context::new(&lookup, Path::new("/srv"));
        let config = parse(xml, &mut context).unwrap();
        (config, context.unsupported)
    }

    #[test]
    fn torchyards_default_is_torchserves_with_quiet_access_and_metrics() {
        let (config, unsupported) = parsed(super::super::DEFAULT_CONFIG);
        assert!(unsupported.is_empty(), "{unsupported:?}");
        let files: Vec<String> = config
            .appenders
            .iter()
            .filter_map(|a| match &a.output {
                Output::File {
                    path,
                    max_size,
                    max_files,
                } => {
                    assert_eq!((*max_size, *max_files), (100 << 20, 5));
                    Some(path.display().to_string())
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            files,
            [
                "/var/ts/access_log.log",
                "/var/ts/model_log.log",
                "/srv/logs/model_metrics.log",
                "/var/ts/ts_log.log",
                "/srv/logs/ts_metrics.log"
            ]
        );
        assert_eq!(config.appenders_of(Logger::Access), ["access_log"]);
        assert_eq!(
            config.appenders_of(Logger::Model),
            ["model_log", "STDOUT", "ts_log"]
        );
        assert_eq!(config.appenders_of(Logger::Server), ["ts_log", "STDOUT"]);
        assert_eq!(config.appenders_of(Logger::Root), ["STDOUT", "ts_log"]);
        assert_eq!(config.level_of(Logger::Model), LevelFilter::TRACE);
        assert_eq!(config.level_of(Logger::Root), LevelFilter::INFO);
    }

    #[test]
    fn reads_torchserves_settings_and_names_the_rest() {
        let (config, unsupported) = parsed(
            r#"<Configuration status="WARN">
              <Properties><Property name="dir">${env:NOPE:-/tmp/x}</Property></Properties>
              <Appenders>
                <RollingFile name="ts_log" fileName="${dir}/ts.log" filePattern="x.gz">
                  <PatternLayout><Pattern>%d %-5p %m%n</Pattern></PatternLayout>
                  <Policies><SizeBasedTriggeringPolicy size="10 KB"/><TimeBasedTriggeringPolicy/></Policies>
                  <DefaultRolloverStrategy max="2"/>
                </RollingFile>
                <Console name="err" target="SYSTEM_ERR"><JSONPatternLayout/></Console>
                <Socket name="net" host="x" port="1"/>
              </Appenders>
              <Loggers>
                <Logger name="org.pytorch.serve" level="debug" additivity="false">
                  <AppenderRef ref="ts_log"/><AppenderRef ref="net"/>
                </Logger>
                <Logger name="io.netty" level="error"/>
                <Logger name="com.example" level="info"/>
                <Root level="warn"><AppenderRef ref="err"/></Root>
              </Loggers>
            </Configuration>"#,
        );
        assert_eq!(
            config.appenders[0].output,
            Output::File {
                path: "/tmp/x/ts.log".into(),
                max_size: 10 << 10,
                max_files: 2
            }
        );
        assert_eq!(config.appenders[1].output, Output::Stderr);
        assert_eq!(config.appenders_of(Logger::Server), ["ts_log"]);
        assert_eq!(config.appenders_of(Logger::Access), ["err"]);
        assert_eq!(config.level_of(Logger::Server), LevelFilter::DEBUG);
        assert_eq!(config.level_of(Logger::Access), LevelFilter::WARN);
        assert_eq!(
            unsupported,
            [
                "TimeBasedTriggeringPolicy of appender ts_log",
                "JSONPatternLayout of appender err",
                "appender net (Socket)",
                "logger com.example",
                "appender reference net (no such appender)",
            ]
        );
    }

    #[test]
    fn rejects_what_is_not_a_log4j2_configuration() {
        let lookup = |_: &str| None;
        let mut context = Context::new(&lookup, Path::new("/"));
        assert!(parse("<Configuration>", &mut context).is_err());
        assert!(parse("<beans/>", &mut context).is_err());
    }

    #[test]
    fn sizes_read_as_log4j2_writes_them() {
        assert_eq!(parse_size("100 MB"), Some(100 << 20));
        assert_eq!(parse_size("1.5KB"), Some(1536));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("2 gb"), Some(2 << 30));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("0"), None);
    }
}
