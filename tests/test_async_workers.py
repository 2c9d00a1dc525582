"""Async workers (`asyncCommunication: true` in model-config.yaml), as TorchServe's async
worker communication: one worker takes many requests at once, runs its `async def handle` on
an asyncio loop, and answers each when it is done, in any order; a worker that dies fails
every request in flight instead of leaving them hanging (test_async_worker_comm.py). Each test
runs with torchyard's stand-in `ts` and with TorchServe's own package."""

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

CONFIG = """
minWorkers: 1
maxWorkers: 1
batchSize: 1
asyncCommunication: true
"""


@pytest.fixture(scope="module")
def url(start_module_server, tmp_path_factory, ts_package):
    store = tmp_path_factory.mktemp("async") / "store"
    build_mar(store, "sleeper", {"handler.py": HANDLER, "model-config.yaml": CONFIG},
              manifest("sleeper", "handler.py", configFile="model-config.yaml"))
    server = start_module_server(store=store, env=worker_env(ts_package))
    answer = requests.post(f"{server.management}/models",
                           params={"url": "sleeper.mar", "synchronous": "true"})
    assert answer.status_code == 200, answer.text
    assert "asyncCommunication" not in server.log_text()  # no "not supported" warning
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
