"""Decoding request parameters for handlers and encoding handler outputs for the wire."""

import json

_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"
_BINARY = "application/octet-stream"


def decode(value: memoryview, content_type):
    """A parameter as TorchServe hands it to handlers: JSON parsed, text as str, else bytearray."""
    if content_type:
        mime = content_type.split(";", 1)[0].strip().lower()
        if mime == _JSON:
            try:
                return json.loads(bytes(value))
            except ValueError:
                return bytearray(value)
        if mime.startswith("text/"):
            charset = "utf-8"
            for part in content_type.split(";")[1:]:
                key, _, val = part.strip().partition("=")
                if key.lower() == "charset" and val:
                    charset = val.strip('"')
            try:
                return bytes(value).decode(charset)
            except (LookupError, UnicodeDecodeError):
                return bytearray(value)
    return bytearray(value)


def _jsonable(obj):
    """Turns tensors, numpy arrays and numpy scalars into plain Python values."""
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return tolist()
    item = getattr(obj, "item", None)
    if callable(item):
        return item()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def encode(output):
    """Returns (bytes-like, content type) for one handler output."""
    if isinstance(output, (bytes, bytearray, memoryview)):
        return output, _BINARY
    if isinstance(output, str):
        return output.encode("utf-8"), _TEXT
    return json.dumps(output, default=_jsonable).encode("utf-8"), _JSON
