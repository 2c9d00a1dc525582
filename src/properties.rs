//! TorchServe's `config.properties`: which file is read, its Java-properties syntax, the
//! `TS_*` environment variables that override it when `enable_envvars_config` is set, and a
//! warning at start for every key that has no effect, so no setting is ignored silently.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// `TS_*` variables whose key is not the rest of their name in lower case (as TorchServe's
/// `ConfigManager` names them).
const ENV_KEYS: [(&str, &str); 5] = [
    ("TS_TOKEN_EXPIRATION_TIME_MIN", "token_expiration_min"),
    ("TS_OPEN_INFERENCE_PROTOCOL", "ts_open_inference_protocol"),
    ("TS_HEADER_KEY_SEQUENCE_ID", "ts_header_key_sequence_id"),
    (
        "TS_HEADER_KEY_SEQUENCE_START",
        "ts_header_key_sequence_start",
    ),
    ("TS_HEADER_KEY_SEQUENCE_END", "ts_header_key_sequence_end"),
];

/// The settings of one start: the file's keys with the environment's overrides applied.
#[derive(Debug, Default)]
pub struct Properties {
    /// The file read, if any.
    source: Option<PathBuf>,
    values: HashMap<String, String>,
    /// Keys given by `TS_*` variables: as in TorchServe, they win over command-line flags too.
    from_env: BTreeSet<String>,
    /// Keys some setting looked at, to warn about the others.
    used: RefCell<BTreeSet<String>>,
}

impl Properties {
    /// Reads the config file TorchServe would: `$TS_CONFIG_FILE`, else `explicit`
    /// (`--ts-config`), else `config.properties` in the working directory if there is one,
    /// else `last_snapshot` (the newest snapshot file); then applies `TS_*` variables when
    /// the file sets `enable_envvars_config=true`.
    pub fn load(explicit: Option<&Path>, last_snapshot: Option<&Path>) -> Result<Self> {
        let path = std::env::var_os("TS_CONFIG_FILE")
            .map(PathBuf::from)
            .or_else(|| explicit.map(Path::to_path_buf))
            .or_else(|| {
                let local = PathBuf::from("config.properties");
                local.is_file().then_some(local)
            })
            .or_else(|| last_snapshot.map(Path::to_path_buf));
        let values = match &path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                parse(&text)?
            }
            None => HashMap::new(),
        };
        Ok(Self {
            source: path,
            ..Self::with_env(values, std::env::vars())
        })
    }

    /// `values` with the overrides of `TS_<KEY>` variables among `vars` when
    /// `enable_envvars_config` is true; `allowed_urls` only with `use_env_allowed_urls=true`.
    fn with_env(
        mut values: HashMap<String, String>,
        vars: impl Iterator<Item = (String, String)>,
    ) -> Self {
        let flag = |values: &HashMap<String, String>, key: &str| {
            values
                .get(key)
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        };
        let mut from_env = BTreeSet::new();
        if flag(&values, "enable_envvars_config") {
            let env_urls = flag(&values, "use_env_allowed_urls");
            for (name, value) in vars {
                let Some(key) = name.strip_prefix("TS_") else {
                    continue;
                };
                let key = match ENV_KEYS.iter().find(|(var, _)| *var == name) {
                    Some((_, key)) => key.to_string(),
                    None => key.to_ascii_lowercase(),
                };
                if key == "config_file" || (key == "allowed_urls" && !env_urls) {
                    continue;
                }
                values.insert(key.clone(), value);
                from_env.insert(key);
            }
        }
        let used = RefCell::new(
            [
                "enable_envvars_config",
                "use_env_allowed_urls",
                "tsConfigFile",
            ]
            .map(String::from)
            .into(),
        );
        Self {
            source: None,
            values,
            from_env,
            used,
        }
    }

    /// The value of `key`, if set; marks the key as honoured.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.used.borrow_mut().insert(key.to_string());
        self.values.get(key).map(String::as_str)
    }

    /// The value of `key`, if set, without marking it honoured.
    pub fn peek(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// Whether `key` came from a `TS_*` environment variable.
    pub fn set_by_env(&self, key: &str) -> bool {
        self.from_env.contains(key)
    }

    /// Every setting, sorted by key, with `tsConfigFile` naming the file read: what
    /// TorchServe writes into its snapshots.
    pub fn entries(&self) -> Vec<(String, String)> {
        let mut entries: Vec<(String, String)> = self
            .values
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(source) = &self.source {
            entries.push(("tsConfigFile".into(), source.display().to_string()));
        }
        entries.sort();
        entries
    }

    /// Logs a warning for every key that no setting read, saying why where it is a known
    /// TorchServe key.
    pub fn warn_unused(&self) {
        let used = self.used.borrow();
        let mut unused: Vec<&String> = self.values.keys().filter(|k| !used.contains(*k)).collect();
        unused.sort();
        for key in unused {
            tracing::warn!("config key {key} is ignored: {}", why_ignored(key));
        }
    }
}

/// Why a key has no effect in torchyard.
fn why_ignored(key: &str) -> &'static str {
    match key {
        "vmargs" | "number_of_netty_threads" | "netty_client_threads" | "prefer_direct_buffer" => {
            "a JVM/Netty setting, and torchyard has no JVM"
        }
        "initial_worker_port" => "workers talk to the server over Unix sockets, not ports",
        "model_server_home" => "the worker package ships inside the torchyard binary",
        "grpc_inference_max_connection_age_ms"
        | "grpc_management_max_connection_age_ms"
        | "grpc_inference_max_connection_age_grace_ms"
        | "grpc_management_max_connection_age_grace_ms" => {
            "gRPC connections stay open until the client closes them"
        }
        _ => "torchyard does not support this setting",
    }
}

/// Parses Java-properties text as `java.util.Properties` does (TorchServe writes its snapshots
/// with it): `key=value`, `key: value` or `key value`, `#`/`!` comments, `\` line
/// continuations, and the escapes `\:`, `\=`, `\n`, `\t`, `\uXXXX`, ...
pub fn parse(text: &str) -> Result<HashMap<String, String>> {
    let mut props = HashMap::new();
    let mut pending = String::new();
    for raw in text.lines() {
        let line = raw.trim_start();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with('!'))
        {
            continue;
        }
        let trailing = line.len() - line.trim_end_matches('\\').len();
        if trailing % 2 == 1 {
            pending.push_str(&line[..line.len() - 1]);
            continue;
        }
        pending.push_str(line);
        let entry = std::mem::take(&mut pending);
        let (key, value) = split_entry(&entry);
        if key.is_empty() {
            bail!("malformed config line: {entry:?}");
        }
        props.insert(unescape(key), unescape(value));
    }
    Ok(props)
}

/// Escapes `text` as `java.util.Properties.store` writes a key (`key`: spaces too) or a
/// value (a leading space only), so Java and [`parse`] read it back unchanged.
pub fn escape(text: &str, key: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for (at, c) in text.chars().enumerate() {
        match c {
            '\\' | '=' | ':' | '#' | '!' => {
                out.push('\\');
                out.push(c);
            }
            ' ' if key || at == 0 => out.push_str("\\ "),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04X}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Splits a logical line at the first unescaped `=`, `:` or white space.
fn split_entry(entry: &str) -> (&str, &str) {
    let mut escaped = false;
    for (at, c) in entry.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '=' | ':' | ' ' | '\t' => {
                let rest = entry[at + 1..].trim_start();
                let rest = match c {
                    ' ' | '\t' => rest.strip_prefix(['=', ':']).map_or(rest, str::trim_start),
                    _ => rest,
                };
                return (&entry[..at], rest.trim_end());
            }
            _ => {}
        }
    }
    (entry, "")
}

/// Resolves backslash escapes; `\\uXXXX` pairs may spell one character as UTF-16.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut units: Vec<u16> = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && chars.peek() == Some(&'u') {
            chars.next();
            let hex: String = chars.by_ref().take(4).collect();
            match u16::from_str_radix(&hex, 16) {
                Ok(unit) => units.push(unit),
                Err(_) => out.push_str(&hex),
            }
            continue;
        }
        out.extend(char::decode_utf16(units.drain(..)).map(|r| r.unwrap_or('\u{fffd}')));
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('f') => out.push('\u{c}'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out.extend(char::decode_utf16(units).map(|r| r.unwrap_or('\u{fffd}')));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_properties() {
        let text = "# comment\ninference_address=http://127.0.0.1:9000\n! other\nload_models: a.mar,\\\n  b.mar\n";
        let props = parse(text).unwrap();
        assert_eq!(props["inference_address"], "http://127.0.0.1:9000");
        assert_eq!(props["load_models"], "a.mar,b.mar");
        assert!(parse("=no key\n").is_err());
    }

    #[test]
    fn resolves_java_escapes_as_torchserve_writes_them() {
        let text = "inference_address=https\\://127.0.0.1\\:8443\nmodel_snapshot={\\n  \"name\"\\: \"a.cfg\"\\n}\nkey\\=with\\:marks = v\\u00e9\nspaced  value here\n";
        let props = parse(text).unwrap();
        assert_eq!(props["inference_address"], "https://127.0.0.1:8443");
        assert_eq!(props["model_snapshot"], "{\n  \"name\": \"a.cfg\"\n}");
        assert_eq!(props["key=with:marks"], "v\u{e9}");
        assert_eq!(props["spaced"], "value here");
    }

    #[test]
    fn escapes_round_trip() {
        let value = " https://h:1/#a!b=c\\d\n\u{e9}\u{1F600}";
        let text = format!("{}={}\n", escape("my key", true), escape(value, false));
        let props = parse(&text).unwrap();
        assert_eq!(props["my key"], value);
    }

    fn vars(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn environment_overrides_only_when_enabled() {
        let env = [
            ("TS_INFERENCE_ADDRESS", "http://0.0.0.0:9090"),
            ("TS_ALLOWED_URLS", "http://.*"),
            ("TS_TOKEN_EXPIRATION_TIME_MIN", "0.5"),
            ("HOME", "/root"),
        ];
        let file = parse("inference_address=http://127.0.0.1:8080\n").unwrap();
        let off = Properties::with_env(file.clone(), vars(&env));
        assert_eq!(off.get("inference_address"), Some("http://127.0.0.1:8080"));

        let mut enabled = file.clone();
        enabled.insert("enable_envvars_config".into(), "true".into());
        let on = Properties::with_env(enabled.clone(), vars(&env));
        assert_eq!(on.get("inference_address"), Some("http://0.0.0.0:9090"));
        assert!(on.set_by_env("inference_address"));
        assert_eq!(on.get("token_expiration_min"), Some("0.5"));
        assert_eq!(on.get("allowed_urls"), None, "needs use_env_allowed_urls");
        assert_eq!(on.get("home"), None);

        enabled.insert("use_env_allowed_urls".into(), "true".into());
        let urls = Properties::with_env(enabled, vars(&env));
        assert_eq!(urls.get("allowed_urls"), Some("http://.*"));
    }

    #[test]
    fn remembers_which_keys_were_read() {
        let props =
            Properties::with_env(parse("model_store=/s\nvmargs=-Xmx1g\n").unwrap(), vars(&[]));
        props.get("model_store");
        let used = props.used.borrow();
        assert!(used.contains("model_store") && !used.contains("vmargs"));
    }
}
