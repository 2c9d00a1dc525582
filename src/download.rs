//! Downloading archives over http(s) without letting a URL reach what it must not: every hop
//! (the URL and each redirect) is checked against `allowed_urls` or must resolve to public
//! addresses only, and the connection goes to exactly the addresses that were checked, so a
//! second DNS answer cannot rebind it. Downloads stream to disk under a size cap and an overall
//! deadline.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use reqwest::header::{CONTENT_LENGTH, LOCATION};
use reqwest::{redirect, Url};
use tokio::io::AsyncWriteExt;

use crate::error::{ApiError, ApiResult};
use crate::fetch::{allowed, download_failed, not_allowed};
use crate::model::valid_name;
use crate::state::AppState;

/// Most redirects one download follows.
const MAX_REDIRECTS: usize = 5;

/// Downloads `url` into the runtime directory's `downloads/` and returns the file's path;
/// nothing is left behind when it fails.
pub async fn download(state: &AppState, url: &str) -> ApiResult<PathBuf> {
    let limit = state.config.download_timeout;
    let path = download_path(state, url);
    let fetched = tokio::time::timeout(limit, fetch(state, url, &path)).await;
    let result = match fetched {
        Ok(result) => result,
        Err(_) => Err(failed_because(
            url,
            format!("no complete answer within {limit:?}"),
        )),
    };
    if result.is_err() {
        let _ = tokio::fs::remove_file(&path).await;
    }
    result.map(|()| path)
}

/// A fresh file name under `downloads/`, keeping the URL's file name when it is a safe one.
fn download_path(state: &AppState, url: &str) -> PathBuf {
    let name = url
        .rsplit('/')
        .next()
        .filter(|n| valid_name(n))
        .unwrap_or("archive");
    state
        .python
        .runtime_dir
        .join("downloads")
        .join(format!("{}-{name}", uuid::Uuid::new_v4()))
}

/// Follows `url` through at most [`MAX_REDIRECTS`] checked redirects and saves the answer.
async fn fetch(state: &AppState, url: &str, path: &Path) -> ApiResult<()> {
    let mut target = parse(url).map_err(|e| failed(url, e))?;
    for _ in 0..=MAX_REDIRECTS {
        let addresses = checked_addresses(state, &target).await?;
        let client = pinned_client(&target, &addresses).map_err(|e| failed(url, e))?;
        let response = client
            .get(target.clone())
            .send()
            .await
            .map_err(|e| failed(url, e))?;
        if response.status().is_redirection() {
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| failed(url, "a redirect without a Location"))?;
            let next = target
                .join(location)
                .map_err(|e| failed(url, format!("bad redirect {location:?}: {e}")))?;
            target = require_http(next)?;
            continue;
        }
        let response = response.error_for_status().map_err(|e| failed(url, e))?;
        return save(state, url, response, path).await;
    }
    Err(failed(url, format!("more than {MAX_REDIRECTS} redirects")))
}

/// Parses an http(s) URL; its normalised form is what `allowed_urls` is matched against.
fn parse(url: &str) -> ApiResult<Url> {
    let parsed =
        Url::parse(url).map_err(|e| ApiError::bad_request(format!("Invalid url {url}: {e}")))?;
    require_http(parsed)
}

/// `url` if it is http(s) with a host: nothing else is downloaded, nor followed in a redirect.
fn require_http(url: Url) -> ApiResult<Url> {
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ApiError::bad_request(format!(
            "Invalid url {url}: only http(s) URLs with a host can be downloaded"
        )));
    }
    Ok(url)
}

/// The addresses `target` resolves to, once: all of them when it matches `allowed_urls`,
/// else only if every one is public.
async fn checked_addresses(state: &AppState, target: &Url) -> ApiResult<Vec<SocketAddr>> {
    let host = target.host_str().unwrap_or_default();
    let port = target.port_or_known_default().unwrap_or(443);
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| failed(target.as_str(), format!("cannot resolve {host}: {e}")))?
        .collect();
    if addresses.is_empty() {
        return Err(failed(target.as_str(), format!("cannot resolve {host}")));
    }
    if !allowed(state, target.as_str())? && !addresses.iter().all(|a| is_public(a.ip())) {
        return Err(not_allowed(target.as_str(), "private and local addresses"));
    }
    Ok(addresses)
}

/// A client that connects only to `addresses` for the target's host, follows no redirect by
/// itself and uses no proxy (a proxy would resolve the name again).
fn pinned_client(target: &Url, addresses: &[SocketAddr]) -> reqwest::Result<reqwest::Client> {
    let host = target.host_str().unwrap_or_default();
    reqwest::Client::builder()
        .redirect(redirect::Policy::none())
        .no_proxy()
        .resolve_to_addrs(host, addresses)
        .build()
}

/// Streams the body into `path`, refusing more than `max_download_size` bytes.
async fn save(
    state: &AppState,
    url: &str,
    mut response: reqwest::Response,
    path: &Path,
) -> ApiResult<()> {
    let cap = state.config.max_download_size;
    let too_big = || {
        failed_because(
            url,
            format!("the archive is larger than max_download_size ({cap} bytes)"),
        )
    };
    let declared = response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > cap) {
        return Err(too_big());
    }
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| failed(url, e))?;
    }
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| failed(url, e))?;
    let mut written = 0u64;
    while let Some(chunk) = response.chunk().await.map_err(|e| failed(url, e))? {
        written += chunk.len() as u64;
        if written > cap {
            return Err(too_big());
        }
        file.write_all(&chunk).await.map_err(|e| failed(url, e))?;
    }
    file.flush().await.map_err(|e| failed(url, e))
}

/// TorchServe's answer to a download that failed: the URL only; `why` goes to the log.
fn failed(url: &str, why: impl std::fmt::Display) -> ApiError {
    tracing::warn!("failed to download archive from {url}: {why}");
    download_failed(url)
}

/// A download refused by one of torchyard's own limits, which the answer names.
fn failed_because(url: &str, why: impl std::fmt::Display) -> ApiError {
    let error = download_failed(url);
    let message = format!("{}: {why}", error.message);
    error.with_message(message)
}

/// Whether an address is reachable on the public internet (not loopback, private, link-local,
/// shared, unspecified or documentation space).
fn is_public(ip: IpAddr) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_local_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.4",
            "169.254.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "151.101.1.1", "2a00:1450::1"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn only_http_urls_with_a_host_are_downloaded() {
        assert!(parse("ftp://example.com/a.mar").is_err());
        assert!(parse("file:///etc/passwd").is_err());
        assert!(parse("http://").is_err());
        let normalised = parse("HTTP://Example.COM/a/../b.mar").unwrap();
        assert_eq!(normalised.as_str(), "http://example.com/b.mar");
    }
}
