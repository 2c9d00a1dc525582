"""Inputs that pass a check and then break a worker, end to end on one server: JSON nested past
the server's depth limit (a body, a KServe v2 `parameters` member) is refused with a 400 before
it reaches a worker (of a model or a workflow), whose pid stays the same while a concurrent
client is served; KServe data
that does not fit its shape or datatype, or a v1 body without a list of instances, is a 400 from
the server (REST and gRPC); a 6 MiB binary tensor reaches the worker as bytes, without the
server's memory growing by a JSON value per element."""

import json
import threading

import numpy as np
import pytest
import requests

from support.api import assert_error, describe
from support.archives import archive, scale_mar, war, write_files
from support.processes import PeakMemory
from support.server import OPEN_FLAGS

tritonclient_grpc = pytest.importorskip("tritonclient.grpc")

#: What the server documents as its limit (docs/security.md).
MAX_JSON_DEPTH = 128

#: A handler behind KServe's v2 envelope: per input tensor, the sum and count of its elements.
TENSOR_STATS = '''
import numpy as np


def handle(data, context):
    if data is None:
        return None
    return [[float(np.sum(np.asarray(t["data"], dtype=np.float64))), int(np.size(t["data"]))]
            for t in data]
'''


@pytest.fixture(scope="module")
def server(start_module_server, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("limits")
    store = workdir / "store"
    store.mkdir()
    scale_mar(store, "double", 2.0)
    write_files(workdir / "src", {"stats.py": TENSOR_STATS})
    archive("model", "--model-name", "stats", "--handler", str(workdir / "src" / "stats.py"),
            "--export-path", str(store), "-f")
    return start_module_server({"default_workers_per_model": 1},
                               args=(*OPEN_FLAGS, "--ncs", "--models",
                                     "double=double.mar", "stats=stats.mar"),
                               store=store, workdir=workdir)


def deep(n):
    return "[" * n + "1" + "]" * n


def worker_pid(server, model):
    return describe(server, model)["workers"][0]["pid"]


def test_deep_json_is_refused_before_a_worker_and_a_concurrent_client_is_served(server):
    url = f"{server.inference}/predictions/double"
    pid = worker_pid(server, "double")
    answers, stop = [], threading.Event()

    def good_client():
        value = 0
        while not stop.is_set():
            value += 1
            answer = requests.post(url, data=str(value), headers={"content-type": "text/plain"})
            answers.append((value, answer.status_code, answer.text))

    clients = [threading.Thread(target=good_client) for _ in range(2)]
    for client in clients:
        client.start()
    try:
        for _ in range(20):
            answer = requests.post(url, data=deep(5000),
                                   headers={"content-type": "application/json"})
            body = assert_error(answer, 400, "BadRequestException")
            assert f"nested deeper than {MAX_JSON_DEPTH} levels" in body["message"]
    finally:
        stop.set()
        for client in clients:
            client.join()
    assert answers and all(status == 200 and float(text) == 2.0 * value
                           for value, status, text in answers), answers[:5]
    assert worker_pid(server, "double") == pid
    # At the limit, the value goes through (and the handler, not the server, judges it).
    at_limit = requests.post(url, data=deep(MAX_JSON_DEPTH - 1),
                             headers={"content-type": "application/json"})
    assert at_limit.status_code != 400 or "nested deeper" not in at_limit.text
    assert worker_pid(server, "double") == pid


def test_deep_json_in_v2_parameters_is_refused(server):
    pid = worker_pid(server, "stats")
    body = ('{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1],'
            f' "parameters": {{"p": {deep(5000)}}}}}]}}')
    answer = requests.post(f"{server.inference}/v2/models/stats/infer", data=body,
                           headers={"content-type": "application/json"})
    assert_error(answer, 400, "BadRequestException")
    assert "nested deeper" in answer.json()["message"]
    ok = requests.post(f"{server.inference}/v2/models/stats/infer",
                       json={"inputs": [{"name": "x", "shape": [2], "datatype": "FP32",
                                         "data": [1, 2], "parameters": {"p": [[1]]}}]})
    assert ok.status_code == 200, ok.text
    assert ok.json()["outputs"][0]["data"] == [3.0, 2]
    assert worker_pid(server, "stats") == pid


ECHO_FUNCTIONS = """
def pre(data, context):
    return None if data is None else [row.get("data") or row.get("body") for row in data]


def post(data, context):
    return None if data is None else [row.get("body") for row in data]
"""


def test_deep_json_to_a_workflow_is_refused(server):
    war(server.store, "echo_wf", "dag:\n  pre: [post]\n", ECHO_FUNCTIONS)
    registered = requests.post(f"{server.management}/workflows", params={"url": "echo_wf.war"})
    assert registered.status_code == 200, registered.text
    url = f"{server.inference}/wfpredict/echo_wf"
    answer = requests.post(url, data=deep(5000), headers={"content-type": "application/json"})
    assert_error(answer, 400, "BadRequestException")
    assert "nested deeper" in answer.json()["message"]
    fine = requests.post(url, json=[[1]])
    assert (fine.status_code, fine.json()) == (200, [[1]])


def v2(data, shape, datatype):
    return {"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data}]}


@pytest.mark.parametrize("body, message", [
    (v2([[1, 2, 3], [4]], [2, 2], "INT64"), "The data of input x is ragged"),
    (v2([[[1], [2]], [[3], [4]]], [2, 2], "INT64"),
     "is nested as [2, 2, 1], which is neither flat nor its shape [2, 2]"),
    (v2([300], [1], "UINT8"), "Input x holds integers out of the range of UINT8 (0 to 255)"),
    (v2([-129], [1], "INT8"), "out of the range of INT8 (-128 to 127)"),
])
def test_v2_data_that_does_not_fit_is_a_400_from_the_server(server, body, message):
    pid = worker_pid(server, "stats")
    answer = requests.post(f"{server.inference}/v2/models/stats/infer", json=body)
    assert_error(answer, 400, "BadRequestException")
    assert message in answer.json()["message"]
    assert answer.json()["error"] == answer.json()["message"]
    assert worker_pid(server, "stats") == pid


@pytest.mark.parametrize("body", [{"instances": 5}, {"instances": {"a": 1}}, {"inputs": [1]}])
def test_v1_instances_must_be_a_list(server, body):
    answer = requests.post(f"{server.inference}/v1/models/stats:predict", json=body)
    assert_error(answer, 400, "BadRequestException")
    assert answer.json()["message"] == 'Invalid v1 inference request: "instances" must be a list'


def test_grpc_typed_contents_out_of_range_are_invalid(server):
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with grpc.insecure_channel(server.grpc_inference) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        tensor = service_pb2.ModelInferRequest.InferInputTensor(
            name="x", datatype="UINT8", shape=[1],
            contents=service_pb2.InferTensorContents(uint_contents=[300]))
        with pytest.raises(grpc.RpcError) as error:
            stub.ModelInfer(service_pb2.ModelInferRequest(model_name="stats", inputs=[tensor]))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "out of the range of UINT8" in error.value.details()
        tensor.contents.uint_contents[:] = [255]
        answer = stub.ModelInfer(service_pb2.ModelInferRequest(model_name="stats",
                                                               inputs=[tensor]))
        assert answer.outputs[0].name == "x"


def test_a_6_mib_binary_tensor_reaches_the_worker_as_bytes(server):
    rng = np.random.default_rng(7)
    tensor = rng.integers(0, 256, size=(6, 1 << 20), dtype=np.uint8)
    head = json.dumps({"inputs": [{"name": "x", "shape": list(tensor.shape),
                                   "datatype": "UINT8",
                                   "parameters": {"binary_data_size": tensor.nbytes}}]}).encode()
    # Through gRPC's raw contents, then REST's binary extension.
    from tritonclient.grpc import InferInput, InferenceServerClient

    client = InferenceServerClient(server.grpc_inference)
    grpc_input = InferInput("x", list(tensor.shape), "UINT8")
    grpc_input.set_data_from_numpy(tensor)
    with PeakMemory(server.process.pid) as grpc:
        result = client.infer("stats", [grpc_input])
    assert result.as_numpy("x").tolist() == [float(tensor.sum()), tensor.size]
    print(f"server peak RSS grew by {grpc.grown_mib:.1f} MiB for a 6 MiB tensor over gRPC")
    # A JSON value per byte cost about 250 MiB; the bytes themselves are a few copies of 6 MiB.
    assert grpc.grown_mib < 48, grpc.grown_mib
    with PeakMemory(server.process.pid) as rest:
        answer = requests.post(f"{server.inference}/v2/models/stats/infer",
                               data=head + tensor.tobytes(),
                               headers={"inference-header-content-length": str(len(head)),
                                        "content-type": "application/octet-stream"})
    assert answer.status_code == 200, answer.text[:500]
    assert answer.json()["outputs"][0]["data"] == [float(tensor.sum()), tensor.size]
    print(f"server peak RSS grew by {rest.grown_mib:.1f} MiB for a 6 MiB tensor over REST")
    assert rest.grown_mib < 48, rest.grown_mib


@pytest.mark.parametrize("datatype, dtype", [("FP16", np.float16), ("INT16", np.int16),
                                             ("BOOL", np.bool_), ("FP64", np.float64)])
def test_binary_tensors_keep_their_values(server, datatype, dtype):
    tensor = (np.arange(-6, 6).reshape(3, 4) * 1.5).astype(dtype)
    head = json.dumps({"inputs": [{"name": "x", "shape": [3, 4], "datatype": datatype,
                                   "parameters": {"binary_data_size": tensor.nbytes}}]}).encode()
    answer = requests.post(f"{server.inference}/v2/models/stats/infer",
                           data=head + tensor.tobytes(),
                           headers={"inference-header-content-length": str(len(head))})
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [float(tensor.astype(np.float64).sum()), 12]
    wrong = head.replace(b'"shape": [3, 4]', b'"shape": [4, 4]')
    refused = requests.post(f"{server.inference}/v2/models/stats/infer",
                            data=wrong + tensor.tobytes(),
                            headers={"inference-header-content-length": str(len(wrong))})
    assert_error(refused, 400, "BadRequestException")
    assert "12 elements of binary data, but its shape [4,4] holds 16" in refused.json()["message"]


@pytest.mark.parametrize("param, value", [("response_timeout", "10000000000000000000"),
                                          ("response_timeout", "2147483648"),
                                          ("startup_timeout", "18446744073709551615"),
                                          ("max_batch_delay", "18446744073709551615")])
def test_times_beyond_torchserves_range_are_a_400_and_the_server_goes_on(server, param, value):
    """A time that fits no deadline (TorchServe reads them as Java ints) is refused at
    registration; it used to panic the model's supervisor, hanging its requests."""
    answer = requests.post(f"{server.management}/models",
                           params={"url": "double.mar", "model_name": f"huge_{param}",
                                   param: value, "synchronous": "true"})
    body = assert_error(answer, 400, "BadRequestException")
    assert param in body["message"] and "2147483647" in body["message"]
    assert requests.get(f"{server.management}/models/huge_{param}").status_code == 404
    answer = requests.post(f"{server.inference}/predictions/double", data="2",
                           headers={"content-type": "text/plain"})
    assert answer.status_code == 200 and float(answer.text) == 4.0
