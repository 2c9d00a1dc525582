"""How requests reach a model's workers: never queued behind a busy worker while another sits
idle, and never failed with the error of a request ahead of them when that one kills its worker
(a request the dying worker never started runs on another)."""

import concurrent.futures
import threading
import time

import pytest
import requests

from support.api import register
from support.archives import build_mar, manifest

#: Sleeps 3 s on "slow", kills its worker on "crash", else echoes at once.
HANDLER = '''
import os
import time


def handle(data, context):
    if data is None:
        return None
    answers = []
    for row in data:
        body = row.get("body") or row.get("data")
        if isinstance(body, (bytes, bytearray)):
            body = body.decode()
        if body == "crash":
            os._exit(1)
        if body == "slow":
            time.sleep(3)
        answers.append(f"ok {body}")
    return answers
'''


@pytest.fixture(scope="module")
def server(start_module_server, tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    build_mar(store, "pair", {"h.py": HANDLER}, manifest("pair", "h.py"))
    server = start_module_server(store=store)
    answer = register(server, url="pair.mar", initial_workers="2", batch_size="1")
    assert answer.status_code == 200, answer.text
    return server


def predict(server, body, timeout=60):
    return requests.post(f"{server.inference}/predictions/pair", data=body,
                         headers={"Content-Type": "text/plain"}, timeout=timeout)


def test_fast_request_does_not_wait_behind_a_busy_worker_while_another_is_idle(server):
    for _ in range(3):
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            slow = pool.submit(predict, server, "slow")
            time.sleep(0.5)
            started = time.monotonic()
            fast = predict(server, "fast")
            waited = time.monotonic() - started
            assert fast.status_code == 200, fast.text
            assert fast.text == "ok fast"
            assert waited < 1.5, f"the fast request waited {waited:.2f}s behind the slow one"
            assert slow.result().status_code == 200


def test_a_worker_killed_by_one_request_fails_no_other(server):
    stop = threading.Event()

    def client(n):
        answers = []
        while not stop.is_set():
            answers.append(predict(server, f"plain {n}"))
        return answers

    def crasher():
        codes = []
        for _ in range(8):
            codes.append(predict(server, "crash").status_code)
            time.sleep(0.3)
        return codes

    with concurrent.futures.ThreadPoolExecutor(7) as pool:
        clients = [pool.submit(client, n) for n in range(6)]
        crashes = pool.submit(crasher).result()
        stop.set()
        answers = [a for c in clients for a in c.result()]
    assert all(code == 500 for code in crashes), crashes
    failed = [(a.status_code, a.text) for a in answers if a.status_code != 200]
    assert not failed, f"{len(failed)} of {len(answers)} plain requests failed: {failed[:3]}"
    assert len(answers) > 50
