//! The Python side as the server ships it: the interpreter to run and the embedded `torchyard`
//! package, written out at start so any interpreter can run workers of this exact version.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use include_dir::{include_dir, Dir, DirEntry};

use crate::worker::ForkServer;

static PACKAGE: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/python/torchyard");

/// Where workers come from: the interpreter, the import path holding `torchyard`, the
/// directory for worker sockets and unpacked archives, and the fork server, if any.
#[derive(Debug, Clone)]
pub struct PythonEnv {
    pub interpreter: PathBuf,
    pub import_path: PathBuf,
    pub runtime_dir: PathBuf,
    /// Where workers are forked from when they can be; `None`: every worker starts fresh.
    pub fork_server: Option<Arc<ForkServer>>,
    /// Request bodies and handler outputs of at least this many bytes travel between server
    /// and workers in shared memory (`shared_memory_threshold`; 0: never).
    pub shared_memory_threshold: usize,
}

impl PythonEnv {
    /// Writes the embedded package under `runtime_dir` and picks the interpreter.
    pub fn prepare(runtime_dir: &Path, python: Option<&Path>) -> Result<Self> {
        let import_path = runtime_dir.join("python");
        write_dir(&PACKAGE, &import_path.join("torchyard"))
            .context("cannot write the torchyard Python package")?;
        Ok(Self {
            interpreter: python.map_or_else(default_interpreter, Path::to_path_buf),
            import_path,
            runtime_dir: runtime_dir.to_path_buf(),
            fork_server: None,
            shared_memory_threshold: 0,
        })
    }

    /// Starts this environment's fork server in the background; new workers are forked from
    /// it once it is ready.
    pub fn with_fork_server(self) -> Self {
        Self {
            fork_server: Some(ForkServer::launch(self.clone())),
            ..self
        }
    }
}

fn write_dir(dir: &Dir<'_>, target: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(target)?;
    for entry in dir.entries() {
        let name = entry.path().file_name().unwrap_or_default();
        match entry {
            DirEntry::Dir(sub) if name != "__pycache__" => write_dir(sub, &target.join(name))?,
            DirEntry::File(file) if entry.path().extension().is_some_and(|e| e == "py") => {
                std::fs::write(target.join(name), file.contents())?
            }
            _ => {}
        }
    }
    Ok(())
}

/// The Python installed beside the executable (a `pip install`ed torchyard runs its venv's
/// Python), else the `.venv` of the working directory or of a directory above the executable
/// (the repo checkout), else `python3`.
fn default_interpreter() -> PathBuf {
    let cwd = std::env::current_dir().ok();
    let exe = std::env::current_exe().ok();
    let beside = exe
        .iter()
        .filter_map(|e| e.parent())
        .flat_map(|bin| [bin.join("python"), bin.join("python3")]);
    let roots = cwd
        .iter()
        .map(PathBuf::as_path)
        .chain(exe.iter().flat_map(|e| e.ancestors().skip(1)));
    let venvs = roots.map(|root| root.join(".venv/bin/python"));
    beside
        .chain(venvs)
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| PathBuf::from("python3"))
}
