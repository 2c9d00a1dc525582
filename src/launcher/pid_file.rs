//! The pid file `torchserve --start` writes and `--stop` reads: `.model_server.pid` in Python's
//! temporary directory, where TorchServe's launcher keeps it.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// TorchServe's Java entry point, whose process a pid file may also name.
const TS_NAMESPACE: &str = "org.pytorch.serve.ModelServer";

/// The pid file's path: `.model_server.pid` in the first of `$TMPDIR`, `$TEMP`, `$TMP` that is a
/// directory, else `/tmp` (Python's `tempfile.gettempdir()`).
pub fn path() -> PathBuf {
    let dir = ["TMPDIR", "TEMP", "TMP"]
        .iter()
        .filter_map(std::env::var_os)
        .map(PathBuf::from)
        .find(|dir| dir.is_dir())
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    dir.join(".model_server.pid")
}

/// What a pid file says.
#[derive(Debug, PartialEq, Eq)]
pub enum Recorded {
    /// No pid file.
    Nothing,
    /// A pid file naming a model server that runs.
    Running(u32),
    /// A pid file naming no model server (a stale file).
    Orphan,
}

/// Reads the pid file at `path` and checks that its process is a model server: `torchyard serve`
/// or TorchServe's own frontend (both would want the same ports).
pub fn read(path: &Path) -> Recorded {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Recorded::Nothing;
    };
    match text.lines().next().and_then(|l| l.trim().parse().ok()) {
        Some(pid) if is_model_server(pid) => Recorded::Running(pid),
        _ => Recorded::Orphan,
    }
}

/// Whether process `pid` is alive (not a zombie) and runs `torchyard serve` or TorchServe.
pub fn is_model_server(pid: u32) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let zombie = std::fs::read_to_string(proc_dir.join("stat"))
        .map(|stat| {
            // The state follows the command name, which is in parentheses and may hold any byte.
            let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
            state.is_none_or(|s| s.starts_with('Z') || s.starts_with('X'))
        })
        .unwrap_or(true);
    if zombie {
        return false;
    }
    let Ok(cmdline) = std::fs::read(proc_dir.join("cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let torchyard_serve = args.first().is_some_and(|argv0| {
        Path::new(OsStr::from_bytes(argv0))
            .file_name()
            .is_some_and(|name| name == "torchyard")
    }) && args.get(1) == Some(&&b"serve"[..]);
    torchyard_serve || args.iter().any(|arg| *arg == TS_NAMESPACE.as_bytes())
}
