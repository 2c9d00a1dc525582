//! The nesting limit of JSON that reaches a worker. Python's parser recurses once per array or
//! object and a deep enough value ends in `RecursionError`, so the server refuses a request
//! whose JSON parameters nest deeper than [`MAX_JSON_DEPTH`] before it is queued.

use crate::error::{ApiError, ApiResult};
use crate::job::InferenceRequest;
use crate::kserve::ENVELOPE_HEADER;
use crate::worker::protocol::is_json;

/// Deepest nesting of arrays and objects in a JSON parameter a worker may be sent (serde_json's
/// own recursion limit, well inside Python's).
pub const MAX_JSON_DEPTH: usize = 128;

/// Whether the JSON text `text` opens more than `limit` arrays or objects inside one another.
/// The scan follows JSON's tokens (brackets inside strings, escapes included, do not count); a
/// text that is not valid JSON is scanned the same way, as a parser would recurse into it
/// before it found the error.
pub fn nests_deeper(text: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in text {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Refuses (400) a request with a parameter the worker would parse as JSON that nests deeper
/// than [`MAX_JSON_DEPTH`]: an `application/json` one, or its `body` or `data` when an
/// envelope (`enveloped`: the model's `service_envelope`, or the request's own) unwraps it.
pub fn check_request(request: &InferenceRequest, enveloped: bool) -> ApiResult<()> {
    let enveloped = enveloped
        || request
            .headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case(ENVELOPE_HEADER));
    for param in &request.params {
        let parsed = (enveloped && matches!(param.name.as_str(), "body" | "data"))
            || param.content_type.as_deref().is_some_and(is_json);
        if parsed && nests_deeper(&param.value, MAX_JSON_DEPTH) {
            return Err(ApiError::bad_request(format!(
                "Parameter {:?} holds JSON nested deeper than {MAX_JSON_DEPTH} levels",
                param.name
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_the_brackets_that_nest() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(!nests_deeper(deep(128).as_bytes(), 128));
        assert!(nests_deeper(deep(129).as_bytes(), 128));
        assert!(
            nests_deeper("[".repeat(5000).as_bytes(), 128),
            "unclosed still counts"
        );
        let wide = format!("[{}]", vec!["[1]"; 1000].join(","));
        assert!(!nests_deeper(wide.as_bytes(), 2));
        let strings = format!(
            r#"{{"a": "{}", "b": "\"[[[", "c": [{{}}]}}"#,
            "[".repeat(500)
        );
        assert!(!nests_deeper(strings.as_bytes(), 3));
        assert!(nests_deeper(br#"{"a": "\\", "b": [[[1]]]}"#, 2));
    }
}
