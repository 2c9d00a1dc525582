"""Fixtures that start the real server binary with real Python workers."""

import sys

import pytest

from support import grpc_stubs
from support.server import OPEN_FLAGS, Server
from support.ts_packages import PACKAGES, REFERENCE

#: Servers started and not yet stopped: a failing test's report shows their logs.
LIVE = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if report.failed:
        for server in LIVE:
            report.sections.append((f"server log {server.workdir}", server.log_text()[-20000:]))


def _servers(tmp_path_factory):
    """A factory `start(properties=None, args=OPEN_FLAGS, store=None, workdir=None,
    fd_limit=None, healthy=True, env=None, https=None)` → a started Server (pass `args=()` for
    the secure defaults, `healthy=False` not to wait for /ping to be Healthy, `env` for variables
    to set for it, `https` for the listeners to serve as https://); every server it started is
    stopped afterwards (SIGTERM, then SIGKILL after a timeout)."""
    servers = []

    def start(properties=None, args=OPEN_FLAGS, store=None, workdir=None, fd_limit=None,
              healthy=True, env=None, https=None):
        workdir = workdir or tmp_path_factory.mktemp("server")
        store = store or workdir / "store"
        store.mkdir(exist_ok=True)
        server = Server(workdir, store, properties, args, fd_limit, env, https)
        servers.append(server)
        LIVE.append(server)
        return server.start(healthy=healthy)

    yield start
    for server in servers:
        server.stop()
        LIVE.remove(server)


@pytest.fixture
def start_server(tmp_path_factory):
    """A server factory for one test; each server runs in a fresh directory."""
    yield from _servers(tmp_path_factory)


@pytest.fixture(scope="module")
def start_module_server(tmp_path_factory):
    """A server factory whose servers live for the whole test module."""
    yield from _servers(tmp_path_factory)


@pytest.fixture(scope="module", params=PACKAGES)
def ts_package(request):
    """Which `ts` package the module's workers import: "stand-in" (torchyard's) or
    "torchserve" (TorchServe's own); pass `worker_env(ts_package)` as the server's `env`."""
    if request.param == "torchserve" and not (REFERENCE / "ts").is_dir():
        pytest.skip(f"TorchServe's ts package is absent from {REFERENCE}: run scripts/setup.sh")
    return request.param


@pytest.fixture(scope="module")
def inference_pb(tmp_path_factory):
    """Python stubs of TorchServe's inference.proto, generated for one test module."""
    pytest.importorskip("grpc_tools")
    out = tmp_path_factory.mktemp("stubs")
    yield grpc_stubs.generate(out)
    sys.path.remove(str(out))
