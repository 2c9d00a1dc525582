//! Answers shared by the model and workflow management APIs, which treat both as versioned
//! items: status messages, describe, list pages, set-default and scale replies.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::query;
use crate::error::{ApiError, ApiResult};
use crate::model::check_worker_limit;
use crate::versioned::{Versioned, VersionedRegistry};

/// `{"status": message}`.
pub fn status(message: String) -> Json<Value> {
    Json(json!({ "status": message }))
}

/// One version, the default (`None`), or every version (`"all"`).
pub fn described<T: Versioned>(
    registry: &VersionedRegistry<T>,
    name: &str,
    version: Option<&str>,
) -> ApiResult<Vec<Arc<T>>> {
    match version {
        Some("all") => registry.versions(name),
        version => Ok(vec![registry.get(name, version)?]),
    }
}

/// Describes one version, the default (`None`), or every version (`"all"`).
pub fn describe<T: Versioned>(
    registry: &VersionedRegistry<T>,
    name: &str,
    version: Option<&str>,
) -> ApiResult<Json<Value>> {
    let items = described(registry, name, version)?;
    Ok(Json(items.iter().map(|i| i.describe()).collect()))
}

/// Makes `version` the default and says so.
pub fn set_default<T: Versioned>(
    registry: &VersionedRegistry<T>,
    name: &str,
    version: &str,
) -> ApiResult<Json<Value>> {
    registry.set_default(name, version)?;
    Ok(status(format!(
        "Default version successfully updated for {} \"{name}\" to \"{version}\"",
        T::KIND.to_lowercase()
    )))
}

/// The reply to a scale request: 200 when it waited for the workers, 202 otherwise.
pub fn scaled(synchronous: bool, min: usize, what: &str) -> Response {
    if synchronous {
        status(format!("Workers scaled to {min} for {what}")).into_response()
    } else {
        (
            StatusCode::ACCEPTED,
            status("Processing worker updates...".into()),
        )
            .into_response()
    }
}

/// Query of the list APIs.
#[derive(Deserialize)]
struct Page {
    limit: Option<usize>,
    next_page_token: Option<usize>,
}

/// One page of the default versions under `key`: `limit` (default 100, at most 1000) items
/// from offset `next_page_token`, with the next page's token when there is one.
pub fn list<T: Versioned>(
    registry: &VersionedRegistry<T>,
    key: &str,
    raw: Option<&str>,
) -> ApiResult<Json<Value>> {
    let page: Page = query::parse(raw)?;
    let limit = page.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    let items = registry.list();
    let start = page.next_page_token.unwrap_or(0).min(items.len());
    let end = (start + limit).min(items.len());
    let mut body =
        json!({ key: items[start..end].iter().map(|i| i.summary()).collect::<Vec<_>>() });
    if end < items.len() {
        body["nextPageToken"] = json!(end.to_string());
    }
    Ok(Json(body))
}

/// The worker bounds of a scale request: min defaults to 1, max to min; neither may go
/// above `limit` (`max_workers_per_model`).
pub fn worker_bounds(
    min: Option<usize>,
    max: Option<usize>,
    limit: usize,
) -> ApiResult<(usize, usize)> {
    let min = min.unwrap_or(1);
    let max = max.unwrap_or(min);
    if max < min {
        return Err(ApiError::bad_request(format!(
            "max_worker ({max}) cannot be less than min_worker ({min})"
        )));
    }
    check_worker_limit(min, max, limit)?;
    Ok((min, max))
}
