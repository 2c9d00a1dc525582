"""Replies to the server (docs/protocol.md): errors, and the response entry of one handler
output."""

from __future__ import annotations

import logging
import traceback
from typing import Any, Dict, Optional, Sequence, Tuple

from .codec import Blob, encode
from .context import Context as RequestContext, RequestProcessor
from .continuous import mark_continuing

log = logging.getLogger("torchyard.worker")

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


def encode_outputs(outputs: Any, context: RequestContext, count: int, continuous: bool) -> Reply:
    """The `predicted` reply to a batch of `count` from the handler's outputs; with
    continuous batching, each response says whether its request goes on."""
    problem = outputs_problem(outputs, count)
    if problem:
        return error_reply(problem)
    responses, bodies = [], []
    try:
        if continuous:
            mark_continuing(context, outputs)
        for idx, output in enumerate(outputs):
            response, body = response_entry(idx, output, context.request_processor[idx])
            responses.append(response)
            bodies.append(body)
    except Exception as exc:  # noqa: BLE001 - an unserialisable output fails its batch
        log.error("cannot encode the handler's output:\n%s", traceback.format_exc())
        return exception_reply(exc, "PredictionException")
    return {"kind": "predicted", "responses": responses}, bodies


def intermediate_frame(context: RequestContext, batch: Sequence[dict], outputs: Sequence[Any],
                       req_id_map: Dict[int, str],
                       traces: Optional[Dict[int, dict]] = None) -> Reply:
    """The `intermediate` frame of partial results `outputs` for the requests of `req_id_map`
    (batch indices of the handler's `context`), in a frame for `batch`."""
    processors = context.request_processor
    ids = context.request_ids
    whole = len(processors) == len(batch)
    places = None if whole else {r["id"]: i for i, r in enumerate(batch)}
    responses, bodies = [], []
    for idx in req_id_map:
        if not isinstance(idx, int) or not 0 <= idx < len(processors):
            raise ValueError(f"no request {idx!r} in a batch of {len(processors)}")
        response, body = response_entry(idx, outputs[idx], processors[idx])
        index = idx if places is None else places[ids[idx]]
        responses.append({**response, "index": index, "blob": len(bodies)})
        if traces and idx in traces:
            responses[-1]["trace"] = traces[idx]
        bodies.append(body)
    return {"kind": "intermediate", "responses": responses}, bodies
