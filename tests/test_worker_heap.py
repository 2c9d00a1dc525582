"""A worker's C heap keeps the memory a batch freed while the worker is busy (the next batch
takes no fresh pages) and gives it back once the worker has been idle for a second; where the
environment sets the allocator up, it is left as set."""

import time

import pytest
import requests

from support.api import ready_pids, register_archive as register
from support.archives import build_mar, manifest
from support.processes import rss_kib

#: Each request fills and frees BLOCKS blocks of 16 MB twice, and answers with the minor page
#: faults the second round took: blocks that size come from the heap once glibc has seen one
#: freed, and glibc's defaults trim the heap's free top after each round.
HANDLER = '''
import resource

BLOCKS = 12


def fill():
    blocks = [b"\\x01" * (16 << 20) for _ in range(BLOCKS)]
    del blocks


def handle(data, context):
    if data is None:
        return None
    fill()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fill()
    return [{"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}
            for _ in data]
'''

#: Pages of 4 KiB the blocks of one round hold.
ROUND_PAGES = 12 * (16 << 20) // 4096


def build(store, name):
    build_mar(store, name, {"h.py": HANDLER}, manifest(name, "h.py:handle"))


def faults(server, name):
    answer = requests.post(f"{server.inference}/predictions/{name}", data="1", timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()["faults"]


@pytest.fixture(scope="module")
def server(start_module_server):
    server = start_module_server()
    build(server.store, "heap")
    register(server, "heap")
    return server


def test_a_busy_worker_reuses_what_it_freed(server):
    faults(server, "heap")
    assert faults(server, "heap") < ROUND_PAGES // 20


def test_an_idle_worker_gives_its_freed_memory_back(server):
    [pid] = ready_pids(server, "heap")
    faults(server, "heap")
    after_batch = rss_kib(pid)
    deadline = time.monotonic() + 10
    while rss_kib(pid) > after_batch - 150 * 1024 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert rss_kib(pid) <= after_batch - 150 * 1024, (after_batch, rss_kib(pid))


def test_an_allocator_the_user_set_is_left_alone(start_server):
    server = start_server(env={"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    build(server.store, "plain")
    register(server, "plain")
    faults(server, "plain")
    # glibc's own trim threshold gives each round's blocks back: the next round faults them in.
    assert faults(server, "plain") > ROUND_PAGES // 2
