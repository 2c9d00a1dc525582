"""TorchServe's own `ts` package, when it is installed in the workers' Python, sends a streaming
handler's partial results by encoding them as its backend's predict-response frame
(`create_predict_response(..., ts_stream_next=True)`) and writing it to `context.cl_socket`.
`FrameSocket` is that socket: it decodes the frame and hands each request's bytes on as
torchyard's partial results."""

from __future__ import annotations

import struct
from typing import Any, Iterator, List, Tuple

from .codec import Encoded

#: The response header TorchServe's package sets on a partial result to mark its stream as
#: going on; torchyard's frames say so by their kind instead.
STREAM_NEXT = "ts_stream_next"

_INT = struct.Struct("!i")

#: One request's part of a frame: request id, content type, status, reason phrase, headers,
#: body.
Part = Tuple[str, str, int, str, List[Tuple[str, str]], bytes]


class _Reader:
    """Reads the big-endian ints and length-prefixed fields of a frame."""

    def __init__(self, data: Any):
        self.data = memoryview(data).cast("B")
        self.at = 0

    def int(self) -> int:
        if self.at + 4 > len(self.data):
            raise ValueError("TorchServe response frame ends early")
        (value,) = _INT.unpack_from(self.data, self.at)
        self.at += 4
        return value

    def bytes(self) -> bytes:
        return self.take(self.int())

    def take(self, length: int) -> bytes:
        if length < 0 or self.at + length > len(self.data):
            raise ValueError(f"TorchServe response frame has a bad field length {length}")
        value = bytes(self.data[self.at:self.at + length])
        self.at += length
        return value

    def text(self) -> str:
        return self.bytes().decode("utf-8")


def decode_predict_response(data: Any) -> Iterator[Part]:
    """The requests' parts of a frame `create_predict_response` of TorchServe's
    `ts.protocol.otf_message_handler` encoded with a context: batch code and message, then per
    request its id, content type, status, phrase, headers and body, up to a length of -1."""
    reader = _Reader(data)
    reader.int()  # the batch's code: TorchServe's handlers pass 200; the statuses that
    reader.text()  # count, and the message, are per request
    while True:
        length = reader.int()
        if length == -1:
            return
        request_id = reader.take(length).decode("utf-8")
        content_type = reader.text()
        status = reader.int()
        phrase = reader.text()
        headers = [(reader.text(), reader.text()) for _ in range(reader.int())]
        yield request_id, content_type, status, phrase, headers, reader.bytes()


class FrameSocket:
    """`context.cl_socket`: takes the frames TorchServe's `send_intermediate_predict_response`
    writes and sends each request's body as its partial result, with the status the frame
    gives it and the content type and headers the handler set on the context (which the frame
    copies) but for `ts_stream_next`. A body goes as TorchServe encoded it (JSON indented by 2,
    `torch.save` for tensors) and has no content type unless the handler set one, as in
    TorchServe."""

    def __init__(self, context: Any):
        self._context = context

    def sendall(self, data: Any) -> None:
        context = self._context
        places = {request_id: idx for idx, request_id in (context.request_ids or {}).items()}
        outputs = {}
        req_id_map = {}
        for request_id, _, status, phrase, _, body in decode_predict_response(data):
            idx = places.get(request_id)
            if idx is None:
                raise ValueError(f"a partial result for request {request_id!r}, which is not "
                                 "in the batch being served")
            processor = context.request_processor[idx]
            processor.report_status(status, phrase or None)
            processor.get_response_headers().pop(STREAM_NEXT, None)
            outputs[idx] = Encoded(body)
            req_id_map[idx] = request_id
        context.send_intermediate_response(outputs, req_id_map)
