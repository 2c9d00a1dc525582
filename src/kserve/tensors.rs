//! Open Inference Protocol v2 tensors: checking a JSON request before it reaches a worker,
//! converting gRPC's typed (or raw) tensor contents to the JSON request the `kservev2`
//! envelope unwraps, a model's answer ([`V2Answer`]: the envelope's own JSON, or the handler's
//! plain outputs read by [`super::plain`]) as REST's JSON or gRPC's `ModelInferResponse`, and
//! describing a workflow's JSON leaf answers as output tensors.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::pb::model_infer_response::InferOutputTensor;
use super::pb::{InferTensorContents, ModelInferRequest, ModelInferResponse};
use crate::error::{ApiError, ApiResult};

/// A v2 datatype, with the size of one element in raw (binary) contents.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Datatype {
    Bool,
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F16,
    F32,
    F64,
    Bytes,
}

impl Datatype {
    /// The datatype named `name` (`"FP32"`, ...), or a 400.
    pub fn parse(name: &str) -> ApiResult<Self> {
        Ok(match name {
            "BOOL" => Self::Bool,
            "UINT8" => Self::U8,
            "UINT16" => Self::U16,
            "UINT32" => Self::U32,
            "UINT64" => Self::U64,
            "INT8" => Self::I8,
            "INT16" => Self::I16,
            "INT32" => Self::I32,
            "INT64" => Self::I64,
            "FP16" => Self::F16,
            "FP32" => Self::F32,
            "FP64" => Self::F64,
            "BYTES" => Self::Bytes,
            other => {
                return Err(ApiError::bad_request(format!(
                    "Unsupported datatype {other:?}"
                )))
            }
        })
    }

    /// Whether elements of `kinds` (an [`Elements`] summary) fit this datatype.
    fn admits(self, kinds: u8) -> bool {
        let allowed = match self {
            Self::Bytes => return true,
            Self::Bool => Elements::BOOL,
            Self::F16 | Self::F32 | Self::F64 => {
                Elements::UINT | Elements::NEGATIVE_INT | Elements::FLOAT
            }
            Self::U8 | Self::U16 | Self::U32 | Self::U64 => Elements::UINT,
            _ => Elements::UINT | Elements::NEGATIVE_INT,
        };
        kinds & !allowed == 0
    }
}

/// What the check of an input needs of its `data`, read without building it: how many
/// elements the (nested) array holds, a lone value counting as one, and which kinds of JSON
/// value they are.
#[derive(Debug, Default)]
struct Elements {
    count: usize,
    /// The kinds seen, a set of the flags below.
    kinds: u8,
}

impl Elements {
    const BOOL: u8 = 1;
    /// An integer that fits u64.
    const UINT: u8 = 2;
    /// A negative integer that fits i64.
    const NEGATIVE_INT: u8 = 4;
    const FLOAT: u8 = 8;
    /// A string, null or object.
    const OTHER: u8 = 16;

    fn add(&mut self, kind: u8) {
        self.count += 1;
        self.kinds |= kind;
    }
}

impl<'de> Deserialize<'de> for Elements {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut elements = Elements::default();
        deserializer.deserialize_any(CountElements(&mut elements))?;
        Ok(elements)
    }
}

/// Adds the elements of one JSON value to an [`Elements`] summary.
struct CountElements<'a>(&'a mut Elements);

impl<'de> serde::de::DeserializeSeed<'de> for CountElements<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for CountElements<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("tensor data")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        self.0.add(Elements::BOOL);
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        self.0.add(Elements::UINT);
        Ok(())
    }

    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.0.add(if v < 0 {
            Elements::NEGATIVE_INT
        } else {
            Elements::UINT
        });
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        self.0.add(Elements::FLOAT);
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        self.0.add(Elements::OTHER);
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.0.add(Elements::OTHER);
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map
            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
            .is_some()
        {}
        self.0.add(Elements::OTHER);
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(CountElements(self.0))?.is_some() {}
        Ok(())
    }
}

/// One input tensor of a v2 JSON request.
#[derive(Debug, Deserialize)]
pub struct InputTensor {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    data: Elements,
}

/// The parts of a v2 JSON request torchyard checks.
#[derive(Debug, Deserialize)]
pub struct InferRequest {
    #[serde(default)]
    pub id: Option<String>,
    pub inputs: Vec<InputTensor>,
}

/// Parses and checks a v2 JSON request: every input has a known datatype, a non-negative
/// shape, and (but for BYTES, whose data the envelope takes as is) as many elements of that
/// type as the shape holds. The body itself goes to the worker unchanged.
pub fn check_request(body: &[u8]) -> ApiResult<InferRequest> {
    let request: InferRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("Invalid v2 inference request: {e}")))?;
    if request.inputs.is_empty() {
        return Err(ApiError::bad_request("The request has no inputs"));
    }
    for input in &request.inputs {
        let datatype = Datatype::parse(&input.datatype)?;
        let expected = elements(&input.shape).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Invalid shape {:?} of input {}",
                input.shape, input.name
            ))
        })?;
        if datatype == Datatype::Bytes {
            continue;
        }
        if !datatype.admits(input.data.kinds) {
            return Err(ApiError::bad_request(format!(
                "Input {} holds data that is not {}",
                input.name, input.datatype
            )));
        }
        let count = input.data.count;
        if count != expected {
            return Err(ApiError::bad_request(format!(
                "Input {} has {count} elements, but its shape {:?} holds {expected}",
                input.name, input.shape
            )));
        }
    }
    Ok(request)
}

/// A v2 REST request with the binary tensor extension (the JSON's first `json_length` bytes
/// declared by `Inference-Header-Content-Length`, then the raw contents of each input with a
/// `binary_data_size` parameter, in order) as plain JSON: each such input gets its elements as
/// `data`, read as gRPC's raw contents are.
pub fn inline_binary(body: &[u8], json_length: usize) -> ApiResult<Vec<u8>> {
    let bad = |m: String| ApiError::bad_request(m);
    let (head, mut rest) = body.split_at_checked(json_length).ok_or_else(|| {
        bad(format!(
            "Inference-Header-Content-Length {json_length} exceeds the body's {} bytes",
            body.len()
        ))
    })?;
    let mut request: Value = serde_json::from_slice(head)
        .map_err(|e| bad(format!("Invalid v2 inference request: {e}")))?;
    let inputs = request
        .get_mut("inputs")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| bad("The request has no inputs".into()))?;
    for input in inputs {
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
        let (chunk, after) = rest
            .split_at_checked(size)
            .ok_or_else(|| bad("Binary tensor data ends early".into()))?;
        rest = after;
        let datatype = Datatype::parse(input["datatype"].as_str().unwrap_or_default())?;
        let data = raw_data(datatype, chunk).ok_or_else(|| {
            bad(format!(
                "Binary data of input {} is not whole elements",
                input["name"]
            ))
        })?;
        input["data"] = Value::Array(data);
    }
    if !rest.is_empty() {
        return Err(bad(format!(
            "{} bytes of binary data belong to no input",
            rest.len()
        )));
    }
    Ok(serde_json::to_vec(&request).expect("JSON values print"))
}

/// The number of elements of `shape`, or None for a negative dimension or an overflow.
fn elements(shape: &[i64]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| {
        usize::try_from(d).ok().and_then(|d| n.checked_mul(d))
    })
}

/// Calls `f` on every non-array element of a (nested) JSON array, or on a lone scalar.
fn for_each_element(value: &Value, f: &mut impl FnMut(&Value)) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| for_each_element(v, f)),
        other => f(other),
    }
}

/// The JSON request TorchServe builds of a gRPC `ModelInfer` (its `OpenInferenceProtocolImpl`):
/// `id`, `model_name` and the inputs with their contents as `data`, BYTES base64-encoded, each
/// checked against its shape. Raw contents (`raw_input_contents`, as tritonclient sends them)
/// are read as little-endian elements of the input's datatype.
pub fn grpc_request_json(request: &ModelInferRequest) -> ApiResult<Vec<u8>> {
    let raw = &request.raw_input_contents;
    if !raw.is_empty() && raw.len() != request.inputs.len() {
        return Err(ApiError::bad_request(format!(
            "{} raw_input_contents for {} inputs",
            raw.len(),
            request.inputs.len()
        )));
    }
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for (i, input) in request.inputs.iter().enumerate() {
        let datatype = Datatype::parse(&input.datatype)?;
        let data = match raw.get(i) {
            Some(bytes) => raw_data(datatype, bytes).map(Data::Values),
            None => Some(typed_data(datatype, input.contents.as_ref())),
        }
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "Raw contents of input {} are not whole {} elements",
                input.name, input.datatype
            ))
        })?;
        let expected = elements(&input.shape);
        if datatype != Datatype::Bytes && expected != Some(data.len()) {
            return Err(ApiError::bad_request(format!(
                "Input {} has {} elements, but its shape {:?} holds {}",
                input.name,
                data.len(),
                input.shape,
                expected.map_or("none".into(), |n| n.to_string())
            )));
        }
        inputs.push(JsonInput {
            name: &input.name,
            shape: &input.shape,
            datatype: &input.datatype,
            data,
        });
    }
    let body = JsonRequest {
        id: &request.id,
        model_name: &request.model_name,
        inputs,
    };
    Ok(serde_json::to_vec(&body).expect("JSON values print"))
}

/// The JSON of a gRPC request, borrowing its contents.
#[derive(Serialize)]
struct JsonRequest<'a> {
    id: &'a str,
    model_name: &'a str,
    inputs: Vec<JsonInput<'a>>,
}

#[derive(Serialize)]
struct JsonInput<'a> {
    name: &'a str,
    shape: &'a [i64],
    datatype: &'a str,
    data: Data<'a>,
}

/// An input's elements: typed contents as they are, raw or BYTES contents decoded.
#[derive(Serialize)]
#[serde(untagged)]
enum Data<'a> {
    Bool(&'a [bool]),
    I32(&'a [i32]),
    I64(&'a [i64]),
    U32(&'a [u32]),
    U64(&'a [u64]),
    F32(&'a [f32]),
    F64(&'a [f64]),
    Values(Vec<Value>),
}

impl Data<'_> {
    fn len(&self) -> usize {
        match self {
            Self::Bool(v) => v.len(),
            Self::I32(v) => v.len(),
            Self::I64(v) => v.len(),
            Self::U32(v) => v.len(),
            Self::U64(v) => v.len(),
            Self::F32(v) => v.len(),
            Self::F64(v) => v.len(),
            Self::Values(v) => v.len(),
        }
    }
}

fn base64(bytes: &[u8]) -> Value {
    use base64::Engine;
    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// The typed contents of `datatype` (the empty list when there are none).
fn typed_data(datatype: Datatype, contents: Option<&InferTensorContents>) -> Data<'_> {
    static EMPTY: InferTensorContents = InferTensorContents {
        bool_contents: Vec::new(),
        int_contents: Vec::new(),
        int64_contents: Vec::new(),
        uint_contents: Vec::new(),
        uint64_contents: Vec::new(),
        fp32_contents: Vec::new(),
        fp64_contents: Vec::new(),
        bytes_contents: Vec::new(),
    };
    let c = contents.unwrap_or(&EMPTY);
    match datatype {
        Datatype::Bool => Data::Bool(&c.bool_contents),
        Datatype::I8 | Datatype::I16 | Datatype::I32 => Data::I32(&c.int_contents),
        Datatype::I64 => Data::I64(&c.int64_contents),
        Datatype::U8 | Datatype::U16 | Datatype::U32 => Data::U32(&c.uint_contents),
        Datatype::U64 => Data::U64(&c.uint64_contents),
        Datatype::F16 | Datatype::F32 => Data::F32(&c.fp32_contents),
        Datatype::F64 => Data::F64(&c.fp64_contents),
        Datatype::Bytes => Data::Values(c.bytes_contents.iter().map(|b| base64(b)).collect()),
    }
}

/// Little-endian raw contents as JSON elements; None when they are not whole elements.
pub fn raw_data(datatype: Datatype, bytes: &[u8]) -> Option<Vec<Value>> {
    fn each<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> Value) -> Option<Vec<Value>> {
        if !bytes.len().is_multiple_of(N) {
            return None;
        }
        Some(
            bytes
                .chunks_exact(N)
                .map(|c| f(c.try_into().expect("chunks of N")))
                .collect(),
        )
    }
    match datatype {
        Datatype::Bool => each(bytes, |[b]: [u8; 1]| Value::Bool(b != 0)),
        Datatype::U8 => each(bytes, |[b]: [u8; 1]| Value::from(b)),
        Datatype::I8 => each(bytes, |b| Value::from(i8::from_le_bytes(b))),
        Datatype::U16 => each(bytes, |b| Value::from(u16::from_le_bytes(b))),
        Datatype::I16 => each(bytes, |b| Value::from(i16::from_le_bytes(b))),
        Datatype::U32 => each(bytes, |b| Value::from(u32::from_le_bytes(b))),
        Datatype::I32 => each(bytes, |b| Value::from(i32::from_le_bytes(b))),
        Datatype::U64 => each(bytes, |b| Value::from(u64::from_le_bytes(b))),
        Datatype::I64 => each(bytes, |b| Value::from(i64::from_le_bytes(b))),
        Datatype::F16 => each(bytes, |b| Value::from(f16_to_f32(u16::from_le_bytes(b)))),
        Datatype::F32 => each(bytes, |b| Value::from(f32::from_le_bytes(b))),
        Datatype::F64 => each(bytes, |b| Value::from(f64::from_le_bytes(b))),
        Datatype::Bytes => {
            // Each element: a 4-byte little-endian length, then that many bytes.
            let mut values = Vec::new();
            let mut rest = bytes;
            while !rest.is_empty() {
                let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
                let item = rest.get(4..4 + len)?;
                values.push(base64(item));
                rest = &rest[4 + len..];
            }
            Some(values)
        }
    }
}

/// An IEEE half-precision float's value.
fn f16_to_f32(bits: u16) -> f32 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exponent = i32::from((bits >> 10) & 0x1f);
    let fraction = f32::from(bits & 0x3ff);
    sign * match exponent {
        0 => fraction * 2f32.powi(-24),
        31 if fraction == 0.0 => f32::INFINITY,
        31 => f32::NAN,
        e => (1.0 + fraction / 1024.0) * 2f32.powi(e - 15),
    }
}

/// A model's v2 answer, as the `kservev2` envelope builds it, read for gRPC's
/// `ModelInferResponse` ([`grpc_response`]).
#[derive(Debug, Deserialize, PartialEq)]
pub struct V2Answer {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub model_name: Option<String>,
    #[serde(default)]
    pub model_version: Option<String>,
    pub outputs: Vec<OutputTensor>,
}

/// One output tensor of a [`V2Answer`]: its elements flat, as JSON values.
#[derive(Debug, Deserialize, PartialEq)]
pub struct OutputTensor {
    pub name: String,
    pub datatype: String,
    pub data: Vec<Value>,
    #[serde(default)]
    pub shape: Vec<i64>,
}

impl V2Answer {
    /// The handler's own JSON answer (the worker wrapped it), or a 500 when it is none.
    pub fn parse(body: &[u8]) -> ApiResult<Self> {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::internal(format!(
                "The handler's answer is not a v2 inference response: {e}"
            ))
        })
    }
}

/// The gRPC answer of a v2 answer, as TorchServe's `GRPCJob` builds it: `id`, `model_name`,
/// `model_version` and each output's contents by its datatype (a BYTES element: the string
/// itself, other JSON as its text). With `raw` (the request came with raw contents, as
/// tritonclient sends them, and reads only raw answers) the contents go in
/// `raw_output_contents` instead.
pub fn grpc_response(answer: V2Answer, raw: bool) -> ApiResult<ModelInferResponse> {
    let mut outputs = Vec::with_capacity(answer.outputs.len());
    let mut raw_output_contents = Vec::new();
    for output in answer.outputs {
        let datatype =
            Datatype::parse(&output.datatype).map_err(|e| ApiError::internal(e.message))?;
        let contents = contents(datatype, &output.data);
        if raw {
            raw_output_contents.push(raw_bytes(&contents).into());
        }
        outputs.push(InferOutputTensor {
            name: output.name,
            datatype: output.datatype,
            shape: output.shape,
            parameters: Default::default(),
            contents: (!raw).then_some(contents),
        });
    }
    Ok(ModelInferResponse {
        model_name: answer.model_name.unwrap_or_default(),
        model_version: answer.model_version.unwrap_or_default(),
        id: answer.id.unwrap_or_default(),
        parameters: Default::default(),
        outputs,
        raw_output_contents,
    })
}

/// Typed contents (one kind filled) as little-endian raw contents; BYTES elements each after
/// their 4-byte length.
fn raw_bytes(c: &InferTensorContents) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(c.bool_contents.iter().map(|&b| u8::from(b)));
    c.int_contents
        .iter()
        .for_each(|v| out.extend(v.to_le_bytes()));
    c.int64_contents
        .iter()
        .for_each(|v| out.extend(v.to_le_bytes()));
    c.uint_contents
        .iter()
        .for_each(|v| out.extend(v.to_le_bytes()));
    c.uint64_contents
        .iter()
        .for_each(|v| out.extend(v.to_le_bytes()));
    c.fp32_contents
        .iter()
        .for_each(|v| out.extend(v.to_le_bytes()));
    c.fp64_contents
        .iter()
        .for_each(|v| out.extend(v.to_le_bytes()));
    for b in &c.bytes_contents {
        out.extend((b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
    }
    out
}

fn contents(datatype: Datatype, data: &[Value]) -> InferTensorContents {
    let mut c = InferTensorContents::default();
    let int = |v: &Value| v.as_i64().unwrap_or_default();
    let uint = |v: &Value| v.as_u64().unwrap_or_default();
    let float = |v: &Value| v.as_f64().unwrap_or_default();
    match datatype {
        Datatype::Bool => {
            c.bool_contents = data.iter().map(|v| v.as_bool() == Some(true)).collect()
        }
        Datatype::I8 | Datatype::I16 | Datatype::I32 => {
            c.int_contents = data.iter().map(|v| int(v) as i32).collect()
        }
        Datatype::I64 => c.int64_contents = data.iter().map(int).collect(),
        Datatype::U8 | Datatype::U16 | Datatype::U32 => {
            c.uint_contents = data.iter().map(|v| uint(v) as u32).collect()
        }
        Datatype::U64 => c.uint64_contents = data.iter().map(uint).collect(),
        Datatype::F16 | Datatype::F32 => {
            c.fp32_contents = data.iter().map(|v| float(v) as f32).collect()
        }
        Datatype::F64 => c.fp64_contents = data.iter().map(float).collect(),
        Datatype::Bytes => {
            c.bytes_contents = data
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone().into(),
                    other => other.to_string().into(),
                })
                .collect()
        }
    }
    c
}

/// A workflow's answer as v2 output tensors: one per leaf, named after it, its JSON answer
/// flattened (the shape of a rectangular nested array, else the element count) with the
/// datatype numpy would give it.
pub fn leaf_outputs<'a>(leaves: impl Iterator<Item = (&'a str, Value)>) -> Value {
    let outputs: Vec<Value> = leaves
        .map(|(name, value)| {
            let mut data = Vec::new();
            for_each_element(&value, &mut |v| data.push(v.clone()));
            let shape = shape_of(&value).unwrap_or_else(|| vec![data.len()]);
            let datatype = if data.iter().all(Value::is_boolean) && !data.is_empty() {
                "BOOL"
            } else if data.iter().all(|v| v.is_i64() || v.is_u64()) {
                "INT64"
            } else if data.iter().all(Value::is_number) {
                "FP64"
            } else {
                "BYTES"
            };
            let mut tensor = Map::new();
            tensor.insert("name".into(), name.into());
            tensor.insert("datatype".into(), datatype.into());
            tensor.insert("shape".into(), json!(shape));
            tensor.insert("data".into(), Value::Array(data));
            Value::Object(tensor)
        })
        .collect();
    Value::Array(outputs)
}

/// The shape of a rectangular nested array (a scalar: `[1]`), or None when ragged.
fn shape_of(value: &Value) -> Option<Vec<usize>> {
    match value {
        Value::Array(items) => {
            let inner: Vec<Option<Vec<usize>>> = items
                .iter()
                .map(|v| {
                    if v.is_array() {
                        shape_of(v)
                    } else {
                        Some(Vec::new())
                    }
                })
                .collect();
            let first = inner.first().cloned().unwrap_or(Some(Vec::new()))?;
            if inner.iter().any(|s| s.as_ref() != Some(&first)) {
                return None;
            }
            Some(std::iter::once(items.len()).chain(first).collect())
        }
        _ => Some(vec![1]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked_against_shape_and_datatype() {
        let ok =
            br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2],[3.5,4]]}]}"#;
        assert_eq!(check_request(ok).unwrap().inputs[0].name, "x");
        let short = br#"{"inputs":[{"name":"x","shape":[3],"datatype":"INT64","data":[1,2]}]}"#;
        assert!(check_request(short)
            .unwrap_err()
            .message
            .contains("holds 3"));
        let float_ints =
            br#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT32","data":[1.5]}]}"#;
        assert!(check_request(float_ints).is_err());
        let unknown = br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP8","data":[1]}]}"#;
        assert!(check_request(unknown).unwrap_err().message.contains("FP8"));
        let negative = br#"{"inputs":[{"name":"x","shape":[-1],"datatype":"FP32","data":[1]}]}"#;
        assert!(check_request(negative).is_err());
        let bytes = br#"{"inputs":[{"name":"t","shape":[1],"datatype":"BYTES","data":["a","b"]}]}"#;
        assert!(check_request(bytes).is_ok());
        let negative_ints =
            br#"{"inputs":[{"name":"x","shape":[2,1],"datatype":"INT8","data":[[-1],[2]]}]}"#;
        assert!(check_request(negative_ints).is_ok());
        let unsigned = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"UINT8","data":[-1,2]}]}"#;
        assert!(check_request(unsigned).is_err());
        let objects =
            br#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[{"a":[1]},null]}]}"#;
        assert!(check_request(objects).is_err());
        let scalar = br#"{"inputs":[{"name":"x","shape":[1],"datatype":"BOOL","data":true}]}"#;
        assert!(check_request(scalar).is_ok());
        let no_data = br#"{"inputs":[{"name":"x","shape":[1],"datatype":"BOOL"}]}"#;
        assert!(check_request(no_data).is_err());
        assert!(check_request(b"{not json").is_err());
        assert!(check_request(br#"{"inputs":[]}"#).is_err());
    }

    #[test]
    fn binary_extension_becomes_json_data() {
        let head = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":8}},{"name":"y","shape":[1],"datatype":"BOOL","data":[true]}]}"#;
        let body = [&head[..], &7i32.to_le_bytes(), &(-1i32).to_le_bytes()].concat();
        let json = inline_binary(&body, head.len()).unwrap();
        check_request(&json).unwrap();
        let request: Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(request["inputs"][0]["data"], json!([7, -1]));
        assert_eq!(request["inputs"][1]["data"], json!([true]));
        assert!(inline_binary(&body[..body.len() - 1], head.len()).is_err());
        assert!(inline_binary(&[&body[..], &[0]].concat(), head.len()).is_err());
        assert!(inline_binary(&body, body.len() + 1).is_err());
    }

    #[test]
    fn raw_contents_are_little_endian_elements() {
        let fp32: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect();
        assert_eq!(
            raw_data(Datatype::F32, &fp32).unwrap(),
            [json!(1.5), json!(-2.0)]
        );
        assert_eq!(raw_data(Datatype::I64, &fp32).unwrap().len(), 1);
        assert!(raw_data(Datatype::I32, &[1, 2, 3]).is_none());
        let strings = [&3u32.to_le_bytes()[..], b"abc", &0u32.to_le_bytes()].concat();
        assert_eq!(
            raw_data(Datatype::Bytes, &strings).unwrap(),
            [json!("YWJj"), json!("")]
        );
        assert!(raw_data(Datatype::Bytes, &[9, 0, 0, 0, 1]).is_none());
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
    }

    #[test]
    fn grpc_request_becomes_torchserves_json() {
        use super::super::pb::model_infer_request::InferInputTensor;
        let tensor = |name: &str, datatype: &str, shape: Vec<i64>, contents| InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape,
            parameters: Default::default(),
            contents,
        };
        let mut request = ModelInferRequest {
            model_name: "m".into(),
            id: "r".into(),
            inputs: vec![
                tensor(
                    "a",
                    "FP32",
                    vec![2],
                    Some(InferTensorContents {
                        fp32_contents: vec![0.5, 2.0],
                        ..Default::default()
                    }),
                ),
                tensor(
                    "b",
                    "BYTES",
                    vec![1],
                    Some(InferTensorContents {
                        bytes_contents: vec![bytes::Bytes::from("hi")],
                        ..Default::default()
                    }),
                ),
            ],
            ..Default::default()
        };
        let json: Value = serde_json::from_slice(&grpc_request_json(&request).unwrap()).unwrap();
        assert_eq!(
            json,
            json!({"id": "r", "model_name": "m", "inputs": [
                {"name": "a", "shape": [2], "datatype": "FP32", "data": [0.5, 2.0]},
                {"name": "b", "shape": [1], "datatype": "BYTES", "data": ["aGk="]}]})
        );
        request.inputs[0].shape = vec![3];
        assert!(grpc_request_json(&request)
            .unwrap_err()
            .message
            .contains("holds 3"));
        request.inputs.truncate(1);
        request.inputs[0].shape = vec![1];
        request.raw_input_contents = vec![bytes::Bytes::from(7i32.to_le_bytes().to_vec())];
        request.inputs[0].datatype = "INT32".into();
        let json: Value = serde_json::from_slice(&grpc_request_json(&request).unwrap()).unwrap();
        assert_eq!(json["inputs"][0]["data"], json!([7]));
    }

    #[test]
    fn grpc_answer_follows_the_datatype() {
        let body = br#"{"id":"r","model_name":"m","model_version":"1.0","outputs":[
            {"name":"a","datatype":"INT64","shape":[2],"data":[1,2]},
            {"name":"b","datatype":"FP32","shape":[1],"data":[0.5]},
            {"name":"c","datatype":"BYTES","shape":[1],"data":["hi"]}]}"#;
        let answer = grpc_response(V2Answer::parse(body).unwrap(), false).unwrap();
        assert_eq!(
            (answer.id.as_str(), answer.model_version.as_str()),
            ("r", "1.0")
        );
        let contents = |i: usize| answer.outputs[i].contents.clone().unwrap();
        assert_eq!(contents(0).int64_contents, [1, 2]);
        assert_eq!(contents(1).fp32_contents, [0.5]);
        assert_eq!(contents(2).bytes_contents, [bytes::Bytes::from("hi")]);
        assert!(V2Answer::parse(b"[1]").is_err());
        let raw = grpc_response(V2Answer::parse(body).unwrap(), true).unwrap();
        assert!(raw.outputs.iter().all(|o| o.contents.is_none()));
        assert_eq!(
            raw.raw_output_contents[0],
            [&1i64.to_le_bytes()[..], &2i64.to_le_bytes()].concat()
        );
        assert_eq!(
            raw.raw_output_contents[2],
            [&2u32.to_le_bytes()[..], b"hi"].concat()
        );
    }

    #[test]
    fn leaf_answers_become_tensors() {
        let outputs = leaf_outputs(
            [
                ("a", json!([[1, 2], [3, 4]])),
                ("b", json!([0.5, 1])),
                ("c", json!("x")),
            ]
            .into_iter(),
        );
        assert_eq!(outputs[0]["shape"], json!([2, 2]));
        assert_eq!(outputs[0]["datatype"], "INT64");
        assert_eq!(outputs[0]["data"], json!([1, 2, 3, 4]));
        assert_eq!(outputs[1]["datatype"], "FP64");
        assert_eq!(outputs[2]["datatype"], "BYTES");
        assert_eq!(outputs[2]["shape"], json!([1]));
        assert_eq!(
            leaf_outputs([("r", json!([[1], [2, 3]]))].into_iter())[0]["shape"],
            json!([3])
        );
    }
}
