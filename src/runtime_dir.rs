//! The server's runtime directory, `$TMPDIR/torchyard-*` (the Python package, worker sockets,
//! unpacked archives): marked with its server's process, so that a later start removes the
//! directories of servers that were killed, and never those of servers still running.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tempfile::TempDir;

const PREFIX: &str = "torchyard-";
/// The file in a runtime directory naming its server: `pid start-time`.
const OWNER_FILE: &str = "server.pid";

/// Creates this server's runtime directory (removed again when dropped) and marks it.
pub fn create() -> Result<TempDir> {
    let dir = tempfile::Builder::new()
        .prefix(PREFIX)
        .tempdir()
        .context("cannot create the runtime directory")?;
    if let Some(mark) = process_mark(std::process::id()) {
        // Written whole, then renamed: another server never reads half a mark.
        let unfinished = dir.path().join(format!("{OWNER_FILE}.new"));
        std::fs::write(&unfinished, mark)
            .and_then(|()| std::fs::rename(&unfinished, dir.path().join(OWNER_FILE)))
            .context("cannot mark the runtime directory")?;
    }
    Ok(dir)
}

/// In the background, removes the runtime directories left by servers that are gone.
pub fn remove_stale() {
    tokio::task::spawn_blocking(|| {
        for dir in stale_dirs(&std::env::temp_dir()) {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => tracing::info!("removed {}, left by a stopped server", dir.display()),
                Err(e) => tracing::warn!("cannot remove {}: {e}", dir.display()),
            }
        }
    });
}

/// The runtime directories in `parent`, owned by this user, whose marked server process is
/// gone. Unmarked directories are left alone (a server may be about to mark its own), and
/// so is everything when this system has no `/proc` to tell live processes.
fn stale_dirs(parent: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    if process_mark(std::process::id()).is_none() {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(PREFIX))
        .filter(|e| {
            e.metadata()
                .is_ok_and(|m| m.is_dir() && !m.is_symlink() && m.uid() == uid)
        })
        .map(|e| e.path())
        .filter(|dir| {
            let Ok(mark) = std::fs::read_to_string(dir.join(OWNER_FILE)) else {
                return false;
            };
            let pid = mark.split_whitespace().next().and_then(|p| p.parse().ok());
            pid.is_some_and(|pid| process_mark(pid).as_deref() != Some(mark.trim()))
        })
        .collect()
}

/// `pid start-time` of a running process (start time in clock ticks since boot, so a reused
/// pid does not pass for the process that had it); `None` when it is not running.
fn process_mark(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses: field 3 (state) onwards; the start time is 22.
    let start = stat.rsplit_once(')')?.1.split_whitespace().nth(19)?;
    Some(format!("{pid} {start}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_directories_of_gone_servers_are_stale() {
        let parent = tempfile::tempdir().unwrap();
        let dir = |name: &str, mark: Option<String>| {
            let path = parent.path().join(name);
            std::fs::create_dir(&path).unwrap();
            if let Some(mark) = mark {
                std::fs::write(path.join(OWNER_FILE), mark).unwrap();
            }
            path
        };
        let own = process_mark(std::process::id()).unwrap();
        let pid = std::process::id();
        dir("torchyard-live", Some(own));
        let gone = dir("torchyard-gone", Some(format!("{} 1", u32::MAX - 1)));
        let reused = dir("torchyard-reused", Some(format!("{pid} 1")));
        dir("torchyard-unmarked", None);
        dir("other-gone", Some(format!("{} 1", u32::MAX - 1)));
        let mut stale = stale_dirs(parent.path());
        stale.sort();
        assert_eq!(stale, [gone, reused]);
    }
}
