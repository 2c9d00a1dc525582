"""The model lifecycle keys of TorchServe's model-config.yaml (and their server-wide and
per-registration forms): startupTimeout / startup_timeout / default_startup_timeout,
maxRetryTimeoutInSec, jobQueueSize, clientTimeoutInMills, useJobTicket, useVenv, and the
warning for the frontend keys torchyard does not act on. One server serves every test; each
test registers models of its own."""

import concurrent.futures
import json
import re
import subprocess
import time
import zipfile
from pathlib import Path

import jproperties
import pytest
import requests

from support.api import register, ts_error, ts_status
from support.archives import build_mar, manifest
from support.server import PYTHON

#: A handler whose initialize sleeps far past any startup timeout used here.
SLOW_LOAD = """
import time


class Handler:
    def initialize(self, context):
        time.sleep(60)

    def handle(self, data, context):
        return [0 for _ in data]
"""

#: A handler that fails to load, every time.
BROKEN = """
class Handler:
    def initialize(self, context):
        raise RuntimeError("this handler never loads")

    def handle(self, data, context):
        return [0 for _ in data]
"""

#: A handler taking a second per request.
SLOW_PREDICT = """
import time


def handle(data, context):
    if data is None:
        return None
    time.sleep(1)
    return ["done" for _ in data]
"""

#: A handler naming the interpreter running it and where `lifepkg` and torch come from.
WHERE = """
import sys


def handle(data, context):
    if data is None:
        return None
    import lifepkg
    import torch
    return [{"prefix": sys.prefix, "lifepkg": lifepkg.__file__, "torch": torch.__file__}
            for _ in data]
"""


def mar(store: Path, name: str, handler: str, config: str = None, **files) -> Path:
    """A .mar named `name` with `handler` as handler.py and `config` as model-config.yaml."""
    fields = {}
    members = {"handler.py": handler, **files}
    if config is not None:
        members["model-config.yaml"] = config
        fields["configFile"] = "model-config.yaml"
    if "requirements.txt" in files:
        fields["requirementsFile"] = "requirements.txt"
    return build_mar(store, name, members, manifest(name, "handler.py", **fields))


@pytest.fixture(scope="module")
def server(start_module_server):
    return start_module_server({"default_startup_timeout": 30, "install_py_dep_per_model": "true"})


def describe(server, name):
    return requests.get(f"{server.management}/models/{name}").json()[0]


def predict(server, name, timeout=30):
    return requests.post(f"{server.inference}/predictions/{name}", data={"data": "1"},
                         timeout=timeout)


def wait_for(check, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def healthy(server):
    assert requests.get(f"{server.inference}/ping").json() == {"status": "Healthy"}


@pytest.mark.parametrize("where", ["model-config.yaml", "startup_timeout"])
def test_a_handler_loading_past_the_startup_timeout_fails_the_registration(server, where):
    name = f"slow-load-{where.replace('.', '-').replace('_', '-')}"
    config = "startupTimeout: 2\n" if where == "model-config.yaml" else None
    mar(server.store, name, SLOW_LOAD, config)
    extra = {"startup_timeout": 2} if where == "startup_timeout" else {}
    began = time.monotonic()
    answer = register(server, url=f"{name}.mar", **extra)
    took = time.monotonic() - began
    message = ts_error(answer, 500, kind="InternalServerException")
    assert message.startswith(f"Failed to start workers for model {name} version: 1.0. Cause: ")
    assert "Backend worker did not respond in given time" in message
    assert "startupTimeout (2s)" in message
    assert 2 <= took < 15, took
    # TorchServe's log lines for it, consecutive, which its tests wait for.
    lines = server.log_text().splitlines()
    errors = [i for i, line in enumerate(lines) if "Backend worker error" in line]
    assert errors and any(
        "org.pytorch.serve.wlm.WorkerInitializationException: Backend worker did not respond "
        "in given time" in lines[i + 1] for i in errors if i + 1 < len(lines)), errors
    assert requests.get(f"{server.management}/models/{name}").status_code == 404
    healthy(server)


def test_startup_timeouts_are_described_and_written_to_snapshots(server):
    mar(server.store, "quick", SLOW_PREDICT)
    assert ts_status(register(server, url="quick.mar", initial_workers=0))
    assert describe(server, "quick")["startupTimeout"] == 30  # default_startup_timeout
    assert ts_status(register(server, url="quick.mar", model_name="quick7", initial_workers=0,
                              startup_timeout=7))
    assert describe(server, "quick7")["startupTimeout"] == 7
    latest = sorted((server.workdir / "logs" / "config").glob("*.cfg"))[-1]
    props = jproperties.Properties()
    props.load(latest.read_bytes(), "utf-8")
    models = json.loads(props["model_snapshot"].data)["models"]
    assert models["quick"]["1.0"]["startupTimeout"] == 30
    assert models["quick7"]["1.0"]["startupTimeout"] == 7
    for name in ("quick", "quick7"):
        assert requests.delete(f"{server.management}/models/{name}").ok


def test_a_worker_failing_past_max_retry_timeout_gives_up(server):
    mar(server.store, "broken", BROKEN, "maxRetryTimeoutInSec: 1\n")
    answer = register(server, url="broken.mar", synchronous="false")
    assert answer.status_code == 202, answer.text
    described = describe(server, "broken")
    assert described["maxRetryTimeoutInSec"] == 1

    def gave_up():
        worker = describe(server, "broken")["workers"][0]
        return worker if "gave up" in worker.get("failure", "") else None

    worker = wait_for(gave_up)
    assert worker["status"] == "FAILED" and "maxRetryTimeoutInSec (1s)" in worker["failure"]
    assert "this handler never loads" in worker["failure"]
    # It stays given up: no more restarts.
    time.sleep(1.5)
    assert describe(server, "broken")["workers"][0]["status"] == "FAILED"
    log = server.log_text()
    assert re.search(r"worker W-\d+-broken_1\.0: worker gave up", log)
    # Each attempt's traceback ends the log lines naming the exception, as TorchServe's do:
    # the server's own lines about the restart do not repeat it.
    attempts = log[:log.index("worker gave up")].split("RuntimeError: this handler never loads")
    assert len(attempts) > 2, attempts
    for attempt in attempts[:-1]:
        assert "Traceback (most recent call last)" in attempt
        assert 'raise RuntimeError("this handler never loads")' in attempt
    ts_error(predict(server, "broken"), 503, kind="ServiceUnavailableException")
    assert requests.delete(f"{server.management}/models/broken").ok


def test_job_queue_size_is_per_model(server):
    mar(server.store, "small-queue", SLOW_PREDICT, "jobQueueSize: 2\n")
    assert ts_status(register(server, url="small-queue.mar"))
    assert describe(server, "small-queue")["jobQueueStatus"] == {
        "remainingCapacity": 2, "pendingRequests": 0}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: predict(server, "small-queue"), range(8)))
    codes = sorted(a.status_code for a in answers)
    # One in the worker, one sent ahead to it, two queued: the rest are refused.
    assert codes.count(200) <= 4 and codes.count(503) >= 4, codes
    refused = next(a for a in answers if a.status_code == 503)
    assert "too many queued requests (job_queue_size 2)" in refused.json()["message"]
    assert requests.delete(f"{server.management}/models/small-queue").ok


def test_requests_queued_past_the_client_timeout_are_dropped(server):
    mar(server.store, "impatient", SLOW_PREDICT, "clientTimeoutInMills: 300\n")
    assert ts_status(register(server, url="impatient.mar"))
    assert describe(server, "impatient")["clientTimeoutInMills"] == 300
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        first = pool.submit(predict, server, "impatient")
        time.sleep(0.3)
        later = [pool.submit(predict, server, "impatient") for _ in range(2)]
        assert first.result().text == "done"
        for answer in later:
            message = ts_error(answer.result(), 503, kind="ServiceUnavailableException")
            assert "clientTimeoutInMills (300 ms)" in message
    assert predict(server, "impatient").text == "done"
    assert "due to client timeout" in server.log_text()
    assert requests.delete(f"{server.management}/models/impatient").ok


def test_job_tickets_refuse_requests_when_no_worker_is_free(server):
    mar(server.store, "ticketed", SLOW_PREDICT, "useJobTicket: true\n")
    assert ts_status(register(server, url="ticketed.mar"))
    assert describe(server, "ticketed")["useJobTicket"] is True
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        busy = pool.submit(predict, server, "ticketed")
        time.sleep(0.3)
        began = time.monotonic()
        refused = predict(server, "ticketed")
        assert time.monotonic() - began < 0.5
        ts_error(refused, 503, kind="ServiceUnavailableException")
        assert busy.result().text == "done"
    assert predict(server, "ticketed").text == "done"
    assert requests.delete(f"{server.management}/models/ticketed").ok


def wheel(directory: Path) -> Path:
    """A pure-Python wheel of package `lifepkg`, installable without an index."""
    path = directory / "lifepkg-1.0-py3-none-any.whl"
    files = {
        "lifepkg/__init__.py": "VALUE = 1\n",
        "lifepkg-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: lifepkg\nVersion: 1.0\n",
        "lifepkg-1.0.dist-info/WHEEL": ("Wheel-Version: 1.0\nGenerator: test\n"
                                        "Root-Is-Purelib: true\nTag: py3-none-any\n"),
    }
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
        record = "".join(f"{name},,\n" for name in files) + "lifepkg-1.0.dist-info/RECORD,,\n"
        z.writestr("lifepkg-1.0.dist-info/RECORD", record)
    return path


def test_use_venv_runs_workers_in_an_environment_of_the_models_own(server, tmp_path):
    requirements = f"{wheel(tmp_path)}\n"
    mar(server.store, "venv", WHERE, "useVenv: true\n", **{"requirements.txt": requirements})
    assert ts_status(register(server, url="venv.mar"))
    assert describe(server, "venv")["useVenv"] is True
    answer = predict(server, "venv").json()
    prefix = Path(answer["prefix"])
    assert prefix.parent.name == "venvs" and prefix.name.startswith("venv-")
    assert Path(answer["lifepkg"]).is_relative_to(prefix)
    assert not Path(answer["torch"]).is_relative_to(prefix)  # inherited from the server
    # The server's own environment did not get the package.
    found = subprocess.run([str(PYTHON), "-c", "import lifepkg"], capture_output=True)
    assert found.returncode != 0
    assert requests.delete(f"{server.management}/models/venv").ok
    wait_for(lambda: not prefix.exists())


def test_torchrun_without_a_parallel_type_is_named_in_a_warning(server):
    config = "minWorkers: 1\ntorchrun:\n  nproc-per-node: 2\n"
    mar(server.store, "stateful", SLOW_PREDICT, config)
    assert ts_status(register(server, url="stateful.mar"))
    log = server.log_text()
    # torchrun without a parallelType does nothing, in TorchServe as here.
    assert "model stateful: torchrun and parallelLevel are ignored without a parallelType" in log
    assert "key minWorkers" not in log
    assert requests.delete(f"{server.management}/models/stateful").ok
