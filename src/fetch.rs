//! Locating archives named by a registration `url`: store paths, absolute paths, `file://` and
//! http(s) URLs, each checked against `allowed_urls` in its normalised form.

use std::path::{Component, Path, PathBuf};

use crate::archive::ArchiveError;
use crate::download::download;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Locates the archive named by `url` (see [`locate`]), opens it with `open` on a blocking
/// thread, unpacking under the runtime directory's `work_subdir`, and deletes a downloaded
/// file afterwards. Returns the opened archive and the path it was opened from; `kind` names
/// the archive in errors ("model", "workflow").
pub async fn open_archive<T: Send + 'static>(
    state: &AppState,
    url: &str,
    dirs: &[&Path],
    work_subdir: &str,
    kind: &str,
    open: impl FnOnce(&Path, &Path) -> Result<T, ArchiveError> + Send + 'static,
) -> ApiResult<(T, PathBuf)> {
    let (source, downloaded) = locate(state, url, dirs).await?;
    let work_dir = state.python.runtime_dir.join(work_subdir);
    let path = source.clone();
    let opened = tokio::task::spawn_blocking(move || open(&path, &work_dir))
        .await
        .map_err(|e| ApiError::internal(format!("archive loader panicked: {e}")))?;
    if downloaded {
        let _ = tokio::fs::remove_file(&source).await;
    }
    match opened {
        Ok(archive) => Ok((archive, source)),
        Err(ArchiveError::NotFound(_)) => Err(not_in_store(url)),
        Err(other) => Err(ApiError::bad_request(format!(
            "Failed to open {kind} archive {url}: {other}"
        ))),
    }
}

/// Finds an archive on disk: a relative path looked up in `dirs` in order, an absolute path or
/// `file://` URL, or an http(s) URL downloaded into the runtime directory. The flag says
/// whether the file is a download the caller should delete.
async fn locate(state: &AppState, url: &str, dirs: &[&Path]) -> ApiResult<(PathBuf, bool)> {
    if url.is_empty() {
        return Err(ApiError::bad_request("Parameter url is required"));
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return download(state, url).await.map(|p| (p, true));
    }
    let (scheme, raw) = match url.strip_prefix("file://") {
        Some(path) => ("file://", path),
        None => ("", url),
    };
    let path = Path::new(raw);
    if path.is_absolute() {
        return outside_store(state, scheme, path).await.map(|p| (p, false));
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

/// An absolute path outside the stores: allowed only when `allowed_urls` matches both the path
/// with `.` and `..` resolved and the real path it leads to (symbolic links followed), each
/// written with the `scheme` the request used.
async fn outside_store(state: &AppState, scheme: &str, path: &Path) -> ApiResult<PathBuf> {
    let check = |path: &Path| {
        let location = format!("{scheme}{}", path.display());
        match allowed(state, &location)? {
            true => Ok(()),
            false => Err(not_allowed(&location, "paths outside the store")),
        }
    };
    check(&normalize(path))?;
    let real = tokio::fs::canonicalize(path)
        .await
        .map_err(|_| not_in_store(&format!("{scheme}{}", path.display())))?;
    check(&real)?;
    Ok(real)
}

/// `path` with `.` and `..` resolved without touching the disk (`..` at the root stays there).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The 404 for an archive that is not where it was looked for.
pub fn not_in_store(url: &str) -> ApiError {
    ApiError::model_not_found(format!("Model not found in model store: {url}"))
}

/// Whether `location` (a normalised URL or path) matches one of the `allowed_urls` patterns
/// in full.
pub fn allowed(state: &AppState, location: &str) -> ApiResult<bool> {
    for pattern in &state.config.allowed_urls {
        let regex = regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
            ApiError::internal(format!("allowed_urls pattern {pattern:?} is invalid: {e}"))
        })?;
        if regex.is_match(location) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The 400 for a location that `allowed_urls` does not let in.
pub fn not_allowed(location: &str, what: &str) -> ApiError {
    ApiError::bad_request(format!(
        "{location} is not allowed: {what} must match allowed_urls in the configuration"
    ))
}

#[cfg(test)]
mod tests {
    use super::normalize;
    use std::path::Path;

    #[test]
    fn normalizes_dots_without_leaving_the_root() {
        assert_eq!(
            normalize(Path::new("/s/store/../elsewhere/./x.mar")),
            Path::new("/s/elsewhere/x.mar")
        );
        assert_eq!(
            normalize(Path::new("/../../etc/passwd")),
            Path::new("/etc/passwd")
        );
    }
}
