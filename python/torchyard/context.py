"""The `context` handlers receive, with the surface of TorchServe's `ts.context.Context`."""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .metrics import Metrics
from .ts_frames import FrameSocket


class RequestProcessor:
    """One request of a batch: its headers, and the status and headers of its response."""

    def __init__(self, headers: Sequence[Sequence[str]] = ()):
        self._request_headers = {name.lower(): value for name, value in headers}
        if len(self._request_headers) != len(headers):  # a repeated header: rare
            joined: Dict[str, str] = {}
            for name, value in headers:
                key = name.lower()
                previous = joined.get(key)
                joined[key] = value if previous is None else f"{previous}, {value}"
            self._request_headers = joined
        self._status_code = 200
        self._reason_phrase: Optional[str] = None
        self._response_headers: Dict[str, str] = {}

    def get_request_property(self, key: str) -> Optional[str]:
        """The request header `key` (case-insensitive); repeated headers are joined by ", "."""
        return self._request_headers.get(key.lower())

    def get_request_properties(self) -> Dict[str, str]:
        """All request headers, names in lower case."""
        return self._request_headers

    def report_status(self, code: int, reason_phrase: Optional[str] = None) -> None:
        """Sets the response status and reason phrase."""
        self._status_code = code
        self._reason_phrase = reason_phrase

    def get_response_status_code(self) -> int:
        return self._status_code

    def get_response_status_phrase(self) -> Optional[str]:
        return self._reason_phrase

    def add_response_property(self, key: str, value: str) -> None:
        """Sets a response header."""
        self._response_headers[key] = value

    def get_response_headers(self) -> Dict[str, str]:
        return self._response_headers

    def get_response_header(self, key: str) -> Optional[str]:
        return self._response_headers.get(key)


class Context:
    """What a handler knows about its model (fixed at load) and about the batch it is serving
    (request ids and headers in, per-request response status and headers out).

    The positional parameters are those of TorchServe's Context."""

    def __init__(self, model_name: str, model_dir: str, manifest: Optional[dict],
                 batch_size: int, gpu: Optional[int], server_version: str,
                 limit_max_image_pixels: bool = True, metrics: Optional[Metrics] = None,
                 model_yaml_config: Optional[dict] = None, server_name: str = "torchyard"):
        self.model_name = model_name
        self.manifest = manifest
        self.model_yaml_config = model_yaml_config if model_yaml_config is not None else {}
        self._system_properties = {
            "model_dir": model_dir,
            "gpu_id": gpu,
            "batch_size": batch_size,
            "server_name": server_name,
            "server_version": server_version,
            "limit_max_image_pixels": limit_max_image_pixels,
        }
        self.metrics = metrics if metrics is not None else Metrics(model_name)
        self.request_ids: Dict[int, str] = {}
        self.request_processor: List[RequestProcessor] = []
        #: Sends partial results `(outputs, req_id_map)` to the server; the worker sets it.
        self.intermediate_sink: Optional[Callable[[Sequence[Any], Dict[int, str]], None]] = None
        #: Continuous batching: per batch index, a callable that gets the request's output of
        #: a step and answers False while the request goes on (TorchServe's name).
        self.stopping_criteria: Optional[Sequence[Callable[[Any], Optional[bool]]]] = None
        #: Where TorchServe's own `send_intermediate_predict_response` writes partial results.
        self.cl_socket = FrameSocket(self)
        #: The request headers of a stateful model's sequences (TorchServe's names and
        #: environment variables): its id, and "true" on its first and its last request.
        self.header_key_sequence_id = os.getenv("TS_REQUEST_SEQUENCE_ID", "ts_request_sequence_id")
        self.header_key_sequence_start = os.getenv("TS_REQUEST_SEQUENCE_START",
                                                   "ts_request_sequence_start")
        self.header_key_sequence_end = os.getenv("TS_REQUEST_SEQUENCE_END",
                                                 "ts_request_sequence_end")

    @property
    def system_properties(self) -> Dict[str, Any]:
        """model_dir, gpu_id, batch_size, server_name, server_version, limit_max_image_pixels."""
        return self._system_properties

    def start_batch(self, requests: Sequence[dict]) -> None:
        """Takes a batch of protocol request entries; resets every response to 200."""
        self.request_ids = {idx: r["id"] for idx, r in enumerate(requests)}
        self.metrics.request_ids = self.request_ids
        self.request_processor = [RequestProcessor(r.get("headers", ())) for r in requests]

    def get_request_id(self, idx: int = 0) -> Optional[str]:
        return self.request_ids.get(idx)

    def get_request_header(self, idx: int, key: str) -> Optional[str]:
        """Request `idx`'s header `key` (case-insensitive), or None."""
        return self.request_processor[idx].get_request_property(key)

    def get_sequence_id(self, idx: int) -> Optional[str]:
        """The sequence id of request `idx` of a stateful model (`sequenceBatching`)."""
        return self.get_request_header(idx, self.header_key_sequence_id)

    def get_all_request_header(self, idx: int) -> Dict[str, str]:
        return self.request_processor[idx].get_request_properties()

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.request_processor[idx].report_status(code, phrase)

    def set_all_response_status(self, code: int = 200, phrase: str = "") -> None:
        for processor in self.request_processor:
            processor.report_status(code, phrase)

    def get_response_status(self, idx: int = 0) -> Tuple[int, Optional[str]]:
        """(status code, reason phrase) of request `idx`'s response."""
        processor = self.request_processor[idx]
        return processor.get_response_status_code(), processor.get_response_status_phrase()

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.set_response_header(idx, "content-type", value)

    def get_response_content_type(self, idx: int) -> Optional[str]:
        return self.get_response_headers(idx).get("content-type")

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        self.request_processor[idx].add_response_property(key, value)

    def get_response_headers(self, idx: int) -> Dict[str, str]:
        return self.request_processor[idx].get_response_headers()

    def send_intermediate_response(self, outputs: Sequence[Any], req_id_map: Dict[int, str]) -> None:
        """Sends a partial result at once: `outputs[idx]` to request `idx` for each batch index
        of `req_id_map` (usually `request_ids`), with the status, content type and headers the
        handler set for it. The handler's return value is the last chunk."""
        if self.intermediate_sink is None:
            raise RuntimeError("partial results can only be sent while a batch is served")
        self.intermediate_sink(outputs, req_id_map)
