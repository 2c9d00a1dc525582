//! Locating archives named by a registration `url`: store paths, absolute paths, `file://` and
//! http(s) URLs, each checked against `allowed_urls` in its normalised form.

use std::path::{Component, Path, PathBuf};

use axum::http::StatusCode;

use crate::archive::ArchiveError;
use crate::download::download;
use crate::error::{ApiError, ApiResult};
use crate::model::valid_name;
use crate::state::AppState;

/// An opened archive, where it was opened from, and the copy of it registration put into the
/// store (removed with the registration).
pub struct Opened<T> {
    pub archive: T,
    pub source: PathBuf,
    pub stored_copy: Option<PathBuf>,
}

/// Locates the archive named by `url` (see [`locate`]), keeps a copy of an archive fetched from
/// an http(s) or `file://` URL in the first store (as TorchServe does, unless a file of that
/// name is there already), opens it with `open` on a blocking thread, unpacking under the
/// runtime directory's `work_subdir`, and deletes a download afterwards. `kind` names the
/// archive in errors ("model", "workflow").
pub async fn open_archive<T: Send + 'static>(
    state: &AppState,
    url: &str,
    dirs: &[&Path],
    work_subdir: &str,
    kind: &str,
    open: impl FnOnce(&Path, &Path) -> Result<T, ArchiveError> + Send + 'static,
) -> ApiResult<Opened<T>> {
    let located = locate(state, url, dirs, kind).await?;
    let stored_copy = match (&located.store_as, dirs.first()) {
        (Some(name), Some(store)) => keep_in_store(&located.path, &store.join(name)).await,
        _ => None,
    };
    let source = stored_copy.clone().unwrap_or_else(|| located.path.clone());
    let work_dir = state.python.runtime_dir.join(work_subdir);
    let path = source.clone();
    let opened = tokio::task::spawn_blocking(move || open(&path, &work_dir))
        .await
        .map_err(|e| ApiError::internal(format!("archive loader panicked: {e}")));
    if located.downloaded {
        let _ = tokio::fs::remove_file(&located.path).await;
    }
    let failed = |error: ApiError| async {
        if let Some(copy) = &stored_copy {
            let _ = tokio::fs::remove_file(copy).await;
        }
        Err(error)
    };
    match opened {
        Ok(Ok(archive)) => Ok(Opened {
            archive,
            source,
            stored_copy,
        }),
        Ok(Err(ArchiveError::NotFound(_))) => failed(not_in_store(kind, url)).await,
        Ok(Err(other)) => {
            failed(ApiError::bad_request(format!(
                "Failed to open {kind} archive {url}: {other}"
            )))
            .await
        }
        Err(e) => failed(e).await,
    }
}

/// Copies the archive file at `from` to `to` unless `to` exists or `from` is a folder; the
/// copy's path when one was made.
async fn keep_in_store(from: &Path, to: &Path) -> Option<PathBuf> {
    let is_file = tokio::fs::metadata(from).await.is_ok_and(|m| m.is_file());
    if !is_file || tokio::fs::try_exists(to).await.unwrap_or(true) {
        return None;
    }
    match tokio::fs::copy(from, to).await {
        Ok(_) => Some(to.to_path_buf()),
        Err(e) => {
            tracing::warn!("cannot keep {} in the store: {e}", to.display());
            None
        }
    }
}

/// Where [`locate`] found an archive.
struct Located {
    path: PathBuf,
    /// A download the caller deletes.
    downloaded: bool,
    /// The file name to keep a copy under in the store: set for http(s) and `file://` URLs.
    store_as: Option<String>,
}

/// As TorchServe: a url holding `..` anywhere, whatever its kind, is refused before anything
/// else looks at it (a 404 of the `kind`'s not-found type).
pub fn refuse_parent_paths(url: &str, kind: &str) -> ApiResult<()> {
    if !url.contains("..") {
        return Ok(());
    }
    let message = format!("Relative path is not allowed in url: {url}");
    Err(match kind {
        "workflow" => ApiError::workflow_not_found(message),
        _ => ApiError::model_not_found(message),
    })
}

/// Finds an archive on disk: a relative path looked up in `dirs` in order, an absolute path
/// (inside a store, or matching `allowed_urls`) or `file://` URL, or an http(s) URL downloaded
/// into the runtime directory.
async fn locate(state: &AppState, url: &str, dirs: &[&Path], kind: &str) -> ApiResult<Located> {
    if url.is_empty() {
        return Err(ApiError::bad_request("Parameter url is required."));
    }
    refuse_parent_paths(url, kind)?;
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let file_name = || stored_name(url);
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Ok(Located {
            path: download(state, url).await?,
            downloaded: true,
            store_as: file_name(),
        });
    }
    if let Some(path) = url.strip_prefix("file://") {
        let path = outside_store(state, "file://", Path::new(path), dirs, kind)
            .await
            .map_err(|e| match e.status {
                StatusCode::NOT_FOUND => download_failed(url),
                _ => e,
            })?;
        return Ok(Located {
            path,
            downloaded: false,
            store_as: file_name(),
        });
    }
    let found = |path| Located {
        path,
        downloaded: false,
        store_as: None,
    };
    let path = Path::new(url);
    if path.is_absolute() {
        return outside_store(state, "", path, dirs, kind).await.map(found);
    }
    if path
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(ApiError::model_not_found(format!(
            "Relative path is not allowed in url: {url}"
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
            return Ok(found(candidate));
        }
    }
    Err(not_in_store(kind, url))
}

/// An absolute path: a plain path inside a store is always fine; any other, and every
/// `file://` URL, only when `allowed_urls` matches both the path with `.` and `..` resolved
/// and the real path it leads to (symbolic links followed), each written with the `scheme`
/// the request used.
async fn outside_store(
    state: &AppState,
    scheme: &str,
    path: &Path,
    dirs: &[&Path],
    kind: &str,
) -> ApiResult<PathBuf> {
    let missing = || not_in_store(kind, &format!("{scheme}{}", path.display()));
    let real = tokio::fs::canonicalize(path).await.ok();
    if let Some(real) = real.as_ref().filter(|_| scheme.is_empty()) {
        for dir in dirs {
            if tokio::fs::canonicalize(dir)
                .await
                .is_ok_and(|store| real.starts_with(store))
            {
                return Ok(real.clone());
            }
        }
    }
    let check = |path: &Path| {
        let location = format!("{scheme}{}", path.display());
        match allowed(state, &location)? {
            true => Ok(()),
            false => Err(not_allowed(&location, "paths outside the store")),
        }
    };
    check(&normalize(path))?;
    let real = real.ok_or_else(missing)?;
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

/// The name a copy of the archive at an http(s) or `file://` `url` is kept under in the
/// store; `None` for other urls.
pub fn stored_name(url: &str) -> Option<String> {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let remote = ["http://", "https://", "file://"]
        .iter()
        .any(|scheme| lower.starts_with(scheme));
    let name = url.rsplit('/').next().unwrap_or_default();
    (remote && valid_name(name)).then(|| name.to_string())
}

/// TorchServe's 404 for an archive that is not where it was looked for; `kind` is "model" or
/// "workflow".
pub fn not_in_store(kind: &str, url: &str) -> ApiError {
    if kind == "workflow" {
        ApiError::workflow_not_found(format!("Workflow not found in workflow store: {url}"))
    } else {
        ApiError::model_not_found(format!("Model not found in model store: {url}"))
    }
}

/// TorchServe's 400 for an archive URL that could not be fetched; the detail goes to the log.
pub fn download_failed(url: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "DownloadArchiveException",
        format!("Failed to download archive from: {url}"),
    )
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
