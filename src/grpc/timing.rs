//! Where the time went, over gRPC: the `server-timing` metadata on unary answers and the W3C
//! `traceparent` metadata handed on to handlers, as the REST answers and requests carry them.

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::Response;

use crate::timing::{valid_traceparent, SERVER_TIMING, TRACEPARENT};

/// The request's `traceparent` as a handler header, when it is well-formed (a malformed one is
/// dropped, as on REST).
pub fn traceparent(metadata: &MetadataMap) -> Option<(String, String)> {
    let value = metadata.get(TRACEPARENT)?.to_str().ok()?;
    valid_traceparent(value).then(|| (TRACEPARENT.to_string(), value.to_string()))
}

/// `message` as the answer, with the `server-timing` of the inference's `headers` in its
/// response metadata.
pub fn answer<T>(message: T, headers: &[(String, String)]) -> Response<T> {
    let mut response = Response::new(message);
    let timing = headers
        .iter()
        .find(|(name, _)| name == SERVER_TIMING)
        .and_then(|(_, value)| MetadataValue::try_from(value.as_str()).ok());
    if let Some(timing) = timing {
        response.metadata_mut().insert(SERVER_TIMING, timing);
    }
    response
}
