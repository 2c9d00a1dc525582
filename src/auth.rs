//! Token authorization, as TorchServe 0.12 does it: three keys generated at start into
//! `key_file.json` (management and inference keys that expire after `token_expiration_min`,
//! and an API key that never does), `Authorization: Bearer <key>` required on the REST and
//! gRPC APIs (REST's `/ping` and KServe's `/v2/health/live|ready` excepted, for health
//! checks), and `/token?type=management|inference` on the management API, authorised with the
//! API key, to replace an expired or leaked key.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::{RawQuery, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use base64::Engine;
use chrono::{DateTime, SecondsFormat, SubsecRound, TimeDelta, Utc};
use serde::Serialize;

use crate::error::ApiError;

/// What a missing, wrong or expired key is answered with, on REST (400
/// `InvalidKeyException`) and gRPC (`PERMISSION_DENIED`) alike.
pub const REFUSED: &str =
    "Token Authorization failed. Token either incorrect, expired, or not provided correctly";
/// What a refused `/token` call is answered with (TorchServe says "Authentication" there).
const TOKEN_API_REFUSED: &str =
    "Token Authentication failed. Token either incorrect, expired, or not provided correctly";

/// Which key a request needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeyKind {
    Inference,
    Management,
    /// The key of the `/token` API.
    Api,
}

/// A key that stops working at its expiration time.
#[derive(Debug, Clone)]
struct ExpiringKey {
    key: String,
    expires: DateTime<Utc>,
}

#[derive(Debug, Clone)]
struct Keys {
    management: ExpiringKey,
    inference: ExpiringKey,
    api: String,
}

/// The keys of one server run and the file they are published in.
#[derive(Debug)]
pub struct TokenAuth {
    path: PathBuf,
    /// How long a management or inference key works (`token_expiration_min`).
    lifetime: Duration,
    keys: RwLock<Keys>,
    /// Held while a new key is made and the file rewritten, so files are written in the
    /// order keys change.
    rotating: tokio::sync::Mutex<()>,
}

/// `key_file.json`, in TorchServe's layout and field order.
#[derive(Serialize)]
struct KeyFile<'a> {
    management: KeyEntry<'a>,
    inference: KeyEntry<'a>,
    #[serde(rename = "API")]
    api: ApiEntry<'a>,
}

#[derive(Serialize)]
struct KeyEntry<'a> {
    key: &'a str,
    /// As Java's `Instant.toString()` writes it: UTC, fractions only as long as needed.
    #[serde(rename = "expiration time")]
    expiration: String,
}

#[derive(Serialize)]
struct ApiEntry<'a> {
    key: &'a str,
}

/// A fresh random key: 128 bits, URL-safe base64.
fn new_key() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl TokenAuth {
    /// Fresh keys, written to `path` readable by the owner only.
    pub fn start(path: &Path, lifetime: Duration) -> Result<Arc<Self>> {
        let auth = Self {
            path: path.to_path_buf(),
            lifetime,
            keys: RwLock::new(Keys {
                management: ExpiringKey::new(lifetime),
                inference: ExpiringKey::new(lifetime),
                api: new_key(),
            }),
            rotating: Default::default(),
        };
        write_file(&auth.path, &auth.file_text())?;
        Ok(Arc::new(auth))
    }

    /// Whether an `Authorization` value (HTTP header or gRPC metadata) carries the unexpired
    /// key of `kind` the way TorchServe reads it: `Bearer`, white space, then the key.
    pub fn authorizes(&self, kind: KeyKind, authorization: Option<&str>) -> bool {
        let Some(token) = authorization.and_then(bearer_token) else {
            return false;
        };
        let keys = self.keys.read().expect("key lock poisoned");
        match kind {
            KeyKind::Api => token == keys.api,
            KeyKind::Management => keys.management.accepts(token),
            KeyKind::Inference => keys.inference.accepts(token),
        }
    }

    /// Replaces the management or inference key with a new one, valid for the configured
    /// lifetime, and rewrites the key file.
    pub async fn rotate(&self, kind: KeyKind) -> Result<()> {
        let _writing = self.rotating.lock().await;
        {
            let mut keys = self.keys.write().expect("key lock poisoned");
            let fresh = ExpiringKey::new(self.lifetime);
            match kind {
                KeyKind::Management => keys.management = fresh,
                KeyKind::Inference => keys.inference = fresh,
                KeyKind::Api => anyhow::bail!("the API key is never replaced"),
            }
        }
        let (path, text) = (self.path.clone(), self.file_text());
        tokio::task::spawn_blocking(move || write_file(&path, &text)).await?
    }

    fn file_text(&self) -> String {
        let keys = self.keys.read().expect("key lock poisoned");
        let file = KeyFile {
            management: keys.management.entry(),
            inference: keys.inference.entry(),
            api: ApiEntry { key: &keys.api },
        };
        serde_json::to_string_pretty(&file).expect("the key file serializes")
    }
}

impl ExpiringKey {
    /// A new key that works for `lifetime` from now (to the microsecond, as Java's clock).
    fn new(lifetime: Duration) -> Self {
        let lifetime = TimeDelta::from_std(lifetime).unwrap_or(TimeDelta::MAX);
        let expires = Utc::now().trunc_subsecs(6).checked_add_signed(lifetime);
        Self {
            key: new_key(),
            expires: expires.unwrap_or(DateTime::<Utc>::MAX_UTC),
        }
    }

    fn entry(&self) -> KeyEntry<'_> {
        KeyEntry {
            key: &self.key,
            expiration: self.expires.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        }
    }

    fn accepts(&self, token: &str) -> bool {
        token == self.key && Utc::now() < self.expires
    }
}

/// The token of `Bearer <token>`: one run of non-blank characters, nothing after it.
fn bearer_token(value: &str) -> Option<&str> {
    let token = value
        .strip_prefix("Bearer")
        .filter(|rest| rest.starts_with(char::is_whitespace))?
        .trim_start();
    (!token.is_empty() && !token.contains(char::is_whitespace)).then_some(token)
}

/// Writes the key file whole (a new file renamed over the old one), mode 0600.
fn write_file(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let mut file = tempfile::NamedTempFile::new_in(dir.unwrap_or(Path::new(".")))
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    file.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// `routes` letting a request through only with the unexpired key of `kind` as a Bearer
/// token (health probes and `/token`, which checks the API key itself, excepted); `routes`
/// unchanged without token authorization.
pub fn guard<S>(routes: Router<S>, auth: Option<&Arc<TokenAuth>>, kind: KeyKind) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    match auth {
        Some(auth) => routes.layer(middleware::from_fn_with_state(
            (auth.clone(), kind),
            require_key,
        )),
        None => routes,
    }
}

async fn require_key(
    State((auth, kind)): State<(Arc<TokenAuth>, KeyKind)>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    let exempt = match kind {
        KeyKind::Management => path == "/token",
        _ => matches!(path, "/ping" | "/v2/health/live" | "/v2/health/ready"),
    };
    if exempt || auth.authorizes(kind, authorization(request.headers())) {
        return next.run(request).await;
    }
    ApiError::new(StatusCode::BAD_REQUEST, "InvalidKeyException", REFUSED).into_response()
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// The management API's `/token` route (any method, as TorchServe).
pub fn token_route<S>(auth: &Arc<TokenAuth>) -> Router<S> {
    Router::new()
        .route("/token", any(token_api))
        .with_state(auth.clone())
}

/// `/token?type=management|inference` with the API key: replaces that key and answers 200
/// with an empty JSON body, as TorchServe does.
async fn token_api(
    State(auth): State<Arc<TokenAuth>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let refused = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "InvalidKeyException",
            TOKEN_API_REFUSED,
        )
    };
    if !auth.authorizes(KeyKind::Api, authorization(&headers)) {
        return refused().into_response();
    }
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.as_deref().unwrap_or("")).unwrap_or_default();
    let kind = match pairs.iter().find(|(name, _)| name == "type") {
        Some((_, v)) if v == "management" => KeyKind::Management,
        Some((_, v)) if v == "inference" => KeyKind::Inference,
        _ => return refused().into_response(),
    };
    if let Err(e) = auth.rotate(kind).await {
        tracing::error!("failed to update the key file: {e:#}");
        return refused().into_response();
    }
    tracing::info!("replaced the {kind:?} key");
    ([(header::CONTENT_TYPE, "application/json")], "\n").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_bearer_token_is_read() {
        assert_eq!(bearer_token("Bearer k1"), Some("k1"));
        assert_eq!(bearer_token("Bearer \tk1"), Some("k1"));
        assert_eq!(bearer_token("Bearerk1"), None);
        assert_eq!(bearer_token("Bearer k1 k1"), None);
        assert_eq!(bearer_token("Bearer k1 "), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("k1"), None);
    }

    #[tokio::test]
    async fn keys_expire_and_rotate_in_torchserves_file_layout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key_file.json");
        let auth = TokenAuth::start(&path, Duration::from_secs(3600)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let order: Vec<usize> = [
            "\"management\"",
            "\"inference\"",
            "\"API\"",
            "expiration time",
        ]
        .iter()
        .map(|k| text.find(k).unwrap())
        .collect();
        assert!(order[0] < order[1] && order[1] < order[2], "{text}");
        let file: serde_json::Value = serde_json::from_str(&text).unwrap();
        let key = |which: &str| file[which]["key"].as_str().unwrap().to_string();
        let bearer = |k: &str| format!("Bearer {k}");
        let expires = file["inference"]["expiration time"].as_str().unwrap();
        assert!(expires.ends_with('Z'), "{expires}");
        assert!(file["API"].get("expiration time").is_none());
        let (inference, api) = (key("inference"), key("API"));
        assert!(auth.authorizes(KeyKind::Inference, Some(&bearer(&inference))));
        assert!(!auth.authorizes(KeyKind::Management, Some(&bearer(&inference))));
        assert!(auth.authorizes(KeyKind::Api, Some(&bearer(&api))));
        auth.rotate(KeyKind::Inference).await.unwrap();
        assert!(!auth.authorizes(KeyKind::Inference, Some(&bearer(&inference))));
        let rotated: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let new = rotated["inference"]["key"].as_str().unwrap();
        assert!(auth.authorizes(KeyKind::Inference, Some(&bearer(new))));
        assert_eq!(rotated["management"], file["management"]);
        assert_eq!(rotated["API"], file["API"]);

        let expired = TokenAuth::start(&path, Duration::ZERO).unwrap();
        let file: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let management = file["management"]["key"].as_str().unwrap();
        assert!(!expired.authorizes(KeyKind::Management, Some(&bearer(management))));
        let api = file["API"]["key"].as_str().unwrap();
        assert!(expired.authorizes(KeyKind::Api, Some(&bearer(api))));
    }
}
