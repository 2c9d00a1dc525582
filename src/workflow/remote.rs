//! Remote nodes: a model served by another server (torchyard or TorchServe `/predictions`,
//! or an Open Inference Protocol endpoint), called over HTTP(S) through one shared client that
//! keeps connections open between requests. Each try obeys the node's `timeout-ms` and is
//! retried `retry-attempts` times; a request that fails answers as a gateway does: 502 when
//! the remote cannot be reached or answers an error, 503 when it answers 503, 504 when it
//! does not answer in time, with a JSON body naming the node.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::{redirect, Client, Url};

use super::open_inference;
use super::spec::{NodeProps, RemoteProtocol, RemoteSpec, TokenSource};
use super::stage::{with_retries, Failure, Stage, StageResult, Timings};
use crate::archive::{read_member, ArchiveError};
use crate::error::{ApiError, ApiResult};
use crate::fetch::{allowed, not_allowed};
use crate::job::{InferenceRequest, InferenceResponse};
use crate::metrics::NodeMetrics;
use crate::state::AppState;

/// Where and how a remote node calls its model, checked at registration.
pub struct RemoteTarget {
    pub url: Url,
    pub protocol: RemoteProtocol,
    /// `Bearer …`, when the spec names a token.
    authorization: Option<String>,
    client: Client,
    /// The largest answer read (`max_remote_response_size`).
    max_answer: usize,
}

/// The value of environment variable `name` when the configuration's
/// `remote_token_env_allowlist` names it and it is set (and Unicode); None otherwise, the
/// same None whichever it is.
fn env_token(state: &AppState, name: &str) -> Option<String> {
    let allowed = &state.config.remote_token_env_allowlist;
    allowed
        .iter()
        .any(|a| a == name)
        .then(|| std::env::var(name).ok())
        .flatten()
}

/// The PEM text of a remote node's `ca-file`, confined as every file an archive names is: a
/// regular file inside the unpacked workflow archive, no `..`, no symbolic link, at most
/// 1 MiB. The error says why, naming the file as the spec gives it.
async fn read_ca_file(archive_dir: &Path, file: &str) -> Result<Vec<u8>, String> {
    let (dir, name) = (archive_dir.to_path_buf(), file.to_string());
    let read = tokio::task::spawn_blocking(move || read_member(&dir, &name))
        .await
        .map_err(|e| format!("cannot read ca-file {file}: {e}"))?;
    match read {
        Ok(text) => Ok(text.into_bytes()),
        Err(ArchiveError::Invalid(why)) => Err(format!("ca-file {why}")),
        Err(e) => Err(format!("cannot read ca-file {file:?}: {e}")),
    }
}

/// The client every remote node without a CA file of its own shares: one connection pool,
/// no redirects (a redirect could lead past `allowed_urls`).
fn shared_client() -> ApiResult<Client> {
    static SHARED: OnceLock<Client> = OnceLock::new();
    if let Some(client) = SHARED.get() {
        return Ok(client.clone());
    }
    let client = builder().build().map_err(client_error)?;
    Ok(SHARED.get_or_init(|| client).clone())
}

fn builder() -> reqwest::ClientBuilder {
    Client::builder()
        .redirect(redirect::Policy::none())
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(90))
}

fn client_error(e: reqwest::Error) -> ApiError {
    ApiError::internal(format!("cannot build the HTTP client of remote nodes: {e}"))
}

impl RemoteTarget {
    /// Checks the remote model of node `node`: an http(s) URL that `allowed_urls` lets in
    /// (400 naming the URL otherwise), its token, and its CA file (relative to `archive_dir`).
    pub async fn resolve(
        state: &AppState,
        node: &str,
        spec: &RemoteSpec,
        archive_dir: &Path,
    ) -> ApiResult<Self> {
        let bad = |why: String| {
            ApiError::bad_request(format!(
                "Invalid workflow specification: model {node:?}: {why}"
            ))
        };
        let url = Url::parse(&spec.url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .ok_or_else(|| bad(format!("remote {:?} is not an http(s) URL", spec.url)))?;
        if !allowed(state, url.as_str())? {
            return Err(not_allowed(url.as_str(), "a remote model's URL"));
        }
        let token = match &spec.token {
            None => None,
            Some(TokenSource::Literal(token)) => Some(token.clone()),
            Some(TokenSource::Env(name)) => Some(env_token(state, name).ok_or_else(|| {
                // One answer for a name the configuration does not allow and for an allowed
                // one that is unset: registration says nothing of the server's environment.
                bad(format!(
                    "token-env {name} is not available: the variable must be named in the \
                     server's remote_token_env_allowlist and set in its environment"
                ))
            })?),
        };
        let client = match &spec.ca_file {
            None => shared_client()?,
            Some(file) => {
                let pem = read_ca_file(archive_dir, file).await.map_err(bad)?;
                let certificate = reqwest::Certificate::from_pem(&pem)
                    .map_err(|e| bad(format!("ca-file {file} is not a PEM certificate: {e}")))?;
                builder()
                    .add_root_certificate(certificate)
                    .build()
                    .map_err(client_error)?
            }
        };
        Ok(Self {
            url,
            protocol: spec.protocol,
            authorization: token.map(|t| format!("Bearer {t}")),
            client,
            max_answer: state.config.max_remote_response_size,
        })
    }

    /// One try: sends the encoded input and reads the answer as the node's output.
    async fn send(&self, content_type: &str, body: Bytes) -> Result<InferenceResponse, Failure> {
        let mut request = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, content_type)
            .body(body);
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization);
        }
        let gateway = |reason: String| Failure {
            reason,
            status: StatusCode::BAD_GATEWAY,
        };
        let response = request
            .send()
            .await
            .map_err(|e| gateway(format!("cannot reach {}: {}", self.url, chain(&e))))?;
        let status = response.status();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = self.read_answer(response).await.map_err(gateway)?;
        if !status.is_success() {
            return Err(Failure {
                status: if status == StatusCode::SERVICE_UNAVAILABLE {
                    status
                } else {
                    StatusCode::BAD_GATEWAY
                },
                reason: format!(
                    "{} answered {}: {}",
                    self.url,
                    status.as_u16(),
                    String::from_utf8_lossy(&body[..body.len().min(500)])
                ),
            });
        }
        let (content_type, body) = match self.protocol {
            RemoteProtocol::Predictions => (content_type, body),
            RemoteProtocol::OpenInference => (
                Some("application/json".into()),
                open_inference::decode(&body)
                    .map_err(|why| gateway(format!("{} answered: {why}", self.url)))?,
            ),
        };
        Ok(InferenceResponse {
            status: 200,
            content_type,
            headers: Vec::new(),
            body,
            trace: None,
            more: None,
        })
    }

    /// The body of `response`, read as it comes and given up as soon as it passes
    /// `max_answer` bytes (a declared length beyond it is refused before reading).
    async fn read_answer(&self, mut response: reqwest::Response) -> Result<Bytes, String> {
        let limit = self.max_answer;
        let too_big = || {
            format!(
                "{} answered more than {limit} bytes (max_remote_response_size)",
                self.url
            )
        };
        if response.content_length().is_some_and(|n| n > limit as u64) {
            return Err(too_big());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("{} broke off its answer: {}", self.url, chain(&e)))?
        {
            if body.len() + chunk.len() > limit {
                return Err(too_big());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(body))
    }
}

/// An error with its causes, which say what reqwest's own message leaves out (refused,
/// reset, certificate).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The body a remote model takes for `input`, with its content type: for `/predictions`,
/// a single field as is and several as multipart form data; Open Inference JSON otherwise.
fn encode(protocol: RemoteProtocol, input: &InferenceRequest) -> (String, Bytes) {
    match (protocol, input.params.as_slice()) {
        (RemoteProtocol::OpenInference, _) => {
            ("application/json".into(), open_inference::encode(input))
        }
        (RemoteProtocol::Predictions, [single]) => (
            single
                .content_type
                .clone()
                .unwrap_or_else(|| "application/octet-stream".into()),
            single.value.clone(),
        ),
        (RemoteProtocol::Predictions, params) => {
            let boundary = uuid::Uuid::new_v4().simple().to_string();
            let mut body = Vec::new();
            for param in params {
                let name = param.name.replace(['"', '\r', '\n'], "_");
                body.extend_from_slice(
                    format!(
                        "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\nContent-Type: {}\r\n\r\n",
                        param.content_type.as_deref().unwrap_or("application/octet-stream")
                    )
                    .as_bytes(),
                );
                body.extend_from_slice(&param.value);
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
            (
                format!("multipart/form-data; boundary={boundary}"),
                Bytes::from(body),
            )
        }
    }
}

/// A node whose model is served elsewhere.
pub struct RemoteNode {
    pub name: String,
    pub target: Arc<RemoteTarget>,
    pub props: NodeProps,
    pub metrics: Arc<NodeMetrics>,
}

impl Stage for RemoteNode {
    fn call<'a>(
        &'a self,
        input: InferenceRequest,
        timings: Timings<'a>,
    ) -> BoxFuture<'a, StageResult> {
        async move {
            let (content_type, body) = encode(self.target.protocol, &input);
            let timeout = Duration::from_millis(self.props.timeout_ms);
            let attempts = self.props.retry_attempts + 1;
            let run = with_retries(attempts, timeout, StatusCode::GATEWAY_TIMEOUT, || {
                self.target.send(&content_type, body.clone())
            })
            .await;
            timings.record_call(&self.metrics, run.elapsed, run.tries, run.result.is_err());
            run.result
                .map(Arc::new)
                .map_err(|f| f.into_error(std::slice::from_ref(&self.name), run.tries))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Param;

    fn param(name: &str, value: &str, content_type: Option<&str>) -> Param {
        Param {
            name: name.into(),
            content_type: content_type.map(str::to_string),
            value: Bytes::from(value.to_string()),
        }
    }

    #[test]
    fn predictions_send_one_field_as_the_body_and_several_as_a_form() {
        let mut input = InferenceRequest {
            id: String::new(),
            headers: Vec::new(),
            params: vec![param("body", "5", Some("text/plain"))],
        };
        let (content_type, body) = encode(RemoteProtocol::Predictions, &input);
        assert_eq!(
            (content_type.as_str(), &body[..]),
            ("text/plain", &b"5"[..])
        );
        input.params = vec![param("a", "1", None), param("b\"x", "two", None)];
        let (content_type, body) = encode(RemoteProtocol::Predictions, &input);
        let boundary = content_type
            .strip_prefix("multipart/form-data; boundary=")
            .unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(text.starts_with(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"a\""
        )));
        assert!(
            text.contains("name=\"b_x\"\r\nContent-Type: application/octet-stream\r\n\r\ntwo\r\n")
        );
        assert!(text.ends_with(&format!("--{boundary}--\r\n")));
        let (content_type, _) = encode(RemoteProtocol::OpenInference, &input);
        assert_eq!(content_type, "application/json");
    }

    #[test]
    fn the_protocol_follows_the_url() {
        assert_eq!(
            RemoteProtocol::of("http://h:8000/v2/models/m/versions/2/infer?x=1"),
            RemoteProtocol::OpenInference
        );
        assert_eq!(
            RemoteProtocol::of("https://h/predictions/m/1.0"),
            RemoteProtocol::Predictions
        );
    }
}
