"""Health, batching and start-directory paths as TorchServe users rely on them: `/ping` is a
readiness probe, a batch leaves when full or when its oldest request has waited
`max_batch_delay`, and relative paths on the command line mean the start directory."""

import concurrent.futures
import os
import threading
import time

import pytest
import requests

from support.api import describe, register
from support.archives import archive, scale_mar, war, write_files
from support.server import OPEN_FLAGS, PYTHON, Server

#: Loads slowly (the import sleeps), then reports the batch each request was part of.
SLOW_HANDLER = '''
import time

time.sleep(3)


def handle(data, context):
    if data is None:
        return None
    return [{"batch": len(data)} for _ in data]
'''

#: Reports the batch each request was part of.
BATCH_HANDLER = SLOW_HANDLER.replace("time.sleep(3)", "")

BROKEN_HANDLER = 'raise RuntimeError("cannot load")\n'

#: Workflow functions whose module loads slowly.
SLOW_FUNCTIONS = '''
import time

time.sleep(3)


def pre(data, context):
    if data is None:
        return None
    return [row.get("data") or row.get("body") for row in data]
'''

WORKFLOW = """
models:
  double:
    url: double.mar
dag:
  pre: [double]
"""

UNHEALTHY = (500, {"status": "Unhealthy"})
HEALTHY = (200, {"status": "Healthy"})


def handler_mar(store, name, source):
    """A .mar in `store` whose handler module is `source`."""
    src = store.parent / "src" / name
    write_files(src, {"handler.py": source})
    return archive("model", "--model-name", name, "--handler", str(src / "handler.py"),
                   "--export-path", str(store), "-f")


def ping(server):
    answer = requests.get(f"{server.inference}/ping")
    return answer.status_code, answer.json()


def wait_for_ping(server, expected, timeout=60.0):
    """Polls `/ping` until it answers `expected`; returns what it answered on the way."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen.append(ping(server))
        if seen[-1] == expected:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"/ping never answered {expected}: {seen[-5:]}")


def predict(server, path, value="1"):
    return requests.post(f"{server.inference}/{path}", data={"data": value}, timeout=30)


def test_ping_is_unhealthy_until_startup_models_and_workflows_are_ready(tmp_path, start_server):
    store = tmp_path / "store"
    store.mkdir()
    handler_mar(store, "slow", SLOW_HANDLER)
    scale_mar(store, "double", 2.0)
    war(store, "wf", WORKFLOW, SLOW_FUNCTIONS)
    server = start_server({"default_workers_per_model": 1},
                          args=(*OPEN_FLAGS, "--models", "slow.mar", "--workflows", "wf.war"),
                          store=store, workdir=tmp_path, healthy=False)
    assert ping(server) == UNHEALTHY
    wait_for_ping(server, HEALTHY)
    # Once Healthy, a readiness probe lets traffic in: everything loaded at start answers.
    assert predict(server, "predictions/slow").json() == {"batch": 1}
    answer = predict(server, "wfpredict/wf", "5")
    assert answer.status_code == 200 and answer.json() == 10.0


def test_startup_model_that_cannot_load_keeps_the_server_unhealthy(tmp_path, start_server):
    store = tmp_path / "store"
    store.mkdir()
    handler_mar(store, "broken", BROKEN_HANDLER)
    scale_mar(store, "double", 2.0)
    server = start_server({"default_workers_per_model": 1},
                          args=(*OPEN_FLAGS, "--models", "broken.mar", "double.mar"),
                          store=store, workdir=tmp_path, healthy=False)
    deadline = time.monotonic() + 60

    def double_ready():
        # Until the start-up loading has registered it, `double` is not there at all.
        answer = requests.get(f"{server.management}/models/double")
        return answer.ok and any(w["status"] == "READY" for w in answer.json()[0]["workers"])

    while not double_ready():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # The server is up and serves what loaded, but is not ready as a whole.
    assert predict(server, "predictions/double", "3").json() == 6.0
    assert ping(server) == UNHEALTHY
    assert requests.delete(f"{server.management}/models/broken").status_code == 200
    assert ping(server) == HEALTHY


def test_ping_follows_each_models_min_workers(start_server):
    server = start_server()
    assert ping(server) == HEALTHY
    handler_mar(server.store, "slow", SLOW_HANDLER)
    answer = register(server, url="slow.mar", initial_workers=1, synchronous="false")
    assert answer.ok, answer.text
    assert ping(server) == UNHEALTHY
    wait_for_ping(server, HEALTHY)
    assert [w["status"] for w in describe(server, "slow")["workers"]] == ["READY"]
    # A model with no minimum of workers is healthy, as in TorchServe.
    scale_mar(server.store, "idle", 1.0)
    assert register(server, url="idle.mar", initial_workers=0).status_code == 200
    assert ping(server) == HEALTHY
    # Raising the minimum makes the server unhealthy until the new worker is ready.
    scaled = requests.put(f"{server.management}/models/slow",
                          params={"min_worker": 2, "synchronous": "false"})
    assert scaled.ok, scaled.text
    assert ping(server) == UNHEALTHY
    wait_for_ping(server, HEALTHY)
    assert len(describe(server, "slow")["workers"]) == 2


@pytest.fixture(scope="module")
def batching(start_module_server):
    server = start_module_server()
    handler_mar(server.store, "batched", BATCH_HANDLER)
    return server


def concurrent_predictions(server, model, count):
    """`count` requests sent together; returns their answers and the seconds they took."""
    barrier = threading.Barrier(count)

    def one(_):
        barrier.wait()
        return predict(server, f"predictions/{model}")

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        answers = list(pool.map(one, range(count)))
    return answers, time.monotonic() - started


def test_full_batch_leaves_without_waiting_for_the_delay(batching):
    assert register(batching, url="batched.mar", model_name="four", batch_size=4,
                    max_batch_delay=3000).status_code == 200
    answers, took = concurrent_predictions(batching, "four", 4)
    assert [a.json() for a in answers] == [{"batch": 4}] * 4
    assert took < 1.5, took


def test_partial_batch_leaves_when_its_oldest_request_has_waited_the_delay(batching):
    assert register(batching, url="batched.mar", model_name="partial", batch_size=4,
                    max_batch_delay=1000).status_code == 200
    answers, took = concurrent_predictions(batching, "partial", 2)
    assert [a.json() for a in answers] == [{"batch": 2}] * 2
    assert 0.9 < took < 2.5, took


def test_batch_size_one_never_waits(batching):
    assert register(batching, url="batched.mar", model_name="single", batch_size=1,
                    max_batch_delay=3000).status_code == 200
    started = time.monotonic()
    assert predict(batching, "predictions/single").json() == {"batch": 1}
    assert time.monotonic() - started < 1.5


def test_relative_paths_resolve_against_the_start_directory(tmp_path):
    (tmp_path / "env").symlink_to(PYTHON.parent.parent, target_is_directory=True)
    store = tmp_path / "models"
    store.mkdir()
    scale_mar(store, "double", 2.0)
    server = Server(tmp_path, store, {"default_workers_per_model": 1})
    server.args = [server.args[0], "serve", "--model-store", "models", "--config",
                   "config.properties", "--python", os.path.join("env", "bin", "python"),
                   "--snapshot-dir", "snapshots", "--models", "double.mar", *OPEN_FLAGS]
    try:
        server.start()
        answer = predict(server, "predictions/double", "4")
        assert answer.status_code == 200 and answer.json() == 8.0, answer.text
        assert list((tmp_path / "snapshots").iterdir())
    finally:
        server.stop()
