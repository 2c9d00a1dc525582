//! The framed protocol between server and worker (see `docs/protocol.md`).

use std::os::fd::OwnedFd;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::shared_memory::{ReplyRegions, SharedFields};
use crate::job::Param;
use crate::metrics::{Declaration, HandlerSample};

/// Largest frame either side may send, its shared blobs included.
pub(super) const MAX_FRAME: usize = 2 << 30;

/// Messages from the server to a worker.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ToWorker<'a> {
    Load(LoadMessage<'a>),
    Predict {
        requests: Vec<RequestMeta<'a>>,
        blobs: Vec<usize>,
        /// An async worker's number for the batch, which its replies name.
        #[serde(skip_serializing_if = "Option::is_none")]
        batch: Option<u64>,
        /// Torch threads the worker is to run from this batch on, when they changed.
        #[serde(skip_serializing_if = "Option::is_none")]
        threads: Option<usize>,
    },
    /// Stop the running batch's requests `ids`: their clients went away. No reply.
    Cancel {
        ids: Vec<&'a str>,
    },
}

/// What a worker needs to load its handler.
#[derive(Debug, Serialize)]
pub struct LoadMessage<'a> {
    pub model_name: &'a str,
    pub model_version: &'a str,
    pub model_dir: &'a str,
    pub handler: &'a str,
    pub manifest: &'a serde_json::Value,
    pub batch_size: usize,
    pub gpu_id: Option<u32>,
    pub limit_max_image_pixels: bool,
    /// False: parameters reach the handler as raw bytes whatever their content type.
    pub decode_input_request: bool,
    /// TorchServe's `service_envelope`: the envelope of requests that name none
    /// (python/torchyard/envelopes.py).
    pub envelope: Option<&'a str>,
    pub model_yaml_config: &'a serde_json::Value,
    /// The handler metrics `metrics_config` declares: the worker's metric cache starts with them.
    pub metrics: &'a [Declaration],
    pub server_name: &'a str,
    pub server_version: &'a str,
    /// Torch intra-op and inter-op threads the worker runs (src/worker/threads.rs); `None`:
    /// torch's default (a torchrun worker's ranks take `OMP_NUM_THREADS`).
    pub threads: Option<usize>,
    /// The cores the worker is pinned to (`cpu_launcher_enable`): it runs its handler's
    /// loading on them; absent: every core.
    #[serde(skip_serializing_if = "<[usize]>::is_empty")]
    pub cores: &'a [usize],
    /// Outputs of at least this many bytes come back in shared memory (0: never).
    pub shared_memory_threshold: usize,
    /// Set for a fused workflow segment: the worker runs these nodes in turn on a request
    /// that asks for it (`segment` in `predict`), and on every request when none of them is
    /// the model's own `handler`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segment: Option<&'a [SegmentNode]>,
}

/// One workflow node of a fused segment, as its worker loads it: a function, or the model
/// node whose workers run the segment.
#[derive(Debug, Clone, Serialize)]
pub struct SegmentNode {
    /// The node's name in the DAG.
    pub node: String,
    /// True for the model node itself: the worker's loaded `handler` runs it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub model: bool,
    /// Where the node's handler file lives, its context's `model_dir`.
    pub model_dir: String,
    /// The node's own model name (`{workflow}__{node}`), its context's `model_name`.
    pub model_name: String,
    /// `file.py:function`.
    pub handler: String,
    /// The node's context's `manifest`.
    pub manifest: serde_json::Value,
    /// Tries per request: 1 + the node's retry-attempts.
    pub attempts: usize,
    /// Limit of one try, in milliseconds.
    pub timeout_ms: u64,
}

/// One request of a batch: its id, headers and parameters (whose values travel as blobs).
#[derive(Debug, Serialize)]
pub struct RequestMeta<'a> {
    pub id: &'a str,
    pub headers: &'a [(String, String)],
    /// Run the request through the workers' fused workflow segment, not the handler alone.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub segment: bool,
    pub params: Vec<ParamMeta<'a>>,
}

/// A body, form field or multipart part: its value in the frame's blob `blob`, or a small
/// JSON value in the header itself as `json`.
#[derive(Debug, Serialize)]
pub struct ParamMeta<'a> {
    pub name: &'a str,
    pub content_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blob: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json: Option<&'a RawValue>,
}

/// The largest JSON parameter that travels inside the frame header.
const INLINE_JSON_MAX: usize = 64 * 1024;

impl<'a> ParamMeta<'a> {
    /// The entry of `param`. With `inline_json` (the worker decodes parameters), an
    /// `application/json` value of up to 64 KiB that parses goes in the header, where the
    /// worker's one parse of the header gives the value its own parse of the blob would; any
    /// other value is pushed to `blobs`.
    pub fn new(param: &'a Param, inline_json: bool, blobs: &mut Vec<&'a Bytes>) -> Self {
        let json = (inline_json
            && param.value.len() <= INLINE_JSON_MAX
            && param.content_type.as_deref().is_some_and(is_json))
        .then(|| serde_json::from_slice(&param.value).ok())
        .flatten();
        let blob = json.is_none().then(|| {
            blobs.push(&param.value);
            blobs.len() - 1
        });
        Self {
            name: &param.name,
            content_type: param.content_type.as_deref(),
            blob,
            json,
        }
    }
}

/// Whether a content type is `application/json` (in any case, with any parameters), which the
/// worker parses.
pub fn is_json(content_type: &str) -> bool {
    let mime = content_type.split(';').next().unwrap_or_default();
    mime.trim().eq_ignore_ascii_case("application/json")
}

/// Messages from a worker to the server: one JSON object whose `kind` says which it is.
#[derive(Debug, Deserialize)]
#[serde(try_from = "WireReply")]
pub enum FromWorker {
    Loaded {
        pid: Option<u32>,
        /// What the handler recorded in `context.metrics` while it loaded.
        #[serde(default)]
        metrics: Vec<HandlerSample>,
    },
    /// Partial results a streaming handler sent before its final `predicted`.
    Intermediate { responses: Vec<ResponseMeta> },
    Predicted {
        responses: Vec<ResponseMeta>,
        /// Microseconds from the worker calling the handler to its reply being ready: TorchServe's
        /// `PredictionTime`, which the time since the batch was sent overstates when it was sent
        /// ahead of the worker finishing the one before.
        prediction_us: u64,
        /// What the handler recorded in `context.metrics` during the batch.
        #[serde(default)]
        metrics: Vec<HandlerSample>,
    },
    Error {
        status: Option<u16>,
        #[serde(rename = "type")]
        error_type: Option<String>,
        message: String,
        /// What the handler recorded in `context.metrics` before it failed.
        #[serde(default)]
        metrics: Vec<HandlerSample>,
    },
}

/// The kinds of [`FromWorker`].
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ReplyKind {
    Loaded,
    Intermediate,
    Predicted,
    Error,
}

/// A worker's message as it is on the wire: every field any kind has. It is read in one pass
/// and then checked into a [`FromWorker`]; serde's internally tagged enums would first copy
/// the whole message into a buffer of its own, which cost more than the rest of a reply.
#[derive(Deserialize)]
struct WireReply {
    kind: ReplyKind,
    pid: Option<u32>,
    #[serde(default)]
    metrics: Vec<HandlerSample>,
    responses: Option<Vec<ResponseMeta>>,
    prediction_us: Option<u64>,
    status: Option<u16>,
    #[serde(rename = "type")]
    error_type: Option<String>,
    message: Option<String>,
}

impl TryFrom<WireReply> for FromWorker {
    type Error = String;

    fn try_from(wire: WireReply) -> Result<Self, String> {
        let kind = wire.kind;
        fn field<T>(value: Option<T>, name: &str, kind: ReplyKind) -> Result<T, String> {
            value.ok_or_else(|| format!("missing field `{name}` in a {kind:?} message"))
        }
        Ok(match kind {
            ReplyKind::Loaded => Self::Loaded {
                pid: wire.pid,
                metrics: wire.metrics,
            },
            ReplyKind::Intermediate => Self::Intermediate {
                responses: field(wire.responses, "responses", kind)?,
            },
            ReplyKind::Predicted => Self::Predicted {
                responses: field(wire.responses, "responses", kind)?,
                prediction_us: field(wire.prediction_us, "prediction_us", kind)?,
                metrics: wire.metrics,
            },
            ReplyKind::Error => Self::Error {
                status: wire.status,
                error_type: wire.error_type,
                message: field(wire.message, "message", kind)?,
                metrics: wire.metrics,
            },
        })
    }
}

/// One handler output; `blob` indexes the frame's blobs. `index`, the request's place in the
/// batch, is given in `intermediate` replies (in `predicted` the place is the position).
#[derive(Debug, Deserialize)]
pub struct ResponseMeta {
    pub index: Option<usize>,
    pub status: Option<u16>,
    pub content_type: Option<String>,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    pub blob: usize,
    /// What a fused segment did for this request; only segment workers send it.
    pub trace: Option<Box<SegmentTrace>>,
}

/// The account of one request through a fused segment of workflow function nodes.
#[derive(Debug, Clone, Deserialize)]
pub struct SegmentTrace {
    /// Per node that ran, in segment order: microseconds spent over all its tries, and its
    /// retries. When `failed` is set, the last of them is the node that failed.
    pub nodes: Vec<(u64, usize)>,
    pub failed: Option<SegmentFailure>,
}

/// Why a node of a segment failed its last try. The response's status is the handler's
/// status or the exception's; with no `message`, the handler answered that status with the
/// response body.
#[derive(Debug, Clone, Deserialize)]
pub struct SegmentFailure {
    pub message: Option<String>,
}

/// Frames up to this size go out in one write, so the worker wakes up once for them.
const GATHER_LIMIT: usize = 64 * 1024;

/// How much of a frame one read asks for at first: a small frame then takes one system call.
const READ_AHEAD: usize = 4 * 1024;

/// Writes one frame: length, header length, JSON header, blobs.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    out: &mut W,
    header: &impl Serialize,
    blobs: &[&Bytes],
) -> std::io::Result<()> {
    let (head, gathered) = frame_head(header, blobs, &SharedFields::default())?;
    out.write_all(&head).await?;
    if !gathered {
        for blob in blobs {
            out.write_all(blob).await?;
        }
    }
    out.flush().await
}

/// The start of a frame of `blobs` but those at the indices `fields.shared` (ascending),
/// which travel in shared memory: lengths and JSON header (with the non-empty `fields` added),
/// followed by the other blobs when the frame is small enough to go out in one write (then
/// `true`).
pub(super) fn frame_head(
    header: &impl Serialize,
    blobs: &[&Bytes],
    fields: &SharedFields<'_>,
) -> std::io::Result<(Vec<u8>, bool)> {
    let mut header = serde_json::to_vec(header)?;
    let extra = serde_json::to_vec(fields)?;
    if extra.len() > 2 {
        if header.pop() != Some(b'}') {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a frame header is not a JSON object",
            ));
        }
        if header.last() != Some(&b'{') {
            header.push(b',');
        }
        header.extend_from_slice(&extra[1..]);
    }
    let shared = fields.shared;
    let all: usize = blobs.iter().map(|b| b.len()).sum();
    let in_memory: usize = shared.iter().map(|&i| blobs[i].len()).sum();
    if 4 + header.len() + all > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "frame too large",
        ));
    }
    let total = 4 + header.len() + all - in_memory;
    let gather = total <= GATHER_LIMIT;
    let mut head = Vec::with_capacity(if gather { 4 + total } else { 8 + header.len() });
    head.extend_from_slice(&(total as u32).to_be_bytes());
    head.extend_from_slice(&(header.len() as u32).to_be_bytes());
    head.extend_from_slice(&header);
    if gather {
        for blob in inline_blobs(blobs, shared) {
            head.extend_from_slice(blob);
        }
    }
    Ok((head, gather))
}

/// The blobs that travel in the frame itself: all but those at the indices `shared`.
pub(super) fn inline_blobs<'a>(
    blobs: &'a [&'a Bytes],
    shared: &'a [usize],
) -> impl Iterator<Item = &'a Bytes> {
    let mut shared = shared.iter().peekable();
    blobs
        .iter()
        .enumerate()
        .filter(move |(i, _)| shared.next_if_eq(&i).is_none())
        .map(|(_, blob)| *blob)
}

/// A frame header's account of its blobs: the length of each, which of them (ascending
/// indices) are in shared memory, laid end to end from the start of the sender's `region`, and
/// that region's size when the frame brings its descriptor.
#[derive(Deserialize)]
struct Layout {
    #[serde(default)]
    blobs: Vec<usize>,
    #[serde(default)]
    shared: Vec<usize>,
    region: Option<u32>,
    region_size: Option<usize>,
}

impl Layout {
    /// Bytes of the shared blobs.
    fn shared_len(&self) -> std::io::Result<usize> {
        self.shared.iter().try_fold(0usize, |sum, &i| {
            self.blobs
                .get(i)
                .and_then(|len| sum.checked_add(*len))
                .filter(|&sum| sum <= MAX_FRAME)
                .ok_or_else(|| invalid(format!("bad shared blob indices {:?}", self.shared)))
        })
    }
}

/// A received frame: its JSON header and its blobs, which share one buffer, and the blobs
/// that came in shared memory, copied out of it.
#[derive(Debug)]
pub struct Frame {
    pub header: Bytes,
    pub blobs: Bytes,
    pub shared: Bytes,
}

impl Frame {
    /// Parses the header as `T`.
    pub fn message<T: for<'de> Deserialize<'de>>(&self) -> std::io::Result<T> {
        serde_json::from_slice(&self.header).map_err(|e| invalid(format!("bad header: {e}")))
    }

    /// Splits the blob section and the shared memory by the header's `blobs` lengths and
    /// `shared` indices, without copying.
    pub fn split_blobs(&self) -> std::io::Result<Vec<Bytes>> {
        let layout: Layout = self.message()?;
        let mut shared = layout.shared.iter().peekable();
        let (mut inline_at, mut shared_at) = (0, 0);
        let mut out = Vec::with_capacity(layout.blobs.len());
        for (i, len) in layout.blobs.iter().enumerate() {
            let (source, offset) = match shared.next_if_eq(&&i) {
                Some(_) => (&self.shared, &mut shared_at),
                None => (&self.blobs, &mut inline_at),
            };
            let end = *offset + len;
            if end > source.len() {
                return Err(invalid("blob lengths exceed the frame".into()));
            }
            out.push(source.slice(*offset..end));
            *offset = end;
        }
        if shared.next().is_some() {
            return Err(invalid(format!(
                "bad shared blob indices {:?}",
                layout.shared
            )));
        }
        Ok(out)
    }
}

/// A stream frames are read from, which may also bring descriptors (a worker's socket).
pub trait FrameInput: AsyncRead + Unpin {
    /// How many descriptors came and wait for their frames.
    fn pending_descriptors(&self) -> usize {
        0
    }

    /// The oldest descriptor that came and that no frame has taken.
    fn take_descriptor(&mut self) -> Option<OwnedFd> {
        None
    }
}

impl FrameInput for tokio::net::UnixStream {}

impl FrameInput for tokio::io::DuplexStream {}

impl<T: FrameInput + ?Sized> FrameInput for &mut T {
    fn pending_descriptors(&self) -> usize {
        (**self).pending_descriptors()
    }

    fn take_descriptor(&mut self) -> Option<OwnedFd> {
        (**self).take_descriptor()
    }
}

/// The most descriptors that may wait for their frames: a frame brings at most one, and the
/// frames read ahead of the one read are few.
const MAX_PENDING_DESCRIPTORS: usize = 8;

/// Reads one frame off a lock-step exchange (one message, one reply): `UnexpectedEof` when
/// the peer closed the socket, and an error if more bytes than the frame came.
pub async fn read_frame<R: FrameInput>(input: &mut R) -> std::io::Result<Frame> {
    let mut reader = FrameReader::new(input);
    let frame = reader.next().await?;
    if !reader.buffer.is_empty() {
        return Err(invalid("bytes after the end of a frame".into()));
    }
    Ok(frame)
}

/// Reads frames off a stream that may carry several back to back (a streaming handler's
/// chunks, a reply while the next batch is already sent): bytes read past the end of one
/// frame stay for the next. [`FrameReader::next`] is cancel safe: what it has read stays in
/// the reader when its future is dropped.
pub struct FrameReader<R> {
    input: R,
    buffer: BytesMut,
    /// The peer's shared-memory regions.
    regions: ReplyRegions,
}

impl<R: FrameInput> FrameReader<R> {
    pub fn new(input: R) -> Self {
        Self {
            input,
            buffer: BytesMut::new(),
            regions: ReplyRegions::default(),
        }
    }

    /// The peer's regions that frames were copied out of since the last call, which the next
    /// frame to the peer frees (`freed`).
    pub fn take_freed(&mut self) -> Vec<u32> {
        self.regions.take_freed()
    }

    /// Reads the next frame; `UnexpectedEof` when the peer closed the socket.
    pub async fn next(&mut self) -> std::io::Result<Frame> {
        self.fill(4, READ_AHEAD).await?;
        let total = u32::from_be_bytes(self.buffer[..4].try_into().expect("4 bytes")) as usize;
        if !(4..=MAX_FRAME).contains(&total) {
            return Err(invalid(format!("bad frame length {total}")));
        }
        self.fill(4 + total, 0).await?;
        let mut buf = self.buffer.split_to(4 + total).freeze().split_off(4);
        let header_len = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
        if header_len > total - 4 {
            return Err(invalid(format!("bad header length {header_len}")));
        }
        let mut header = buf.split_off(4);
        let blobs = header.split_off(header_len);
        let mut frame = Frame {
            header,
            blobs,
            shared: Bytes::new(),
        };
        // A frame's descriptor comes with its first bytes, and only a frame with shared blobs
        // has any: look for them only in a header that may name them.
        if self.input.pending_descriptors() > MAX_PENDING_DESCRIPTORS {
            return Err(invalid("descriptors came that no frame claims".into()));
        }
        if frame.header.windows(8).any(|w| w == b"\"shared\"") {
            let layout: Layout = frame.message()?;
            if !layout.shared.is_empty() {
                let len = layout.shared_len()?;
                let region = layout
                    .region
                    .ok_or_else(|| invalid("shared blobs without a region".into()))?;
                if let Some(size) = layout.region_size {
                    let fd = self.input.take_descriptor().ok_or_else(|| {
                        invalid(format!("region {region} came without its descriptor"))
                    })?;
                    self.regions.map(region, fd, size)?;
                }
                frame.shared = self.regions.copy_out(region, len)?;
            }
        }
        Ok(frame)
    }

    /// Reads until the buffer holds `len` bytes, asking for `ahead` more in a read when the
    /// buffer has to grow anyway (a small frame then takes one system call).
    async fn fill(&mut self, len: usize, ahead: usize) -> std::io::Result<()> {
        if self.buffer.len() < len {
            self.buffer.reserve(len.max(ahead) - self.buffer.len());
        }
        while self.buffer.len() < len {
            if self.input.read_buf(&mut self.buffer).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(())
    }
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frame_round_trip() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let blobs = [Bytes::from_static(b"hello"), Bytes::from_static(b"")];
        let header = serde_json::json!({"kind": "x", "blobs": [5, 0]});
        write_frame(&mut a, &header, &[&blobs[0], &blobs[1]])
            .await
            .unwrap();
        let frame = read_frame(&mut b).await.unwrap();
        let parsed: serde_json::Value = frame.message().unwrap();
        assert_eq!(parsed["kind"], "x");
        let got = frame.split_blobs().unwrap();
        assert_eq!(got, blobs);
    }

    #[tokio::test]
    async fn frames_large_and_small_arrive_whole() {
        let (mut a, mut b) = tokio::io::duplex(1 << 10);
        let big = Bytes::from(vec![7u8; 3 * GATHER_LIMIT]);
        let small = Bytes::from_static(b"x");
        let writer = tokio::spawn(async move {
            for blob in [&big, &small] {
                let header = serde_json::json!({"blobs": [blob.len()]});
                write_frame(&mut a, &header, &[blob]).await.unwrap();
            }
            big
        });
        let first = read_frame(&mut b).await.unwrap();
        let second = read_frame(&mut b).await.unwrap();
        let big = writer.await.unwrap();
        assert_eq!(first.split_blobs().unwrap(), [big]);
        assert_eq!(second.split_blobs().unwrap(), [Bytes::from_static(b"x")]);
    }

    #[tokio::test]
    async fn a_frame_reader_keeps_bytes_of_the_next_frame() {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        for text in ["one", "two", "three"] {
            let blob = Bytes::from(text);
            write_frame(
                &mut a,
                &serde_json::json!({"blobs": [blob.len()]}),
                &[&blob],
            )
            .await
            .unwrap();
        }
        drop(a);
        let mut reader = FrameReader::new(b);
        for text in ["one", "two", "three"] {
            let frame = reader.next().await.unwrap();
            assert_eq!(frame.split_blobs().unwrap(), [Bytes::from(text)]);
        }
        let end = reader.next().await.unwrap_err();
        assert_eq!(end.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn refuses_bytes_after_a_frame_and_a_closed_socket() {
        let (mut a, mut b) = tokio::io::duplex(1 << 10);
        a.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 9]).await.unwrap();
        let error = read_frame(&mut b).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
        drop(a);
        let (_, mut closed) = tokio::io::duplex(8);
        let error = read_frame(&mut closed).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn rejects_lying_blob_lengths() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let header = serde_json::json!({"blobs": [100]});
        write_frame(&mut a, &header, &[&Bytes::from_static(b"abc")])
            .await
            .unwrap();
        let frame = read_frame(&mut b).await.unwrap();
        assert!(frame.split_blobs().is_err());
    }

    #[test]
    fn small_json_params_travel_in_the_header() {
        let param = |content_type: &str, value: &str| Param {
            name: "body".into(),
            content_type: Some(content_type.into()),
            value: Bytes::from(value.to_string()),
        };
        let header = |p: &Param, decode: bool| {
            let mut blobs = Vec::new();
            let meta = serde_json::to_value(ParamMeta::new(p, decode, &mut blobs)).unwrap();
            (meta, blobs.len())
        };
        let json = param("Application/JSON; charset=utf-8", r#" {"a": [1, 2.5]} "#);
        let (meta, blobs) = header(&json, true);
        assert_eq!(
            (&meta["json"], blobs),
            (&serde_json::json!({"a": [1, 2.5]}), 0)
        );
        assert!(meta.get("blob").is_none());
        // Raw parameters, other types, JSON that does not parse and large values stay blobs.
        let large = format!("[{}1]", "1,".repeat(INLINE_JSON_MAX / 2));
        for (p, decode) in [
            (&json, false),
            (&param("text/plain", "[1]"), true),
            (&param("application/json", "{bad"), true),
            (&param("application/json", "NaN"), true),
            (&param("application/json", &large), true),
        ] {
            let (meta, blobs) = header(p, decode);
            assert_eq!(
                (meta.get("json"), &meta["blob"], blobs),
                (None, &serde_json::json!(0), 1)
            );
        }
    }

    #[test]
    fn replies_parse_by_kind_and_name_a_missing_field() {
        let parse = |text: &str| serde_json::from_str::<FromWorker>(text);
        let predicted = parse(
            r#"{"kind":"predicted","prediction_us":7,"blobs":[1],
                "responses":[{"status":200,"content_type":"text/plain","blob":0}]}"#,
        )
        .unwrap();
        assert!(matches!(
            predicted,
            FromWorker::Predicted { ref responses, prediction_us: 7, ref metrics }
                if responses.len() == 1 && responses[0].blob == 0 && metrics.is_empty()
        ));
        let error = parse(r#"{"kind":"error","status":507,"type":"E","message":"m"}"#).unwrap();
        assert!(matches!(
            error,
            FromWorker::Error { status: Some(507), ref message, .. } if message == "m"
        ));
        assert!(matches!(
            parse(r#"{"kind":"loaded","pid":3}"#).unwrap(),
            FromWorker::Loaded { pid: Some(3), .. }
        ));
        let missing = parse(r#"{"kind":"predicted","responses":[]}"#).unwrap_err();
        assert!(missing
            .to_string()
            .contains("missing field `prediction_us` in a Predicted message"));
        assert!(parse(r#"{"kind":"bogus"}"#).is_err());
    }
}
