//! A worker process forked by the fork server: not the server's child, so it is watched and
//! signalled through a pidfd, and kept on a lifeline pipe whose closing has the kernel kill it.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;

/// A process the server did not start itself.
pub struct ForkedProcess {
    pidfd: AsyncFd<OwnedFd>,
    /// The write end of the pipe the process holds the read end of: the process is SIGKILLed
    /// when it closes, that is when this value is dropped or the server dies.
    _lifeline: OwnedFd,
}

impl ForkedProcess {
    /// `pidfd` refers to the process; `lifeline` is the server's end of its lifeline pipe.
    pub fn new(pidfd: OwnedFd, lifeline: OwnedFd) -> io::Result<Self> {
        // SAFETY: an OwnedFd stays open, and the same descriptor, for as long as it lives.
        let pidfd =
            unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
                .map_err(|e| e.into_parts().1)?;
        Ok(Self {
            pidfd,
            _lifeline: lifeline,
        })
    }

    /// Waits until the process has exited.
    pub async fn wait(&self) -> io::Result<()> {
        // A pidfd turns readable, and stays so, once its process has exited.
        self.pidfd.readable().await.map(|_| ())
    }

    /// Waits until the process has exited; says how it ended, as far as a pidfd tells.
    pub async fn exited(&self) -> String {
        match self.wait().await {
            Ok(()) => "it exited".to_string(),
            Err(e) => e.to_string(),
        }
    }

    /// Kills the process and waits until it is gone.
    pub async fn kill(&self) {
        // SAFETY: pidfd_send_signal reads only its arguments; the pidfd is open.
        let _ = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        let _ = self.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::FromRawFd;
    use std::time::Duration;

    use super::*;

    fn pidfd_of(pid: u32) -> OwnedFd {
        // SAFETY: pidfd_open returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        assert!(fd >= 0, "pidfd_open: {}", io::Error::last_os_error());
        // SAFETY: a fresh descriptor nobody else owns.
        unsafe { OwnedFd::from_raw_fd(fd as i32) }
    }

    #[tokio::test]
    async fn kill_and_wait_work_on_a_process_watched_by_its_pidfd() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let (_reader, writer) = std::io::pipe().unwrap();
        let process = ForkedProcess::new(pidfd_of(child.id()), writer.into()).unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(200), process.wait());
        assert!(waiting.await.is_err(), "sleep exited early");
        tokio::time::timeout(Duration::from_secs(5), process.kill())
            .await
            .expect("the killed process is still there");
        let status = child.wait().unwrap();
        assert!(!status.success());
    }
}
