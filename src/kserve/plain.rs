//! A model's v2 answer made of the handler's plain outputs, as the worker answers them under
//! `kservev2;raw` (python/torchyard/envelopes.py): the server wraps them as the `kservev2`
//! envelope would. Each element stays the JSON text the worker wrote: REST's answer prints it
//! as it is, gRPC's reads it into a [`V2Answer`].

use std::ops::Range;

use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::Value;

use super::tensors::{OutputTensor, V2Answer};

/// The v2 answer of a model's plain outputs: its `id`, the model's name and version, and one
/// output tensor per output.
pub struct PlainAnswer {
    /// The worker's answer, whose text the outputs' elements are.
    body: Bytes,
    id: String,
    model_name: Option<String>,
    model_version: Option<String>,
    outputs: Vec<PlainOutput>,
}

/// One output: its name, its datatype, and where each of its elements is in the body.
struct PlainOutput {
    name: String,
    datatype: &'static str,
    elements: Vec<Range<usize>>,
}

impl PlainAnswer {
    /// The answer to a request with inputs `names` and answer id `id`, when the worker answered
    /// the handler's outputs as they are: a non-empty JSON array of numbers, booleans or flat
    /// lists of one kind of them, as the worker checked. Each output becomes a tensor named
    /// after the input of its index (`output-{i}` past them), its datatype `BOOL`, `INT64` or
    /// `FP64` by its first element, a scalar as a list of one, shape its length: what the
    /// envelope's `_tensor` answers. `manifest` is the model's, whose `modelName` and
    /// `modelVersion` the answer names. None when `body` is not such an array: the worker's
    /// own answer, to pass on as it is.
    pub fn read(body: &Bytes, id: &str, manifest: &Value, names: Vec<String>) -> Option<Self> {
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'[') {
            return None;
        }
        let items: Vec<&RawValue> = serde_json::from_slice(body).ok()?;
        if items.is_empty() {
            return None;
        }
        // Where a text the parser borrowed from `body` starts in it.
        let at = |text: &str| {
            let start = text.as_ptr() as usize - body.as_ptr() as usize;
            start..start + text.len()
        };
        let mut names = names.into_iter();
        let mut outputs = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let text = item.get();
            let elements: Vec<&str> = if text.starts_with('[') {
                let list: Vec<&RawValue> = serde_json::from_str(text).ok()?;
                list.into_iter().map(RawValue::get).collect()
            } else {
                vec![text]
            };
            let datatype = match elements.first().map(|e| e.as_bytes()[0]) {
                None => "INT64",
                Some(b't' | b'f') => "BOOL",
                Some(b'-' | b'0'..=b'9') if elements[0].contains(['.', 'e', 'E']) => "FP64",
                Some(b'-' | b'0'..=b'9') => "INT64",
                Some(_) => return None, // not a number or boolean: the worker did not check it
            };
            outputs.push(PlainOutput {
                name: names.next().unwrap_or_else(|| format!("output-{i}")),
                datatype,
                elements: elements.into_iter().map(at).collect(),
            });
        }
        let model = &manifest["model"];
        let text = |v: &Value| v.as_str().map(String::from);
        Some(Self {
            body: body.clone(),
            id: id.into(),
            model_name: text(&model["modelName"]),
            model_version: text(&model["modelVersion"]),
            outputs,
        })
    }

    /// REST's JSON answer, the elements printed as the worker wrote them.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 96 + 64 * self.outputs.len());
        let string = |out: &mut Vec<u8>, s: &str| {
            serde_json::to_writer(out, s).expect("strings print");
        };
        out.extend_from_slice(b"{\"id\":");
        string(&mut out, &self.id);
        for (key, value) in [
            (&b",\"model_name\":"[..], &self.model_name),
            (b",\"model_version\":", &self.model_version),
        ] {
            out.extend_from_slice(key);
            match value {
                Some(value) => string(&mut out, value),
                None => out.extend_from_slice(b"null"),
            }
        }
        out.extend_from_slice(b",\"outputs\":[");
        for (i, output) in self.outputs.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"name\":");
            string(&mut out, &output.name);
            out.extend_from_slice(b",\"datatype\":\"");
            out.extend_from_slice(output.datatype.as_bytes());
            out.extend_from_slice(b"\",\"data\":[");
            for (j, element) in output.elements.iter().enumerate() {
                if j > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&self.body[element.clone()]);
            }
            out.extend_from_slice(b"],\"shape\":[");
            out.extend_from_slice(output.elements.len().to_string().as_bytes());
            out.extend_from_slice(b"]}");
        }
        out.extend_from_slice(b"]}");
        out
    }

    /// The answer with its elements read as JSON values, for gRPC's typed contents.
    pub fn into_answer(self) -> V2Answer {
        let body = &self.body;
        let outputs = self.outputs.into_iter().map(|output| OutputTensor {
            shape: vec![output.elements.len() as i64],
            data: output
                .elements
                .into_iter()
                .map(|e| serde_json::from_slice(&body[e]).expect("the parser read it"))
                .collect(),
            name: output.name,
            datatype: output.datatype.into(),
        });
        V2Answer {
            outputs: outputs.collect(),
            id: Some(self.id),
            model_name: self.model_name,
            model_version: self.model_version,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plain_outputs_become_the_envelopes_answer() {
        let manifest = json!({"model": {"modelName": "m", "modelVersion": "2.0"}});
        let read = |body: &str| {
            PlainAnswer::read(
                &Bytes::from(body.to_string()),
                "r1",
                &manifest,
                vec!["a".into()],
            )
        };
        let expected = json!({"id": "r1", "model_name": "m", "model_version": "2.0", "outputs": [
            {"name": "a", "datatype": "FP64", "data": [10.0], "shape": [1]},
            {"name": "output-1", "datatype": "INT64", "data": [1, -2], "shape": [2]},
            {"name": "output-2", "datatype": "BOOL", "data": [true, false], "shape": [2]},
            {"name": "output-3", "datatype": "FP64", "data": [1e-5, 2.5], "shape": [2]}]});
        let answer = read(" [10.0, [1, -2], [true, false], [1e-05, 2.5]]").unwrap();
        let json = answer.to_json();
        assert!(std::str::from_utf8(&json).unwrap().contains("[1e-05,2.5]"));
        assert_eq!(serde_json::from_slice::<Value>(&json).unwrap(), expected);
        let typed = V2Answer::parse(expected.to_string().as_bytes()).unwrap();
        assert_eq!(answer.into_answer(), typed);
        // The worker's own answer, or nothing to wrap, passes as it is.
        assert!(read(r#"{"id": "r1", "outputs": []}"#).is_none());
        assert!(read("[]").is_none());
        assert!(read("null").is_none());
        assert!(read(r#"["text"]"#).is_none());
    }

    #[test]
    fn names_and_ids_are_escaped() {
        let manifest = json!({"model": {"modelName": "m\"1"}});
        let body = Bytes::from_static(b"[1]");
        let answer = PlainAnswer::read(&body, "a\\b", &manifest, vec!["x\ny".into()]).unwrap();
        let json: Value = serde_json::from_slice(&answer.to_json()).unwrap();
        assert_eq!(
            json,
            json!({"id": "a\\b", "model_name": "m\"1", "model_version": null, "outputs": [
                {"name": "x\ny", "datatype": "INT64", "data": [1], "shape": [1]}]})
        );
    }
}
