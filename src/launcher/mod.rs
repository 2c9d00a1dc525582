//! `torchserve`: TorchServe 0.12's command (`ts/model_server.py`) in front of `torchyard serve`.
//! `--start` checks the flags and files as TorchServe does, starts the server in the background
//! (its output stays on this terminal or pipe) and records its pid; `--stop` stops the
//! recorded server; `--foreground` runs it in place, or with `--stop` waits for it to end.

mod args;
mod pid_file;

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

pub use args::TorchServeArgs;
use pid_file::Recorded;

/// How long `torchserve --stop --foreground` waits, as TorchServe's launcher.
const STOP_WAIT: Duration = Duration::from_secs(60);

/// Runs the `torchserve` command; what it prints and its exit status are TorchServe's.
pub fn run(args: TorchServeArgs) -> ExitCode {
    if args.version {
        println!(
            "torchyard {} (TorchServe 0.12 compatible)",
            env!("CARGO_PKG_VERSION")
        );
        return ExitCode::SUCCESS;
    }
    let pid_path = pid_file::path();
    let recorded = pid_file::read(&pid_path);
    if recorded == Recorded::Orphan {
        println!("Removing orphan pid file.");
        let _ = std::fs::remove_file(&pid_path);
    }
    let outcome = match (args.stop, recorded) {
        (true, Recorded::Running(pid)) => {
            stop(pid, args.foreground);
            let _ = std::fs::remove_file(&pid_path);
            Ok(())
        }
        (true, _) => {
            println!("TorchServe is not currently running.");
            Ok(())
        }
        (false, Recorded::Running(_)) => Err(
            "TorchServe is already running, please use torchserve --stop to stop TorchServe."
                .to_string(),
        ),
        (false, _) => start(&args, &pid_path),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            println!("{message}");
            ExitCode::FAILURE
        }
    }
}

/// Sends SIGTERM to the server (which drains and stops its workers) and removes the keys it
/// wrote; with `wait`, waits up to [`STOP_WAIT`] for it to exit.
fn stop(pid: u32, wait: bool) {
    // SAFETY: kill(2) with a pid read from the pid file and checked to be a model server.
    if unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) } != 0 {
        println!("TorchServe already stopped.");
        return;
    }
    let _ = std::fs::remove_file("key_file.json");
    if !wait {
        println!("TorchServe has stopped.");
        return;
    }
    let deadline = Instant::now() + STOP_WAIT;
    while pid_file::is_model_server(pid) {
        if Instant::now() > deadline {
            println!("Stopping TorchServe took too long.");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Checks the flags and files as TorchServe's launcher does, then starts `torchyard serve`:
/// in place with `--foreground`, else in the background with this pid file.
fn start(args: &TorchServeArgs, pid_path: &Path) -> Result<(), String> {
    let mut serve = serve_command(args)?;
    if args.foreground {
        // The server takes over this process, so the recorded pid is its own.
        std::fs::write(pid_path, std::process::id().to_string())
            .map_err(|e| format!("cannot write {}: {e}", pid_path.display()))?;
        let e = serve.exec();
        let _ = std::fs::remove_file(pid_path);
        return Err(format!("cannot start torchyard serve: {e}"));
    }
    // Its own process group: a Ctrl-C meant for the shell that started it does not stop it.
    let child = serve
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start torchyard serve: {e}"))?;
    std::fs::write(pid_path, child.id().to_string())
        .map_err(|e| format!("cannot write {}: {e}", pid_path.display()))
}

/// `torchyard serve` with the flags the checked arguments map to.
fn serve_command(args: &TorchServeArgs) -> Result<Command, String> {
    let existing_file = |path: &Path, flag: &str| {
        let full = std::fs::canonicalize(path)
            .or_else(|_| std::path::absolute(path))
            .unwrap_or_else(|_| path.to_path_buf());
        match full.is_file() {
            true => Ok(full),
            false => Err(format!("{flag} file not found: {}", full.display())),
        }
    };
    let log_config = args
        .log_config
        .as_deref()
        .map(|path| existing_file(path, "--log-config"))
        .transpose()?;
    if let Some(temp) = std::env::var_os("TEMP").filter(|t| !t.is_empty()) {
        if !Path::new(&temp).is_dir() {
            return Err(format!(
                "Invalid temp directory: {}, please check TEMP environment variable.",
                temp.to_string_lossy()
            ));
        }
    }
    let ts_config = std::env::var_os("TS_CONFIG_FILE")
        .map(PathBuf::from)
        .or_else(|| args.ts_config.clone());
    if let Some(config) = &ts_config {
        if !config.is_file() {
            return Err(format!("--ts-config file not found: {}", config.display()));
        }
    }
    // Read as the server reads it (Java properties); an unreadable file is the server's to
    // report, so the launcher goes on without its keys.
    let properties = ts_config
        .as_deref()
        .and_then(|path| std::fs::read_to_string(path).ok())
        .and_then(|text| crate::properties::parse(&text).ok())
        .unwrap_or_default();
    let property = |key: &str| properties.get(key).map(|v| v.trim());
    let model_store = args
        .model_store
        .clone()
        .or_else(|| property("model_store").map(PathBuf::from));
    match &model_store {
        Some(store) if !store.is_dir() => {
            return Err(format!(
                "--model-store directory not found: {}",
                store.display()
            ))
        }
        Some(_) => {}
        None => return Err("Missing mandatory parameter --model-store".into()),
    }
    if let Some(store) = &args.workflow_store {
        if !store.is_dir() {
            return Err(format!(
                "--workflow-store directory not found: {}",
                store.display()
            ));
        }
    }
    if let Some(plugins) = args
        .plugins_path
        .as_deref()
        .or(property("plugins_path").map(Path::new))
    {
        eprintln!(
            "Warning: torchyard cannot load TorchServe's Java plugins; ignoring the plugins path {}",
            plugins.display()
        );
    }
    if let Some(path) = &args.cpp_log_config {
        existing_file(path, "--cpp-log-config")?;
        eprintln!("Warning: torchyard has no C++ backend; ignoring --cpp-log-config");
    }

    let exe = std::env::current_exe().map_err(|e| format!("cannot find torchyard: {e}"))?;
    let mut serve = Command::new(exe);
    serve.arg("serve");
    if let Some(store) = model_store {
        serve.arg("--model-store").arg(store);
    }
    if let Some(store) = &args.workflow_store {
        serve.arg("--workflow-store").arg(store);
    }
    if let Some(config) = ts_config {
        serve.arg("--ts-config").arg(config);
    }
    if !args.models.is_empty() {
        serve.arg("--models").args(&args.models);
    }
    if let Some(log_config) = log_config {
        serve.arg("--log-config").arg(log_config);
    }
    // TorchServe reads the newest snapshot only when no configuration file is given.
    serve.arg("--restore-only-without-config");
    let flags: [(bool, &str); 3] = [
        (args.no_config_snapshots, "--ncs"),
        (args.disable_token_auth, "--disable-token-auth"),
        (args.enable_model_api, "--enable-model-api"),
    ];
    serve.args(
        flags
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, flag)| OsString::from(flag)),
    );
    Ok(serve)
}
