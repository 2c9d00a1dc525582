"""Fixtures that start the real server binary with real Python workers."""

import pytest

from support.server import OPEN_FLAGS, Server


def _servers(tmp_path_factory, request):
    """A factory `start(properties=None, args=OPEN_FLAGS, store=None, workdir=None)` → a
    started Server (pass `args=()` for the secure defaults);
    every server it started is stopped afterwards, its log printed if a test failed."""
    servers = []

    def start(properties=None, args=OPEN_FLAGS, store=None, workdir=None):
        workdir = workdir or tmp_path_factory.mktemp("server")
        store = store or workdir / "store"
        store.mkdir(exist_ok=True)
        server = Server(workdir, store, properties, args)
        servers.append(server)
        return server.start()

    yield start
    failed = request.session.testsfailed > getattr(request, "_failed_before", 0)
    for server in servers:
        server.stop()
        if failed:
            print(f"--- server log ({server.workdir}) ---\n{server.log_text()[-20000:]}")


@pytest.fixture
def start_server(tmp_path_factory, request):
    """A server factory for one test; each server runs in a fresh directory."""
    request._failed_before = request.session.testsfailed
    yield from _servers(tmp_path_factory, request)


@pytest.fixture(scope="module")
def start_module_server(tmp_path_factory, request):
    """A server factory whose servers live for the whole test module."""
    request._failed_before = request.session.testsfailed
    yield from _servers(tmp_path_factory, request)
