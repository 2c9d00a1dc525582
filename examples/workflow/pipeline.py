"""Function nodes of the example workflow: parse the request, then combine both models' answers."""

import json


def _text(value):
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8")
    return value if isinstance(value, str) else json.dumps(value)


def preprocess(data, context):
    """Turns each request's number (body or form field `data`) into the models' input."""
    if data is None:
        return None
    return [str(float(_text(row.get("data") or row.get("body")))) for row in data]


def aggregate(data, context):
    """Combines the `double` and `triple` nodes' outputs into one JSON answer."""
    if data is None:
        return None
    out = []
    for row in data:
        double = float(_text(row["double"]))
        triple = float(_text(row["triple"]))
        out.append({"double": double, "triple": triple, "sum": double + triple})
    return out
