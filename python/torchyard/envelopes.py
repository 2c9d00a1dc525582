"""TorchServe's request envelopes (ts/torch_handler/request_envelope/): `body`, `json`,
`kserve` and `kservev2`. A request names its envelope in the `x-torchyard-envelope` header (the
server sets it on requests arriving through a KServe front door); one that names none gets the
model's `service_envelope`, if the server has one (docs/kserve.md).

An envelope unwraps a request into the items the handler sees (body: the request's body;
json and v1: the `instances`; v2: the `inputs`, each `data` reshaped to its `shape` (a binary
tensor's read from its bytes, binary_tensors.py), a BYTES input's `data` its first element) and wraps the handler's outputs back (body: as they are;
json: the JSON text of `{"predictions": ...}`; v1: `{"predictions": ...}` or
`{"explanations": ...}`; v2: one output tensor per item, named after its input, datatype from
numpy's dtype). The items of the requests of a batch are handed to the handler together; each
request gets back as many outputs as it gave items (a batch of one request gets them all, as in
TorchServe). `;input` after the name unwraps only: the entry node of a workflow, whose answer
the server wraps. `;raw` after `kservev2` (a model's request on KServe's v2 routes) lets the
worker answer the handler's outputs as they are when the server can wrap them itself, as it then
does, the same way: every output a finite number or boolean, or a non-empty flat list of one kind
of them.
"""

from __future__ import annotations

import json
import math
from base64 import b64decode
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import binary_tensors

#: The request header naming a request's envelope.
HEADER = "x-torchyard-envelope"

_DATATYPE_TO_NUMPY = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32",
    "UINT64": "uint64", "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64", "BYTES": "byte",
}
_NUMPY_TO_DATATYPE = {v: k for k, v in _DATATYPE_TO_NUMPY.items()}
_NUMPY_TO_DATATYPE["object"] = "BYTES"
_NUMPY_TO_DATATYPE["U"] = "BYTES"


class Unwrapped:
    """One enveloped request: its envelope, its items and what wrapping its answer needs."""

    __slots__ = ("kind", "wraps", "raw", "items", "input_names", "request_id", "explain")

    def __init__(self, kind: str, mode: str, items: List[Any], input_names: List[str],
                 request_id: Optional[str], explain: bool):
        self.kind = kind
        self.wraps = mode != "input"
        #: The server wraps the outputs it can (`;raw`).
        self.raw = mode == "raw"
        self.items = items
        self.input_names = input_names
        self.request_id = request_id
        self.explain = explain


#: Envelopes under which each request is one item and gets one output, as without envelope.
_ONE_ITEM = (None, "body")


def envelope_of(headers: Dict[str, str], default: Optional[str] = None
                ) -> Optional[Tuple[str, str, bool]]:
    """(envelope name, mode: "", "input" or "raw", whether it asks for an explanation) of a
    request with `headers` (as its context holds them), its envelope being `default` when it
    names none; None when it has none."""
    named = headers.get(HEADER, default)
    if named is None:
        return None
    kind, _, mode = named.partition(";")
    return kind.strip(), mode.strip(), headers.get("explain") == "True"


def _body(row: dict) -> Any:
    data = row.get("data") or row.get("body")
    if isinstance(data, (bytes, bytearray)):
        data = json.loads(data.decode("utf-8"))
    return data


def unwrap(kind: str, mode: str, explain: bool, request: dict, row: dict) -> Unwrapped:
    """The items of one request's parameters `row` under envelope `kind`."""
    if kind == "body":
        return Unwrapped(kind, mode, [row.get("data") or row.get("body")], [], None, explain)
    body = _body(row)
    if kind == "kserve":
        return Unwrapped(kind, mode, body.get("instances"), [], None, explain)
    if kind == "json":
        return Unwrapped(kind, mode, _json_instances(body), [], None, explain)
    if kind != "kservev2":
        raise ValueError(f"unknown envelope {kind!r}")
    inputs = body["inputs"]
    names = []
    for index, tensor in enumerate(inputs):
        binary = binary_tensors.data(row, index, tensor)
        if binary is not None:
            tensor["data"] = binary
            names.append(tensor["name"])
            continue
        data = tensor["data"]
        if tensor["datatype"] == "BYTES":
            tensor["data"] = data[0]
        elif not (len(tensor["shape"]) == 1 and _flat_type(data)):  # else reshaping keeps it
            import numpy as np

            tensor["data"] = np.array(data).reshape(tuple(tensor["shape"])).tolist()
        names.append(tensor["name"])
    request_id = body.get("id")
    if not (request_id and request_id.strip()):
        request_id = request.get("id")
    return Unwrapped(kind, mode, inputs, names, request_id, explain)


def _json_instances(body: dict) -> List[Any]:
    """The `instances` of a `json` envelope's request, `{"b64": ...}` values decoded (as
    TorchServe's JSONEnvelope does, for whole instances and for their fields)."""
    rows = body["instances"]
    if not (rows and isinstance(rows[0], dict)):
        return rows
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            continue
        if list(row) == ["b64"]:
            rows[i] = b64decode(row["b64"])
            continue
        for column, value in row.items():
            if isinstance(value, dict) and list(value) == ["b64"]:
                row[column] = b64decode(value["b64"])
    return rows


def wrap(unwrapped: Unwrapped, outputs: Any, manifest: dict) -> Any:
    """One request's answer from the handler's outputs for its items."""
    if not unwrapped.wraps or unwrapped.kind == "body" or not outputs:
        return outputs
    if unwrapped.kind == "json":
        return json.dumps({"predictions": outputs})
    if unwrapped.kind == "kserve":
        return {"explanations" if unwrapped.explain else "predictions": outputs}
    if unwrapped.raw and _server_wraps(outputs):
        return outputs
    model = (manifest or {}).get("model", {})
    return {
        "id": unwrapped.request_id,
        "model_name": model.get("modelName"),
        "model_version": model.get("modelVersion"),
        "outputs": [_tensor(item, _name(unwrapped.input_names, i))
                    for i, item in enumerate(outputs)],
    }


def _name(names: Sequence[str], index: int) -> str:
    return names[index] if index < len(names) else f"output-{index}"


#: The datatype numpy gives a flat list of one Python type, as it converts it.
_FLAT_DATATYPE = {bool: "BOOL", int: "INT64", float: "FP64"}


def _flat_type(data: Any) -> Optional[type]:
    """bool, int or float when `data` is a non-empty list of elements of that one type (numpy
    keeps such a list as it is), else None."""
    if type(data) is not list or not data:
        return None
    first = type(data[0])
    if first not in _FLAT_DATATYPE:
        return None
    for x in data:
        if type(x) is not first:
            return None
    return first


#: The integers the server reads as such (JSON integers beyond them it reads as floats).
_INT_RANGE = (-(1 << 63), 1 << 64)


def _server_wraps(outputs: Sequence[Any]) -> bool:
    """Whether the server wraps `outputs` as `_tensor` would without numpy: each a finite float,
    an int the server reads as one, a bool, or a non-empty flat list of one of these kinds."""
    low, high = _INT_RANGE
    for item in outputs:
        kind = type(item)
        if kind is bool:
            continue
        if kind is float:
            if not math.isfinite(item):
                return False
            continue
        if kind is int:
            if not low <= item < high:
                return False
            continue
        kind = _flat_type(item)
        if kind is float:
            if not math.isfinite(sum(item)):  # a NaN or infinity (or an overflowing sum)
                return False
        elif kind is int:
            if not (low <= min(item) and max(item) < high):
                return False
        elif kind is not bool:
            return False
    return True


def _tensor(data: Any, name: str) -> dict:
    if type(data) in _FLAT_DATATYPE:
        data = [data]
    flat = _flat_type(data)
    if flat is not None:  # what numpy would answer, without numpy
        return {"name": name, "datatype": _FLAT_DATATYPE[flat], "data": data,
                "shape": [len(data)]}
    import numpy as np

    array = np.array(data).flatten()
    dtype = str(array.dtype)
    datatype = _NUMPY_TO_DATATYPE.get(dtype) or _NUMPY_TO_DATATYPE[array.dtype.kind]
    return {"name": name, "datatype": datatype, "data": array.tolist(),
            "shape": list(array.shape)}


def split(outputs: Sequence[Any], unwrapped: Sequence[Optional[Unwrapped]]) -> List[Any]:
    """The handler's outputs for the joined items, cut back into one answer per request (a
    request without envelope or under `body` gave one item and gets one output)."""
    counts = [1 if u is None or u.kind in _ONE_ITEM else len(u.items or ()) for u in unwrapped]
    if len(outputs) != sum(counts):
        raise ValueError(f"handler returned {len(outputs)} outputs for {sum(counts)} items "
                         f"of a batch of {len(counts)} enveloped requests")
    answers, at = [], 0
    for u, count in zip(unwrapped, counts):
        if u is None or u.kind in _ONE_ITEM:
            answers.append(outputs[at])
        else:
            answers.append(outputs[at:at + count])
        at += count
    return answers


#: What the handler is called on (None: it is not called, no request having items) and what
#: turns its outputs into the batch's answers.
Plan = Tuple[Optional[List[Any]], Callable[[Any], Any]]


def plan(requests: Sequence[dict], data: List[dict], context: Any,
         default: Optional[str] = None) -> Plan:
    """How a batch goes through its envelopes, a request that names none having `default`: the
    handler gets the bodies as they are when no request is enveloped (under `body`, the bodies),
    else the joined items of the requests, its outputs cut and wrapped per request. Separate
    from the call, so that an async worker can await the handler in between. (One loop, not a
    comprehension per step: this runs for every batch of a KServe route.)"""
    unwrapped: List[Optional[Unwrapped]] = []
    wraps = False
    for request, row, processor in zip(requests, data, context.request_processor):
        kind = envelope_of(processor.get_request_properties(), default)
        if kind is None:
            unwrapped.append(None)
            continue
        u = unwrap(*kind, request, row)
        wraps = wraps or u.kind not in _ONE_ITEM
        unwrapped.append(u)
    if len(unwrapped) == 1:  # the batch of one: the handler gets that request's items as they are
        u = unwrapped[0]
        if u is None:
            return data, _as_is
        if not wraps:
            return u.items, _as_is
        return u.items or None, lambda outputs: [wrap(u, outputs, context.manifest)]
    items: List[Any] = []
    for u, row in zip(unwrapped, data):
        if u is None:
            items.append(row)
        elif u.items:
            items.extend(u.items)
    if not wraps:
        return items, _as_is

    def finish(outputs: Any) -> List[Any]:
        answers = [outputs] if outputs is None else split(outputs, unwrapped)
        manifest = context.manifest
        return [a if u is None else wrap(u, a, manifest) for u, a in zip(unwrapped, answers)]

    return items or None, finish


def _as_is(outputs: Any) -> Any:
    return outputs


def call(entry: Callable[[Any, Any], Any], requests: Sequence[dict], data: List[dict],
         context: Any, default: Optional[str] = None) -> Any:
    """The handler `entry`'s outputs for a batch, through its requests' envelopes (`plan`)."""
    items, finish = plan(requests, data, context, default)
    return finish(None if items is None else entry(items, context))
