//! Open Inference Protocol v2 tensors: checking a JSON request before it reaches a worker,
//! converting gRPC's typed (or raw) tensor contents to the JSON request the `kservev2`
//! envelope unwraps, a model's answer ([`V2Answer`]: the envelope's own JSON, or the handler's
//! plain outputs read by [`super::plain`]) as REST's JSON or gRPC's `ModelInferResponse`, and
//! describing a workflow's JSON leaf answers as output tensors.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::binary::RawTensor;
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

    /// The size in bytes of one element in raw contents; None for BYTES, whose elements
    /// each carry their length.
    pub fn size(self) -> Option<usize> {
        Some(match self {
            Self::Bool | Self::U8 | Self::I8 => 1,
            Self::U16 | Self::I16 | Self::F16 => 2,
            Self::U32 | Self::I32 | Self::F32 => 4,
            Self::U64 | Self::I64 | Self::F64 => 8,
            Self::Bytes => return None,
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
/// elements the (nested) array holds, a lone value counting as one, which kinds of JSON value
/// they are, the range of its integers, and its nesting: the length of the arrays at each
/// depth, and whether they all agree (every array at one depth as long, every element at the
/// same depth).
#[derive(Debug, Default)]
struct Elements {
    count: usize,
    /// The kinds seen, a set of the flags below.
    kinds: u8,
    /// The smallest and largest integers seen.
    min: i128,
    max: i128,
    /// The length of the first array seen at each depth (an array is recorded once its
    /// items are, after those deeper in it).
    lengths: Vec<Option<usize>>,
    /// The depth of the elements (0: a lone value); None while there are none.
    element_depth: Option<usize>,
    /// Arrays of one depth differ in length, or elements sit at different depths.
    ragged: bool,
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

    fn add(&mut self, kind: u8, depth: usize) {
        self.count += 1;
        self.kinds |= kind;
        match self.element_depth {
            None => self.element_depth = Some(depth),
            Some(d) => self.ragged |= d != depth,
        }
    }

    fn add_int(&mut self, value: i128, depth: usize) {
        if self.kinds & (Self::UINT | Self::NEGATIVE_INT) == 0 {
            (self.min, self.max) = (value, value);
        }
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        let kind = if value < 0 {
            Self::NEGATIVE_INT
        } else {
            Self::UINT
        };
        self.add(kind, depth);
    }

    /// Records an array of `len` items at `depth`.
    fn array(&mut self, depth: usize, len: usize) {
        if self.lengths.len() <= depth {
            self.lengths.resize(depth + 1, None);
        }
        match self.lengths[depth] {
            Some(first) => self.ragged |= first != len,
            None => self.lengths[depth] = Some(len),
        }
    }

    /// Whether the data fits `shape` (of `expected` elements): flat, nested as the shape, or
    /// a lone value for one element; else why not.
    fn fits(&self, shape: &[i64], expected: usize) -> Result<(), String> {
        // Every depth above the deepest array holds one: that array is in them.
        let lengths: Vec<usize> = self.lengths.iter().flatten().copied().collect();
        let depth = lengths.len();
        let ragged = self.ragged || self.element_depth.is_some_and(|d| d != depth);
        if ragged {
            return Err("is ragged: its arrays differ in length or depth".into());
        }
        let nested =
            depth == shape.len() && lengths.iter().zip(shape).all(|(&n, &d)| n as i64 == d);
        if self.count != expected {
            return Err(format!(
                "has {} elements, but its shape {shape:?} holds {expected}",
                self.count
            ));
        }
        if depth <= 1 || nested {
            Ok(())
        } else {
            Err(format!(
                "is nested as {lengths:?}, which is neither flat nor its shape {shape:?}"
            ))
        }
    }
}

impl Datatype {
    /// The integers an element of this datatype holds; None for a non-integer type.
    fn int_range(self) -> Option<(i128, i128)> {
        let bits = |b: u32, signed: bool| {
            if signed {
                (-(1i128 << (b - 1)), (1i128 << (b - 1)) - 1)
            } else {
                (0, (1i128 << b) - 1)
            }
        };
        Some(match self {
            Self::U8 => bits(8, false),
            Self::U16 => bits(16, false),
            Self::U32 => bits(32, false),
            Self::U64 => bits(64, false),
            Self::I8 => bits(8, true),
            Self::I16 => bits(16, true),
            Self::I32 => bits(32, true),
            Self::I64 => bits(64, true),
            _ => return None,
        })
    }
}

impl<'de> Deserialize<'de> for Elements {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut elements = Elements::default();
        deserializer.deserialize_any(CountElements(&mut elements, 0))?;
        Ok(elements)
    }
}

/// Adds the elements of one JSON value at a depth to an [`Elements`] summary.
struct CountElements<'a>(&'a mut Elements, usize);

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
        self.0.add(Elements::BOOL, self.1);
        Ok(())
    }

    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.0.add_int(v.into(), self.1);
        Ok(())
    }

    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.0.add_int(v.into(), self.1);
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        self.0.add(Elements::FLOAT, self.1);
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        self.0.add(Elements::OTHER, self.1);
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.0.add(Elements::OTHER, self.1);
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map
            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
            .is_some()
        {}
        self.0.add(Elements::OTHER, self.1);
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let (elements, depth) = (self.0, self.1);
        let mut len = 0;
        while seq
            .next_element_seed(CountElements(elements, depth + 1))?
            .is_some()
        {
            len += 1;
        }
        elements.array(depth, len);
        Ok(())
    }
}

/// One input tensor of a v2 JSON request.
#[derive(Debug, Deserialize)]
pub struct InputTensor {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    /// None for a binary tensor, whose bytes travel beside the JSON.
    #[serde(default)]
    data: Option<Elements>,
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
/// type as the shape holds, in range, flat or nested as the shape. The inputs `binary` lists
/// (by index) have their bytes beside the JSON, checked already ([`super::binary`]); every
/// other input has `data`. The body itself goes to the worker unchanged.
pub fn check_request(body: &[u8], binary: &[usize]) -> ApiResult<InferRequest> {
    let request: InferRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("Invalid v2 inference request: {e}")))?;
    if request.inputs.is_empty() {
        return Err(no_inputs());
    }
    for (index, input) in request.inputs.iter().enumerate() {
        let datatype = Datatype::parse(&input.datatype)?;
        let expected = elements(&input.shape).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Invalid shape {:?} of input {}",
                input.shape, input.name
            ))
        })?;
        let data = match &input.data {
            None if binary.contains(&index) => continue,
            None => {
                return Err(ApiError::bad_request(format!(
                    "Input {} has no data",
                    input.name
                )))
            }
            Some(data) => data,
        };
        if datatype == Datatype::Bytes {
            continue;
        }
        if !datatype.admits(data.kinds) {
            return Err(ApiError::bad_request(format!(
                "Input {} holds data that is not {}",
                input.name, input.datatype
            )));
        }
        if let Some((low, high)) = datatype.int_range() {
            if data.count > 0 && (data.min < low || data.max > high) {
                return Err(ApiError::bad_request(format!(
                    "Input {} holds integers out of the range of {} ({low} to {high})",
                    input.name, input.datatype
                )));
            }
        }
        data.fits(&input.shape, expected).map_err(|why| {
            ApiError::bad_request(format!("The data of input {} {why}", input.name))
        })?;
    }
    Ok(request)
}

/// A request without inputs: nothing for the envelope to hand the handler.
fn no_inputs() -> ApiError {
    ApiError::bad_request("The request has no inputs")
}

/// The number of elements of `shape`, or None for a negative dimension or an overflow.
pub fn elements(shape: &[i64]) -> Option<usize> {
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
/// of numbers stay bytes, returned beside the JSON (their inputs without `data`); raw BYTES
/// contents are read as their elements.
pub fn grpc_request_json(request: &ModelInferRequest) -> ApiResult<(Vec<u8>, Vec<RawTensor>)> {
    if request.inputs.is_empty() {
        return Err(no_inputs());
    }
    let raw = &request.raw_input_contents;
    if !raw.is_empty() && raw.len() != request.inputs.len() {
        return Err(ApiError::bad_request(format!(
            "{} raw_input_contents for {} inputs",
            raw.len(),
            request.inputs.len()
        )));
    }
    let mut inputs = Vec::with_capacity(request.inputs.len());
    let mut binary = Vec::new();
    for (i, input) in request.inputs.iter().enumerate() {
        let datatype = Datatype::parse(&input.datatype)?;
        let not_whole = || {
            ApiError::bad_request(format!(
                "Raw contents of input {} are not whole {} elements",
                input.name, input.datatype
            ))
        };
        let (data, count) = match (raw.get(i), datatype.size()) {
            // Raw numbers stay bytes, beside the JSON (super::binary).
            (Some(bytes), Some(_)) => {
                let tensor = RawTensor::new(i, datatype, bytes.clone()).ok_or_else(not_whole)?;
                let count = tensor.count();
                binary.push(tensor);
                (None, count)
            }
            (Some(bytes), None) => {
                let values = raw_data(datatype, bytes).ok_or_else(not_whole)?;
                let count = values.len();
                (Some(Data::Values(values)), count)
            }
            (None, _) => {
                let data = typed_data(datatype, input.contents.as_ref());
                if let (Some((low, high)), false) = (datatype.int_range(), data.in_range(datatype))
                {
                    return Err(ApiError::bad_request(format!(
                        "Input {} holds integers out of the range of {} ({low} to {high})",
                        input.name, input.datatype
                    )));
                }
                let count = data.len();
                (Some(data), count)
            }
        };
        let expected = elements(&input.shape);
        if datatype != Datatype::Bytes && expected != Some(count) {
            return Err(ApiError::bad_request(format!(
                "Input {} has {count} elements, but its shape {:?} holds {}",
                input.name,
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
    let json = serde_json::to_vec(&body).expect("JSON values print");
    Ok((json, binary))
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
    /// None for a binary tensor.
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Data<'a>>,
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
    /// Whether typed integer contents fit `datatype` (INT8 and INT16 travel as int32,
    /// UINT8 and UINT16 as uint32).
    fn in_range(&self, datatype: Datatype) -> bool {
        let Some((low, high)) = datatype.int_range() else {
            return true;
        };
        let fits = |v: i128| (low..=high).contains(&v);
        match self {
            Self::I32(v) => v.iter().all(|&x| fits(x.into())),
            Self::U32(v) => v.iter().all(|&x| fits(x.into())),
            _ => true,
        }
    }

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
        assert_eq!(check_request(ok, &[]).unwrap().inputs[0].name, "x");
        let short = br#"{"inputs":[{"name":"x","shape":[3],"datatype":"INT64","data":[1,2]}]}"#;
        assert!(check_request(short, &[])
            .unwrap_err()
            .message
            .contains("holds 3"));
        let float_ints =
            br#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT32","data":[1.5]}]}"#;
        assert!(check_request(float_ints, &[]).is_err());
        let unknown = br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP8","data":[1]}]}"#;
        assert!(check_request(unknown, &[])
            .unwrap_err()
            .message
            .contains("FP8"));
        let negative = br#"{"inputs":[{"name":"x","shape":[-1],"datatype":"FP32","data":[1]}]}"#;
        assert!(check_request(negative, &[]).is_err());
        let bytes = br#"{"inputs":[{"name":"t","shape":[1],"datatype":"BYTES","data":["a","b"]}]}"#;
        assert!(check_request(bytes, &[]).is_ok());
        let negative_ints =
            br#"{"inputs":[{"name":"x","shape":[2,1],"datatype":"INT8","data":[[-1],[2]]}]}"#;
        assert!(check_request(negative_ints, &[]).is_ok());
        let unsigned = br#"{"inputs":[{"name":"x","shape":[2],"datatype":"UINT8","data":[-1,2]}]}"#;
        assert!(check_request(unsigned, &[]).is_err());
        let objects =
            br#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[{"a":[1]},null]}]}"#;
        assert!(check_request(objects, &[]).is_err());
        let scalar = br#"{"inputs":[{"name":"x","shape":[1],"datatype":"BOOL","data":true}]}"#;
        assert!(check_request(scalar, &[]).is_ok());
        let no_data = br#"{"inputs":[{"name":"x","shape":[1],"datatype":"BOOL"}]}"#;
        assert!(check_request(no_data, &[]).is_err());
        assert!(check_request(b"{not json", &[]).is_err());
        let refused = |data: &str, shape: &str, datatype: &str| {
            let body = format!(
                r#"{{"inputs":[{{"name":"x","shape":{shape},"datatype":"{datatype}","data":{data}}}]}}"#
            );
            check_request(body.as_bytes(), &[]).err().map(|e| e.message)
        };
        let ragged = refused("[[1,2,3],[4]]", "[2,2]", "INT64").unwrap();
        assert!(ragged.contains("ragged"), "{ragged}");
        assert!(refused("[[1,2],3,4]", "[3]", "INT64")
            .unwrap()
            .contains("ragged"));
        let deeper = refused("[[[1],[2]],[[3],[4]]]", "[2,2]", "INT64").unwrap();
        assert!(deeper.contains("nested as [2, 2, 1]"), "{deeper}");
        assert!(refused("[[1,2,3,4]]", "[2,2]", "INT64").is_some());
        assert_eq!(refused("[[1,2],[3,4]]", "[2,2]", "INT64"), None);
        assert_eq!(refused("[1,2,3,4]", "[2,2]", "INT64"), None);
        assert_eq!(refused("[[]]", "[1,0]", "FP32"), None);
        let range = refused("[300]", "[1]", "UINT8").unwrap();
        assert!(range.contains("0 to 255"), "{range}");
        assert_eq!(refused("[255, 0]", "[2]", "UINT8"), None);
        assert!(refused("[-129]", "[1]", "INT8").is_some());
        assert_eq!(refused("[-128, 127]", "[2]", "INT8"), None);
        assert!(refused("[18446744073709551615]", "[1]", "INT64").is_some());
        assert_eq!(refused("[18446744073709551615]", "[1]", "UINT64"), None);
        assert!(check_request(br#"{"inputs":[]}"#, &[]).is_err());
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
        let json: Value = serde_json::from_slice(&grpc_request_json(&request).unwrap().0).unwrap();
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
        request.inputs[0].datatype = "UINT8".into();
        request.inputs[0].contents = Some(InferTensorContents {
            uint_contents: vec![300],
            ..Default::default()
        });
        let range = grpc_request_json(&request).unwrap_err().message;
        assert!(range.contains("0 to 255"), "{range}");
        request.raw_input_contents = vec![bytes::Bytes::from(7i32.to_le_bytes().to_vec())];
        request.inputs[0].datatype = "INT32".into();
        let (json, binary) = grpc_request_json(&request).unwrap();
        let json: Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            json["inputs"][0].get("data"),
            None,
            "raw numbers stay bytes"
        );
        assert_eq!(&binary[0].param().value[..], 7i32.to_le_bytes());
        request.inputs[0].shape = vec![2];
        assert!(grpc_request_json(&request).is_err());
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
