"""Crashes and restarts: snapshots that keep everything acknowledged (also when a change comes
during the restore, or an archive is unreadable for one start), workers that die with the server,
runtime directories of killed servers removed at the next start, and a SIGTERM that cannot be
held up by a stuck request."""

import json
import os
import random
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import jproperties
import requests

from support.archives import build_mar, manifest, war
from support.processes import alive, wait_gone

#: A handler that answers at once (models registered with 0 workers never even run it).
QUICK = '''
def handle(data, context):
    return None if data is None else [0 for _ in data]
'''

#: A handler stuck for a minute in every prediction.
STUCK = '''
import time


def handle(data, context):
    if data is None:
        return None
    time.sleep(60)
    return ["late" for _ in data]
'''

#: A workflow handler whose import takes a while, so that restoring its workflow is slow.
SLOW_IMPORT = '''
import time

time.sleep(2)


def node(data, context):
    return data
'''

FUNCTION_SPEC = "models:\n  min-workers: 1\n  max-workers: 1\ndag:\n  node: []\n"


def python_mar(store: Path, name: str, handler: str = QUICK) -> Path:
    return build_mar(store, name, {"h.py": handler}, manifest(name, "h.py"))


def workflow_war(store: Path, name: str, handler: str = QUICK, version: str = "1.0") -> Path:
    handler = handler.replace("def handle(", "def node(")
    path = war(store, name, FUNCTION_SPEC, handler, version)
    return path.rename(store / f"{name}-{version}.war")


def register_model(server, name, **params):
    params = {"url": f"{name}.mar", "initial_workers": 0, "synchronous": "true", **params}
    answer = requests.post(f"{server.management}/models", params=params, timeout=60)
    assert answer.status_code == 200, answer.text


def register_workflow(server, archive):
    answer = requests.post(f"{server.management}/workflows", params={"url": archive},
                           timeout=60)
    assert answer.status_code == 200, answer.text


def wait_restored(server):
    """Returns once the restore at start has finished: every change waits for it, and a
    scale of a model nobody has answers 404 afterwards."""
    answer = requests.put(f"{server.management}/models/restore-probe", timeout=120)
    assert answer.status_code == 404, answer.text


def names(server, kind):
    listed = requests.get(f"{server.management}/{kind}", params={"limit": 1000}).json()[kind]
    key = "modelName" if kind == "models" else "workflowName"
    return {entry[key] for entry in listed if "__" not in entry[key]}


def worker_pid(server, model):
    workers = requests.get(f"{server.management}/models/{model}").json()[0]["workers"]
    assert workers and workers[0]["pid"], workers
    return workers[0]["pid"]


def runtime_dir(pid: int) -> Path:
    """The runtime directory marked as server `pid`'s."""
    for path in Path(tempfile.gettempdir()).glob("torchyard-*"):
        try:
            if (path / "server.pid").read_text().split()[0] == str(pid):
                return path
        except (OSError, IndexError):
            continue
    raise AssertionError(f"no runtime directory is marked with pid {pid}")


def predict_in_background(server, model):
    """Starts a prediction on a thread; returns the thread and the list its outcome goes to."""
    outcome = []

    def send():
        started = time.monotonic()
        try:
            answer = requests.post(f"{server.inference}/predictions/{model}", data="1",
                                   timeout=30)
            outcome.append((answer.status_code, time.monotonic() - started))
        except requests.RequestException as exc:
            outcome.append((type(exc).__name__, time.monotonic() - started))

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread, outcome


def test_change_during_restore_keeps_the_workflows(start_server):
    server = start_server()
    python_mar(server.store, "double")
    example = workflow_war(server.store, "example", SLOW_IMPORT)
    register_model(server, "double")
    register_workflow(server, example.name)
    server.stop()

    again = start_server(store=server.store, workdir=server.workdir)
    answer = requests.put(f"{again.management}/models/double", params={"min_worker": 1},
                          timeout=60)
    assert answer.status_code == 202, answer.text
    # The change waited for the restore, so what it wrote holds the workflow.
    assert names(again, "workflows") == {"example"}
    again.stop(signal.SIGKILL)

    third = start_server(store=server.store, workdir=server.workdir)
    wait_restored(third)
    assert names(third, "workflows") == {"example"}
    described = requests.get(f"{third.management}/models/double").json()[0]
    assert described["minWorkers"] == 1


def test_archive_unreadable_at_one_start_is_restored_at_the_next(start_server, tmp_path):
    """A model archive missing from the store stops the start, as in TorchServe; one that
    cannot be read fails only its own restore and is tried again at the next start."""
    server = start_server()
    for name in ("kept", "dropped"):
        python_mar(server.store, name)
        register_model(server, name)
    flow = workflow_war(server.store, "flow")
    register_workflow(server, flow.name)
    server.stop()
    aside = tmp_path / "aside"
    aside.mkdir()
    archives = ["kept.mar", "dropped.mar", flow.name]
    for archive in archives:
        shutil.move(server.store / archive, aside / archive)
        (server.store / archive).write_bytes(b"junk data")

    again = start_server(store=server.store, workdir=server.workdir)
    wait_restored(again)
    assert names(again, "models") == set() and names(again, "workflows") == set()
    python_mar(server.store, "other")
    register_model(again, "other")
    latest = sorted((server.workdir / "logs/config").glob("*.cfg"))[-1]
    snapshot = jproperties.Properties()
    snapshot.load(latest.read_bytes(), "utf-8")
    models = json.loads(snapshot["model_snapshot"].data)["models"]
    assert set(models) == {"kept", "dropped", "other"}
    workflows = json.loads(snapshot["workflow_snapshot"].data)["workflows"]
    assert [w["name"] for w in workflows] == ["flow"]
    # Unregistering a name that failed to restore forgets it, though nothing was loaded.
    assert requests.delete(f"{again.management}/models/dropped").status_code == 404
    again.stop(signal.SIGKILL)
    for archive in archives:
        shutil.move(aside / archive, server.store / archive)

    third = start_server(store=server.store, workdir=server.workdir)
    wait_restored(third)
    assert names(third, "models") == {"kept", "other"}
    assert names(third, "workflows") == {"flow"}


def test_workers_die_with_a_killed_server(start_server):
    server = start_server()
    python_mar(server.store, "stuck", STUCK)
    register_model(server, "stuck", initial_workers=1)
    pid = worker_pid(server, "stuck")
    thread, _ = predict_in_background(server, "stuck")
    time.sleep(1.0)
    assert alive(pid)
    server.stop(signal.SIGKILL)
    assert wait_gone(pid, 5), f"worker {pid} outlived its server"
    thread.join(5)


def test_a_killed_servers_runtime_dir_is_removed_at_the_next_start(start_server):
    killed = start_server()
    live = start_server()
    killed_dir, live_dir = runtime_dir(killed.process.pid), runtime_dir(live.process.pid)
    (killed_dir / "unpacked.bin").write_bytes(b"\0" * 1_000_000)
    killed.stop(signal.SIGKILL)
    assert killed_dir.exists()

    start_server()
    deadline = time.monotonic() + 10
    while killed_dir.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not killed_dir.exists(), "the killed server's runtime directory is still there"
    assert (live_dir / "server.pid").is_file()
    assert requests.get(f"{live.inference}/ping").ok


def test_sigterm_with_a_stuck_request_exits_within_the_deadline(start_server):
    server = start_server(properties={"shutdown_timeout": 3})
    python_mar(server.store, "stuck", STUCK)
    register_model(server, "stuck", initial_workers=1)
    pid = worker_pid(server, "stuck")
    thread, outcome = predict_in_background(server, "stuck")
    time.sleep(1.0)
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(20)
    took = time.monotonic() - signalled
    assert took < 3 + 2 + 2, f"the server took {took:.1f}s to exit"
    thread.join(10)
    assert outcome, "the stuck client is still waiting"
    status, _ = outcome[0]
    assert status != 200, outcome
    assert "cut off" in server.log_text() or "still draining" in server.log_text()
    assert wait_gone(pid, 5), f"worker {pid} outlived its server"


# --- SIGKILL at random moments -------------------------------------------------------------

MODELS = ("m0", "m1", "m2")
WORKFLOWS = ("w0", "w1")


def observe(server):
    """What the server has: {"models": {name: [min, max]}, "workflows": {name: [version,
    [min, max] of its node]}}."""
    models = {}
    for name in names(server, "models"):
        described = requests.get(f"{server.management}/models/{name}").json()[0]
        models[name] = [described["minWorkers"], described["maxWorkers"]]
    workflows = {}
    for name in names(server, "workflows"):
        versions = requests.get(f"{server.management}/workflows/{name}/all").json()
        assert len(versions) == 1, versions
        workflows[name] = [versions[0]["workflowVersion"], versions[0]["nodes"][0]["workers"]]
    return {"models": models, "workflows": workflows}


def random_change(rng, state):
    """A change that makes sense in `state`: (method, path, params, the state after it)."""
    after = json.loads(json.dumps(state))
    models, workflows = after["models"], after["workflows"]
    choices = []
    for name in MODELS:
        if name not in models:
            choices.append(("POST", "/models", {"url": f"{name}.mar", "initial_workers": 0},
                            lambda n=name: models.__setitem__(n, [0, 0])))
        else:
            top = rng.randint(1, 4)
            choices.append(("PUT", f"/models/{name}", {"min_worker": 0, "max_worker": top},
                            lambda n=name, t=top: models.__setitem__(n, [0, t])))
            choices.append(("DELETE", f"/models/{name}", {}, lambda n=name: models.pop(n)))
    for name in WORKFLOWS:
        if name not in workflows:
            choices.append(("POST", "/workflows", {"url": f"{name}-1.0.war"},
                            lambda n=name: workflows.__setitem__(n, ["1.0", [1, 1]])))
            continue
        version = "2.0" if workflows[name][0] == "1.0" else "1.0"
        top = rng.randint(1, 3)
        choices += [
            ("PUT", f"/workflows/{name}", {"url": f"{name}-{version}.war"},
             lambda n=name, v=version: workflows.__setitem__(n, [v, [1, 1]])),
            ("PUT", f"/workflows/{name}", {"min_worker": 1, "max_worker": top,
                                           "synchronous": "true"},
             lambda n=name, t=top: workflows[n].__setitem__(1, [1, t])),
            ("DELETE", f"/workflows/{name}", {}, lambda n=name: workflows.pop(n)),
        ]
    method, path, params, apply = rng.choice(choices)
    apply()
    return method, path, params, after


def send(server, change):
    method, path, params, _ = change
    return requests.request(method, f"{server.management}{path}", params=params, timeout=60)


def kill_during(server, change, rng, longest):
    """Sends `change` (if any) and SIGKILLs the server within `longest` seconds; returns the
    answer, or None when none came before the kill."""
    outcome = []

    def attempt():
        try:
            outcome.append(send(server, change))
        except requests.RequestException:
            pass

    thread = threading.Thread(target=attempt, daemon=True)
    if change:
        thread.start()
    time.sleep(rng.uniform(0, longest))
    server.stop(signal.SIGKILL)
    if change:
        thread.join(10)
    return outcome[0] if outcome else None


def test_sigkill_at_random_moments_loses_nothing_acknowledged(start_server):
    seed = int(os.environ.get("CRASH_SEED", time.time_ns() % 100_000))
    rng = random.Random(seed)
    server = start_server()
    for name in MODELS:
        python_mar(server.store, name)
    for name in WORKFLOWS:
        for version in ("1.0", "2.0"):
            workflow_war(server.store, name, version=version)
    state = {"models": {}, "workflows": {}}
    candidates = [state]
    for round_ in range(12):
        if round_:
            server = start_server(store=server.store, workdir=server.workdir)
        context = f"seed {seed}, round {round_}"
        if round_ and rng.random() < 0.3:
            # Kill it while it restores, with a change waiting for the restore to end.
            change = random_change(rng, candidates[0]) if len(candidates) == 1 else None
            answer = kill_during(server, change, rng, 0.6)
            if answer is not None:
                assert answer.ok, f"{context}: {change[:3]} → {answer.status_code} {answer.text}"
                candidates = [change[3]]
            elif change:
                candidates = candidates + [change[3]]
            continue
        wait_restored(server)
        restored = observe(server)
        assert restored in candidates, f"{context}: restored {restored}, expected {candidates}"
        state = restored
        for _ in range(rng.randint(0, 3)):
            change = random_change(rng, state)
            answer = send(server, change)
            assert answer.ok, f"{context}: {change[:3]} → {answer.status_code} {answer.text}"
            state = change[3]
        change = random_change(rng, state)
        answer = kill_during(server, change, rng, 0.25)
        if answer is not None:
            assert answer.ok, f"{context}: {change[:3]} → {answer.status_code} {answer.text}"
            candidates = [change[3]]
        else:
            candidates = [state, change[3]]
    server = start_server(store=server.store, workdir=server.workdir)
    wait_restored(server)
    assert observe(server) in candidates, f"seed {seed}: final restore"
