"""Core pinning (`cpu_launcher_enable`): each worker of a model runs on its own slice of the
physical cores, every thread of it, with as many torch threads as its slice has cores; when
the pool grows or shrinks the live workers are pinned again in place, and describe shows each
worker's cores."""

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from support.api import describe, register_archive as register, scale, wait_ready
from support.archives import build_mar, manifest
from support.server import wait_for_log

#: Answers each request with its worker's pid, torch's intra-op thread count, and the CPUs the
#: handler was imported on.
HANDLER = '''
import os

import torch

LOADED_ON = sorted(os.sched_getaffinity(0))


def handle(data, context):
    if data is None:
        return None
    return [{"pid": os.getpid(), "threads": torch.get_num_threads(), "loaded_on": LOADED_ON}
            for _ in data]
'''


def physical_cores():
    """The cores the server shares out: of the CPUs this process may use, the lowest logical
    CPU of each physical core."""
    allowed = sorted(os.sched_getaffinity(0))

    def siblings(cpu):
        path = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        cpus = set()
        for part in path.read_text().strip().split(","):
            start, _, end = part.partition("-")
            cpus.update(range(int(start), int(end or start) + 1))
        return cpus

    return [cpu for cpu in allowed if not any(s < cpu and s in allowed for s in siblings(cpu))]


CORES = physical_cores()

pytestmark = [
    pytest.mark.skipif(len(CORES) < 2, reason="one core cannot be split between workers"),
    pytest.mark.skipif("OMP_NUM_THREADS" in os.environ,
                       reason="OMP_NUM_THREADS configures every worker's threads"),
]


def cpu_list(cores):
    """Linux's list form, `0-3,6`."""
    ranges = []
    for core in sorted(cores):
        if ranges and ranges[-1][1] + 1 == core:
            ranges[-1][1] = core
        else:
            ranges.append([core, core])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def allowed_cores(pid):
    """Every thread's `Cpus_allowed_list` of process `pid`: one list when they all agree."""
    lists = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        lists.update(line.split(":", 1)[1].strip() for line in status.splitlines()
                     if line.startswith("Cpus_allowed_list:"))
    assert len(lists) == 1, f"threads of {pid} disagree: {lists}"
    return lists.pop()


def threads_by_pid(server, name, count=32):
    """`count` requests, 8 at a time so that every worker serves some: each pid's thread
    counts."""
    def predict(_):
        answer = requests.post(f"{server.inference}/predictions/{name}", data="1", timeout=60)
        assert answer.status_code == 200, answer.text
        return answer.json()

    got = {}
    with ThreadPoolExecutor(8) as pool:
        for answer in pool.map(predict, range(count)):
            got.setdefault(answer["pid"], set()).add(answer["threads"])
    return got


def workers(server, name):
    """pid → describe's `cpuAffinity` of each worker."""
    return {w["pid"]: w["cpuAffinity"] for w in describe(server, name)["workers"]}


def build(store, name):
    build_mar(store, name, {"h.py": HANDLER}, manifest(name, "h.py:handle"))


@pytest.fixture(scope="module")
def server(start_module_server):
    server = start_module_server({"cpu_launcher_enable": "true",
                                  "cpu_launcher_args": "--disable_numactl --enable_jemalloc"})
    build(server.store, "pinned")
    return server


def test_workers_get_disjoint_slices_and_a_thread_per_core(server):
    register(server, "pinned", 2)
    shown = workers(server, "pinned")
    assert len(shown) == 2
    half = len(CORES) // 2
    slices = [CORES[:half], CORES[half:2 * half]]
    assert sorted(shown.values()) == sorted(cpu_list(s) for s in slices)
    for pid, affinity in shown.items():
        assert allowed_cores(pid) == affinity
    assert threads_by_pid(server, "pinned") == {pid: {half} for pid in shown}
    # Intel's launcher's own settings are accepted, with a warning.
    wait_for_log(server, "--disable_numactl --enable_jemalloc")


def test_scaling_pins_the_live_workers_again_in_place(server):
    # Scaling down keeps the oldest worker, first in the pool.
    first = describe(server, "pinned")["workers"][0]
    survivor, before = first["pid"], first["cpuAffinity"]
    scale(server, "pinned", 1)
    assert workers(server, "pinned") == {survivor: cpu_list(CORES)}
    assert allowed_cores(survivor) == cpu_list(CORES)
    assert threads_by_pid(server, "pinned", 4) == {survivor: {len(CORES)}}
    scale(server, "pinned", 2)
    shown = workers(server, "pinned")
    assert shown[survivor] == before == allowed_cores(survivor)
    [newcomer] = set(shown) - {survivor}
    assert allowed_cores(newcomer) == shown[newcomer] != before
    assert threads_by_pid(server, "pinned") == {pid: {len(CORES) // 2} for pid in shown}


def test_a_restarted_worker_gets_its_slice_again(server):
    before = workers(server, "pinned")
    killed = next(iter(before))
    os.kill(killed, signal.SIGKILL)
    [successor] = set(wait_ready(server, "pinned", 2, not_in=[killed])) - set(before)
    assert allowed_cores(successor) == workers(server, "pinned")[successor] == before[killed]


def test_env_var_pins_fresh_interpreters_with_a_fixed_slice(start_server):
    """`TS_CPU_LAUNCHER_ENABLE`/`_ARGS` as TorchServe reads them, workers started as fresh
    interpreters, and `--ncores_per_instance` fixing each worker's cores."""
    server = start_server({"enable_envvars_config": "true", "fork_workers": "false"},
                          env={"TS_CPU_LAUNCHER_ENABLE": "true",
                               "TS_CPU_LAUNCHER_ARGS": "--ncores_per_instance 1"})
    build(server.store, "one")
    register(server, "one", 1)
    [(pid, affinity)] = workers(server, "one").items()
    assert allowed_cores(pid) == affinity == str(CORES[0])
    assert describe(server, "one")["workers"][0]["startMode"] == "spawn"
    assert threads_by_pid(server, "one", 4) == {pid: {1}}
    # A fresh interpreter loads its handler on its own cores already.
    answer = requests.post(f"{server.inference}/predictions/one", data="1", timeout=60)
    assert answer.json()["loaded_on"] == [CORES[0]], answer.text


def test_without_the_key_a_worker_may_use_every_core(start_server):
    server = start_server({})
    build(server.store, "free")
    register(server, "free", 1)
    [worker] = describe(server, "free")["workers"]
    assert "cpuAffinity" not in worker
    assert allowed_cores(worker["pid"]) == cpu_list(os.sched_getaffinity(0))
