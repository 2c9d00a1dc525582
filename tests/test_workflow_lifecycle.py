"""What TorchServe's workflows cannot do: scale, update without dropping requests, versions,
snapshots across a SIGKILL, shared models and autoscaling."""

import concurrent.futures
import re
import signal
import threading
import time

import pytest
import requests

from support.archives import scale_mar, war

PIPELINE = '''
import json
import time


def pre(data, context):
    if data:
        return [row.get("data") or row.get("body") for row in data]


def slow_pre(data, context):
    if data:
        time.sleep(0.2)
        return [row.get("data") or row.get("body") for row in data]


def post(data, context):
    if data:
        return [json.loads(bytes(row["body"])) for row in data]
'''


def spec(model, entry="pre", extra=""):
    return (f"models:\n  scale:\n    {model}\n{extra}"
            f"dag:\n  {entry}: [scale]\n  scale: [post]\n")


def register(server, name, spec_text, version="1.0", file=None):
    path = war(server.store, file or name, spec_text, PIPELINE, version)
    if file:
        path = path.rename(server.store / f"{file}-{version}.war")
    answer = requests.post(f"{server.management}/workflows", params={"url": path.name})
    assert answer.status_code == 200, answer.text
    return path.name


def predict(server, name, value, version=None):
    path = f"{name}/{version}" if version else name
    return requests.post(f"{server.inference}/wfpredict/{path}", data={"data": str(value)},
                         timeout=60)


def workers(server, model):
    return requests.get(f"{server.management}/models/{model}").json()[0]["workers"]


@pytest.fixture(scope="module")
def server(start_module_server):
    server = start_module_server(properties={"scale_down_idle_ms": 1500,
                                             "autoscale_worker_budget": 8})
    for name, factor in (("x2", 2.0), ("x3", 3.0), ("x4", 4.0)):
        scale_mar(server.store, name, factor)
    return server


def test_scale_all_nodes_or_one(server):
    # fuse: false keeps pre and post out of the model's workers: three models to scale.
    register(server, "scaled", spec("url: x2.mar\n    fuse: false"))
    answer = requests.put(f"{server.management}/workflows/scaled",
                          params={"min_worker": 2, "max_worker": 3, "synchronous": "true"})
    assert answer.status_code == 200, answer.text
    for node in ("pre", "scale", "post"):
        assert len(workers(server, f"scaled__{node}")) == 2
    answer = requests.put(f"{server.management}/workflows/scaled",
                          params={"min_worker": 1, "node": "scale", "synchronous": "true"})
    assert answer.status_code == 200
    assert len(workers(server, "scaled__scale")) == 1 and len(workers(server, "scaled__pre")) == 2
    nodes = requests.get(f"{server.management}/workflows/scaled").json()[0]["nodes"]
    assert {n["name"]: n["workers"] for n in nodes}["scale"] == [1, 1]
    bad = requests.put(f"{server.management}/workflows/scaled", params={"node": "ghost"})
    assert bad.status_code == 400
    assert predict(server, "scaled", 3).json() == 6.0


def test_versions_set_default_and_unregister_one(server):
    register(server, "ver", spec("url: x2.mar"), "1.0", file="ver")
    register(server, "ver", spec("url: x3.mar"), "2.0", file="ver")
    assert predict(server, "ver", 1).json() == 2.0
    assert predict(server, "ver", 1, "2.0").json() == 3.0
    assert predict(server, "ver", 1, "1.0").json() == 2.0
    assert predict(server, "ver", 1, "9.9").status_code == 404
    described = requests.get(f"{server.management}/workflows/ver/all").json()
    assert [d["workflowVersion"] for d in described] == ["1.0", "2.0"]
    assert requests.put(f"{server.management}/workflows/ver/2.0/set-default").status_code == 200
    assert predict(server, "ver", 1).json() == 3.0
    assert requests.delete(f"{server.management}/workflows/ver/1.0").status_code == 200
    assert predict(server, "ver", 1, "1.0").status_code == 404
    assert predict(server, "ver", 1).json() == 3.0
    versions = requests.get(f"{server.management}/models/ver__scale/all").json()
    assert [v["modelVersion"] for v in versions] == ["2.0"]


def test_update_under_load_drops_no_request(server):
    register(server, "live", spec("url: x2.mar", entry="slow_pre"), "1.0", file="live")
    v2 = war(server.store, "live", spec("url: x4.mar", entry="slow_pre"), PIPELINE, "2.0")
    v2 = v2.rename(server.store / "live-2.0.war")
    results, stop = [], threading.Event()

    def load():
        for i in range(400):
            if stop.is_set():
                return
            answer = predict(server, "live", 1)
            results.append((answer.status_code, answer.text))

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        clients = [pool.submit(load) for _ in range(8)]
        time.sleep(1.0)
        updated = requests.put(f"{server.management}/workflows/live", params={"url": v2.name})
        time.sleep(1.0)
        stop.set()
        for client in clients:
            client.result()
    assert updated.status_code == 200, updated.text
    failures = [r for r in results if r[0] != 200]
    assert not failures, failures[:3]
    answers = [float(text) for _, text in results]
    assert answers[0] == 2.0 and answers[-1] == 4.0 and set(answers) == {2.0, 4.0}
    assert [d["workflowVersion"] for d in
            requests.get(f"{server.management}/workflows/live/all").json()] == ["2.0"]


def test_shared_models_own_or_shared_pools(server):
    register(server, "own_a", spec("url: x3.mar"))
    register(server, "own_b", spec("url: x3.mar"))
    assert predict(server, "own_a", 2).json() == 6.0 and predict(server, "own_b", 2).json() == 6.0
    models = {m["modelName"] for m in requests.get(f"{server.management}/models",
                                                    params={"limit": 1000}).json()["models"]}
    assert {"own_a__scale", "own_b__scale"} <= models
    requests.post(f"{server.management}/models", params={"url": "x3.mar", "synchronous": "true",
                                                           "initial_workers": 1})
    register(server, "shared", spec("model: x3"))
    assert predict(server, "shared", 2).json() == 6.0
    models = {m["modelName"] for m in requests.get(f"{server.management}/models",
                                                    params={"limit": 1000}).json()["models"]}
    assert "shared__scale" not in models
    metrics = requests.get(f"{server.metrics}/metrics").text
    # A node names no version, so TorchServe's label is "default".
    assert re.search(r'^ts_inference_requests_total\{model_name="x3",model_version="default",'
                     r'hostname="[^"]+",\} 1\.0$', metrics, re.M), metrics
    assert requests.delete(f"{server.management}/workflows/shared").status_code == 200
    assert requests.get(f"{server.management}/models/x3").status_code == 200


def test_node_pool_autoscales_with_queue_depth(server):
    register(server, "auto", spec("url: x2.mar\n    fuse: false", entry="slow_pre",
                                  extra="  max-workers: 3\n"))
    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        codes = list(pool.map(lambda i: predict(server, "auto", i).status_code, range(60)))
    assert set(codes) == {200}
    grown = len(workers(server, "auto__slow_pre"))
    assert grown > 1, "the queue built up but no worker was added"
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and len(workers(server, "auto__slow_pre")) > 1:
        time.sleep(0.5)
    assert len(workers(server, "auto__slow_pre")) == 1


def test_snapshot_restores_workflows_versions_and_workers_after_sigkill(start_server):
    server = start_server()
    for name, factor in (("x2", 2.0), ("x3", 3.0)):
        scale_mar(server.store, name, factor)
    register(server, "first", spec("url: x2.mar"))
    register(server, "second", spec("url: x2.mar"), "1.0", file="second")
    register(server, "second", spec("url: x3.mar"), "2.0", file="second")
    requests.put(f"{server.management}/workflows/second/2.0/set-default")
    requests.put(f"{server.management}/workflows/first",
                 params={"min_worker": 2, "node": "scale", "synchronous": "true"})
    requests.post(f"{server.management}/models", params={"url": "x3.mar", "synchronous": "true",
                                                           "initial_workers": 1})
    server.stop(signal.SIGKILL)

    again = start_server(store=server.store, workdir=server.workdir)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        listed = requests.get(f"{again.management}/workflows").json()["workflows"]
        if len(listed) == 2 and len(requests.get(
                f"{again.management}/workflows/second/all").json()) == 2:
            break
        time.sleep(0.2)
    assert {w["workflowName"] for w in listed} == {"first", "second"}
    assert predict(again, "second", 1).json() == 3.0
    assert predict(again, "second", 1, "1.0").json() == 2.0
    assert predict(again, "first", 1).json() == 2.0
    assert len(workers(again, "first__scale")) == 2
    assert requests.get(f"{again.management}/models/x3").status_code == 200
