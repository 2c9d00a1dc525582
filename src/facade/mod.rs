//! The operations every front door calls (TorchServe's REST and gRPC APIs, torchyard's
//! workflow service): management of models and workflows, and predictions as a stream of
//! answers. The rules that must not differ between protocols live here once: the model-API
//! gate, waiting for the start-up restore, snapshots after a change, worker bounds, pages.
//! Front doors decode their request, make one call here and encode the result.

pub mod models;
pub mod predict;
pub mod workflows;

use std::future::Future;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::model::check_worker_limit;
use crate::snapshot::RecordKind;
use crate::state::AppState;
use crate::versioned::{Versioned, VersionedRegistry};

/// Refuses unless models and workflows may be registered and unregistered through the API:
/// TorchServe's REST API then answers 405 "Requested method is not allowed, please refer to
/// API document." (its gRPC services say "Model API disabled", see `grpc::status`).
pub fn require_model_api(state: &AppState) -> ApiResult<()> {
    if state.config.model_api_enabled {
        Ok(())
    } else {
        Err(ApiError::method_not_allowed())
    }
}

/// Whether a change registers, updates or unregisters, which the model API gate decides on.
#[derive(Clone, Copy, PartialEq)]
enum Gate {
    ModelApi,
    Open,
}

/// Runs one change of the registrations: refused first by the model-API gate when `gate`
/// says so, then held until the restore at start has finished (so that no snapshot drops
/// what is not restored yet), and followed by a snapshot when it succeeded. Unregistering a
/// name (`unregisters`) also forgets its records that failed to restore, even when nothing
/// of it is loaded to unregister, and that too is saved.
async fn change<T>(
    state: &AppState,
    gate: Gate,
    unregisters: Option<(RecordKind, &str, Option<&str>)>,
    op: impl Future<Output = ApiResult<T>>,
) -> ApiResult<T> {
    if gate == Gate::ModelApi {
        require_model_api(state)?;
    }
    state.snapshots.wait_restored().await;
    let result = op.await;
    let forgot = unregisters
        .is_some_and(|(kind, name, version)| state.snapshots.forget_pending(kind, name, version));
    if result.is_ok() || forgot {
        state.snapshots.save(state).await;
    }
    result
}

/// One page of a list: `limit` (default 100, 1 to 1000) items from offset
/// `next_page_token`.
#[derive(Debug, Default, Deserialize)]
pub struct Page {
    pub limit: Option<usize>,
    pub next_page_token: Option<usize>,
}

/// The default versions under `key`, one page of them, with the next page's token when
/// there is one.
fn list<T: Versioned>(registry: &VersionedRegistry<T>, key: &str, page: Page) -> ApiResult<Value> {
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
    Ok(body)
}

/// One version, the default (`None`), or every version (`"all"`).
fn described<T: Versioned>(
    registry: &VersionedRegistry<T>,
    name: &str,
    version: Option<&str>,
) -> ApiResult<Vec<Arc<T>>> {
    match version {
        Some("all") => registry.versions(name),
        version => Ok(vec![registry.get(name, version)?]),
    }
}

/// Makes `version` the default of `name` and says so.
async fn set_default<T: Versioned>(
    state: &AppState,
    registry: &VersionedRegistry<T>,
    name: &str,
    version: &str,
) -> ApiResult<String> {
    change(state, Gate::Open, None, async {
        registry.set_default(name, version)?;
        Ok(format!(
            "Default version successfully updated for {} \"{name}\" to \"{version}\"",
            T::KIND.to_lowercase()
        ))
    })
    .await
}

/// A scale request: min defaults to 1, max to min.
#[derive(Debug, Default, Deserialize)]
pub struct Scale {
    pub min_worker: Option<usize>,
    pub max_worker: Option<usize>,
    /// Whether to answer only once the workers are up.
    #[serde(default)]
    pub synchronous: bool,
}

impl Scale {
    /// The worker bounds asked for; neither may go above `limit` (`max_workers_per_model`).
    fn bounds(&self, limit: usize) -> ApiResult<(usize, usize)> {
        let min = self.min_worker.unwrap_or(1);
        let max = self.max_worker.unwrap_or(min);
        if max < min {
            return Err(ApiError::bad_request(format!(
                "max_worker ({max}) cannot be less than min_worker ({min})"
            )));
        }
        check_worker_limit(min, max, limit)?;
        Ok((min, max))
    }
}

/// The outcome of a scale request.
#[derive(Debug, PartialEq)]
pub enum Scaled {
    /// The workers are up (a synchronous request): what was scaled.
    Done(String),
    /// The workers are starting or stopping (an asynchronous request).
    Accepted,
}

impl Scaled {
    fn new(synchronous: bool, min: usize, what: &str) -> Self {
        if synchronous {
            Self::Done(format!("Workers scaled to {min} for {what}"))
        } else {
            Self::Accepted
        }
    }

    /// TorchServe's status message.
    pub fn message(&self) -> &str {
        match self {
            Self::Done(message) => message,
            Self::Accepted => "Processing worker updates...",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn scale_bounds_default_and_refuse_inversions() {
        let scale = |min, max| Scale {
            min_worker: min,
            max_worker: max,
            synchronous: false,
        };
        assert_eq!(scale(None, None).bounds(4).unwrap(), (1, 1));
        assert_eq!(scale(Some(2), None).bounds(4).unwrap(), (2, 2));
        assert_eq!(scale(Some(0), Some(3)).bounds(4).unwrap(), (0, 3));
        let inverted = scale(Some(3), Some(2)).bounds(4).unwrap_err();
        assert_eq!(inverted.status, StatusCode::BAD_REQUEST);
        assert!(scale(Some(5), None).bounds(4).is_err());
    }

    #[test]
    fn scaled_says_what_torchserve_says() {
        assert_eq!(
            Scaled::new(true, 2, "model: m").message(),
            "Workers scaled to 2 for model: m"
        );
        assert_eq!(
            Scaled::new(false, 2, "model: m").message(),
            "Processing worker updates..."
        );
    }
}
