//! Turning an HTTP request into handler input (body, form fields or multipart parts) and a
//! handler's output back into an HTTP response.

use std::time::Duration;

use axum::body::{Body, BodyDataStream};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::time::Instant;

use crate::config::ServerConfig;
use crate::error::{ApiError, ApiResult};
use crate::job::{InferenceRequest, InferenceResponse, Param};

/// Bodies declared or found to be over the size limit are still read, and thrown away, up to
/// this many bytes before the 413, so that a client still sending sees the answer, not a reset.
const DISCARD_LIMIT: usize = 64 << 20;

/// How a request body is read: at most `max` bytes, each part within `idle` of the last, and
/// the whole within `total`, so that a client sending a byte now and then cannot hold its
/// connection for ever.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max: usize,
    pub idle: Duration,
    pub total: Duration,
}

impl BodyLimits {
    /// The configured limits: `max_request_size`, `connection_idle_timeout_ms` and
    /// `connection_body_timeout_ms`.
    pub fn of(config: &ServerConfig) -> Self {
        Self {
            max: config.max_request_size,
            idle: config.connection_idle_timeout,
            total: config.connection_body_timeout,
        }
    }
}

/// Reads the body within `limits` and splits it into parameters by content type.
pub async fn read_request(
    headers: &HeaderMap,
    body: Body,
    limits: BodyLimits,
) -> ApiResult<InferenceRequest> {
    let bytes = read_body(headers, body, limits).await?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let params = split_params(content_type, bytes).await?;
    Ok(InferenceRequest {
        id: crate::api::request_id::current(),
        headers: handler_headers(headers),
        params,
    })
}

/// A request's HTTP headers as its handler sees them (TorchServe hands them all over), but
/// for the envelope header, which only the server sets.
pub fn handler_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        // A malformed trace context is dropped, not refused (W3C trace-context).
        .filter(|(k, v)| {
            k.as_str() != crate::timing::TRACEPARENT
                || v.to_str().is_ok_and(crate::timing::valid_traceparent)
        })
        .filter(|(k, _)| k.as_str() != crate::kserve::ENVELOPE_HEADER)
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// The whole body, or a 413 once it is known to be over `limits.max` (a 408 when it stalls
/// or takes longer than `limits.total`).
pub async fn read_body(headers: &HeaderMap, body: Body, limits: BodyLimits) -> ApiResult<Bytes> {
    let deadline = Instant::now() + limits.total;
    let mut chunks = body.into_data_stream();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limits.max) {
        // A client waiting for `100 Continue` has sent nothing yet: answer it at once.
        if !headers.contains_key(header::EXPECT) {
            discard(chunks, limits, deadline).await;
        }
        return Err(ApiError::too_large(limits.max));
    }
    // One part (the usual case) is kept as it came; more are joined, into one allocation.
    let (mut first, mut joined, mut size) = (Bytes::new(), BytesMut::new(), 0);
    while let Some(chunk) = next_chunk(&mut chunks, limits, deadline).await? {
        size += chunk.len();
        if size > limits.max {
            discard(chunks, limits, deadline).await;
            return Err(ApiError::too_large(limits.max));
        }
        if size == chunk.len() {
            first = chunk;
        } else {
            if joined.is_empty() {
                // Room for the whole body at once (hyper holds it to its Content-Length), not
                // the doubling growth that copied a 1 MB body several times.
                joined.reserve(declared.unwrap_or(size).max(size));
            }
            joined.extend_from_slice(&std::mem::take(&mut first));
            joined.extend_from_slice(&chunk);
        }
    }
    Ok(if joined.is_empty() {
        first
    } else {
        joined.freeze()
    })
}

/// Reads and drops what is left of a body, up to `DISCARD_LIMIT` bytes.
async fn discard(mut chunks: BodyDataStream, limits: BodyLimits, deadline: Instant) {
    let mut left = DISCARD_LIMIT;
    while let Ok(Some(chunk)) = next_chunk(&mut chunks, limits, deadline).await {
        left = left.saturating_sub(chunk.len());
        if left == 0 {
            break;
        }
    }
}

/// The next part of a body; a 408 when none comes within `limits.idle`, or by `deadline`.
async fn next_chunk(
    chunks: &mut BodyDataStream,
    limits: BodyLimits,
    deadline: Instant,
) -> ApiResult<Option<Bytes>> {
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(limits.idle.min(left), chunks.next()).await {
        Ok(Some(Ok(chunk))) => Ok(Some(chunk)),
        Ok(None) => Ok(None),
        Ok(Some(Err(e))) => Err(ApiError::bad_request(format!(
            "Cannot read the request body: {e}"
        ))),
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "RequestTimeoutException",
            if left <= limits.idle {
                format!(
                    "The request body did not arrive within {} ms",
                    limits.total.as_millis()
                )
            } else {
                format!("No request body data for {} ms", limits.idle.as_millis())
            },
        )),
    }
}

async fn split_params(content_type: Option<String>, bytes: Bytes) -> ApiResult<Vec<Param>> {
    let mime = content_type.as_deref().map(|c| {
        c.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    match mime.as_deref() {
        Some("application/x-www-form-urlencoded") => Ok(form_fields(&bytes)),
        Some("multipart/form-data") => {
            multipart_parts(content_type.as_deref().unwrap_or_default(), bytes).await
        }
        _ => Ok(vec![Param {
            name: "body".into(),
            content_type,
            value: bytes,
        }]),
    }
}

/// `application/x-www-form-urlencoded` fields; values are percent-decoded to bytes, so
/// non-UTF-8 bytes reach the handler unchanged.
fn form_fields(bytes: &[u8]) -> Vec<Param> {
    bytes
        .split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = match pair.iter().position(|&b| b == b'=') {
                Some(at) => (&pair[..at], &pair[at + 1..]),
                None => (pair, &[][..]),
            };
            Param {
                name: String::from_utf8_lossy(&form_decode(name)).into_owned(),
                content_type: None,
                value: Bytes::from(form_decode(value)),
            }
        })
        .collect()
}

/// Decodes one form-encoded component: `+` is a space, `%XX` the byte XX.
fn form_decode(component: &[u8]) -> Vec<u8> {
    let spaced: Vec<u8> = component
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    percent_encoding::percent_decode(&spaced).collect()
}

async fn multipart_parts(content_type: &str, bytes: Bytes) -> ApiResult<Vec<Param>> {
    let bad = |e: multer::Error| ApiError::bad_request(format!("Malformed multipart body: {e}"));
    let boundary = multer::parse_boundary(content_type).map_err(bad)?;
    let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(bytes) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut params = Vec::new();
    while let Some(field) = multipart.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or("body").to_string();
        let content_type = field.content_type().map(|m| m.to_string());
        let value = field.bytes().await.map_err(bad)?;
        params.push(Param {
            name,
            content_type,
            value,
        });
    }
    Ok(params)
}

/// The HTTP response for a handler's output; a streamed answer goes out chunk by chunk (chunked
/// transfer on HTTP/1.1) with the first chunk's status and headers, and an error after the
/// first chunk cuts the response short.
pub fn into_http(mut output: InferenceResponse) -> Response {
    let status = StatusCode::from_u16(output.status).unwrap_or(StatusCode::OK);
    let content_type = output.content_type.take();
    let headers = std::mem::take(&mut output.headers);
    let mut response = if output.more.is_some() {
        let bodies = output.chunks().map(|chunk| {
            chunk
                .map(|c| c.body)
                .map_err(|e| std::io::Error::other(e.message))
        });
        (status, Body::from_stream(bodies)).into_response()
    } else {
        (status, output.body).into_response()
    };
    if let Some(value) = content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streamed(parts: &'static [&'static [u8]]) -> Body {
        let parts = parts
            .iter()
            .map(|p| Ok::<_, std::io::Error>(Bytes::from_static(p)));
        Body::from_stream(futures::stream::iter(parts))
    }

    const LIMITS: BodyLimits = BodyLimits {
        max: 5,
        idle: Duration::from_secs(1),
        total: Duration::from_secs(3),
    };

    #[tokio::test]
    async fn body_parts_are_joined_up_to_the_limit() {
        let body = streamed(&[b"ab", b"", b"cd", b"e"]);
        let bytes = read_body(&HeaderMap::new(), body, LIMITS).await.unwrap();
        assert_eq!(bytes, "abcde");
        let err = read_body(&HeaderMap::new(), streamed(&[b"abc", b"def"]), LIMITS)
            .await
            .unwrap_err();
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn declared_oversize_body_is_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("6"));
        let err = read_body(&headers, streamed(&[b"abcdef"]), LIMITS)
            .await
            .unwrap_err();
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test(start_paused = true)]
    async fn stalled_body_is_a_timeout() {
        let stalled = futures::stream::once(async { Ok::<_, std::io::Error>(Bytes::new()) })
            .chain(futures::stream::pending());
        let err = read_body(&HeaderMap::new(), Body::from_stream(stalled), LIMITS)
            .await
            .unwrap_err();
        assert_eq!(err.status, StatusCode::REQUEST_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_trickling_in_is_cut_at_the_total_deadline() {
        let trickle = futures::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_millis(900)).await;
            Some((Ok::<_, std::io::Error>(Bytes::new()), ()))
        });
        let started = Instant::now();
        let err = read_body(&HeaderMap::new(), Body::from_stream(trickle), LIMITS)
            .await
            .unwrap_err();
        assert_eq!(err.status, StatusCode::REQUEST_TIMEOUT);
        assert!(err.message.contains("within 3000 ms"), "{}", err.message);
        assert_eq!(started.elapsed(), LIMITS.total);
    }

    #[tokio::test]
    async fn form_body_becomes_fields() {
        let params = split_params(
            Some("application/x-www-form-urlencoded".into()),
            Bytes::from_static(b"data=5&x=a%20b"),
        )
        .await
        .unwrap();
        assert_eq!(params[0].name, "data");
        assert_eq!(params[0].value, "5");
        assert_eq!(params[1].value, "a b");
    }

    #[tokio::test]
    async fn form_values_keep_every_byte() {
        let params = split_params(
            Some("application/x-www-form-urlencoded; charset=ISO-8859-1".into()),
            Bytes::from_static(b"data=%00%7F%80%FF+%2B&name%5B%5D&=v&&last=%e9t%C3%A9"),
        )
        .await
        .unwrap();
        let fields: Vec<(&str, &[u8])> = params
            .iter()
            .map(|p| (p.name.as_str(), p.value.as_ref()))
            .collect();
        assert_eq!(
            fields,
            [
                ("data", &b"\x00\x7f\x80\xff +"[..]),
                ("name[]", b""),
                ("", b"v"),
                ("last", b"\xe9t\xc3\xa9"),
            ]
        );
        assert!(params.iter().all(|p| p.content_type.is_none()));
    }

    #[tokio::test]
    async fn multipart_parts_keep_names_and_types() {
        let body = "--XX\r\nContent-Disposition: form-data; name=\"img\"; filename=\"a.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n\x01\x02\r\n--XX\r\nContent-Disposition: form-data; name=\"data\"\r\n\r\nhello\r\n--XX--\r\n";
        let params = split_params(
            Some("multipart/form-data; boundary=XX".into()),
            Bytes::from(body),
        )
        .await
        .unwrap();
        assert_eq!(params.len(), 2);
        assert_eq!(params[0].name, "img");
        assert_eq!(params[0].value.as_ref(), b"\x01\x02");
        assert_eq!(params[1].name, "data");
        assert_eq!(params[1].value, "hello");
    }

    #[tokio::test]
    async fn malformed_multipart_is_a_bad_request() {
        let err = split_params(
            Some("multipart/form-data".into()),
            Bytes::from_static(b"junk"),
        )
        .await
        .unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn raw_body_keeps_its_type() {
        let params = split_params(Some("application/json".into()), Bytes::from_static(b"[1]"))
            .await
            .unwrap();
        assert_eq!(params[0].name, "body");
        assert_eq!(params[0].content_type.as_deref(), Some("application/json"));
    }
}
