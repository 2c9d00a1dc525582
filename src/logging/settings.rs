//! Which log configuration a start uses, and the `config.properties` keys that adjust it.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _, Result};

use super::log4j::{self, parse_size, Context, LogConfig};
use crate::properties::Properties;

/// The log configuration of a start: the log4j2 XML file of `--log-config` (`flag`), else of
/// `-Dlog4j.configurationFile` in `vmargs` (whose other JVM options are then warned about;
/// without it, `vmargs` stays an unused key), else torchyard's default; see [`from_keys`].
/// Relative paths are taken from `cwd`.
pub fn read(props: &Properties, flag: Option<&Path>, cwd: &Path) -> Result<LogConfig> {
    let (in_vmargs, jvm_options) = props
        .peek("vmargs")
        .map(log4j_file_in_vmargs)
        .unwrap_or_default();
    if in_vmargs.is_some() {
        props.get("vmargs");
        for option in jvm_options {
            tracing::warn!("vmargs {option} is ignored: a JVM setting, and torchyard has no JVM");
        }
    }
    let file = flag.or(in_vmargs.as_deref()).map(|file| cwd.join(file));
    from_keys(|key| props.get(key), file.as_deref(), cwd)
}

/// The configuration of the log4j2 XML file `log_config`, else torchyard's default. Its
/// `${env:LOG_LOCATION}` and `${env:METRICS_LOCATION}` are those variables, else the keys
/// `log_location` and `metrics_location`; `log_max_file_size` and `log_max_files`, when set,
/// size every file's rotation. What the file asks for that torchyard does not do is warned
/// about by name.
fn from_keys<'p>(
    get: impl Fn(&str) -> Option<&'p str>,
    log_config: Option<&Path>,
    cwd: &Path,
) -> Result<LogConfig> {
    let location = |var: &str, key: &str| {
        std::env::var(var)
            .ok()
            .filter(|v| !v.is_empty())
            .or_else(|| get(key).map(|v| v.trim().to_string()))
    };
    let log_location = location("LOG_LOCATION", "log_location");
    let metrics_location = location("METRICS_LOCATION", "metrics_location");
    let lookup = |name: &str| match name {
        "LOG_LOCATION" => log_location.clone(),
        "METRICS_LOCATION" => metrics_location.clone(),
        other => std::env::var(other).ok(),
    };
    let (xml, source) = match log_config {
        Some(path) => (
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read log config {}", path.display()))?,
            path.display().to_string(),
        ),
        None => (super::DEFAULT_CONFIG.to_string(), "(default)".to_string()),
    };
    let mut context = Context::new(&lookup, cwd);
    let mut config =
        log4j::parse(&xml, &mut context).with_context(|| format!("invalid log config {source}"))?;
    for what in &context.unsupported {
        tracing::warn!("log config {source}: {what} is ignored: torchyard does not support it");
    }
    let size = get("log_max_file_size")
        .map(|v| {
            parse_size(v).ok_or_else(|| {
                anyhow!("invalid log_max_file_size: {v:?}, expected a size such as 100 MB")
            })
        })
        .transpose()?;
    let files = get("log_max_files")
        .map(|v| {
            v.trim()
                .parse()
                .map_err(|_| anyhow!("invalid log_max_files: {v:?}, expected a number"))
        })
        .transpose()?;
    config.set_rotation(size, files);
    // Logging is always asynchronous: the writers have threads of their own.
    let _ = get("async_logging");
    Ok(config)
}

/// The file `-Dlog4j.configurationFile=` (or `-Dlog4j2.configurationFile=`) names among JVM
/// options, as a path (`file://` taken off), and the other options.
fn log4j_file_in_vmargs(vmargs: &str) -> (Option<PathBuf>, Vec<&str>) {
    let mut file = None;
    let mut others = Vec::new();
    for option in vmargs.split_whitespace() {
        let value = option
            .strip_prefix("-Dlog4j.configurationFile=")
            .or_else(|| option.strip_prefix("-Dlog4j2.configurationFile="));
        match value {
            Some(value) => {
                let path = value
                    .strip_prefix("file://")
                    .or_else(|| value.strip_prefix("file:"))
                    .unwrap_or(value);
                file = Some(PathBuf::from(path));
            }
            None => others.push(option),
        }
    }
    (file, others)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmargs_name_the_log4j_file() {
        let (file, others) =
            log4j_file_in_vmargs("-Xmx1g -Dlog4j.configurationFile=file:///etc/ts/log4j2.xml");
        assert_eq!(file, Some(PathBuf::from("/etc/ts/log4j2.xml")));
        assert_eq!(others, ["-Xmx1g"]);
        assert_eq!(
            log4j_file_in_vmargs("-Dlog4j2.configurationFile=conf/l.xml").0,
            Some(PathBuf::from("conf/l.xml"))
        );
        assert_eq!(log4j_file_in_vmargs("-Xmx1g"), (None, vec!["-Xmx1g"]));
    }

    #[test]
    fn keys_set_locations_and_rotation() {
        let keys = |key: &str| match key {
            "log_location" => Some("/var/log/ts"),
            "log_max_file_size" => Some("1 KB"),
            "log_max_files" => Some("2"),
            _ => None,
        };
        let config = from_keys(keys, None, Path::new("/srv")).unwrap();
        let ts_log = config
            .appenders
            .iter()
            .find(|a| a.name == "ts_log")
            .unwrap();
        // LOG_LOCATION, when the environment has it, wins over the key.
        let dir = std::env::var("LOG_LOCATION").unwrap_or("/var/log/ts".into());
        assert_eq!(
            ts_log.output,
            log4j::Output::File {
                path: Path::new("/srv").join(dir).join("ts_log.log"),
                max_size: 1024,
                max_files: 2
            }
        );
        let bad = |key: &str| (key == "log_max_file_size").then_some("big");
        assert!(from_keys(bad, None, Path::new("/srv")).is_err());
        let missing = from_keys(|_| None, Some(Path::new("/no/such.xml")), Path::new("/"));
        assert!(missing.unwrap_err().to_string().contains("/no/such.xml"));
    }
}
