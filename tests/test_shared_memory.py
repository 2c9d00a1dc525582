"""Large bodies and answers travel between server and worker through reused shared-memory
regions (docs/protocol.md, "Shared memory"): bodies at or above `shared_memory_threshold` reach
the handler through a region of the server's that the worker maps once and reuses (its
/proc/self/maps shows it), large answers come back through a region of the worker's that the
server maps once (its /proc/PID/maps shows it), bytes round-trip exactly (raw and multipart, 1 and
8 MB, and a body too large for any region through the socket), handlers get the same `bytearray`
either way, many concurrent requests over the small pool fall back to the socket, a batch's
bodies share one region, a worker killed mid-request leaves neither descriptor nor region
behind in the server, and `shared_memory_threshold=0` sends everything in the frames. The
module's servers are shared; tests that count regions register a model of their own."""

import hashlib
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from support.api import ready_pids, wait_ready
from support.archives import build_mar, manifest
from support.processes import wait_gone

THRESHOLD = 256 * 1024
MB = 1 << 20
#: The most regions either side keeps per worker (src/worker/shared_memory.rs, regions.py).
MAX_REGIONS = 4
#: The largest region: a body above it travels in the frame.
MAX_REGION_BYTES = 64 * MB

#: Echoes each request's body; with `x-describe`, answers what it got instead: the body's type,
#: length and SHA-256, the batch's size, and the sizes of the shared-memory regions the worker
#: has mapped (the server's, `request`, and its own, `reply`). `x-started` names a file it
#: creates before it sleeps `x-sleep` seconds.
HANDLER = '''
import hashlib
import time


def regions(name):
    sizes = {}
    with open("/proc/self/maps") as maps:
        for line in maps:
            if name in line:
                fields = line.split()
                low, high = (int(x, 16) for x in fields[0].split("-"))
                sizes[fields[4]] = sizes.get(fields[4], 0) + high - low
    return sorted(sizes.values())


def handle(data, context):
    if data is None:
        return None
    out = []
    for i, row in enumerate(data):
        body = row.get("data") or row.get("body")
        if context.get_request_header(i, "x-started"):
            open(context.get_request_header(i, "x-started"), "w").close()
        if context.get_request_header(i, "x-sleep"):
            time.sleep(float(context.get_request_header(i, "x-sleep")))
        if context.get_request_header(i, "x-describe"):
            out.append({"type": type(body).__name__, "len": len(body),
                        "sha256": hashlib.sha256(body).hexdigest(), "batch": len(data),
                        "request": regions("memfd:torchyard-request"),
                        "reply": regions("memfd:torchyard-reply")})
        else:
            out.append(body)
    return out
'''

#: An async worker (TorchServe's asyncCommunication): every batch goes to it at once, so the
#: regions of both sides run out under concurrent requests.
ASYNC_CONFIG = "asyncCommunication: true\n"

PROPERTIES = {"max_request_size": 80 * MB, "shared_memory_threshold": THRESHOLD}


def register(server, name: str, files=None, manifest_fields=None, **params):
    build_mar(server.store, name, {"echo.py": HANDLER, **(files or {})},
              manifest(name, "echo.py:handle", **(manifest_fields or {})))
    answer = requests.post(f"{server.management}/models", params={
        "url": f"{name}.mar", "initial_workers": 1, "synchronous": "true", **params},
        timeout=120)
    assert answer.status_code == 200, answer.text


def start(start_module_server, **properties):
    server = start_module_server({**PROPERTIES, **properties})
    register(server, "echo")
    return server


@pytest.fixture(scope="module")
def server(start_module_server):
    return start(start_module_server)


@pytest.fixture(scope="module")
def disabled(start_module_server):
    return start(start_module_server, shared_memory_threshold=0)


def body_of(size: int) -> bytes:
    return os.urandom(size)


def describe(server, body: bytes, model: str = "echo", **extra_headers) -> dict:
    answer = requests.post(f"{server.inference}/predictions/{model}", data=body, timeout=60,
                           headers={"content-type": "application/octet-stream",
                                    "x-describe": "1", **extra_headers})
    assert answer.status_code == 200, answer.text
    return answer.json()


def echo(server, body: bytes, model: str = "echo") -> bytes:
    answer = requests.post(f"{server.inference}/predictions/{model}", data=body, timeout=60,
                           headers={"content-type": "application/octet-stream"})
    assert answer.status_code == 200, answer.text
    return answer.content


def expected(body: bytes) -> dict:
    return {"type": "bytearray", "len": len(body), "sha256": hashlib.sha256(body).hexdigest()}


def mapped(pid: int, name: str) -> dict:
    """The memfds named `name` that `pid` has mapped: {inode: bytes mapped}."""
    sizes = {}
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        if f"memfd:{name}" in line:
            fields = line.split()
            low, high = (int(x, 16) for x in fields[0].split("-"))
            sizes[fields[4]] = sizes.get(fields[4], 0) + high - low
    return sizes


def worker_pid(server, model: str = "echo") -> int:
    [pid] = ready_pids(server, model)
    return pid


def test_bodies_and_answers_reuse_a_region_above_the_threshold(server):
    register(server, "reuse")
    worker = worker_pid(server, "reuse")
    replies_before = set(mapped(server.process.pid, "torchyard-reply"))
    # Below the threshold: nothing shared, no region made.
    body = body_of(THRESHOLD - 1)
    got = describe(server, body, "reuse")
    assert (got.pop("request"), got.pop("reply"), got.pop("batch")) == ([], [], 1)
    assert got == expected(body)
    assert echo(server, body, "reuse") == body
    assert set(mapped(server.process.pid, "torchyard-reply")) == replies_before
    # At the threshold and above: one region each way, made once and reused.
    for size in [THRESHOLD] + [MB] * 20:
        body = body_of(size)
        assert echo(server, body, "reuse") == body, size
    got = describe(server, body_of(MB), "reuse")
    assert (got["request"], got["reply"]) == ([MB], [MB]), got
    new_replies = set(mapped(server.process.pid, "torchyard-reply")) - replies_before
    assert len(new_replies) == 1, new_replies
    assert set(mapped(worker, "torchyard-reply")) == new_replies
    # A body larger than the region: a larger region is added beside it.
    body = body_of(8 * MB)
    got = describe(server, body, "reuse")
    assert got.pop("request") == [MB, 8 * MB], got
    assert got == {**expected(body), "reply": [MB], "batch": 1}
    assert echo(server, body, "reuse") == body


def test_raw_and_multipart_bodies_round_trip_exactly(server):
    # 65 MB: larger than any region, through the socket.
    for size in (MB, 8 * MB, 1000, MAX_REGION_BYTES + MB):
        body = body_of(size)
        raw = requests.post(f"{server.inference}/predictions/echo", data=body, timeout=60,
                            headers={"content-type": "application/octet-stream"})
        assert raw.status_code == 200, raw.text
        assert raw.headers["content-type"] == "application/octet-stream"
        assert raw.content == body, size
        if size > MAX_REGION_BYTES:
            continue
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
    assert any(size >= 2 * MB for size in got.pop("request")), got
    assert {k: got[k] for k in ("type", "len", "sha256")} == expected(body)


def test_many_concurrent_requests_over_the_small_pool_fall_back_to_the_socket(server):
    """16 requests at once to an async worker: all are in flight together, more than the
    regions either side may make, so most bodies and answers go through the socket; every
    answer is exact and neither side makes more than its regions."""
    register(server, "crowd", files={"model-config.yaml": ASYNC_CONFIG},
             manifest_fields={"configFile": "model-config.yaml"})
    worker = worker_pid(server, "crowd")
    replies_before = set(mapped(server.process.pid, "torchyard-reply"))
    bodies = [body_of(MB + i) for i in range(16)]

    def post(body: bytes) -> bytes:
        answer = requests.post(f"{server.inference}/predictions/crowd", data=body, timeout=60,
                               headers={"content-type": "application/octet-stream",
                                        "x-sleep": "1"})
        assert answer.status_code == 200, answer.text
        return answer.content

    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(post, bodies))
    assert answers == bodies
    assert 1 <= len(mapped(worker, "torchyard-request")) <= MAX_REGIONS
    own = set(mapped(worker, "torchyard-reply"))
    assert 1 <= len(own) <= MAX_REGIONS
    assert set(mapped(server.process.pid, "torchyard-reply")) - replies_before == own
    # The pool works on once the crowd is gone.
    for body in bodies[:3]:
        assert echo(server, body, "crowd") == body


def test_a_batch_with_several_large_bodies_shares_one_region(server):
    register(server, "batched", batch_size=4, max_batch_delay=3000)
    bodies = [body_of(MB - 1000 * i) for i in range(4)]
    with ThreadPoolExecutor(len(bodies)) as pool:
        got = list(pool.map(lambda body: describe(server, body, "batched"), bodies))
    for body, one in zip(bodies, got):
        assert one["batch"] == 4, one
        assert {k: one[k] for k in ("type", "len", "sha256")} == expected(body)
    # The four bodies (just under 4 MB) went into one region of 4 MB.
    assert got[0]["request"] == [4 * MB], got[0]
    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda body: echo(server, body, "batched"), bodies))
    assert answers == bodies


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


def test_a_worker_killed_mid_request_leaves_no_descriptor_or_region_behind(server, tmp_path):
    pid = server.process.pid
    for _ in range(5):  # the server's descriptors before, warmed up
        describe(server, body_of(MB))
    before = open_fds(pid)
    worker = worker_pid(server)
    got = {}
    started = tmp_path / "started"

    def slow():
        got["answer"] = requests.post(
            f"{server.inference}/predictions/echo", data=body_of(4 * MB), timeout=60,
            headers={"content-type": "application/octet-stream", "x-sleep": "30",
                     "x-started": str(started)})

    client = threading.Thread(target=slow)
    client.start()
    deadline = time.monotonic() + 20
    while not started.exists():
        assert time.monotonic() < deadline, "the body never reached the handler"
        time.sleep(0.05)
    # Its regions, as the worker maps them: the server's and its own.
    regions = {**mapped(worker, "torchyard-request"), **mapped(worker, "torchyard-reply")}
    assert regions
    assert set(regions) <= {**mapped(pid, "torchyard-request"),
                            **mapped(pid, "torchyard-reply")}.keys()
    os.kill(worker, signal.SIGKILL)
    client.join(60)
    assert got["answer"].status_code == 500, got["answer"].text
    assert wait_gone(worker, 10)
    wait_ready(server, "echo", 1, not_in=(worker,))
    for _ in range(5):
        body = body_of(MB)
        assert echo(server, body) == body
    after_count = settled_fd_count(pid, len(before))
    assert after_count == len(before), (before, open_fds(pid))
    assert not [link for link in open_fds(pid) if "memfd:" in link]
    left = {**mapped(pid, "torchyard-request"), **mapped(pid, "torchyard-reply")}
    assert not set(regions) & set(left), "the dead worker's regions are still mapped"


def test_disabled_everything_travels_in_the_frame(disabled):
    for size in (1000, MB, 8 * MB):
        body = body_of(size)
        got = describe(disabled, body)
        assert (got.pop("request"), got.pop("reply"), got.pop("batch")) == ([], [], 1)
        assert got == expected(body), size
        assert echo(disabled, body) == body
    assert not mapped(disabled.process.pid, "torchyard")
