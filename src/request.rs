//! Turning an HTTP request into handler input (body, form fields or multipart parts) and a
//! handler's output back into an HTTP response.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use crate::error::{ApiError, ApiResult};
use crate::job::{InferenceRequest, InferenceResponse, Param};

/// Reads the body (at most `limit` bytes) and splits it into parameters by content type.
pub async fn read_request(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> ApiResult<InferenceRequest> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::too_large(limit));
    }
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::too_large(limit))?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let params = split_params(content_type, bytes).await?;
    Ok(InferenceRequest {
        id: crate::api::request_id::current(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        params,
    })
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

/// The HTTP response for a handler's output.
pub fn into_http(output: InferenceResponse) -> Response {
    let status = StatusCode::from_u16(output.status).unwrap_or(StatusCode::OK);
    let mut response = (status, output.body).into_response();
    if let Some(value) = output
        .content_type
        .and_then(|c| HeaderValue::from_str(&c).ok())
    {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    for (name, value) in output.headers {
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
