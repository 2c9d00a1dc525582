//! A model's own Python packages: an archive's requirements.txt installed into a directory of
//! the model's own (put first on its workers' import path), or, with `useVenv`, a virtual
//! environment of the model's own that inherits the server's packages; never into the
//! server's environment.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::error::{ApiError, ApiResult};
use crate::python_env::PythonEnv;

/// Runs `pip install --target` for `requirements` and returns the target directory, which the
/// model's workers put first on their import path. A failed install answers TorchServe's 400
/// "Custom pip package installation failed for model NAME" (pip's own output goes to the log).
pub async fn install_requirements(
    env: &PythonEnv,
    requirements: &Path,
    model_name: &str,
) -> ApiResult<PathBuf> {
    let target = own_dir(env, "deps", model_name);
    let mut pip = tokio::process::Command::new(&env.interpreter);
    pip.args(["-m", "pip", "install", "--target"]).arg(&target);
    let installed = pip_install(pip, requirements, model_name).await;
    if installed.is_err() {
        let _ = tokio::fs::remove_dir_all(&target).await;
    }
    installed.map(|()| target)
}

/// Makes a virtual environment for model `model_name` (TorchServe's `useVenv`) whose
/// interpreter also sees the server's packages (listed in a `.pth` file after its own), and
/// installs `requirements` into it when given. Returns the environment's directory; a
/// failure answers TorchServe's 400 "Virtual environment creation failed for model NAME".
pub async fn create_venv(
    env: &PythonEnv,
    model_name: &str,
    requirements: Option<&Path>,
) -> ApiResult<PathBuf> {
    let dir = own_dir(env, "venvs", model_name);
    tracing::info!("creating a virtual environment for model {model_name}");
    let created = tokio::process::Command::new(&env.interpreter)
        .args(["-c", MAKE_VENV])
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| {
            ApiError::internal(format!("cannot run {}: {e}", env.interpreter.display()))
        })?;
    let result = if created.status.success() {
        match requirements {
            Some(file) => {
                let mut pip = tokio::process::Command::new(venv_python(&dir));
                pip.args(["-m", "pip", "install"]);
                pip_install(pip, file, model_name).await
            }
            None => Ok(()),
        }
    } else {
        tracing::warn!(
            "virtual environment for model {model_name} failed: {}",
            last_lines(&created.stderr)
        );
        Err(ApiError::bad_request(format!(
            "Virtual environment creation failed for model {model_name}"
        )))
    };
    if result.is_err() {
        let _ = tokio::fs::remove_dir_all(&dir).await;
    }
    result.map(|()| dir)
}

/// The interpreter of the virtual environment at `dir`.
pub fn venv_python(dir: &Path) -> PathBuf {
    dir.join("bin").join("python")
}

/// Creates the environment named by `sys.argv[1]`, with pip, and adds the creating
/// interpreter's site-packages through a `.pth` file of its own site-packages (as TorchServe's
/// `setup_model_venv.py` does), so the model's packages come first and the server's after.
/// They are added as site directories, so their own `.pth` files (editable installs, a venv
/// that extends another) count too.
const MAKE_VENV: &str = r#"
import glob, os, site, sys, venv
venv.create(sys.argv[1], clear=True, with_pip=True)
[own] = glob.glob(os.path.join(sys.argv[1], "lib", "python*", "site-packages"))
with open(os.path.join(own, "inherited-site-packages.pth"), "w") as f:
    for d in site.getsitepackages() + [site.getusersitepackages()]:
        if os.path.isdir(d):
            f.write("import site; site.addsitedir(%r)\n" % d)
"#;

/// A fresh directory for one model under the runtime directory's `kind`.
fn own_dir(env: &PythonEnv, kind: &str, model_name: &str) -> PathBuf {
    env.runtime_dir
        .join(kind)
        .join(format!("{model_name}-{}", uuid::Uuid::new_v4()))
}

/// Runs `pip` (a `python -m pip install ...` command) for `requirements`; a failure is
/// TorchServe's 400 "Custom pip package installation failed for model NAME".
async fn pip_install(
    mut pip: tokio::process::Command,
    requirements: &Path,
    model_name: &str,
) -> ApiResult<()> {
    tracing::info!(
        "installing {} for model {model_name}",
        requirements.display()
    );
    let output = pip
        .args(["--quiet", "--disable-pip-version-check", "-r"])
        .arg(requirements)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| ApiError::internal(format!("cannot run pip: {e}")))?;
    if output.status.success() {
        return Ok(());
    }
    tracing::warn!(
        "pip install for model {model_name} failed: {}",
        last_lines(&output.stderr)
    );
    Err(ApiError::bad_request(format!(
        "Custom pip package installation failed for model {model_name}"
    )))
}

/// The last lines of a process's output, on one line.
fn last_lines(output: &[u8]) -> String {
    let text = String::from_utf8_lossy(output);
    let mut tail: Vec<&str> = text.lines().rev().take(5).collect();
    tail.reverse();
    tail.join(" | ")
}
