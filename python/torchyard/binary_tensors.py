"""KServe v2 binary tensors as the server passes them (docs/protocol.md): the request's JSON
leaves out the `data` of such an input, whose little-endian bytes come as the parameter
`x-torchyard-tensor-<index of the input>`. The `kservev2` envelope reads them with numpy into
the nested list a JSON `data` of that shape would give."""

from __future__ import annotations

from typing import Any, Optional

#: The name of the parameter holding input `i`'s bytes is this prefix and `i`.
PARAM_PREFIX = "x-torchyard-tensor-"

#: numpy's dtype of each datatype's little-endian elements.
_DTYPES = {
    "BOOL": "?", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
    "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
    "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
}


def data(row: dict, index: int, tensor: dict) -> Optional[Any]:
    """The `data` of input `index` (`tensor`, its JSON) from its bytes in the request's
    parameters `row`, shaped as the tensor says; None when it has none there."""
    raw = row.get(f"{PARAM_PREFIX}{index}")
    if raw is None:
        return None
    import numpy as np

    array = np.frombuffer(raw, dtype=_DTYPES[tensor["datatype"]])
    return array.reshape(tuple(tensor["shape"])).tolist()
