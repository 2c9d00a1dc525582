"""TorchServe's `service_envelope` (docs/kserve.md): every request to a model that names no
envelope of its own, `/predictions` and `/explanations` included, goes through the configured
envelope, as TorchServe's model loader wraps the handler in it. Each envelope is checked on a
real server (`kservev2` from config.properties, `kserve` from `TS_SERVICE_ENVELOPE`, `body` and
`json`) around an unmodified TorchServe-style handler, against TorchServe's own envelope class
around the same computation."""

import base64
import json

import pytest
import requests

from support.archives import archive, write_files
from support.envelopes import (needs_ts_reference, scaler_envelope, start_scaler_server,
                               torchserve_envelope)

V2_BODY = {"id": "req-7", "inputs": [
    {"name": "a", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]},
    {"name": "b", "shape": [3], "datatype": "INT64", "data": [5, 6, 7]}]}
V1_BODY = {"instances": [{"data": [1.0, 2.0]}, {"data": [0.5]}]}

#: A function handler that answers what it got, bytes as text.
ECHO = """
def plain(value):
    if isinstance(value, (bytes, bytearray)):
        return value.decode()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def handle(data, context):
    return [plain(row) for row in data] if data else None
"""


@pytest.fixture(scope="module")
def kservev2(start_module_server, tmp_path_factory):
    return start_scaler_server(start_module_server, tmp_path_factory.mktemp("store"),
                               {"service_envelope": "kservev2"})


@pytest.fixture(scope="module")
def kserve(start_module_server, tmp_path_factory):
    # KServe's runtime sets TS_SERVICE_ENVELOPE; its config.properties enables TS_* variables.
    return start_scaler_server(start_module_server, tmp_path_factory.mktemp("store"),
                               {"enable_envvars_config": "true"},
                               env={"TS_SERVICE_ENVELOPE": "kserve"})


@pytest.fixture(scope="module", params=["body", "json"])
def echo(request, start_module_server, tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    write_files(store.parent / "src", {"echo.py": ECHO})
    archive("model", "--model-name", "echo", "--handler",
            f"{store.parent / 'src' / 'echo.py'}:handle", "--export-path", str(store))
    server = start_module_server(store=store, properties={"load_models": "echo.mar", "default_workers_per_model": 1,
                                                          "service_envelope": request.param})
    return request.param, server


@needs_ts_reference
def test_kservev2_envelope_on_predictions(kservev2):
    expected = json.loads(json.dumps(scaler_envelope("kservev2", V2_BODY)))
    for path in ("/predictions/scaler", "/predictions/scaler/2.0", "/v2/models/scaler/infer"):
        answer = requests.post(f"{kservev2.inference}{path}", json=V2_BODY)
        assert answer.status_code == 200, (path, answer.text)
        assert answer.json() == expected, path
    # KServe's routes keep their protocol's envelope, whatever service_envelope says.
    v1 = requests.post(f"{kservev2.inference}/v1/models/scaler:predict", json=V1_BODY)
    assert v1.json() == scaler_envelope("kserve", V1_BODY)


def test_workflow_nodes_get_no_service_envelope(kservev2):
    # The model node `scale` gets what `pre` answers, not a v2 request: it would fail under
    # the kservev2 envelope.
    body = {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}]}
    answer = requests.post(f"{kservev2.inference}/v2/models/flow/infer", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [3.0, 6.0]


@needs_ts_reference
def test_kserve_envelope_from_the_environment(kserve):
    for path, explain in (("/predictions/scaler", False), ("/explanations/scaler", True)):
        answer = requests.post(f"{kserve.inference}{path}", json=V1_BODY)
        assert answer.status_code == 200, (path, answer.text)
        assert answer.json() == scaler_envelope("kserve", V1_BODY, explain), path


@needs_ts_reference
def test_body_and_json_envelopes(echo):
    name, server = echo
    hi = base64.b64encode(b"hi").decode()
    body = {"instances": [{"b64": hi}, {"text": {"b64": hi}, "n": 1}]}
    answer = requests.post(f"{server.inference}/predictions/echo", json=body)
    assert answer.status_code == 200, answer.text

    echo_module = {}
    exec(ECHO, echo_module)  # the same handler, around TorchServe's envelope
    expected = torchserve_envelope(name, {"body": body}, echo_module["handle"])
    # body: the handler gets the decoded body itself (no {"body": ...} row around it);
    # json: its instances, b64 values decoded, answered as the text {"predictions": [...]}.
    assert answer.json() == (expected if name == "body" else json.loads(expected))
