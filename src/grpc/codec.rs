//! Between proto3 messages and the facade's types: empty strings and zero counts mean "not
//! given", `input` maps become the handler's parameters, replies carry text or JSON in `msg`.

use std::collections::BTreeMap;

use bytes::Bytes;
use tonic::{Response, Status};

use crate::error::{ApiError, ApiResult};
use crate::facade::{Page, Scale};
use crate::job::Param;

/// The handler's input from a request's `input` map: one parameter per entry, by name.
pub fn input_params(input: BTreeMap<String, Bytes>) -> Vec<Param> {
    input
        .into_iter()
        .map(|(name, value)| Param {
            name,
            content_type: None,
            value,
        })
        .collect()
}

/// A required name: refused as TorchServe refuses it when empty.
pub fn required(value: String, parameter: &str) -> ApiResult<String> {
    if value.is_empty() {
        Err(ApiError::bad_request(format!(
            "Parameter {parameter} is required."
        )))
    } else {
        Ok(value)
    }
}

/// An optional string: proto3 sends empty for not given.
pub fn given(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

/// A count given as an int32, where proto3 sends 0 for not given: TorchServe reads 0 and
/// below as "use the default".
pub fn count(value: i32) -> Option<usize> {
    usize::try_from(value).ok().filter(|&n| n > 0)
}

/// A page of a list request; an offset below 0 starts at the beginning.
pub fn page(limit: i32, next_page_token: i32) -> Page {
    Page {
        limit: count(limit),
        next_page_token: usize::try_from(next_page_token).ok(),
    }
}

/// The worker bounds of a scale request.
pub fn scale(min_worker: i32, max_worker: i32, synchronous: bool) -> Scale {
    Scale {
        min_worker: count(min_worker),
        max_worker: count(max_worker),
        synchronous,
    }
}

/// A reply: `msg` holds a status message or a JSON document.
pub fn reply<T: From<String>>(result: ApiResult<String>) -> Result<Response<T>, Status> {
    result
        .map(|msg| Response::new(T::from(msg)))
        .map_err(Status::from)
}

/// A JSON document as TorchServe's management service prints it (pretty, two spaces).
pub fn document(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).expect("a JSON document prints")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_negative_counts_are_not_given() {
        assert_eq!(count(0), None);
        assert_eq!(count(-1), None);
        assert_eq!(count(3), Some(3));
        let p = page(0, -5);
        assert_eq!((p.limit, p.next_page_token), (None, None));
        let s = scale(2, 0, true);
        assert_eq!(
            (s.min_worker, s.max_worker, s.synchronous),
            (Some(2), None, true)
        );
    }
}
