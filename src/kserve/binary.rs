//! Binary tensors (v2 REST's binary extension, gRPC's `raw_input_contents`) kept as bytes on
//! their way to the worker: the request's JSON leaves their input's `data` out and each
//! tensor's bytes travel as a parameter of their own, which the worker's `kservev2` envelope
//! reads with numpy (python/torchyard/binary_tensors.py, docs/protocol.md). A workflow's
//! entry node gets them as JSON `data`, as before.

use bytes::Bytes;
use serde_json::Value;

use super::tensors::{raw_data, Datatype};
use crate::error::{ApiError, ApiResult};
use crate::job::Param;

/// The name of the parameter holding input `i`'s bytes is this prefix and `i`.
pub const PARAM_PREFIX: &str = "x-torchyard-tensor-";

/// The little-endian bytes of input `input`, whole elements of a numeric or BOOL datatype.
#[derive(Debug, Clone)]
pub struct RawTensor {
    pub input: usize,
    datatype: Datatype,
    bytes: Bytes,
}

impl RawTensor {
    /// The tensor, or None when `bytes` are not whole elements of `datatype` (or it is
    /// BYTES, whose elements are read, not kept).
    pub fn new(input: usize, datatype: Datatype, bytes: Bytes) -> Option<Self> {
        let size = datatype.size()?;
        bytes.len().is_multiple_of(size).then_some(Self {
            input,
            datatype,
            bytes,
        })
    }

    /// How many elements the bytes hold.
    pub fn count(&self) -> usize {
        self.bytes.len() / self.datatype.size().unwrap_or(1)
    }

    /// The worker's parameter of the tensor: its bytes, no content type.
    pub fn param(&self) -> Param {
        Param {
            name: format!("{PARAM_PREFIX}{}", self.input),
            content_type: None,
            value: self.bytes.clone(),
        }
    }
}

/// Splits a v2 REST body with the binary extension (its first `json_length` bytes JSON, as
/// `Inference-Header-Content-Length` says, then the contents of each input with a
/// `binary_data_size` parameter, in order) into the JSON without those parameters and the
/// numeric tensors' bytes, which stay slices of `body`. A BYTES input's elements are read into
/// its `data`. Each tensor must be whole elements of its datatype and as many as its shape
/// holds; every byte must belong to an input.
pub fn split(body: &Bytes, json_length: usize) -> ApiResult<(Bytes, Vec<RawTensor>)> {
    let bad = |m: String| ApiError::bad_request(m);
    if json_length > body.len() {
        return Err(bad(format!(
            "Inference-Header-Content-Length {json_length} exceeds the body's {} bytes",
            body.len()
        )));
    }
    let mut request: Value = serde_json::from_slice(&body[..json_length])
        .map_err(|e| bad(format!("Invalid v2 inference request: {e}")))?;
    let inputs = request
        .get_mut("inputs")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| bad("The request has no inputs".into()))?;
    let mut at = json_length;
    let mut tensors = Vec::new();
    for (index, input) in inputs.iter_mut().enumerate() {
        let Some(params) = input.get_mut("parameters").and_then(Value::as_object_mut) else {
            continue;
        };
        let Some(size) = params.remove("binary_data_size") else {
            continue;
        };
        let size = size
            .as_u64()
            .and_then(|s| usize::try_from(s).ok())
            .ok_or_else(|| bad("binary_data_size must be a byte count".into()))?;
        let end = at
            .checked_add(size)
            .filter(|&end| end <= body.len())
            .ok_or_else(|| bad("Binary tensor data ends early".into()))?;
        let chunk = body.slice(at..end);
        at = end;
        let name = input["name"].as_str().unwrap_or_default().to_string();
        let datatype = Datatype::parse(input["datatype"].as_str().unwrap_or_default())?;
        let not_whole = || bad(format!("Binary data of input {name} is not whole elements"));
        let object = input
            .as_object_mut()
            .ok_or_else(|| bad(format!("Input {name} is not an object")))?;
        if datatype == Datatype::Bytes {
            let values = raw_data(datatype, &chunk).ok_or_else(not_whole)?;
            object.insert("data".into(), Value::Array(values));
            continue;
        }
        let tensor = RawTensor::new(index, datatype, chunk).ok_or_else(not_whole)?;
        let shape: Option<Vec<i64>> = object
            .get("shape")
            .and_then(|s| serde_json::from_value(s.clone()).ok());
        let expected = shape.as_deref().and_then(super::tensors::elements);
        if expected != Some(tensor.count()) {
            return Err(bad(format!(
                "Input {name} has {} elements of binary data, but its shape {} holds {}",
                tensor.count(),
                object.get("shape").unwrap_or(&Value::Null),
                expected.map_or("none".into(), |n| n.to_string())
            )));
        }
        object.remove("data");
        tensors.push(tensor);
    }
    if at != body.len() {
        return Err(bad(format!(
            "{} bytes of binary data belong to no input",
            body.len() - at
        )));
    }
    let json = serde_json::to_vec(&request).expect("JSON values print");
    Ok((Bytes::from(json), tensors))
}

/// The JSON of a request whose binary `tensors` it left out, with each as its input's `data`
/// (a JSON value per element): what a workflow's entry node gets.
pub fn inline(body: &Bytes, tensors: &[RawTensor]) -> ApiResult<Bytes> {
    if tensors.is_empty() {
        return Ok(body.clone());
    }
    let mut request: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("Invalid v2 inference request: {e}")))?;
    for tensor in tensors {
        let values = raw_data(tensor.datatype, &tensor.bytes).expect("whole elements");
        request["inputs"][tensor.input]["data"] = Value::Array(values);
    }
    Ok(Bytes::from(
        serde_json::to_vec(&request).expect("JSON values print"),
    ))
}

#[cfg(test)]
mod tests {
    use super::super::tensors::check_request;
    use super::*;
    use serde_json::json;

    #[test]
    fn binary_tensors_stay_bytes_beside_the_json() {
        let head = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":8}},{"name":"y","shape":[1],"datatype":"BOOL","data":[true]}]}"#;
        let body = Bytes::from([&head[..], &7i32.to_le_bytes(), &(-1i32).to_le_bytes()].concat());
        let (json, tensors) = split(&body, head.len()).unwrap();
        let binary: Vec<usize> = tensors.iter().map(|t| t.input).collect();
        assert_eq!(binary, [0]);
        check_request(&json, &binary).unwrap();
        assert!(check_request(&json, &[]).is_err(), "an input without data");
        let request: Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(request["inputs"][0].get("data"), None);
        assert_eq!(request["inputs"][0]["parameters"], json!({}));
        let param = tensors[0].param();
        assert_eq!(param.name, "x-torchyard-tensor-0");
        assert_eq!(&param.value[..], &body[head.len()..]);
        let inlined: Value = serde_json::from_slice(&inline(&json, &tensors).unwrap()).unwrap();
        assert_eq!(inlined["inputs"][0]["data"], json!([7, -1]));
        assert_eq!(inlined["inputs"][1]["data"], json!([true]));
        assert!(split(&body.slice(..body.len() - 1), head.len()).is_err());
        assert!(split(&Bytes::from([&body[..], &[0]].concat()), head.len()).is_err());
        assert!(split(&body, body.len() + 1).is_err());
        let short = Bytes::from([&head[..], &7i32.to_le_bytes()].concat()).slice(..head.len() + 4);
        let wrong_count = String::from_utf8_lossy(head).replace("8}", "4}");
        let body = Bytes::from([wrong_count.as_bytes(), &short[head.len()..]].concat());
        let err = split(&body, wrong_count.len()).unwrap_err().message;
        assert!(err.contains("1 elements of binary data"), "{err}");
    }
}
