//! Installing a model archive's requirements.txt into a directory of the model's own, never
//! into the server's environment.

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
    let target = env
        .runtime_dir
        .join("deps")
        .join(format!("{model_name}-{}", uuid::Uuid::new_v4()));
    tracing::info!(
        "installing {} for model {model_name}",
        requirements.display()
    );
    let output = tokio::process::Command::new(&env.interpreter)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
        ])
        .arg(&target)
        .arg("-r")
        .arg(requirements)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| ApiError::internal(format!("cannot run pip: {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: String = stderr.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
        tracing::warn!("pip install for model {model_name} failed: {tail}");
        let _ = tokio::fs::remove_dir_all(&target).await;
        return Err(ApiError::bad_request(format!(
            "Custom pip package installation failed for model {model_name}"
        )));
    }
    Ok(target)
}
