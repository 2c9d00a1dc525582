"""Async workers (`asyncCommunication: true` in model-config.yaml), as TorchServe's async
worker communication: one worker takes many requests at once, runs its `async def handle` on
an asyncio loop, and answers each when it is done, in any order; a worker that dies fails
every request in flight instead of leaving them hanging (test_async_worker_comm.py). KServe's
envelopes wrap an `async def handle` as any other, and a plain `def handle` runs on the worker's
thread pool, so that its batches overlap too. Each test runs with torchyard's stand-in `ts` and
with TorchServe's own package."""

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from support.archives import build_mar, manifest
from support.ts_packages import worker_env

#: Sleeps `sleep` seconds without blocking the loop, sends `chunks` partial results first,
#: exits the process on `crash`; answers with its tag, request id and pid.
HANDLER = """
import asyncio
import json
import os

from ts.protocol.otf_message_handler import send_intermediate_predict_response


class Sleeper:
    def initialize(self, context):
        self.initialized = True

    async def handle(self, data, context):
        body = data[0].get("body") or data[0].get("data")
        ask = json.loads(body) if isinstance(body, (bytes, bytearray)) else body
        if ask.get("crash"):
            os._exit(3)
        for i in range(ask.get("chunks", 0)):
            send_intermediate_predict_response([f"{ask['tag']}{i} "], context.request_ids,
                                               "Intermediate", 200, context)
            await asyncio.sleep(ask["sleep"])
        await asyncio.sleep(ask["sleep"])
        return [json.dumps({"tag": ask["tag"], "id": context.get_request_id(0),
                            "pid": os.getpid()})]
"""

#: An `async def handle` under KServe's envelopes: twice the sum of each item's data.
DOUBLER = """
import asyncio


class Doubler:
    async def handle(self, data, context):
        await asyncio.sleep(0.05)
        return [2 * sum(item["data"]) for item in data]
"""

#: A plain `def handle` that blocks for `sleep` seconds, after `chunks` partial results;
#: answers with its tag and the thread it ran on.
BLOCKING = """
import json
import threading
import time

from ts.protocol.otf_message_handler import send_intermediate_predict_response


def handle(data, context):
    if data is None:
        return None
    body = data[0].get("body") or data[0].get("data")
    ask = json.loads(body) if isinstance(body, (bytes, bytearray)) else body
    for i in range(ask.get("chunks", 0)):
        send_intermediate_predict_response([f"{ask['tag']}{i} "], context.request_ids,
                                           "Intermediate", 200, context)
    time.sleep(ask["sleep"])
    return [json.dumps({"tag": ask["tag"], "thread": threading.current_thread().name})]
"""

CONFIG = """
minWorkers: 1
maxWorkers: 1
batchSize: 1
asyncCommunication: true
"""


@pytest.fixture(scope="module")
def server(start_module_server, tmp_path_factory, ts_package):
    """A server with three async models: `sleeper` (HANDLER), `doubler` and `blocking`."""
    store = tmp_path_factory.mktemp("async") / "store"
    for name, handler in [("sleeper", HANDLER), ("doubler", DOUBLER), ("blocking", BLOCKING)]:
        build_mar(store, name, {"handler.py": handler, "model-config.yaml": CONFIG},
                  manifest(name, "handler.py", configFile="model-config.yaml"))
    server = start_module_server(store=store, env=worker_env(ts_package))
    for name in ("sleeper", "doubler", "blocking"):
        answer = requests.post(f"{server.management}/models",
                               params={"url": f"{name}.mar", "synchronous": "true"})
        assert answer.status_code == 200, answer.text
    assert "asyncCommunication" not in server.log_text()  # no "not supported" warning
    return server


@pytest.fixture(scope="module")
def url(server):
    return f"{server.inference}/predictions/sleeper"


def ask(url, **fields):
    """POSTs `fields`; returns (response, the time it finished)."""
    answer = requests.post(url, json=fields, timeout=30)
    return answer, time.monotonic()


def test_a_fast_request_overtakes_a_slow_one_on_the_same_worker(url):
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(ask, url, tag="slow", sleep=1.5)
        time.sleep(0.2)
        fast = pool.submit(ask, url, tag="fast", sleep=0.1)
        (slow_answer, slow_done), (fast_answer, fast_done) = slow.result(), fast.result()
    assert slow_answer.status_code == fast_answer.status_code == 200, slow_answer.text
    assert fast_done < slow_done
    assert slow_answer.json()["pid"] == fast_answer.json()["pid"]


def test_many_requests_run_at_once_each_with_its_own_context(url):
    started = time.monotonic()
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda i: ask(url, tag=f"t{i}", sleep=0.8)[0], range(10)))
    # One worker, batch size 1: ten 0.8 s requests overlap instead of taking 8 s.
    assert time.monotonic() - started < 4
    bodies = [a.json() for a in answers]
    assert [b["tag"] for b in bodies] == [f"t{i}" for i in range(10)]
    assert len({b["id"] for b in bodies}) == 10 and len({b["pid"] for b in bodies}) == 1


def test_concurrent_streams_each_get_their_own_chunks(url):
    def stream(tag):
        with requests.post(url, json={"tag": tag, "chunks": 3, "sleep": 0.2}, stream=True,
                           timeout=30) as answer:
            return [c.decode() for c in answer.iter_content(chunk_size=None) if c]

    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(stream, ["a", "b"])
    assert a[:3] == ["a0 ", "a1 ", "a2 "] and json.loads(a[3])["tag"] == "a"
    assert b[:3] == ["b0 ", "b1 ", "b2 "] and json.loads(b[3])["tag"] == "b"


def test_a_crashing_worker_fails_every_request_in_flight(url):
    with ThreadPoolExecutor(3) as pool:
        slow = [pool.submit(ask, url, tag=f"s{i}", sleep=20) for i in range(2)]
        time.sleep(0.5)
        started = time.monotonic()
        crash = pool.submit(ask, url, tag="crash", sleep=0, crash=True)
        answers = [f.result()[0] for f in [*slow, crash]]
    assert time.monotonic() - started < 10
    assert [a.status_code for a in answers] == [500, 500, 500]
    assert all("Worker for model sleeper failed" in a.json()["message"] for a in answers)
    # The worker restarts and serves again.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        answer, _ = ask(url, tag="again", sleep=0)
        if answer.status_code == 200:
            break
        time.sleep(0.5)
    assert answer.status_code == 200 and answer.json()["tag"] == "again"


def test_kserve_envelopes_wrap_an_async_handler(server):
    v1 = {"instances": [{"data": [1.0, 2.0]}, {"data": [0.5]}]}
    for action, key in [("predict", "predictions"), ("explain", "explanations")]:
        answer = requests.post(f"{server.inference}/v1/models/doubler:{action}", json=v1,
                               timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {key: [6.0, 1.0]}
    v2 = {"id": "r1", "inputs": [
        {"name": "a", "shape": [2], "datatype": "FP32", "data": [1.5, 2]},
        {"name": "b", "shape": [1], "datatype": "INT64", "data": [3]}]}
    answer = requests.post(f"{server.inference}/v2/models/doubler/infer", json=v2, timeout=30)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["id"], body["model_name"]) == ("r1", "doubler")
    assert [(o["name"], o["data"]) for o in body["outputs"]] == [("a", [7.0]), ("b", [6])]


def test_a_plain_handler_runs_on_a_pool_so_its_batches_overlap(server):
    blocking = f"{server.inference}/predictions/blocking"
    started = time.monotonic()
    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(lambda i: ask(blocking, tag=f"b{i}", sleep=1.5)[0], range(5)))
    # One worker, batch size 1: five 1.5 s handler calls overlap instead of taking 7.5 s.
    assert time.monotonic() - started < 5
    assert [a.status_code for a in answers] == [200] * 5, [a.text for a in answers]
    bodies = [a.json() for a in answers]
    assert [b["tag"] for b in bodies] == [f"b{i}" for i in range(5)]
    assert all(b["thread"] != "MainThread" for b in bodies)


def test_a_plain_handlers_partial_results_come_before_its_answer(server):
    with requests.post(f"{server.inference}/predictions/blocking",
                       json={"tag": "p", "chunks": 3, "sleep": 0}, stream=True,
                       timeout=30) as answer:
        chunks = [c.decode() for c in answer.iter_content(chunk_size=None) if c]
    assert chunks[:3] == ["p0 ", "p1 ", "p2 "] and json.loads(chunks[3])["tag"] == "p"
