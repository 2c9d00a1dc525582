//! Token authorization, as TorchServe 0.11+ does it: keys generated at start into
//! `key_file.json`, and `Authorization: Bearer <key>` required on the inference and
//! management APIs (`/ping` and KServe's `/v2/health/live|ready` excepted, for health checks).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::ApiError;

/// The keys of one server run.
#[derive(Debug, Clone)]
pub struct Keys {
    pub inference: Arc<str>,
    pub management: Arc<str>,
}

fn new_key() -> Arc<str> {
    uuid::Uuid::new_v4().simple().to_string().into()
}

impl Keys {
    /// Fresh random keys, written to `path` readable by the owner only.
    pub fn generate(path: &Path) -> Result<Self> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let keys = Self {
            inference: new_key(),
            management: new_key(),
        };
        let body = json!({
            "management": {"key": &*keys.management},
            "inference": {"key": &*keys.inference},
        });
        let _ = std::fs::remove_file(path);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        file.write_all(serde_json::to_string_pretty(&body)?.as_bytes())?;
        Ok(keys)
    }
}

/// Whether an `Authorization` value (HTTP header or gRPC metadata) carries `key` the way
/// TorchServe reads it: `Bearer`, white space, then the key.
pub fn authorizes(value: Option<&str>, key: &str) -> bool {
    let token = value
        .and_then(|v| v.strip_prefix("Bearer"))
        .filter(|rest| rest.starts_with(char::is_whitespace))
        .map(str::trim_start);
    token == Some(key)
}

/// Middleware: lets a request through only with the listener's key as a Bearer token.
pub async fn require_key(State(key): State<Arc<str>>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let probe = matches!(
        request.uri().path(),
        "/ping" | "/v2/health/live" | "/v2/health/ready"
    );
    if probe || authorizes(given, &key) {
        return next.run(request).await;
    }
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "InvalidKeyException",
        "Token authorization failed: send 'Authorization: Bearer <key>' with the key from key_file.json",
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_bearer_key_authorizes() {
        assert!(authorizes(Some("Bearer k1"), "k1"));
        assert!(authorizes(Some("Bearer \tk1"), "k1"));
        assert!(!authorizes(Some("Bearer k2"), "k1"));
        assert!(!authorizes(Some("Bearerk1"), "k1"));
        assert!(!authorizes(Some("Bearer k1 k1"), "k1"));
        assert!(!authorizes(Some("k1"), "k1"));
        assert!(!authorizes(None, "k1"));
    }
}
