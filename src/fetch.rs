//! Locating archives named by a registration `url`: store paths, absolute paths, http(s) URLs.

use std::path::{Path, PathBuf};

use crate::archive::ArchiveError;
use crate::error::{ApiError, ApiResult};
use crate::model::valid_name;
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
    open: fn(&Path, &Path) -> Result<T, ArchiveError>,
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

/// Finds an archive on disk: a relative path looked up in `dirs` in order, an absolute path, or
/// an http(s) URL downloaded into the runtime directory. The flag says whether the file is a
/// download the caller should delete.
async fn locate(state: &AppState, url: &str, dirs: &[&Path]) -> ApiResult<(PathBuf, bool)> {
    if url.is_empty() {
        return Err(ApiError::bad_request("Parameter url is required"));
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        check_remote(state, url).await?;
        return download(state, url).await.map(|p| (p, true));
    }
    let path = Path::new(url.strip_prefix("file://").unwrap_or(url));
    if path.is_absolute() {
        if !allowed(state, url)? {
            return Err(not_allowed(url, "paths outside the store"));
        }
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

/// Whether `url` matches one of the `allowed_urls` patterns in full.
fn allowed(state: &AppState, url: &str) -> ApiResult<bool> {
    for pattern in &state.config.allowed_urls {
        let regex = regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
            ApiError::internal(format!("allowed_urls pattern {pattern:?} is invalid: {e}"))
        })?;
        if regex.is_match(url) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn not_allowed(url: &str, what: &str) -> ApiError {
    ApiError::bad_request(format!(
        "{url} is not allowed: {what} must match allowed_urls in the configuration"
    ))
}

/// An http(s) URL must match `allowed_urls` or point only at public addresses.
async fn check_remote(state: &AppState, url: &str) -> ApiResult<()> {
    if allowed(state, url)? {
        return Ok(());
    }
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| ApiError::bad_request(format!("Invalid url {url}: {e}")))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| ApiError::bad_request(format!("Invalid url {url}: no host")))?;
    let port = parsed.port_or_known_default().unwrap_or(443);
    let addrs = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| ApiError::bad_request(format!("Cannot resolve {host}: {e}")))?;
    for addr in addrs {
        if !is_public(addr.ip()) {
            return Err(not_allowed(url, "private and local addresses"));
        }
    }
    Ok(())
}

/// Whether an address is reachable on the public internet (not loopback, private, link-local,
/// shared, unspecified or documentation space).
fn is_public(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || (a == 100 && (64..128).contains(&b))
                || a == 0)
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public(IpAddr::V4(v4)),
            None => {
                let first = v6.segments()[0];
                !(v6.is_loopback()
                    || v6.is_unspecified()
                    || (first & 0xfe00) == 0xfc00
                    || (first & 0xffc0) == 0xfe80)
            }
        },
    }
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

#[cfg(test)]
mod tests {
    use super::is_public;

    #[test]
    fn private_and_local_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.4",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "151.101.1.1", "2a00:1450::1"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }
}
