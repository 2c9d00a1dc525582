"""Handler of the example models (double, triple): a number per request in, the TorchScript
model's output out. A request's number is its form field `data` or its body (text, bytes or JSON),
or, behind KServe's v2 envelope, the one element of an input tensor's `data`."""

import json
import os
import warnings

import torch

warnings.filterwarnings("ignore", category=FutureWarning)

_model = None


def _number(row):
    value = row.get("data")
    if value is None:
        value = row.get("body")
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8")
    if isinstance(value, str):
        value = json.loads(value)
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    return float(value)


def handle(data, context):
    """Loads the model when called with None, then scales each request's number."""
    global _model
    if data is None:
        model_dir = context.system_properties["model_dir"]
        serialized = context.manifest["model"]["serializedFile"]
        _model = torch.jit.load(os.path.join(model_dir, serialized), map_location="cpu")
        return None
    batch = torch.tensor([_number(row) for row in data], dtype=torch.float32)
    with torch.inference_mode():
        return _model(batch).tolist()
