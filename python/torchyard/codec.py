"""Decoding request parameters for handlers and encoding handler outputs for the wire."""

from __future__ import annotations

import json
from json.decoder import WHITESPACE
from typing import Any, Optional, Tuple, Union

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
BINARY = "application/octet-stream"

Blob = Union[bytes, bytearray, memoryview]


class Encoded(bytes):
    """A body TorchServe's own package already encoded: sent as it is, with no content type of
    its own (TorchServe's frontend sends none unless the handler set one)."""


def decode(value: bytearray, content_type: Optional[str]) -> Any:
    """A parameter as TorchServe hands it to handlers: `application/json` parsed (the raw
    bytearray if it does not parse), `text/*` as str (in its `charset`, UTF-8 by default; the raw
    bytearray if it does not decode), anything else, or no content type, the bytearray itself."""
    if not content_type:
        return value
    mime, _, params = content_type.partition(";")
    mime = mime.strip().lower()
    try:
        if mime == JSON:
            return _json(value)
        if mime.startswith("text/"):
            return value.decode(_charset(params))
    except (ValueError, LookupError):  # bad JSON or text (UnicodeDecodeError), unknown charset
        pass
    return value


_DECODER = json.JSONDecoder()
_SKIP_WHITESPACE = WHITESPACE.match


def _json(value: Blob) -> Any:
    """`json.loads(value)`, with less overhead for the usual body: UTF-8 starting with `{` or `[`
    (json.loads would read it as UTF-8 too) is decoded and scanned directly; anything else (a
    BOM, UTF-16 or -32, leading whitespace, a scalar) goes through json.loads."""
    if not value.startswith((b"{", b"[")) or (len(value) > 1 and not value[1]):
        return json.loads(value)
    text = value.decode("utf-8", "surrogatepass")
    obj, end = _DECODER.raw_decode(text)
    if end != len(text) and _SKIP_WHITESPACE(text, end).end() != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return obj


def _charset(params: str) -> str:
    for param in params.split(";"):
        key, _, val = param.partition("=")
        if key.strip().lower() == "charset" and val.strip():
            return val.strip().strip('"')
    return "utf-8"


def encode(output: Any) -> Tuple[Blob, Optional[str]]:
    """(body, content type) of one handler output: str as UTF-8 text, bytes-like as is, anything
    else as JSON, with numpy arrays and scalars and torch tensors turned into plain values;
    `Encoded` bodies as they are, with no content type."""
    if isinstance(output, Encoded):
        return output, None
    if isinstance(output, str):
        return output.encode("utf-8"), TEXT
    if isinstance(output, (bytes, bytearray)):
        return output, BINARY
    if isinstance(output, memoryview):
        return (output if output.c_contiguous else output.tobytes()), BINARY
    return _ENCODER.encode(output).encode("utf-8"), JSON


def _plain(obj: Any) -> Any:
    """JSON fallback: `tolist()` (arrays, tensors, numpy scalars) or `item()`, found by duck
    typing so that numpy and torch are never imported here."""
    for method in ("tolist", "item"):
        convert = getattr(obj, method, None)
        if callable(convert):
            return convert()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


#: `json.dumps(output, default=_plain)` without making an encoder per call, as dumps does
#: whenever it is given an argument.
_ENCODER = json.JSONEncoder(default=_plain)
