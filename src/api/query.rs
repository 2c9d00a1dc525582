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

/// A JSON object body as a query string, so that one parser reads both. TorchServe reads such
/// bodies leniently: strings may use single quotes and numbers or flags may be quoted.
pub fn json_as_query(body: &[u8]) -> ApiResult<String> {
    let text = String::from_utf8_lossy(body);
    let invalid = |e: serde_json::Error| ApiError::bad_request(format!("Invalid JSON body: {e}"));
    let object: serde_json::Map<String, serde_json::Value> = match serde_json::from_str(&text) {
        Ok(object) => object,
        Err(_) => serde_json::from_str(&double_quoted(&text)).map_err(invalid)?,
    };
    let pairs: Vec<(String, String)> = object
        .into_iter()
        .filter_map(|(key, value)| match value {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some((key, s)),
            other => Some((key, other.to_string())),
        })
        .collect();
    serde_urlencoded::to_string(pairs).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// `text` with its single-quoted strings rewritten as JSON's double-quoted ones.
fn double_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut quote = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '\'') => {
                quote = Some('\'');
                out.push('"');
            }
            (None, '"') => {
                quote = Some('"');
                out.push('"');
            }
            (Some(q), c) if c == q => {
                quote = None;
                out.push('"');
            }
            (Some(_), '\\') => match chars.next() {
                Some('\'') => out.push('\''),
                next => {
                    out.push('\\');
                    out.extend(next);
                }
            },
            (Some('\''), '"') => out.push_str("\\\""),
            (_, c) => out.push(c),
        }
    }
    out
}

/// Whether the query asks for the full API description (`full=true`).
pub fn full(raw: Option<&str>) -> bool {
    raw.is_some_and(|q| q.split('&').any(|pair| pair == "full=true"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_json_bodies_become_queries() {
        let body = br#"{'url':'noop.mar', 'model_name':'no"op', 'initial_workers':'1', "synchronous": true, "batch_size": 4}"#;
        let query = json_as_query(body).unwrap();
        let pairs = pairs(Some(&query)).unwrap();
        assert!(pairs.contains(&("url".into(), "noop.mar".into())));
        assert!(pairs.contains(&("model_name".into(), "no\"op".into())));
        assert!(pairs.contains(&("synchronous".into(), "true".into())));
        assert!(pairs.contains(&("batch_size".into(), "4".into())));
        assert!(json_as_query(b"[1]").is_err());
    }
}
