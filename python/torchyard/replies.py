"""Replies to the server (docs/protocol.md): errors, and the response entry of one handler
output."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

from .codec import Blob, encode
from .context import RequestProcessor

Reply = Tuple[dict, Sequence[Blob]]


def error_reply(message: str, status: int = 500, error_type: str = "PredictionException") -> Reply:
    """An `error` message."""
    return {"kind": "error", "status": status, "type": error_type, "message": message}, ()


def exception_status(exc: BaseException) -> Tuple[int, str]:
    """(status, message) of a handler exception: an `error_code` attribute holding an HTTP
    error status (TorchServe's PredictionException) is the status, a `MemoryError` is 507
    (Insufficient Storage, as in TorchServe), anything else 500."""
    status = getattr(exc, "error_code", None)
    if isinstance(exc, MemoryError):
        status = 507
    elif not (isinstance(status, int) and 400 <= status <= 599):
        status = 500
    return status, f"{type(exc).__name__}: {exc}"


def exception_reply(exc: BaseException, error_type: str) -> Reply:
    """An `error` for a handler exception, its status as `exception_status` says."""
    status, message = exception_status(exc)
    return error_reply(message, status, error_type)


def outputs_problem(outputs: Any, count: int) -> Optional[str]:
    """Why `outputs` is not a handler's answer to a batch of `count` requests, or None."""
    if not isinstance(outputs, (list, tuple)):
        return (f"handler returned {type(outputs).__name__}, not a list of outputs for a batch "
                f"of {count} requests")
    if len(outputs) != count:
        return f"handler returned {len(outputs)} outputs for a batch of {count} requests"
    return None


def response_entry(idx: int, output: Any, processor: RequestProcessor) -> Tuple[dict, Blob]:
    """The protocol response entry and body of request `idx`."""
    body, content_type = encode(output)
    status = processor.get_response_status_code()
    if not isinstance(status, int) or not 100 <= status <= 599:
        raise ValueError(f"invalid response status {status!r} set for request {idx}")
    phrase = processor.get_response_status_phrase()
    response = {"status": status, "reason": str(phrase) if phrase else None,
                "content_type": content_type, "blob": idx}
    headers = []
    for key, value in processor.get_response_headers().items():
        if str(key).lower() == "content-type":
            response["content_type"] = str(value)
        else:
            headers.append([str(key), str(value)])
    if headers:
        response["headers"] = headers
    return response, body
