"""Workers forked from the fork server: they answer like fresh ones, say how they started, are
reaped when they stop, fall back to a fresh process where forking does not fit (a model with
its own requirements, no fork server), outlive a killed fork server, die with a killed server,
and `fork_workers=false` turns forking off. The tests of the shared server run in order; the
last one kills it."""

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import requests

from support.archives import build_mar, manifest, torchscript_scale
from support.processes import children, fork_server_pid, wait_gone
from support.server import wait_for_log

#: A TorchScript model's handler that prints its working directory to stdout at load.
HANDLER = '''
import os

import torch

_model = None


def handle(data, context):
    global _model
    if data is None:
        print(f"loaded in {os.getcwd()}")
        model_dir = context.system_properties["model_dir"]
        _model = torch.jit.load(os.path.join(model_dir, "double.pt"))
        return None
    numbers = torch.tensor([float(row.get("data") or row.get("body")) for row in data])
    with torch.inference_mode():
        return _model(numbers).tolist()
'''

QUICK = '''
def handle(data, context):
    return None if data is None else [len(data) for _ in data]
'''

#: A handler busy for a minute with every batch: its worker does not notice a closed socket.
STUCK = '''
import time


def handle(data, context):
    if data is not None:
        time.sleep(60)
    return None if data is None else ["late" for _ in data]
'''

READY = "fork server ready"


@pytest.fixture(scope="module")
def server(start_module_server, tmp_path_factory):
    server = start_module_server({"install_py_dep_per_model": "true"})
    pt = torchscript_scale(tmp_path_factory.mktemp("model") / "double.pt", 2.0)
    # These models opt out of model templates (test_shared_weights.py): each worker is forked
    # from the fork server itself.
    own = {"model-config.yaml": "forkAfterInitialize: false\n"}
    build_mar(server.store, "double", {"double.pt": pt, "h.py": HANDLER, **own},
              manifest("double", "h.py", serializedFile="double.pt",
                       configFile="model-config.yaml"))
    build_mar(server.store, "stuck", {"h.py": STUCK, **own},
              manifest("stuck", "h.py", configFile="model-config.yaml"))
    build_mar(server.store, "deps", {"h.py": QUICK, "requirements.txt": "# nothing to install\n"},
              manifest("deps", "h.py", requirementsFile="requirements.txt"))
    wait_for_log(server, READY)
    return server


def workers(server, model):
    described = requests.get(f"{server.management}/models/{model}")
    assert described.status_code == 200, described.text
    return described.json()[0]["workers"]


def scale(server, model, count):
    answer = requests.put(f"{server.management}/models/{model}",
                          params={"min_worker": count, "max_worker": count,
                                  "synchronous": "true"}, timeout=120)
    assert answer.status_code == 200, answer.text
    listed = workers(server, model)
    assert [w["status"] for w in listed] == ["READY"] * count, listed
    return listed


def assert_doubles(server, count=8):
    for n in range(count):
        answer = requests.post(f"{server.inference}/predictions/double", data=str(n),
                               headers={"Content-Type": "text/plain"})
        assert answer.status_code == 200 and answer.json() == 2.0 * n, answer.text


def predict_ignoring_the_outcome(server, model):
    try:
        requests.post(f"{server.inference}/predictions/{model}", data="1", timeout=10)
    except requests.RequestException:
        pass


def test_scaling_up_forks_workers_that_answer_and_log_under_their_label(server):
    answer = requests.post(f"{server.management}/models", params={
        "url": "double.mar", "initial_workers": 1, "synchronous": "true"})
    assert answer.status_code == 200, answer.text
    listed = scale(server, "double", 4)
    assert [w["startMode"] for w in listed] == ["fork"] * 4
    assert set(children(fork_server_pid(server))) == {w["pid"] for w in listed}
    assert_doubles(server)
    log = server.log_text()
    assert "W-9004-double_1.0-stdout MODEL_LOG" in log and "loaded model double" in log
    # Each worker runs in its model's directory, as a fresh worker does; its stdout reaches
    # the log too.
    printed = log.split("W-9004-double_1.0-stdout MODEL_LOG - loaded in ", 1)[1].splitlines()[0]
    assert (Path(printed) / "MAR-INF" / "MANIFEST.json").is_file()
    # The fork server reaps the workers that stop.
    scale(server, "double", 2)
    deadline = time.monotonic() + 5
    while children(fork_server_pid(server), zombies=True):
        assert time.monotonic() < deadline, "stopped workers are left as zombies"
        time.sleep(0.1)


def test_a_model_with_its_own_requirements_starts_fresh_workers(server):
    answer = requests.post(f"{server.management}/models", params={
        "url": "deps.mar", "initial_workers": 1, "synchronous": "true"})
    assert answer.status_code == 200, answer.text
    assert [w["startMode"] for w in workers(server, "deps")] == ["spawn"]
    assert requests.post(f"{server.inference}/predictions/deps", data="x").json() == 1


def test_workers_outlive_a_killed_fork_server_and_a_new_one_takes_over(server):
    serving = [(w["pid"], w["status"]) for w in workers(server, "double")]
    os.kill(fork_server_pid(server), signal.SIGKILL)
    assert_doubles(server)
    assert [(w["pid"], w["status"]) for w in workers(server, "double")] == serving
    # A new worker starts fresh or waits for the new fork server, whether it is asked for
    # during the pause before the restart or while the new fork server starts.
    scale(server, "double", 3)
    wait_for_log(server, READY, count=2)
    newest = scale(server, "double", 4)[-1]
    assert newest["startMode"] == "fork"
    assert newest["pid"] in children(fork_server_pid(server))
    assert_doubles(server)


def test_a_killed_server_leaves_no_worker_and_no_fork_server(server):
    answer = requests.post(f"{server.management}/models", params={
        "url": "stuck.mar", "initial_workers": 1, "synchronous": "true"})
    assert answer.status_code == 200, answer.text
    assert [w["startMode"] for w in workers(server, "stuck")] == ["fork"]
    threading.Thread(target=predict_ignoring_the_outcome, args=(server, "stuck"),
                     daemon=True).start()
    pids = [w["pid"] for model in ("double", "deps", "stuck") for w in workers(server, model)]
    pids.append(fork_server_pid(server))
    time.sleep(0.5)  # the stuck worker is asleep in its handler
    server.stop(signal.SIGKILL)
    left = [pid for pid in pids if not wait_gone(pid, 5)]
    assert not left, f"processes {left} outlived their server"


def test_fork_workers_false_starts_every_worker_fresh(start_server):
    server = start_server({"fork_workers": "false"})
    build_mar(server.store, "quick", {"h.py": QUICK}, manifest("quick", "h.py"))
    answer = requests.post(f"{server.management}/models", params={
        "url": "quick.mar", "initial_workers": 2, "synchronous": "true"})
    assert answer.status_code == 200, answer.text
    assert [w["startMode"] for w in workers(server, "quick")] == ["spawn"] * 2
    assert not any("forkserver" in cmd for cmd in children(server.process.pid).values())
