"""KServe's protocols (docs/kserve.md) with real clients: tritonclient's HTTP and gRPC clients
and the kserve SDK's REST (v1, v2) and gRPC clients call the Open Inference Protocol v2 for a
model (an unmodified TorchServe-style handler on a TorchScript model) and for a workflow; a v1
request goes as KServe's own test script sends it. The kserve SDK pins other grpcio/protobuf
versions than the venv, so scripts/setup.sh installs it into `.venv/kserve-ref` and its test
runs it in a subprocess with that folder first on the path.
Answers are compared with what TorchServe's `kserve`/`kservev2` envelopes (its `ts` package in
`.venv/torchserve-ref`) produce around the same computation; errors are checked for status and
JSON body."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests

from support.archives import archive, write_files
from support.envelopes import FACTOR, needs_ts_reference, scaler_envelope, start_scaler_server

tritonclient_http = pytest.importorskip("tritonclient.http")
tritonclient_grpc = pytest.importorskip("tritonclient.grpc")

KSERVE_SDK = Path(sys.prefix) / "kserve-ref"

@pytest.fixture(scope="module")
def server(start_module_server, tmp_path_factory):
    return start_scaler_server(start_module_server, tmp_path_factory.mktemp("store"))


V2_BODY = {"id": "req-1", "inputs": [
    {"name": "a", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]},
    {"name": "b", "shape": [3], "datatype": "INT64", "data": [5, 6, 7]}]}


#: Flat inputs, whose flat outputs the server wraps itself (the worker answers them raw).
V2_FLAT = {"inputs": [{"name": "a", "shape": [2], "datatype": "FP32", "data": [1.5, 2]},
                      {"name": "b", "shape": [1], "datatype": "INT64", "data": [3]}]}


@needs_ts_reference
def test_v2_rest_answers_as_torchserves_envelope(server):
    answer = requests.post(f"{server.inference}/v2/models/scaler/infer", json=V2_BODY)
    assert answer.status_code == 200, answer.text
    assert answer.json() == json.loads(json.dumps(scaler_envelope("kservev2", V2_BODY)))
    flat = requests.post(f"{server.inference}/v2/models/scaler/infer", json=V2_FLAT)
    expected = json.loads(json.dumps(scaler_envelope("kservev2", V2_FLAT)))
    # Without an id of its own the answer takes the request id, as TorchServe's does.
    expected["id"] = flat.headers["x-request-id"]
    assert flat.json() == expected
    versioned = requests.post(f"{server.inference}/v2/models/scaler/versions/2.0/infer",
                              json=V2_BODY)
    assert versioned.json() == answer.json()


@needs_ts_reference
def test_v1_as_kserves_test_script_sends_it(server):
    # kubernetes/kserve/tests/scripts/test_mnist.sh: curl -H "Content-Type: application/json"
    # .../v1/models/mnist:predict -d @mnist.json, a body of {"instances": [{"data": ...}]}.
    body = {"instances": [{"data": [1.0, 2.0]}, {"data": [0.5]}]}
    headers = {"Content-Type": "application/json"}
    for action, explain in [("predict", False), ("explain", True)]:
        answer = requests.post(f"{server.inference}/v1/models/scaler:{action}",
                               data=json.dumps(body), headers=headers)
        assert answer.status_code == 200, answer.text
        assert answer.json() == scaler_envelope("kserve", body, explain)
    status = requests.get(f"{server.inference}/v1/models/scaler")
    assert status.json() == {"name": "scaler", "ready": True}


def test_tritonclient_http_model_and_workflow(server):
    client = tritonclient_http.InferenceServerClient(server.inference.split("//")[1])
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("scaler") and client.is_model_ready("flow")
    assert client.get_server_metadata()["name"] == "torchyard"
    assert client.get_model_metadata("scaler")["versions"] == ["2.0"]
    flow = client.get_model_metadata("flow")
    assert [t["name"] for t in flow["inputs"]] == ["pre"]
    assert [t["name"] for t in flow["outputs"]] == ["scale"]

    data = np.array([[1.5, -2.0]], dtype=np.float32)
    tensor = tritonclient_http.InferInput("x", [1, 2], "FP32")
    tensor.set_data_from_numpy(data, binary_data=False)
    result = client.infer("scaler", [tensor], request_id="abc")
    assert result.get_response()["id"] == "abc"
    assert result.get_response()["model_version"] == "2.0"
    np.testing.assert_allclose(result.as_numpy("x"), (data * FACTOR).flatten())
    binary = tritonclient_http.InferInput("x", [1, 2], "FP32")
    binary.set_data_from_numpy(data)  # v2's binary tensor extension, tritonclient's default
    np.testing.assert_allclose(client.infer("scaler", [binary]).as_numpy("x"),
                               (data * FACTOR).flatten())

    result = client.infer("flow", [tensor])
    assert result.get_response()["model_name"] == "flow"
    output = result.get_response()["outputs"][0]
    assert (output["name"], output["shape"]) == ("scale", [1, 1, 2])
    np.testing.assert_allclose(result.as_numpy("scale").flatten(), (data * FACTOR).flatten())


def test_tritonclient_grpc_model_and_workflow(server):
    client = tritonclient_grpc.InferenceServerClient(server.grpc_inference)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("scaler") and client.is_model_ready("flow")
    metadata = client.get_model_metadata("flow", as_json=True)
    assert metadata["platform"] == "torchyard_workflow"

    data = np.array([1, 2, 3], dtype=np.int32)
    tensor = tritonclient_grpc.InferInput("n", [3], "INT32")
    tensor.set_data_from_numpy(data)  # raw_input_contents, as tritonclient sends tensors
    result = client.infer("scaler", [tensor], request_id="g1")
    assert result.get_response().id == "g1"
    np.testing.assert_allclose(result.as_numpy("n"), data * FACTOR)
    result = client.infer("flow", [tensor])
    np.testing.assert_allclose(result.as_numpy("scale").flatten(), data * FACTOR)

    with pytest.raises(tritonclient_grpc.InferenceServerException) as missing:
        client.infer("nope", [tensor])
    assert missing.value.status() == "StatusCode.NOT_FOUND"
    short = tritonclient_grpc.InferInput("n", [4], "INT32")
    short.set_data_from_numpy(np.array([1, 2, 3, 4], dtype=np.int32))
    short._get_tensor().shape[:] = [5]
    with pytest.raises(tritonclient_grpc.InferenceServerException) as bad:
        client.infer("scaler", [short])
    assert bad.value.status() == "StatusCode.INVALID_ARGUMENT"


#: Runs in a subprocess with the kserve SDK first on the path: its clients against the server,
#: printing what they got as JSON.
KSERVE_CLIENTS = """
import asyncio, json, sys
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.inference_client import InferenceGRPCClient


def request(model):
    tensor = InferInput("x", [2], "FP32")
    tensor.set_data_from_numpy(np.array([1, 2], dtype=np.float32))
    return InferRequest(model, [tensor], request_id="k1")


async def main(rest, grpc_url):
    out = {}
    v2 = InferenceRESTClient(RESTConfig(protocol="v2"))
    grpc = InferenceGRPCClient(grpc_url)
    for model in ("scaler", "flow"):
        answer = await v2.infer(rest, request(model), model_name=model)
        out["rest-" + model] = answer.outputs[0].as_numpy().flatten().tolist()
        answer = await grpc.infer(request(model))
        out["grpc-" + model] = answer.outputs[0].as_numpy().flatten().tolist()
    v1 = InferenceRESTClient(RESTConfig(protocol="v1"))
    out["v1"] = await v1.infer(rest, {"instances": [{"data": [1, 2]}]}, model_name="scaler")
    out["ready"] = await v2.is_model_ready(rest, "flow")
    print(json.dumps(out))


asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@pytest.mark.skipif(not KSERVE_SDK.is_dir(), reason="the kserve SDK (.venv/kserve-ref) absent")
def test_kserve_sdk_clients(server):
    env = {**os.environ, "PYTHONPATH": str(KSERVE_SDK)}
    run = subprocess.run([sys.executable, "-c", KSERVE_CLIENTS, server.inference,
                          server.grpc_inference], env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout.strip().splitlines()[-1])
    scaled = [1 * FACTOR, 2 * FACTOR]
    for key in ("rest-scaler", "grpc-scaler", "rest-flow", "grpc-flow"):
        assert got[key] == scaled, key
    assert got["v1"] == {"predictions": [scaled]}
    assert got["ready"] is True


@pytest.mark.parametrize("path, body, status, kind", [
    ("/v2/models/nope/infer", V2_BODY, 404, "ModelNotFoundException"),
    ("/v2/models/scaler/versions/9.9/infer", V2_BODY, 404, "ModelNotFoundException"),
    ("/v2/models/scaler/infer", {"inputs": [{"name": "a", "shape": [3], "datatype": "FP32",
                                             "data": [1, 2]}]}, 400, "BadRequestException"),
    ("/v2/models/scaler/infer", {"inputs": [{"name": "a", "shape": [1], "datatype": "FP128",
                                             "data": [1]}]}, 400, "BadRequestException"),
    ("/v2/models/scaler/infer", "{not json", 400, "BadRequestException"),
    ("/v1/models/scaler:predict", "[1,", 400, "BadRequestException"),
    ("/v1/models/nope:predict", {"instances": []}, 404, "ModelNotFoundException"),
    ("/v1/models/scaler:train", {"instances": []}, 404, "ResourceNotFoundException"),
])
def test_errors_are_json_with_the_right_status(server, path, body, status, kind):
    data = body if isinstance(body, str) else json.dumps(body)
    answer = requests.post(f"{server.inference}{path}", data=data,
                           headers={"Content-Type": "application/json"})
    assert answer.status_code == status, answer.text
    error = answer.json()
    assert (error["code"], error["type"]) == (status, kind)
    assert error["error"] == error["message"]  # KServe's clients read `error`


def test_health_and_readiness(server):
    assert requests.get(f"{server.inference}/v2/health/live").json() == {"live": True}
    assert requests.get(f"{server.inference}/v2/health/ready").json() == {"ready": True}
    ready = requests.get(f"{server.inference}/v2/models/flow/ready")
    assert ready.json() == {"name": "flow", "ready": True}
    assert requests.get(f"{server.inference}/v2/models/nope/ready").status_code == 404


HEADERS_HANDLER = """
def handle(data, context):
    if data is None:
        return None
    names = ("x-client", "explain", "x-torchyard-envelope")
    return [[str(context.get_request_header(0, n)) for n in names] for _ in data]
"""


def test_handlers_see_the_requests_http_headers(server, tmp_path):
    # As on TorchServe, a handler behind KServe's REST routes reads the request's HTTP headers
    # and `explain`; the envelope header is the server's alone, whatever a client sends.
    write_files(tmp_path, {"headers.py": HEADERS_HANDLER})
    archive("model", "--model-name", "headers", "--version", "1.0", "--handler",
            str(tmp_path / "headers.py"), "--export-path", str(server.store))
    registered = requests.post(f"{server.management}/models", params={
        "url": "headers.mar", "initial_workers": 1, "synchronous": "true"})
    assert registered.status_code == 200, registered.text
    sent = {"x-client": "yes", "x-torchyard-envelope": "body"}
    v2 = requests.post(f"{server.inference}/v2/models/headers/infer", headers=sent, json={
        "inputs": [{"name": "t", "shape": [1], "datatype": "INT64", "data": [1]}]})
    assert v2.status_code == 200, v2.text
    assert v2.json()["outputs"][0]["data"] == ["yes", "False", "kservev2;raw"]
    v1 = requests.post(f"{server.inference}/v1/models/headers:explain", headers=sent,
                       json={"instances": [1]})
    assert v1.json() == {"explanations": [["yes", "True", "kserve"]]}
    native = requests.post(f"{server.inference}/predictions/headers", headers=sent, data=b"1")
    assert native.json() == ["yes", "None", "None"]
