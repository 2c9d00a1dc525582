"""Large bodies and answers travel between server and worker in shared memory (a sealed memfd
passed with the frame, docs/protocol.md): bodies at or above `shared_memory_threshold` reach the
handler through one (the worker's /proc/self/fd shows it while the handler runs), large answers
come back through one (the server's /proc/PID/maps shows the mapping while it sends it), bytes
round-trip exactly (raw and multipart, 1 and 8 MB), handlers get the same `bytearray` either way,
a worker killed mid-request leaves no descriptor behind in the server, and
`shared_memory_threshold=0` sends everything in the frames. The module's servers are shared."""

import hashlib
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import requests

from support.archives import build_mar, manifest
from support.processes import wait_gone

THRESHOLD = 256 * 1024

#: Echoes each request's body; with `x-describe`, answers what it got instead: the body's type,
#: length and SHA-256, and the memfds the worker holds while the handler runs. `x-sleep`
#: seconds first.
HANDLER = '''
import hashlib
import os
import time


def _memfds():
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return sorted(link for link in links if "memfd:" in link)


def handle(data, context):
    if data is None:
        return None
    out = []
    for i, row in enumerate(data):
        body = row.get("data") or row.get("body")
        if context.get_request_header(i, "x-sleep"):
            time.sleep(float(context.get_request_header(i, "x-sleep")))
        if context.get_request_header(i, "x-describe"):
            out.append({"type": type(body).__name__, "len": len(body),
                        "sha256": hashlib.sha256(body).hexdigest(), "memfds": _memfds()})
        else:
            out.append(body)
    return out
'''

MB = 1 << 20
PROPERTIES = {"max_request_size": 64 * MB, "shared_memory_threshold": THRESHOLD}


def start(start_module_server, **properties):
    server = start_module_server({**PROPERTIES, **properties})
    build_mar(server.store, "echo", {"echo.py": HANDLER}, manifest("echo", "echo.py:handle"))
    answer = requests.post(f"{server.management}/models", params={
        "url": "echo.mar", "initial_workers": 1, "synchronous": "true"}, timeout=120)
    assert answer.status_code == 200, answer.text
    return server


@pytest.fixture(scope="module")
def server(start_module_server):
    return start(start_module_server)


@pytest.fixture(scope="module")
def disabled(start_module_server):
    return start(start_module_server, shared_memory_threshold=0)


def body_of(size: int) -> bytes:
    return os.urandom(size)


def describe(server, body: bytes, **extra_headers) -> dict:
    answer = requests.post(f"{server.inference}/predictions/echo", data=body, timeout=60,
                           headers={"content-type": "application/octet-stream",
                                    "x-describe": "1", **extra_headers})
    assert answer.status_code == 200, answer.text
    return answer.json()


def expected(body: bytes) -> dict:
    return {"type": "bytearray", "len": len(body), "sha256": hashlib.sha256(body).hexdigest()}


def request_memfds(got: dict) -> list:
    return [link for link in got.pop("memfds") if "torchyard-request" in link]


def test_bodies_at_the_threshold_come_in_shared_memory_and_smaller_ones_in_the_frame(server):
    for size, shared in [(THRESHOLD - 1, False), (THRESHOLD, True), (MB, True), (8 * MB, True)]:
        body = body_of(size)
        got = describe(server, body)
        assert bool(request_memfds(got)) == shared, (size, got)
        assert got == expected(body), size


def test_raw_and_multipart_bodies_round_trip_exactly(server):
    for size in (MB, 8 * MB, 1000):
        body = body_of(size)
        raw = requests.post(f"{server.inference}/predictions/echo", data=body, timeout=60,
                            headers={"content-type": "application/octet-stream"})
        assert raw.status_code == 200, raw.text
        assert raw.headers["content-type"] == "application/octet-stream"
        assert raw.content == body, size
        form = requests.post(f"{server.inference}/predictions/echo", timeout=60,
                             files={"data": ("blob.bin", body, "application/octet-stream")})
        assert form.status_code == 200, form.text
        assert form.content == body, size


def test_a_multipart_part_above_the_threshold_comes_in_shared_memory(server):
    body = body_of(2 * MB)
    answer = requests.post(f"{server.inference}/predictions/echo", timeout=60,
                           headers={"x-describe": "1"},
                           files={"data": ("blob.bin", body, "application/octet-stream")})
    assert answer.status_code == 200, answer.text
    got = answer.json()
    assert request_memfds(got), got
    assert got == expected(body)


def test_a_large_answer_is_sent_from_the_mapped_reply(server):
    """The server holds the worker's memfd mapped while a slow client reads the answer."""
    body = body_of(60 * MB)
    answer = requests.post(f"{server.inference}/predictions/echo", data=body, timeout=60,
                           headers={"content-type": "application/octet-stream"}, stream=True)
    assert answer.status_code == 200
    maps = Path(f"/proc/{server.process.pid}/maps").read_text()
    assert "memfd:torchyard-reply" in maps
    assert answer.raw.read() == body
    answer.close()
    # Sent, the mapping goes.
    deadline = time.monotonic() + 10
    while "memfd:torchyard-reply" in Path(f"/proc/{server.process.pid}/maps").read_text():
        assert time.monotonic() < deadline, "the reply's mapping stayed after it was sent"
        time.sleep(0.05)


def open_fds(pid: int) -> list:
    fds = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            fds.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return sorted(fds)


def settled_fd_count(pid: int, want: int, seconds: float = 10) -> int:
    """The count of `pid`'s descriptors once it is `want`, or after `seconds`."""
    deadline = time.monotonic() + seconds
    count = len(open_fds(pid))
    while count != want and time.monotonic() < deadline:
        time.sleep(0.1)
        count = len(open_fds(pid))
    return count


def worker_pid(server) -> int:
    described = requests.get(f"{server.management}/models/echo", timeout=10)
    workers = described.json()[0]["workers"]
    return next(w["pid"] for w in workers if w["status"] == "READY")


def test_a_worker_killed_mid_request_leaves_no_descriptor_behind(server):
    pid = server.process.pid
    for _ in range(5):  # the server's descriptors before, warmed up
        describe(server, body_of(MB))
    before = open_fds(pid)
    worker = worker_pid(server)
    got = {}

    def slow():
        got["answer"] = requests.post(
            f"{server.inference}/predictions/echo", data=body_of(4 * MB), timeout=60,
            headers={"content-type": "application/octet-stream", "x-sleep": "30"})

    client = threading.Thread(target=slow)
    client.start()
    deadline = time.monotonic() + 20
    while not any("torchyard-request" in link for link in open_fds(worker)):
        assert time.monotonic() < deadline, "the body never reached the worker"
        time.sleep(0.05)
    os.kill(worker, signal.SIGKILL)
    client.join(60)
    assert got["answer"].status_code == 500, got["answer"].text
    assert wait_gone(worker, 10)
    deadline = time.monotonic() + 60
    while True:
        try:
            if worker_pid(server) != worker:
                break
        except StopIteration:
            pass
        assert time.monotonic() < deadline, "the worker was not replaced"
        time.sleep(0.2)
    for _ in range(5):
        assert describe(server, body_of(MB))["len"] == MB
    after_count = settled_fd_count(pid, len(before))
    assert after_count == len(before), (before, open_fds(pid))
    assert not [link for link in open_fds(pid) if "memfd:" in link]


def test_disabled_everything_travels_in_the_frame(disabled):
    for size in (1000, MB, 8 * MB):
        body = body_of(size)
        got = describe(disabled, body)
        assert request_memfds(got) == [], size
        assert got == expected(body), size
        echoed = requests.post(f"{disabled.inference}/predictions/echo", data=body, timeout=60,
                               headers={"content-type": "application/octet-stream"})
        assert echoed.content == body
