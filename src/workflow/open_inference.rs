//! The small part of the Open Inference Protocol (KServe v2, JSON) a remote node speaks:
//! the node's input fields become input tensors, the answer's output tensors become the
//! node's output, as JSON.
//!
//! A field whose bytes are a JSON number or a (nested, rectangular) array of numbers is an
//! `INT64` tensor when every number is an integer, else `FP32`, of that shape (a scalar has
//! shape `[1]`); any other field is a `BYTES` tensor of shape `[1]` holding its text. The
//! answer's single output becomes its data reshaped to its shape (nested JSON arrays);
//! several outputs become one object keyed by output name.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::job::InferenceRequest;

/// The JSON body of an infer request for `input`.
pub fn encode(input: &InferenceRequest) -> Bytes {
    let inputs: Vec<Value> = input
        .params
        .iter()
        .map(|param| {
            let parsed: Option<Value> = serde_json::from_slice(&param.value).ok();
            match parsed.as_ref().and_then(numeric) {
                Some((shape, data)) => {
                    let integers = data.iter().all(|n| n.is_i64() || n.is_u64());
                    let datatype = if integers { "INT64" } else { "FP32" };
                    json!({"name": param.name, "shape": shape, "datatype": datatype, "data": data})
                }
                None => json!({
                    "name": param.name,
                    "shape": [1],
                    "datatype": "BYTES",
                    "data": [String::from_utf8_lossy(&param.value)],
                }),
            }
        })
        .collect();
    Bytes::from(json!({ "inputs": inputs }).to_string())
}

/// The shape and flat data of a number or a rectangular array of numbers.
fn numeric(value: &Value) -> Option<(Vec<usize>, Vec<serde_json::Number>)> {
    match value {
        Value::Number(n) => Some((vec![1], vec![n.clone()])),
        Value::Array(items) => {
            let mut shape = vec![items.len()];
            let mut data = Vec::new();
            let mut inner: Option<Vec<usize>> = None;
            for item in items {
                let (item_shape, item_data) = match item {
                    Value::Number(n) => (Vec::new(), vec![n.clone()]),
                    _ => numeric(item)?,
                };
                if inner.get_or_insert_with(|| item_shape.clone()) != &item_shape {
                    return None;
                }
                data.extend(item_data);
            }
            shape.extend(inner.unwrap_or_default());
            Some((shape, data))
        }
        _ => None,
    }
}

/// The node's output (JSON) from the body of an infer response.
pub fn decode(body: &[u8]) -> Result<Bytes, String> {
    let answer: Value =
        serde_json::from_slice(body).map_err(|e| format!("the answer is not JSON: {e}"))?;
    let outputs = answer
        .get("outputs")
        .and_then(Value::as_array)
        .filter(|o| !o.is_empty())
        .ok_or("the answer has no 'outputs'")?;
    let mut named = Map::new();
    for output in outputs {
        let name = output.get("name").and_then(Value::as_str).unwrap_or("");
        let shape: Vec<usize> = output
            .get("shape")
            .and_then(Value::as_array)
            .map(|dims| {
                dims.iter()
                    .filter_map(|d| d.as_u64())
                    .map(|d| d as usize)
                    .collect()
            })
            .ok_or_else(|| format!("output {name:?} has no shape"))?;
        let mut flat = Vec::new();
        flatten(output.get("data").unwrap_or(&Value::Null), &mut flat);
        if flat.len() != shape.iter().product::<usize>() {
            return Err(format!(
                "output {name:?} has {} values for shape {shape:?}",
                flat.len()
            ));
        }
        named.insert(name.to_string(), reshape(&mut flat.into_iter(), &shape));
    }
    let value = match named.len() {
        1 => named.into_iter().next().map(|(_, v)| v).unwrap_or_default(),
        _ => Value::Object(named),
    };
    Ok(Bytes::from(value.to_string()))
}

/// Appends the leaves of `data` (nested arrays or one value) to `out`.
fn flatten(data: &Value, out: &mut Vec<Value>) {
    match data {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        Value::Null => {}
        leaf => out.push(leaf.clone()),
    }
}

/// The next values of `flat` as nested arrays of `shape`.
fn reshape(flat: &mut impl Iterator<Item = Value>, shape: &[usize]) -> Value {
    match shape {
        [] => flat.next().unwrap_or_default(),
        [n, rest @ ..] => Value::Array((0..*n).map(|_| reshape(flat, rest)).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Param;

    fn request(fields: &[(&str, &str)]) -> InferenceRequest {
        InferenceRequest {
            id: String::new(),
            headers: Vec::new(),
            params: fields
                .iter()
                .map(|(name, value)| Param {
                    name: name.to_string(),
                    content_type: None,
                    value: Bytes::from(value.to_string()),
                })
                .collect(),
        }
    }

    #[test]
    fn fields_become_typed_tensors() {
        let body = encode(&request(&[
            ("a", "[[1, 2], [3, 4]]"),
            ("b", "2.5"),
            ("c", "a dog"),
            ("d", "[[1], [2, 3]]"),
        ]));
        let sent: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            sent,
            json!({"inputs": [
                {"name": "a", "shape": [2, 2], "datatype": "INT64", "data": [1, 2, 3, 4]},
                {"name": "b", "shape": [1], "datatype": "FP32", "data": [2.5]},
                {"name": "c", "shape": [1], "datatype": "BYTES", "data": ["a dog"]},
                {"name": "d", "shape": [1], "datatype": "BYTES", "data": ["[[1], [2, 3]]"]},
            ]})
        );
    }

    #[test]
    fn outputs_are_reshaped_and_named() {
        let one = br#"{"model_name": "m", "outputs": [{"name": "y", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}]}"#;
        assert_eq!(decode(one).unwrap(), "[[1,2],[3,4]]");
        let two = br#"{"outputs": [{"name": "p", "shape": [1], "datatype": "FP32", "data": [[0.5]]},
                                   {"name": "label", "shape": [1], "datatype": "BYTES", "data": ["dog"]}]}"#;
        let value: Value = serde_json::from_slice(&decode(two).unwrap()).unwrap();
        assert_eq!(value, json!({"p": [0.5], "label": ["dog"]}));
        let errors = [
            (&b"nope"[..], "not JSON"),
            (br#"{"outputs": []}"#, "no 'outputs'"),
            (br#"{"outputs": [{"name": "y", "data": [1]}]}"#, "no shape"),
            (
                br#"{"outputs": [{"name": "y", "shape": [3], "data": [1]}]}"#,
                "1 values for shape [3]",
            ),
        ];
        for (body, expected) in errors {
            let err = decode(body).unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
    }
}
