//! `torchserve`: TorchServe's command as the torchyard wheel installs it. It runs
//! `torchyard torchserve ARGS...` with the `torchyard` binary installed beside it.

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let torchyard = match std::env::current_exe() {
        Ok(exe) => exe.with_file_name("torchyard"),
        Err(e) => {
            eprintln!("torchserve: cannot find its own path: {e}");
            return ExitCode::FAILURE;
        }
    };
    let e = Command::new(&torchyard)
        .arg("torchserve")
        .args(std::env::args_os().skip(1))
        .exec();
    eprintln!("torchserve: cannot run {}: {e}", torchyard.display());
    ExitCode::FAILURE
}
