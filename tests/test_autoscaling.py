"""The server-wide autoscaler with real workers: slow handlers under concurrent load and a
worker budget of 3 set by `autoscale_worker_budget`."""

import threading
import time
from contextlib import contextmanager

import pytest
import requests

from support.api import describe, register
from support.archives import build_mar, manifest, war

BUDGET = 3

#: 0.1 s per request: a second worker doubles what the model answers.
SLEEPY = '''
import time


def handle(data, context):
    if data is None:
        return None
    time.sleep(0.1)
    return [1 for _ in data]
'''

#: Answers on a time grid that every worker shares: one answer per 40 ms, however many
#: workers there are (each claims the next free grid point at least 20 ms ahead).
SERIAL = '''
import fcntl
import math
import os
import time

SPACING = 0.04


def handle(data, context):
    if data is None:
        return None
    with open(os.path.join(context.system_properties["model_dir"], "grid"), "a+") as grid:
        fcntl.flock(grid, fcntl.LOCK_EX)
        grid.seek(0)
        last = float(grid.read() or 0)
        ahead = math.ceil((time.time() + SPACING / 2) / SPACING) * SPACING
        slot = max(last + SPACING, ahead)
        grid.seek(0)
        grid.truncate()
        grid.write(repr(slot))
    time.sleep(max(0.0, slot - time.time()))
    return [1 for _ in data]
'''

FUNCTIONS = "def first(data, context):\n    return data\n\n\ndef second(data, context):\n    return data\n"


@pytest.fixture(scope="module")
def server(start_module_server):
    server = start_module_server(properties={
        "autoscale_worker_budget": BUDGET, "autoscale_window_ms": 2000,
        "autoscale_hold_ms": 20000, "scale_down_idle_ms": 1500})
    for name, handler in (("busy", SLEEPY), ("calm", SLEEPY), ("serial", SERIAL)):
        build_mar(server.store, name, {"handler.py": handler,
                                       "model-config.yaml": "minWorkers: 1\nmaxWorkers: 4\n"},
                  manifest(name, "handler.py", configFile="model-config.yaml"))
        answer = register(server, url=f"{name}.mar")
        assert answer.status_code == 200, answer.text
    return server


def workers(server, model):
    return len(describe(server, model)["workers"])


@contextmanager
def load(server, clients):
    """Keeps `clients` ({model: connections}) sending requests until the block ends."""
    stop = threading.Event()
    failures = []

    def client(model):
        with requests.Session() as session:
            while not stop.is_set():
                answer = session.post(f"{server.inference}/predictions/{model}", data="1",
                                      timeout=30)
                if answer.status_code != 200:
                    failures.append(answer.text)

    threads = [threading.Thread(target=client, args=(model,))
               for model, count in clients.items() for _ in range(count)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not failures, failures[:3]


def watch(server, models, seconds, until=None):
    """Polls the pools of `models` for up to `seconds` (or until `until()` holds); returns
    every reading as {model: workers}."""
    readings = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        readings.append({m: workers(server, m) for m in models})
        if until and until():
            break
        time.sleep(0.1)
    return readings


def decision(server, model):
    return describe(server, model)["autoscaling"]["lastDecision"] or ""


def test_budget_longest_wait_explicit_scale_and_idle_scale_down(server):
    models = ("busy", "calm")
    with load(server, {"busy": 12, "calm": 4}):
        readings = watch(server, models, 20,
                         until=lambda: decision(server, "busy").startswith("kept worker 2"))
        assert decision(server, "busy").startswith("kept worker 2"), decision(server, "busy")
        readings += watch(server, models, 1.5)
    assert max(sum(r.values()) for r in readings) <= BUDGET, readings
    # busy's queue waited three times longer: it got the one worker the budget had left.
    assert readings[-1] == {"busy": 2, "calm": 1}, readings[-1]
    assert all(r["calm"] == 1 for r in readings)
    seen = describe(server, "busy")["autoscaling"]
    assert seen["workerBudget"] == BUDGET and seen["windowMs"] == 2000
    assert seen["scaleDownIdleMs"] == 1500 and seen["holdMs"] == 20000

    # Idle: back to the minimum after scale_down_idle_ms, and no further.
    watch(server, models, 10, until=lambda: workers(server, "busy") == 1)
    assert workers(server, "busy") == 1
    assert decision(server, "busy").startswith("removed worker 2: queue empty")
    assert watch(server, models, 2)[-1] == {"busy": 1, "calm": 1}

    with load(server, {"busy": 12, "calm": 4}):
        # Scaled by request to 1 (of at most 4): left there although its queue is long
        # and the budget has room.
        answer = requests.put(f"{server.management}/models/busy",
                              params={"min_worker": 1, "max_worker": 4, "synchronous": "true"})
        assert answer.status_code == 200, answer.text
        assert all(r["busy"] == 1 for r in watch(server, models, 3))
        seen = describe(server, "busy")["autoscaling"]
        assert seen["heldForMs"] > 0 and seen["lastDecision"].startswith("scaled by request")
        # A minimum is obeyed as given, even beyond the budget.
        answer = requests.put(f"{server.management}/models/calm",
                              params={"min_worker": 3, "max_worker": 3, "synchronous": "true"})
        assert answer.status_code == 200, answer.text
        assert all(r == {"busy": 1, "calm": 3} for r in watch(server, models, 1.5))


def test_a_worker_that_adds_no_throughput_is_backed_out(server):
    with load(server, {"serial": 6}):
        readings = watch(server, ["serial"], 20,
                         until=lambda: decision(server, "serial").startswith("backed out"))
    assert any(r["serial"] == 2 for r in readings), "no worker was tried"
    assert decision(server, "serial").startswith("backed out worker 2"), \
        decision(server, "serial")
    assert workers(server, "serial") == 1
    assert describe(server, "serial")["autoscaling"]["heldForMs"] > 0


def test_workflow_nodes_show_the_policy(server):
    spec = "models:\n  min-workers: 1\n  max-workers: 2\ndag:\n  first: [second]\n"
    war(server.store, "flow", spec, FUNCTIONS)
    answer = requests.post(f"{server.management}/workflows", params={"url": "flow.war"})
    assert answer.status_code == 200, answer.text
    nodes = requests.get(f"{server.management}/workflows/flow").json()[0]["nodes"]
    for node in nodes:
        assert node["autoscaling"]["workerBudget"] == BUDGET
        assert "longest" in node["autoscaling"]["policy"]
