"""Fixtures that run the real worker process, with the test acting as the server."""

import sys
from pathlib import Path

import pytest

PYTHON_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PYTHON_DIR))

from worker_harness import WorkerConnection, write_source  # noqa: E402  (needs PYTHON_DIR)


@pytest.fixture
def model_dir(tmp_path):
    """An empty model directory."""
    path = tmp_path / "model"
    path.mkdir()
    return path


@pytest.fixture
def start_worker(tmp_path):
    """`start_worker()` → a connected WorkerConnection; every worker is stopped afterwards."""
    workers = []

    def start():
        worker = WorkerConnection.start(PYTHON_DIR, tmp_path / f"worker{len(workers)}.log")
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


@pytest.fixture
def loaded(start_worker, model_dir):
    """`loaded(source, handler="handler.py", **load_fields)` → a worker that has loaded
    `source` written as handler.py (asserting the load succeeded)."""

    def load(source, handler="handler.py", **fields):
        write_source(model_dir, "handler.py", source)
        worker = start_worker()
        reply = worker.load(handler, model_dir, **fields)
        assert reply == {"kind": "loaded", "pid": worker.process.pid}, worker.log()
        return worker

    return load
