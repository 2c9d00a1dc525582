"""Workers that share their weights: a model's template loads the handler once and forks the
model's workers, whose weights stay shared copy-on-write (PSS measured from /proc); they answer
as the model does, scale up in milliseconds, say `startMode: template`, are replaced by new forks
when killed, survive a killed template (which the next worker starts again), and a model that
opts out (`forkAfterInitialize: false`) gets workers that load the handler themselves. A handler
whose `initialize` would start torch's thread pool (as loading ResNet-152 does) still gets
forked workers, with torch's thread count. A worker that dies while idle shows as down until its
successor is READY. The tests share one server and run in order; models loaded at start, whose
workers wait for the fork server, get a server of their own."""

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pytest
import requests
import torch

from support.api import register_archive as register, scale
from support.archives import build_mar, manifest
from support.processes import alive, children, parent, wait_gone
from support.server import OPEN_FLAGS

#: Four 2048 x 2048 layers: 64 MiB of float32 weights.
LAYERS, WIDTH = 4, 2048

#: Loads the TorchScript stack in `initialize` (printing so, to count the loads); answers a
#: number n with the sum of the model's output for a row of n.
HANDLER = '''
import os

import torch


class Handler:
    def initialize(self, context):
        model_dir = context.system_properties["model_dir"]
        self.model = torch.jit.load(os.path.join(model_dir, "stack.pt"))
        print(f"initialized {context.manifest['model']['modelName']} in {os.getpid()}")

    def handle(self, data, context):
        rows = torch.tensor([[float(row.get("data") or row.get("body"))] * 2048 for row in data])
        with torch.inference_mode():
            return [float(out.sum()) for out in self.model(rows)]
'''


#: Runs torch's intra-op threads in `initialize` and `handle` (a multiply too large for one
#: thread); answers with torch's thread count and the weights' sum.
POOLED = '''
import torch


class Handler:
    def initialize(self, context):
        self.weight = torch.ones(4096, 4096).mul_(2)
        print(f"initialized {context.manifest['model']['modelName']}")

    def handle(self, data, context):
        return [[torch.get_num_threads(), float(self.weight.mul(1).sum())] for _ in data]
'''


def stack() -> torch.nn.Module:
    torch.manual_seed(0)
    layers = [torch.nn.Linear(WIDTH, WIDTH) for _ in range(LAYERS)]
    return torch.nn.Sequential(*[m for layer in layers for m in (layer, torch.nn.Tanh())])


#: Loads nothing; `initialize` takes 3 s from its second run on (a restarted worker).
FRAIL = '''
import os
import time


class Handler:
    def initialize(self, context):
        marker = os.path.join(context.system_properties["model_dir"], "initialized-once")
        if os.path.exists(marker):
            time.sleep(3)
        open(marker, "w").close()

    def handle(self, data, context):
        return [os.getpid() for _ in data]
'''


@pytest.fixture(scope="module")
def model():
    return torch.jit.script(stack().eval())


@pytest.fixture(scope="module")
def server(start_module_server, model, tmp_path_factory):
    server = start_module_server({})
    saved = tmp_path_factory.mktemp("model") / "stack.pt"
    model.save(str(saved))
    files = {"stack.pt": saved, "h.py": HANDLER}
    build_mar(server.store, "stack", files, manifest("stack", "h.py", serializedFile="stack.pt"))
    build_mar(server.store, "twins", files, manifest("twins", "h.py", serializedFile="stack.pt"))
    build_mar(server.store, "own", {**files, "model-config.yaml": "forkAfterInitialize: false\n"},
              manifest("own", "h.py", serializedFile="stack.pt", configFile="model-config.yaml"))
    build_mar(server.store, "frail", {"h.py": FRAIL, "model-config.yaml": "forkAfterInitialize: "
              "false\n"}, manifest("frail", "h.py", configFile="model-config.yaml"))
    deadline = time.monotonic() + 120
    while "fork server ready" not in server.log_text():
        assert time.monotonic() < deadline, "the fork server did not start"
        time.sleep(0.1)
    return server


def workers(server, name):
    described = requests.get(f"{server.management}/models/{name}")
    assert described.status_code == 200, described.text
    return described.json()[0]["workers"]




def memory(pid: int) -> dict:
    """Pss and private bytes of a process, from /proc/PID/smaps_rollup."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0]) * 1024
    return {"pss": fields["Pss"], "private": fields["Private_Clean"] + fields["Private_Dirty"]}


def assert_answers(server, name, model, count=16):
    """`count` requests at once, so that every worker serves some; each answer is the model's."""
    def predict(n):
        answer = requests.post(f"{server.inference}/predictions/{name}", data=str(n),
                               headers={"Content-Type": "text/plain"}, timeout=60)
        assert answer.status_code == 200, answer.text
        return n, answer.json()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(predict, [n % 4 for n in range(count)]))
    with torch.inference_mode():
        for n, got in answers:
            expected = float(model(torch.full((1, WIDTH), float(n)))[0].sum())
            assert got == pytest.approx(expected, rel=1e-4, abs=1e-3), (n, got, expected)


def await_replacement(server, name, count, killed):
    """Sends requests (a worker finds its process gone when it is given one) until the killed
    worker has a READY successor; returns the workers' pids."""
    deadline = time.monotonic() + 120
    while True:
        try:
            requests.post(f"{server.inference}/predictions/{name}", data="1", timeout=60)
        except requests.RequestException:
            pass
        listed = workers(server, name)
        pids = [w["pid"] for w in listed]
        if killed not in pids and 0 not in pids \
                and [w["status"] for w in listed] == ["READY"] * count:
            return pids
        assert time.monotonic() < deadline, f"the killed worker {killed} was not replaced"
        time.sleep(0.05)


def ready_pids(server, name, count, seconds=60):
    """The pids of the model's `count` workers once all are READY."""
    deadline = time.monotonic() + seconds
    while True:
        listed = workers(server, name)
        if [w["status"] for w in listed] == ["READY"] * count:
            return [w["pid"] for w in listed]
        assert time.monotonic() < deadline, listed
        time.sleep(0.05)


def test_four_forked_workers_share_one_copy_of_the_weights_and_scale_up_in_milliseconds(
        server, model):
    register(server, "stack", 1)
    [first] = workers(server, "stack")
    assert first["startMode"] == "template"
    template = parent(first["pid"])
    forkserver = parent(template)
    assert "torchyard.forkserver" in Path(f"/proc/{template}/cmdline").read_text()
    assert_answers(server, "stack", model, count=4)
    # The model's memory: its processes and the fork server, with whom they share torch's pages
    # (no other model is registered yet).
    one = sum(memory(pid)["pss"] for pid in (forkserver, template, first["pid"]))

    started = time.monotonic()
    scale(server, "stack", 4)
    took = time.monotonic() - started
    listed = workers(server, "stack")
    assert [w["startMode"] for w in listed] == ["template"] * 4
    assert set(children(template)) == {w["pid"] for w in listed}
    assert_answers(server, "stack", model)
    four = sum(memory(pid)["pss"] for pid in [forkserver, template, *(w["pid"] for w in listed)])
    private = [memory(w["pid"])["private"] >> 20 for w in listed]
    print(f"\nscale 1 -> 4: {took * 1000:.0f} ms; PSS fork server + template + 1 worker "
          f"{one >> 20} MiB, with 4 workers {four >> 20} MiB ({four / one:.2f}x); workers' private MiB "
          f"{private}; template private {memory(template)['private'] >> 20} MiB")
    assert four <= 1.3 * one, (one, four)
    # The target is 0.2 s; the bound leaves room for a loaded 2-core test machine.
    assert took <= 1.0, took
    # Only the template ran `initialize`.
    assert server.log_text().count("initialized stack in") == 1


def test_workers_asked_for_while_the_template_loads_wait_for_it(server, model):
    register(server, "twins", 3)
    listed = workers(server, "twins")
    assert [w["startMode"] for w in listed] == ["template"] * 3
    [template] = {parent(w["pid"]) for w in listed}
    assert server.log_text().count("initialized twins in") == 1
    assert_answers(server, "twins", model, count=6)
    # Scaling to 0 keeps the template; unregistering kills it.
    scale(server, "twins", 0)
    assert alive(template)
    answer = requests.delete(f"{server.management}/models/twins", timeout=60)
    assert answer.status_code == 200, answer.text
    assert wait_gone(template, 10), "the template outlived its model"


def test_a_model_that_opts_out_gets_workers_that_load_it_themselves(server, model):
    register(server, "own", 2)
    listed = workers(server, "own")
    assert [w["startMode"] for w in listed] == ["fork"] * 2
    forkserver = [pid for pid, cmd in children(server.process.pid).items()
                  if "torchyard.forkserver" in cmd]
    assert {parent(w["pid"]) for w in listed} == set(forkserver)
    assert server.log_text().count("initialized own in") == 2
    assert_answers(server, "own", model, count=4)
    print(f"\nopted out: workers' private MiB {[memory(w['pid'])['private'] >> 20 for w in listed]}")


def test_a_killed_worker_is_replaced_by_a_new_fork(server, model):
    before = ready_pids(server, "stack", 4)
    template = parent(before[0])
    os.kill(before[1], signal.SIGKILL)
    after = await_replacement(server, "stack", 4, before[1])
    assert [w["startMode"] for w in workers(server, "stack")] == ["template"] * 4
    assert {parent(pid) for pid in after} == {template}
    assert server.log_text().count("initialized stack in") == 1
    assert_answers(server, "stack", model)


def test_a_killed_template_is_started_again_by_the_next_worker(server, model):
    before = ready_pids(server, "stack", 4)
    template = parent(before[0])
    os.kill(template, signal.SIGKILL)
    assert wait_gone(template, 10)
    # Its workers serve on.
    assert_answers(server, "stack", model)
    assert ready_pids(server, "stack", 4) == before
    os.kill(before[0], signal.SIGKILL)
    replacement = await_replacement(server, "stack", 4, before[0])[0]
    assert workers(server, "stack")[0]["startMode"] == "template"
    fresh = parent(replacement)
    assert fresh != template and "torchyard.forkserver" in Path(
        f"/proc/{fresh}/cmdline").read_text()
    assert server.log_text().count("initialized stack in") == 2
    assert_answers(server, "stack", model)


def test_a_handler_that_starts_torchs_threads_in_initialize_still_gets_forked_workers(server):
    build_mar(server.store, "pooled", {"h.py": POOLED}, manifest("pooled", "h.py"))
    register(server, "pooled", 2)
    assert [w["startMode"] for w in workers(server, "pooled")] == ["template"] * 2
    assert server.log_text().count("initialized pooled") == 1
    # The template ran `initialize` on one thread; each worker runs the count describe shows.
    threads = requests.get(f"{server.management}/models/pooled").json()[0]["threadsPerWorker"]
    for _ in range(4):
        answer = requests.post(f"{server.inference}/predictions/pooled", data="1", timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json() == [threads, 2.0 * 4096 * 4096]


def test_a_worker_that_dies_while_idle_shows_down_until_its_successor_is_ready(server):
    register(server, "frail", 1)
    [before] = workers(server, "frail")
    os.kill(before["pid"], signal.SIGKILL)
    # No request is sent: the server notices the death itself, and describe never shows the
    # worker READY without a live process.
    seen = []
    deadline = time.monotonic() + 60
    while True:
        [now] = workers(server, "frail")
        seen.append(now)
        if now["status"] == "READY" and now["pid"] != before["pid"]:
            break
        assert time.monotonic() < deadline, seen[-5:]
        time.sleep(0.01)
    down = [w for w in seen if w["status"] != "READY"]
    assert down, "the worker never showed as down"
    assert all(w["status"] == "READY" for w in seen[:seen.index(down[0])]), seen
    assert all(w["status"] != "READY" for w in seen[seen.index(down[0]):-1]), seen
    assert {w["status"] for w in down} <= {"FAILED", "STARTING"}, down
    assert any(w["status"] == "STARTING" and w["pid"] == 0 for w in down), down
    for w in down:
        if w["status"] == "FAILED":
            assert "it is restarted" in w["failure"], w
    assert alive(seen[-1]["pid"])
    assert "the worker is gone" in server.log_text()


def test_workers_of_models_loaded_at_start_wait_for_the_fork_server(
        start_server, model, tmp_path):
    """Models named at start (`--models`) get their workers while the fork server is still
    importing torch: they wait for it and come from their templates, instead of each
    importing torch itself."""
    store = tmp_path / "store"
    store.mkdir()
    saved = tmp_path / "stack.pt"
    model.save(str(saved))
    names = ["first", "second", "third"]
    for name in names:
        build_mar(store, name, {"stack.pt": saved, "h.py": HANDLER},
                  manifest(name, "h.py", serializedFile="stack.pt"))
    server = start_server({"default_workers_per_model": 1}, store=store, healthy=False,
                          args=(*OPEN_FLAGS, "--models", ",".join(f"{n}.mar" for n in names)))
    deadline = time.monotonic() + 180
    while server.ping() != 200:
        assert time.monotonic() < deadline, "the models loaded at start are not ready"
        time.sleep(0.1)
    log = server.log_text()
    [ready_line] = [line for line in log.splitlines() if "fork server ready" in line]
    ready = datetime.strptime(ready_line.split(" ", 1)[0], "%Y-%m-%dT%H:%M:%S,%f")
    for name in names:
        [worker] = workers(server, name)
        # The worker was asked for before the fork server was ready.
        asked = datetime.strptime(worker["startTime"], "%Y-%m-%dT%H:%M:%S.%fZ")
        assert asked < ready, (worker, ready_line)
        assert worker["startMode"] == "template", (name, worker)
        assert "torchyard.forkserver" in Path(f"/proc/{parent(worker['pid'])}/cmdline").read_text()
        assert_answers(server, name, model, count=2)
    assert "its template did not start" not in log
    assert "starts as a fresh process" not in log
