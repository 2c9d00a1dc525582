//! Locating archives named by a registration `url`: store paths, absolute paths, http(s) URLs.

use std::path::{Path, PathBuf};

use crate::error::{ApiError, ApiResult};
use crate::model::valid_name;
use crate::state::AppState;

/// Finds an archive on disk: a relative path looked up in `dirs` in order, an absolute path, or
/// an http(s) URL downloaded into the runtime directory. The flag says whether the file is a
/// download the caller should delete.
pub async fn locate(state: &AppState, url: &str, dirs: &[&Path]) -> ApiResult<(PathBuf, bool)> {
    if url.is_empty() {
        return Err(ApiError::bad_request("Parameter url is required"));
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        return download(state, url).await.map(|p| (p, true));
    }
    let path = Path::new(url.strip_prefix("file://").unwrap_or(url));
    if path.is_absolute() {
        return match tokio::fs::metadata(path).await {
            Ok(_) => Ok((path.to_path_buf(), false)),
            Err(_) => Err(not_in_store(url)),
        };
    }
    if path
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(ApiError::bad_request(format!(
            "Invalid archive name {url:?}: it must stay inside the store"
        )));
    }
    if dirs.is_empty() {
        return Err(ApiError::bad_request(
            "No model store is configured: start with --model-store",
        ));
    }
    for dir in dirs {
        let candidate = dir.join(path);
        if tokio::fs::metadata(&candidate).await.is_ok() {
            return Ok((candidate, false));
        }
    }
    Err(not_in_store(url))
}

/// The 404 for an archive that is not where it was looked for.
pub fn not_in_store(url: &str) -> ApiError {
    ApiError::model_not_found(format!("Model not found in model store: {url}"))
}

async fn download(state: &AppState, url: &str) -> ApiResult<PathBuf> {
    let failed = |e: &dyn std::fmt::Display| {
        ApiError::bad_request(format!("Failed to download archive from {url}: {e}"))
    };
    let response = state
        .http
        .get(url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| failed(&e))?;
    let bytes = response.bytes().await.map_err(|e| failed(&e))?;
    let dir = state.python.runtime_dir.join("downloads");
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| failed(&e))?;
    let name = url
        .rsplit('/')
        .next()
        .filter(|n| valid_name(n))
        .unwrap_or("archive");
    let path = dir.join(format!("{}-{name}", uuid::Uuid::new_v4()));
    tokio::fs::write(&path, &bytes)
        .await
        .map_err(|e| failed(&e))?;
    Ok(path)
}
