"""gRPC: TorchServe's own client (torchserve_grpc_client.py, with stubs generated from
TorchServe's protos as its documentation says) and stubs of torchyard's workflow proto
against one server with token authorization on, TorchServe's gRPC error codes, the model API
gate, and TLS."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support import grpc_stubs
from support.archives import scale_mar, war
from support.reference import REFERENCE
from support.server import PYTHON

grpc = pytest.importorskip("grpc")
pytest.importorskip("grpc_tools")
from google.protobuf import empty_pb2  # noqa: E402  (protobuf comes with grpcio-tools)

TS_CLIENT = REFERENCE / "ts_scripts" / "torchserve_grpc_client.py"
pytestmark = pytest.mark.skipif(not grpc_stubs.TS_PROTOS.is_dir() or not TS_CLIENT.is_file(),
                                reason="TorchServe's protos and client absent")

#: A function node that hands each request's `data` to the model node after it.
PRE = "def pre(data, context):\n    return [row.get('data') for row in data] if data else None\n"
SPEC = "models:\n  scale:\n    url: triple.mar\ndag:\n  pre: [scale]\n"
TOKEN_FAILED = "Token Authorization failed"


@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    """Python modules generated at test time: inference_pb2(_grpc) and management_pb2(_grpc)
    from TorchServe's protos, workflow_pb2(_grpc) from torchyard's."""
    out = tmp_path_factory.mktemp("stubs")
    yield out, grpc_stubs.generate(out)
    sys.path.remove(str(out))


@pytest.fixture(scope="module")
def server(start_module_server, tmp_path_factory):
    """Token authorization on (the default) and the model API enabled."""
    store = tmp_path_factory.mktemp("store")
    scale_mar(store, "double", 2.0)
    scale_mar(store, "triple", 3.0)
    war(store, "tripler", SPEC, PRE)
    return start_module_server(args=("--enable-model-api",), store=store)


def keys(server):
    return json.loads((server.workdir / "key_file.json").read_text())


def bearer(server, which):
    return (("authorization", f"Bearer {keys(server)[which]['key']}"),)


@pytest.fixture(scope="module")
def ts(server, stubs):
    """TorchServe's service stubs on the server, and the metadata each listener needs."""
    _, pb = stubs
    inference = pb["inference_pb2_grpc"].InferenceAPIsServiceStub(
        grpc.insecure_channel(server.grpc_inference))
    management = pb["management_pb2_grpc"].ManagementAPIsServiceStub(
        grpc.insecure_channel(server.grpc_management))
    return pb, inference, management, bearer(server, "inference"), bearer(server, "management")


def rpc_error(call, code, *contains):
    """Asserts `call()` fails with `code` and a description holding `contains`."""
    with pytest.raises(grpc.RpcError) as failure:
        call()
    assert failure.value.code() == code, failure.value.details()
    for text in contains:
        assert text in failure.value.details()
    return failure.value.details()


def test_torchserve_client_registers_infers_streams_and_unregisters(server, stubs, tmp_path):
    """TorchServe's own client script, as its gRPC documentation runs it, with the two
    addresses it has written in pointed at this server."""
    out, _ = stubs
    script = tmp_path / "torchserve_grpc_client.py"
    script.write_text(TS_CLIENT.read_text()
                      .replace("localhost:7070", server.grpc_inference)
                      .replace("localhost:7071", server.grpc_management))
    number = tmp_path / "number.txt"
    number.write_text("21")
    key = {which: keys(server)[which]["key"] for which in ("inference", "management")}

    def client(*args, key):
        done = subprocess.run([str(PYTHON), str(script), *args, "--auth-token", key],
                              capture_output=True, text=True, timeout=120,
                              env={"PYTHONPATH": str(out), "PATH": "/usr/bin:/bin"})
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    registered = client("register", "double", "double.mar", key=key["management"])
    assert "Model double registered successfully" in registered
    assert client("infer", "double", str(number), key=key["inference"]).strip() == "42.0"
    assert client("infer_stream", "double", str(number), key=key["inference"]).strip() == "42.0"
    assert "unregistered successfully" in client("unregister", "double", key=key["management"])
    failed = subprocess.run([str(PYTHON), str(script), "infer", "double", str(number)],
                            capture_output=True, text=True, timeout=60,
                            env={"PYTHONPATH": str(out), "PATH": "/usr/bin:/bin"})
    assert failed.returncode != 0


def test_management_and_inference_calls(ts):
    pb, inference, management, infer_key, manage_key = ts
    mp, ip = pb["management_pb2"], pb["inference_pb2"]
    health = inference.Ping(empty_pb2.Empty(), metadata=infer_key)
    assert json.loads(health.health) == {"status": "Healthy"}
    answer = management.RegisterModel(
        mp.RegisterModelRequest(url="triple.mar", model_name="triple", initial_workers=1,
                                synchronous=True), metadata=manage_key)
    assert answer.msg == 'Model "triple" Version: 1.0 registered with 1 initial workers'
    listed = json.loads(management.ListModels(mp.ListModelsRequest(), metadata=manage_key).msg)
    assert {"modelName": "triple", "modelUrl": "triple.mar"} in listed["models"]
    described = json.loads(management.DescribeModel(
        mp.DescribeModelRequest(model_name="triple"), metadata=manage_key).msg)
    assert described[0]["modelName"] == "triple" and described[0]["minWorkers"] == 1
    scaled = management.ScaleWorker(
        mp.ScaleWorkerRequest(model_name="triple", min_worker=2, synchronous=True),
        metadata=manage_key)
    assert scaled.msg == "Workers scaled to 2 for model: triple"
    assert management.SetDefault(mp.SetDefaultRequest(model_name="triple", model_version="1.0"),
                                 metadata=manage_key).msg.startswith("Default version")
    request = ip.PredictionsRequest(model_name="triple", input={"data": b"2"})
    assert inference.Predictions(request, metadata=infer_key).prediction == b"6.0"
    streamed = list(inference.StreamPredictions(request, metadata=infer_key))
    assert [r.prediction for r in streamed] == [b"6.0"]
    sequence = [ip.PredictionsRequest(model_name="triple", input={"data": str(n).encode()},
                                      sequence_id="seq-1") for n in (1, 2)]
    sequence.insert(1, ip.PredictionsRequest(model_name="nope", sequence_id="seq-1"))
    answers = list(inference.StreamPredictions2(iter(sequence), metadata=infer_key))
    assert [a.prediction for a in answers] == [b"3.0", b"", b"6.0"]
    assert all(a.sequence_id == "seq-1" for a in answers)
    assert answers[1].HasField("status") and not answers[0].HasField("status")
    assert answers[1].status.code == grpc.StatusCode.INTERNAL.value[0]
    assert "Model not found: nope" in answers[1].status.message
    unregistered = management.UnregisterModel(mp.UnregisterModelRequest(model_name="triple"),
                                              metadata=manage_key)
    assert unregistered.msg == 'Model "triple" unregistered'
    listed = json.loads(management.ListModels(mp.ListModelsRequest(), metadata=manage_key).msg)
    assert "triple" not in [m["modelName"] for m in listed["models"]]


def test_errors_carry_torchserve_codes(ts):
    """The codes TorchServe's gRPC services answer with (its test data's grpc_status_code
    and its InferenceImpl, ManagementImpl and GRPCInterceptor)."""
    pb, inference, management, infer_key, manage_key = ts
    mp, ip = pb["management_pb2"], pb["inference_pb2"]
    code = grpc.StatusCode
    predict = inference.Predictions
    rpc_error(lambda: predict(ip.PredictionsRequest(model_name="nope"), metadata=infer_key),
              code.INTERNAL, "Model not found: nope",
              "org.pytorch.serve.archive.model.ModelNotFoundException")
    rpc_error(lambda: predict(ip.PredictionsRequest(), metadata=infer_key), code.INTERNAL,
              "Parameter model_name is required.")
    rpc_error(lambda: list(inference.StreamPredictions(ip.PredictionsRequest(model_name="nope"),
                                                       metadata=infer_key)),
              code.INTERNAL, "Model not found")
    register = management.RegisterModel
    rpc_error(lambda: register(mp.RegisterModelRequest(), metadata=manage_key),
              code.INVALID_ARGUMENT, "Parameter url is required.")
    rpc_error(lambda: register(mp.RegisterModelRequest(url="missing.mar"), metadata=manage_key),
              code.NOT_FOUND, "missing.mar")
    rpc_error(lambda: register(mp.RegisterModelRequest(url="../double.mar"),
                               metadata=manage_key),
              code.NOT_FOUND, "Relative path is not allowed in url")
    rpc_error(lambda: register(mp.RegisterModelRequest(url="double.mar", runtime="python4"),
                               metadata=manage_key), code.INVALID_ARGUMENT)
    rpc_error(lambda: management.DescribeModel(mp.DescribeModelRequest(model_name="nope"),
                                               metadata=manage_key), code.NOT_FOUND)
    rpc_error(lambda: management.ScaleWorker(mp.ScaleWorkerRequest(model_name="nope"),
                                             metadata=manage_key), code.NOT_FOUND)
    rpc_error(lambda: management.SetDefault(
        mp.SetDefaultRequest(model_name="nope", model_version="1.0"), metadata=manage_key),
        code.NOT_FOUND)
    rpc_error(lambda: management.UnregisterModel(mp.UnregisterModelRequest(model_name="nope"),
                                                 metadata=manage_key), code.NOT_FOUND)
    # Token authorization: every call, Ping included, needs the listener's own key.
    empty = empty_pb2.Empty()
    for metadata in ((), (("authorization", "Bearer wrong"),), manage_key):
        rpc_error(lambda: inference.Ping(empty, metadata=metadata), code.PERMISSION_DENIED,
                  TOKEN_FAILED)
    rpc_error(lambda: management.ListModels(mp.ListModelsRequest(), metadata=infer_key),
              code.PERMISSION_DENIED, TOKEN_FAILED)


def test_workflow_service(server, stubs):
    _, pb = stubs
    wp = pb["workflow_pb2"]
    metadata_i, metadata_m = bearer(server, "inference"), bearer(server, "management")
    manage = pb["workflow_pb2_grpc"].WorkflowManagementServiceStub(
        grpc.insecure_channel(server.grpc_management))
    predict = pb["workflow_pb2_grpc"].WorkflowInferenceServiceStub(
        grpc.insecure_channel(server.grpc_inference)).Predict
    registered = manage.RegisterWorkflow(wp.RegisterWorkflowRequest(url="tripler.war"),
                                         metadata=metadata_m)
    assert registered.msg == "Workflow tripler has been registered and scaled successfully."
    listed = json.loads(manage.ListWorkflows(wp.ListWorkflowsRequest(), metadata=metadata_m).msg)
    assert [w["workflowName"] for w in listed["workflows"]] == ["tripler"]
    described = json.loads(manage.DescribeWorkflow(
        wp.DescribeWorkflowRequest(workflow_name="tripler"), metadata=metadata_m).msg)
    assert described[0]["workflowName"] == "tripler"
    request = wp.WorkflowPredictRequest(workflow_name="tripler", input={"data": b"5"})
    assert predict(request, metadata=metadata_i).prediction == b"15.0"
    scaled = manage.ScaleWorkflow(wp.ScaleWorkflowRequest(
        workflow_name="tripler", node="scale", min_worker=2, synchronous=True),
        metadata=metadata_m)
    assert scaled.msg == "Workers scaled to 2 for workflow: tripler"
    assert manage.SetDefaultWorkflow(wp.SetDefaultWorkflowRequest(
        workflow_name="tripler", workflow_version="1.0"), metadata=metadata_m).msg
    rpc_error(lambda: predict(wp.WorkflowPredictRequest(workflow_name="nope"),
                              metadata=metadata_i), grpc.StatusCode.NOT_FOUND,
              "Workflow not found: nope")
    rpc_error(lambda: predict(request, metadata=metadata_m), grpc.StatusCode.PERMISSION_DENIED,
              TOKEN_FAILED)
    unregistered = manage.UnregisterWorkflow(
        wp.UnregisterWorkflowRequest(workflow_name="tripler"), metadata=metadata_m)
    assert unregistered.msg == 'Workflow "tripler" unregistered'
    rpc_error(lambda: predict(request, metadata=metadata_i), grpc.StatusCode.NOT_FOUND)


def test_model_api_gate_and_tls(start_server, stubs, tmp_path):
    """With the model API off, registering and unregistering answer TorchServe's
    PERMISSION_DENIED "Model API disabled"; with enable_grpc_ssl the listeners speak TLS with
    the REST listeners' certificate."""
    _, pb = stubs
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    server = start_server(args=("--disable-token-auth",), properties={
        "certificate_file": str(cert), "private_key_file": str(key), "enable_grpc_ssl": "true"})
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    mp, wp = pb["management_pb2"], pb["workflow_pb2"]
    management = pb["management_pb2_grpc"].ManagementAPIsServiceStub(
        grpc.secure_channel(server.grpc_management, credentials))
    workflows = pb["workflow_pb2_grpc"].WorkflowManagementServiceStub(
        grpc.secure_channel(server.grpc_management, credentials))
    denied = grpc.StatusCode.PERMISSION_DENIED
    rpc_error(lambda: management.RegisterModel(mp.RegisterModelRequest(url="x.mar")), denied,
              "Model API disabled")
    rpc_error(lambda: management.UnregisterModel(mp.UnregisterModelRequest(model_name="x")),
              denied, "Model API disabled")
    rpc_error(lambda: workflows.RegisterWorkflow(wp.RegisterWorkflowRequest(url="x.war")),
              denied, "Model API disabled")
    assert json.loads(management.ListModels(mp.ListModelsRequest()).msg) == {"models": []}
    plain = pb["management_pb2_grpc"].ManagementAPIsServiceStub(
        grpc.insecure_channel(server.grpc_management))
    rpc_error(lambda: plain.ListModels(mp.ListModelsRequest(), timeout=5),
              grpc.StatusCode.UNAVAILABLE)
