//! Running `nvidia-smi`, the one tool torchyard asks about NVIDIA GPUs: found on the `PATH`,
//! given at most 10 s, its standard output as text.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long one query may take before it counts as failed.
const DEADLINE: Duration = Duration::from_secs(10);

/// The `nvidia-smi` executable.
#[derive(Debug)]
pub struct NvidiaSmi(PathBuf);

impl NvidiaSmi {
    /// `nvidia-smi` on the `PATH`, if it is there.
    pub fn find() -> Option<Self> {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|dir| dir.join("nvidia-smi"))
            .find(|exe| exe.is_file())
            .map(Self)
    }

    /// Runs `nvidia-smi args…`; its output when it exits successfully within the deadline.
    /// Blocks: call it from a blocking thread.
    pub fn query(&self, args: &[&str]) -> Option<String> {
        let mut child = Command::new(&self.0)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let deadline = Instant::now() + DEADLINE;
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !matches!(child.try_wait(), Ok(Some(status)) if status.success()) {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        let out = child.wait_with_output().ok()?;
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
