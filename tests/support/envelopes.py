"""TorchServe's request envelopes as a reference: its `ts` package (in `.venv/torchserve-ref`,
installed by scripts/setup.sh) wraps a handler function the way TorchServe's model loader does,
so a test can compare torchyard's answer with what TorchServe's envelope makes of the same
computation. Also the TorchServe-style handler the KServe tests serve, unchanged."""

import importlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import requests

from .archives import archive, torchscript_scale, war, write_files

TS_REFERENCE = Path(sys.prefix) / "torchserve-ref"

#: Marks a test that compares with TorchServe's envelopes.
needs_ts_reference = pytest.mark.skipif(not TS_REFERENCE.is_dir(),
                                        reason="TorchServe's ts package absent")

#: What the scaler's TorchScript model multiplies by.
FACTOR = 3.0

#: A handler written for TorchServe, unchanged: each item the envelope unwraps (a v2 input
#: tensor or a v1 instance) holds `data`, which the TorchScript model scales.
SCALER_HANDLER = """
import json

import torch
from ts.torch_handler.base_handler import BaseHandler


class Scaler(BaseHandler):
    def preprocess(self, data):
        rows = [row.get("data", row.get("body")) for row in data]
        return [torch.tensor(json.loads(r) if isinstance(r, (bytes, bytearray)) else r,
                             dtype=torch.float32) for r in rows]

    def inference(self, data, *args, **kwargs):
        with torch.inference_mode():
            return [self.model(x) for x in data]

    def postprocess(self, data):
        return [x.tolist() for x in data]

    def explain_handle(self, data_preprocess, raw_data):
        return [float(x.sum()) for x in data_preprocess]
"""

#: The class of each of TorchServe's envelopes, by the name `service_envelope` takes.
_CLASSES = {"body": "BodyEnvelope", "json": "JSONEnvelope", "kserve": "KServeEnvelope",
            "kservev2": "KServev2Envelope"}


class FakeContext:
    """What TorchServe's envelopes read of a context: the manifest, request id and headers."""

    def __init__(self, model, version, explain=False):
        self.manifest = {"model": {"modelName": model, "modelVersion": version}}
        self.explain = explain

    def get_request_id(self, idx=0):
        return "rid"

    def get_request_header(self, idx, name):
        return {"explain": "True" if self.explain else "False"}.get(name)


def torchserve_envelope(name, row, handle, explain=False, model=("scaler", "2.0")):
    """TorchServe's envelope `name` around the handler function `handle` on one request whose
    parameters are `row` (`{"body": ...}`, as TorchServe's worker decodes them): the answer."""
    sys.path.insert(0, str(TS_REFERENCE))
    try:
        module = importlib.import_module(f"ts.torch_handler.request_envelope.{name}")
    finally:
        sys.path.remove(str(TS_REFERENCE))
    envelope = getattr(module, _CLASSES[name])(handle)
    return envelope.handle([row], FakeContext(*model, explain))[0]


#: The workflow: `pre` (the entry, a function node) takes the unwrapped v2 inputs and answers
#: their data (one output per item, as under an envelope); the model node `scale` scales it.
WF_HANDLER = """
def pre(data, context):
    return [row["data"] for row in data] if data else None
"""
WF_SPEC = "models:\n  scale:\n    url: scaler.mar\ndag:\n  pre: [scale]\n"


def start_scaler_server(start, store, properties=(), env=None):
    """A server (from the factory `start`) on `store` with `scaler` 2.0 (SCALER_HANDLER on a
    TorchScript model scaling by FACTOR) loaded and the workflow `flow` (`pre` → `scale`)
    registered."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_files(tmp, {"scaler.py": SCALER_HANDLER})
        pt = torchscript_scale(tmp / "scaler.pt", FACTOR)
        archive("model", "--model-name", "scaler", "--version", "2.0", "--serialized-file",
                str(pt), "--handler", str(tmp / "scaler.py"), "--export-path", str(store))
    war(store, "flow", WF_SPEC, WF_HANDLER)
    server = start(store=store, properties={"load_models": "scaler.mar", **dict(properties)},
                   env=env)
    answer = requests.post(f"{server.management}/workflows", params={"url": "flow.war"})
    assert answer.status_code == 200, answer.text
    return server


def scaler_envelope(name, body, explain=False):
    """TorchServe's envelope `name` around the scaler's computation on the JSON `body`."""
    def handle(data, context):
        if explain:
            return [float(np.sum(row["data"])) for row in data]
        return [(np.array(row["data"], dtype=np.float32) * FACTOR).tolist() for row in data]

    return torchserve_envelope(name, {"body": json.dumps(body).encode()}, handle, explain)
