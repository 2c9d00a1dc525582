//! Query-string parsing that answers bad values with a 400 JSON error.

use serde::de::DeserializeOwned;

use crate::error::{ApiError, ApiResult};

/// Parses the raw query string into `T`.
pub fn parse<T: DeserializeOwned>(raw: Option<&str>) -> ApiResult<T> {
    serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("Invalid query parameter: {e}")))
}

/// The decoded `(key, value)` pairs of a raw query string; `None` when it does not decode.
pub fn pairs(raw: Option<&str>) -> Option<Vec<(String, String)>> {
    serde_urlencoded::from_str(raw.unwrap_or("")).ok()
}
