"""Models end to end: .mar archives, the management, inference and metrics APIs, batching
and worker supervision, with the real server, real workers and real PyTorch models."""

import concurrent.futures
import json
import os
import signal
import time

import pytest
import requests

from support.api import assert_error, describe, register
from support.archives import archive, save_eager_affine, scale_mar, write_files

PROBE = '''
import json
import os
import time


def _describe(value):
    if isinstance(value, (bytes, bytearray)):
        return [type(value).__name__, value.decode("latin-1")]
    return [type(value).__name__, value]


def handle(data, context):
    """Reports what each request looked like; a JSON body can ask it to sleep, fail or set a
    status."""
    if data is None:
        return None
    out = []
    for idx, row in enumerate(data):
        body = row.get("body")
        if isinstance(body, dict):
            time.sleep(body.get("sleep", 0))
            if body.get("fail"):
                raise ValueError("asked to fail")
            if body.get("wrong_length"):
                return out + [1, 2]
            if "status" in body:
                context.set_response_status(body["status"], "custom", idx)
                context.set_response_header(idx, "X-Probe-Reply", "yes")
        out.append({
            "params": {name: _describe(value) for name, value in row.items()},
            "batch": len(data),
            "header": context.get_request_header(idx, "x-probe"),
            "pid": os.getpid(),
            "batch_size": context.system_properties["batch_size"],
            "model_name": context.model_name,
        })
    return out
'''

EAGER_HANDLER = '''
import torch
from ts.torch_handler.base_handler import BaseHandler


class AffineHandler(BaseHandler):
    def preprocess(self, data):
        return torch.tensor([row["body"] for row in data], dtype=torch.float32)

    def postprocess(self, data):
        return data.squeeze(1).tolist()
'''


def probe_mar(store, name="probe", *extra):
    write_files(store.parent / "src", {"probe.py": PROBE})
    return archive("model", "--model-name", name, "--handler", str(store.parent / "src" / "probe.py"),
                   "--export-path", str(store), "-f", *extra)


@pytest.fixture(scope="module")
def server(start_module_server):
    server = start_module_server(properties={"max_request_size": 100_000})
    scale_mar(server.store, "double", 2.0)
    probe_mar(server.store)
    return server


def ensure(server, name, **params):
    if requests.get(f"{server.management}/models/{name}").status_code == 404:
        answer = register(server, url=f"{name}.mar", **params)
        assert answer.status_code == 200, answer.text


def test_torchscript_model_register_predict_scale_unregister(server):
    answer = register(server, url="double.mar", initial_workers=1)
    assert answer.json() == {"status": 'Model "double" Version: 1.0 registered with 1 initial workers'}
    predicted = requests.post(f"{server.inference}/predictions/double", data="5",
                              headers={"Content-Type": "text/plain"})
    assert predicted.status_code == 200 and predicted.json() == 10.0
    d = describe(server, "double")
    assert (d["modelName"], d["modelVersion"], d["modelUrl"], d["runtime"]) == \
        ("double", "1.0", "double.mar", "python")
    assert (d["minWorkers"], d["maxWorkers"], d["batchSize"], d["maxBatchDelay"]) == (1, 1, 1, 100)
    assert [w["status"] for w in d["workers"]] == ["READY"] and d["workers"][0]["pid"] > 0
    scaled = requests.put(f"{server.management}/models/double",
                          params={"min_worker": 3, "max_worker": 3, "synchronous": "true"})
    assert scaled.json() == {"status": "Workers scaled to 3 for model: double"}
    assert [w["status"] for w in describe(server, "double")["workers"]] == ["READY"] * 3
    requests.put(f"{server.management}/models/double", params={"min_worker": 1, "synchronous": "true"})
    assert len(describe(server, "double")["workers"]) == 1
    gone = requests.delete(f"{server.management}/models/double")
    assert gone.json() == {"status": 'Model "double" unregistered'}
    after = requests.post(f"{server.inference}/predictions/double", data="5",
                          headers={"Content-Type": "text/plain"})
    assert_error(after, 404, "ModelNotFoundException")


def test_eager_model_with_model_file_and_state_dict(server, tmp_path):
    model_py, state_dict = save_eager_affine(tmp_path, [2.0, -1.0], 0.5)
    write_files(tmp_path, {"handler.py": EAGER_HANDLER})
    archive("model", "--model-name", "affine", "--serialized-file", str(state_dict),
            "--model-file", str(model_py), "--handler", str(tmp_path / "handler.py"),
            "--export-path", str(server.store), "-f")
    assert register(server, url="affine.mar").status_code == 200
    answer = requests.post(f"{server.inference}/predictions/affine", json=[3, 1])
    assert answer.json() == pytest.approx(2 * 3 - 1 + 0.5)


@pytest.mark.parametrize("fmt", ["tgz", "no-archive"])
def test_tar_gz_and_unpacked_directory_archives(server, fmt):
    name = f"scaled_{fmt.replace('-', '_')}"
    path = scale_mar(server.store, name, 4.0, "--archive-format", fmt)
    assert register(server, url=path.name).status_code == 200
    answer = requests.post(f"{server.inference}/predictions/{name}", data={"data": "2"})
    assert answer.json() == 8.0


def test_dynamic_batching_under_concurrent_requests(server):
    assert register(server, url="probe.mar", model_name="batched", batch_size=8,
                    max_batch_delay=200).status_code == 200
    body = json.dumps({"sleep": 0.05})

    def one(_):
        return requests.post(f"{server.inference}/predictions/batched", data=body,
                             headers={"Content-Type": "application/json"}).json()

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(16)))
    sizes = [r["batch"] for r in results]
    assert max(sizes) > 1 and all(s <= 8 for s in sizes), sizes
    assert results[0]["batch_size"] == 8


def test_model_config_yaml_sets_the_defaults(server, tmp_path):
    write_files(tmp_path, {"model-config.yaml": "minWorkers: 2\nmaxWorkers: 3\nbatchSize: 4\n"
                                                "maxBatchDelay: 30\nresponseTimeout: 60\n"})
    probe_mar(server.store, "configured", "-c", str(tmp_path / "model-config.yaml"))
    # no initial_workers (None is left out of the query): the archive's minWorkers decides
    assert register(server, url="configured.mar", initial_workers=None).status_code == 200
    d = describe(server, "configured")
    assert (d["minWorkers"], d["maxWorkers"], d["batchSize"], d["maxBatchDelay"]) == (2, 3, 4, 30)
    assert len(d["workers"]) == 2


def test_inputs_arrive_as_torchserve_builds_them(server):
    ensure(server, "probe")
    url = f"{server.inference}/predictions/probe"
    form = requests.post(url, data={"data": "5"}).json()
    assert form["params"] == {"data": ["bytearray", "5"]}
    curl_d = requests.post(url, data="5",
                           headers={"Content-Type": "application/x-www-form-urlencoded"}).json()
    assert curl_d["params"] == {"5": ["bytearray", ""]}
    untyped = requests.post(url, data=b"\x01raw").json()
    assert untyped["params"] == {"body": ["bytearray", "\x01raw"]}
    as_json = requests.post(url, json={"a": [1, 2]}, headers={"X-Probe": "yes"}).json()
    assert as_json["params"] == {"body": ["dict", {"a": [1, 2]}]} and as_json["header"] == "yes"
    text = requests.post(url, data="héllo".encode(), headers={"Content-Type": "text/plain"}).json()
    assert text["params"] == {"body": ["str", "héllo"]}
    parts = requests.post(url, files={"img": ("a.bin", b"\x00\x01", "application/octet-stream"),
                                      "data": (None, "7")}).json()
    assert parts["params"] == {"img": ["bytearray", "\x00\x01"], "data": ["bytearray", "7"]}


def test_handler_errors_fail_only_their_batch(server):
    ensure(server, "probe")
    url = f"{server.inference}/predictions/probe"
    failed = assert_error(requests.post(url, json={"fail": True}), 500, "PredictionException")
    assert "asked to fail" in failed["message"]
    wrong = assert_error(requests.post(url, json={"wrong_length": True}), 500, "PredictionException")
    assert "outputs for a batch of 1" in wrong["message"]
    custom = requests.post(url, json={"status": 418})
    assert custom.status_code == 418 and custom.headers["X-Probe-Reply"] == "yes"
    assert requests.post(url, json={}).status_code == 200


def test_killed_worker_fails_its_request_and_is_restarted(server):
    assert register(server, url="probe.mar", model_name="victim").status_code == 200
    pid = describe(server, "victim")["workers"][0]["pid"]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(requests.post, f"{server.inference}/predictions/victim",
                              json={"sleep": 30}, timeout=20)
        time.sleep(1.0)
        os.kill(pid, signal.SIGKILL)
        answer = pending.result()
    body = assert_error(answer, 500, "InternalServerException")
    assert "victim" in body["message"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        workers = describe(server, "victim")["workers"]
        if workers[0]["status"] == "READY" and workers[0]["pid"] not in (0, pid):
            break
        time.sleep(0.1)
    answer = requests.post(f"{server.inference}/predictions/victim", json={})
    assert answer.status_code == 200 and answer.json()["pid"] != pid


def test_bad_requests_get_json_errors(server):
    ensure(server, "probe")
    assert_error(requests.post(f"{server.inference}/predictions/nope", data="1"), 404,
                 "ModelNotFoundException")
    assert_error(requests.post(f"{server.inference}/predictions/probe/9.9", data="1"), 404,
                 "ModelNotFoundException")
    assert_error(register(server, url="missing.mar"), 404, "ModelNotFoundException")
    (server.store / "garbage.mar").write_bytes(b"this is not a zip")
    assert_error(register(server, url="garbage.mar"), 400, "BadRequestException")
    assert_error(register(server, url="../escape.mar"), 404, "ModelNotFoundException")
    assert_error(register(server, url="probe.mar", initial_workers="abc"), 400, "BadRequestException")
    assert_error(register(server, url="probe.mar", batch_size="-1"), 400, "BadRequestException")
    assert_error(register(server, url="probe.mar"), 409, "ConflictStatusException")
    assert_error(requests.put(f"{server.management}/models/probe",
                              params={"min_worker": 3, "max_worker": 1}), 400, "BadRequestException")
    big = requests.post(f"{server.inference}/predictions/probe", data=b"x" * 200_000,
                        headers={"Content-Type": "application/octet-stream"})
    assert_error(big, 413, "RequestEntityTooLargeException")
    assert_error(requests.get(f"{server.inference}/no/such/path"), 404, "ResourceNotFoundException")
    assert_error(requests.delete(f"{server.inference}/ping"), 405, "MethodNotAllowedException")
    assert requests.get(f"{server.inference}/ping").json() == {"status": "Healthy"}


def test_versions_and_set_default(server, tmp_path):
    for version, factor in (("1.0", 10.0), ("2.0", 20.0)):
        scale_mar(tmp_path, "versioned", factor, "-v", version)
        (tmp_path / "versioned.mar").rename(server.store / f"versioned-{version}.mar")
        assert register(server, url=f"versioned-{version}.mar").status_code == 200
    url = f"{server.inference}/predictions/versioned"
    assert requests.post(url, data={"data": "1"}).json() == 10.0
    assert requests.post(f"{url}/2.0", data={"data": "1"}).json() == 20.0
    assert requests.put(f"{server.management}/models/versioned/2.0/set-default").status_code == 200
    assert requests.post(url, data={"data": "1"}).json() == 20.0
    versions = requests.get(f"{server.management}/models/versioned/all").json()
    assert [v["modelVersion"] for v in versions] == ["1.0", "2.0"]  # TorchServe's order
    assert requests.delete(f"{server.management}/models/versioned/1.0").status_code == 200
    assert len(requests.get(f"{server.management}/models/versioned/all").json()) == 1


def test_list_pages_metrics_and_api_description(server):
    ensure(server, "probe")
    requests.post(f"{server.inference}/predictions/probe", json={})
    first = requests.get(f"{server.management}/models", params={"limit": 1}).json()
    assert len(first["models"]) == 1 and first["nextPageToken"] == "1"
    everything = requests.get(f"{server.management}/models", params={"limit": 1000}).json()
    assert "nextPageToken" not in everything
    assert {"modelName": "probe", "modelUrl": "probe.mar"} in everything["models"]
    text = requests.get(f"{server.metrics}/metrics").text
    assert 'ts_inference_requests_total{model_name="probe",model_version="default",hostname=' in text
    assert 'torchyard_workers_ready{model_name="probe",model_version="1.0",} 1.0' in text
    description = requests.options(f"{server.inference}/").json()
    assert description["openapi"].startswith("3") and "/predictions/{model_name}" in description["paths"]
    assert "/models" in requests.options(f"{server.management}/").json()["paths"]


def test_no_workers_and_full_queue_answer_503(start_server):
    server = start_server(properties={"job_queue_size": 1})
    probe_mar(server.store)
    assert register(server, url="probe.mar", initial_workers=0).status_code == 200
    assert_error(requests.post(f"{server.inference}/predictions/probe", json={}), 503,
                 "ServiceUnavailableException")
    requests.put(f"{server.management}/models/probe", params={"min_worker": 1, "synchronous": "true"})
    slow = json.dumps({"sleep": 2})

    def one(_):
        return requests.post(f"{server.inference}/predictions/probe", data=slow,
                             headers={"Content-Type": "application/json"}).status_code

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        codes = sorted(pool.map(one, range(4)))
    assert 503 in codes and 200 in codes, codes


def test_sigterm_answers_requests_in_flight(start_server):
    server = start_server()
    probe_mar(server.store)
    assert register(server, url="probe.mar").status_code == 200
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(requests.post, f"{server.inference}/predictions/probe",
                              json={"sleep": 1.5}, timeout=30)
        time.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        assert pending.result().status_code == 200
    assert server.process.wait(30) == 0
