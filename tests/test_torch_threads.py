"""Torch threads per worker: each worker runs as many intra-op threads as the server says
(its handler reports `torch.get_num_threads()`), a model's workers share the usable cores
between them unless a count is configured (`threadsPerWorker` in model-config.yaml, the
server's `threads_per_worker`), a worker takes a new count when its pool grows or shrinks,
and describe shows the count."""

import os
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from support.api import register_archive as register, scale
from support.archives import build_mar, manifest

#: Answers each request with its worker's pid and torch's intra-op and inter-op thread counts.
HANDLER = '''
import os

import torch


def handle(data, context):
    if data is None:
        return None
    return [{"pid": os.getpid(), "threads": torch.get_num_threads(),
             "interop": torch.get_num_interop_threads()} for _ in data]
'''

CORES = len(os.sched_getaffinity(0))

pytestmark = pytest.mark.skipif("OMP_NUM_THREADS" in os.environ,
                                reason="OMP_NUM_THREADS configures every worker's threads")


def build(store, name, config=None):
    files = {"h.py": HANDLER}
    fields = {}
    if config is not None:
        files["model-config.yaml"] = config
        fields["configFile"] = "model-config.yaml"
    build_mar(store, name, files, manifest(name, "h.py:handle", **fields))


@pytest.fixture(scope="module")
def server(start_module_server):
    server = start_module_server({})
    build(server.store, "auto")
    build(server.store, "three", "threadsPerWorker: 3\n")
    return server




def described(server, name):
    answer = requests.get(f"{server.management}/models/{name}")
    assert answer.status_code == 200, answer.text
    return answer.json()[0]


def answers(server, name, count=32):
    """`count` requests, 8 at a time so that every worker serves some."""
    def predict(_):
        answer = requests.post(f"{server.inference}/predictions/{name}", data="1", timeout=60)
        assert answer.status_code == 200, answer.text
        return answer.json()

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(predict, range(count)))


def test_one_worker_runs_a_thread_per_core(server):
    register(server, "auto")
    model = described(server, "auto")
    assert (model["threadsPerWorker"], model["threadsConfigured"]) == (CORES, False)
    assert {(a["threads"], a["interop"]) for a in answers(server, "auto", 4)} == {(CORES, CORES)}


@pytest.mark.skipif(CORES < 2, reason="one core cannot be shared")
def test_workers_share_the_cores_and_change_as_the_pool_does(server):
    scale(server, "auto", 2)
    model = described(server, "auto")
    assert model["threadsPerWorker"] == CORES // 2
    assert len(model["workers"]) * model["threadsPerWorker"] <= CORES
    got = answers(server, "auto")
    # The first worker started with every core and takes the new count with its next batch.
    assert len({a["pid"] for a in got}) == 2, got
    assert {a["threads"] for a in got} == {CORES // 2}
    scale(server, "auto", 1)
    assert described(server, "auto")["threadsPerWorker"] == CORES
    assert {a["threads"] for a in answers(server, "auto", 4)} == {CORES}


def test_model_config_sets_the_count_whatever_the_pool(server):
    register(server, "three", 2)
    model = described(server, "three")
    assert (model["threadsPerWorker"], model["threadsConfigured"]) == (3, True)
    got = answers(server, "three")
    assert {a["threads"] for a in got} == {3}
    assert len({a["pid"] for a in got}) == 2
    # Each forked worker sets its threads itself: its model's template starts no thread pool.
    assert {w["startMode"] for w in model["workers"]} == {"template"}


def test_server_key_sets_the_count_for_fresh_interpreters(start_server):
    """`threads_per_worker` with workers started as fresh interpreters (`fork_workers=false`):
    torch is imported by the handler after the worker was told its count."""
    server = start_server({"threads_per_worker": "1", "fork_workers": "false"})
    build(server.store, "one")
    register(server, "one")
    assert described(server, "one")["threadsPerWorker"] == 1
    assert {(a["threads"], a["interop"]) for a in answers(server, "one", 4)} == {(1, 1)}


def test_bad_model_config_count_is_refused(server):
    build(server.store, "bad", "threadsPerWorker: many\n")
    answer = requests.post(f"{server.management}/models", params={"url": "bad.mar"}, timeout=60)
    assert answer.status_code == 400, answer.text
    assert "bad model-config.yaml" in answer.json()["message"], answer.text
