"""Hostile archive contents (issue 10, items 3-5): manifests naming files outside the archive,
devices and fifos, YAML nested 100,000 deep, zip bombs and archives refused after unpacking.
Each is refused with a JSON 400 that echoes nothing from outside, quickly, without stalling
the server, and leaves nothing unpacked behind."""

import io
import json
import os
import resource
import tarfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from support.api import assert_error
from support.archives import build_mar, manifest

#: Small caps, so the limit tests stay light on this machine.
MAX_BYTES = 96 << 20
MAX_ENTRIES = 100
MiB = 1 << 20
HANDLER = "def handle(data, context):\n    return data\n"
FUNCTIONS = "def pre(data, context):\n    return data\n"


@pytest.fixture(scope="module")
def server(start_module_server, tmp_path_factory):
    """One server whose runtime directory (where archives are unpacked) is under a folder of
    its own, with an address-space cap so an attack that reads /dev/zero cannot take the
    machine's memory."""
    tmp = tmp_path_factory.mktemp("runtime")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(tmp))
        server = start_module_server({"max_archive_unpacked_bytes": MAX_BYTES,
                                      "max_archive_entries": MAX_ENTRIES})
    resource.prlimit(server.process.pid, resource.RLIMIT_AS, (4 << 30, 4 << 30))
    [server.runtime] = tmp.glob("torchyard-*")
    return server


def unpacked(server):
    """What the server holds unpacked: the entries of its runtime models/ and workflows/."""
    return [p for sub in ("models", "workflows") if (server.runtime / sub).is_dir()
            for p in (server.runtime / sub).iterdir()]


def refused(answer, *absent):
    """Asserts a JSON 400 whose message contains none of `absent`; returns the message."""
    message = assert_error(answer, 400, "BadRequestException")["message"]
    for text in absent:
        assert text not in message, message
    return message


def register(server, **params):
    """POST /models, synchronous; a server that hangs fails the test instead of stalling it."""
    return requests.post(f"{server.management}/models", params={"synchronous": "true", **params},
                         timeout=30)


def register_workflow(server, url):
    return requests.post(f"{server.management}/workflows", params={"url": url}, timeout=30)


def build_war(store: Path, name: str, files: dict, spec_file="spec.yaml", handler="h.py") -> Path:
    """A .war zip with `files` and a manifest naming `spec_file` and `handler` as given."""
    target = store / f"{name}.war"
    manifest_json = {"createdOn": "24/11/2026 10:00:00", "archiverVersion": "0.12.0",
                     "workflow": {"workflowName": name, "workflowVersion": "1.0",
                                  "specFile": spec_file, "handler": handler}}
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("WAR-INF/MANIFEST.json", json.dumps(manifest_json))
        for path, data in files.items():
            z.writestr(path, data)
    return target


def zeros_archive(store: Path, name: str, size: int, manifest_text: str, fmt: str,
                  manifest_path="MAR-INF/MANIFEST.json") -> Path:
    """An archive with `size` bytes of zeros (a few hundred KB compressed) and the manifest
    text as given, written without holding the zeros in memory."""
    chunk = bytes(MiB)
    if fmt == "zip":
        target = store / f"{name}.{'war' if manifest_path.startswith('WAR') else 'mar'}"
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(manifest_path, manifest_text)
            with z.open("zeros.bin", "w") as out:
                for _ in range(size // MiB):
                    out.write(chunk)
        return target
    target = store / f"{name}.tar.gz"
    zeros = store / f"{name}.zeros"
    with open(zeros, "wb") as out:
        out.truncate(size)
    with tarfile.open(target, "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo(f"{name}/{manifest_path}")
        info.size = len(manifest_text)
        tar.addfile(info, fileobj=io.BytesIO(manifest_text.encode()))
        tar.add(zeros, f"{name}/zeros.bin")
    zeros.unlink()
    return target


class Pinger:
    """Pings the inference port every 50 ms on a thread, recording each answer's latency
    (None when it failed or took over `timeout`)."""

    def __init__(self, server, timeout=1.0):
        self.url, self.timeout = f"{server.inference}/ping", timeout
        self.latencies, self.done = [], threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        with requests.Session() as session:
            while not self.done.is_set():
                start = time.monotonic()
                try:
                    ok = session.get(self.url, timeout=self.timeout).ok
                except requests.RequestException:
                    ok = False
                self.latencies.append(time.monotonic() - start if ok else None)
                time.sleep(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()


# Item 3: files outside the archive.

@pytest.mark.parametrize("field, name", [
    ("configFile", "/etc/passwd"),
    ("configFile", "../../../../../../../../etc/passwd"),
    ("configFile", "sub/../../../../../../../../etc/passwd"),
    ("requirementsFile", "/etc/passwd"),
    ("requirementsFile", "../../../../../../../../etc/passwd"),
])
def test_manifest_names_outside_the_archive_are_refused_without_echo(server, field, name):
    build_mar(server.store, "outside", {"h.py": HANDLER}, manifest("outside", "h.py",
                                                                   **{field: name}))
    message = refused(register(server, url="outside.mar"), "root:")
    assert name in message and "inside the archive" in message
    assert unpacked(server) == []


def test_a_handler_file_outside_the_archive_is_never_run(server, tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil_handler.py"
    evil.write_text(f"open({str(marker)!r}, 'w').close()\n" + HANDLER)
    build_mar(server.store, "evil", {"h.py": HANDLER}, manifest("evil", str(evil)))
    refused(register(server, url="evil.mar"))
    build_mar(server.store, "evil2", {"h.py": HANDLER}, manifest("evil2", "h.py"))
    refused(register(server, url="evil2.mar", handler=f"../../../../../../..{evil}"))
    assert not marker.exists()
    assert unpacked(server) == []


@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory"])
def test_directory_archives_cannot_point_the_config_elsewhere(server, kind):
    name = f"dir{kind}"
    target = build_mar(server.store, name, {"h.py": HANDLER},
                       manifest(name, "h.py", configFile="model-config.yaml"), fmt="dir")
    config = target / "model-config.yaml"
    {"symlink": lambda: os.symlink("/etc/passwd", config), "fifo": lambda: os.mkfifo(config),
     "directory": config.mkdir}[kind]()
    start = time.monotonic()
    message = refused(register(server, url=name), "root:")
    assert time.monotonic() - start < 5
    assert "model-config.yaml" in message


def peak_rss_mib(server):
    """The server process's peak resident memory so far, in MiB."""
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    [line] = [line for line in status.splitlines() if line.startswith("VmHWM:")]
    return int(line.split()[1]) // 1024


def test_dev_zero_as_config_is_refused_at_once(server):
    build_mar(server.store, "zero", {"h.py": HANDLER},
              manifest("zero", "h.py", configFile="/dev/zero"))
    start = time.monotonic()
    refused(register(server, url="zero.mar"))
    assert time.monotonic() - start < 5
    assert requests.get(f"{server.inference}/ping", timeout=1).ok
    # Without the fixture's address-space cap, reading it would go on until memory ran out.
    assert peak_rss_mib(server) < 512


def test_an_oversized_config_inside_the_archive_is_refused(server):
    build_mar(server.store, "bigconfig", {"h.py": HANDLER, "cfg.yaml": "a: " + "x" * (2 * MiB)},
              manifest("bigconfig", "h.py", configFile="cfg.yaml"))
    assert "larger than" in refused(register(server, url="bigconfig.mar"))
    assert unpacked(server) == []


@pytest.mark.parametrize("spec_file, handler", [
    ("/etc/passwd", "h.py"),
    ("../../../../../../../../etc/passwd", "h.py"),
    ("spec.yaml", "/etc/passwd"),
    ("spec.yaml", "../../../../../../../../etc/passwd:pre"),
])
def test_workflow_spec_and_handler_outside_the_archive_are_refused(server, spec_file, handler):
    build_war(server.store, "wout", {"spec.yaml": "dag:\n  pre: []\n", "h.py": FUNCTIONS},
              spec_file, handler)
    message = refused(register_workflow(server, "wout.war"), "root:")
    assert "inside the archive" in message
    assert unpacked(server) == []


# Item 4: deep YAML.

def test_deep_specs_and_model_configs_are_refused_without_stalling_the_server(server):
    deep = "[" * 100_000
    build_war(server.store, "deepspec", {"spec.yaml": deep, "h.py": FUNCTIONS})
    build_war(server.store, "deepspec2", {"spec.yaml": "dag: " + "{a: " * 50_000,
                                          "h.py": FUNCTIONS})
    build_mar(server.store, "deepconfig", {"h.py": HANDLER, "model-config.yaml": deep},
              manifest("deepconfig", "h.py", configFile="model-config.yaml"))

    def timed(call):
        start = time.monotonic()
        return call(), time.monotonic() - start

    calls = [lambda: register_workflow(server, "deepspec.war"),
             lambda: register_workflow(server, "deepspec2.war"),
             lambda: register(server, url="deepconfig.mar")] * 2
    with Pinger(server) as pinger, ThreadPoolExecutor(len(calls)) as pool:
        time.sleep(0.2)
        results = list(pool.map(timed, calls))
        time.sleep(0.2)
    for answer, seconds in results:
        assert "nested deeper than 64" in refused(answer)
        assert seconds < 5, seconds
    assert pinger.latencies and None not in pinger.latencies, pinger.latencies
    assert max(pinger.latencies) < 1
    assert unpacked(server) == []


# Item 5: what refused archives leave on disk.

@pytest.mark.parametrize("fmt", ["zip", "tgz"])
def test_refused_models_leave_nothing_unpacked(server, fmt):
    zeros_archive(server.store, f"junk{fmt}", 64 * MiB, "this is not JSON", fmt)
    url = f"junk{fmt}.{'mar' if fmt == 'zip' else 'tar.gz'}"
    for _ in range(3):
        assert "MANIFEST.json" in refused(register(server, url=url))
        assert unpacked(server) == []


#: How a workflow archive fails after unpacking: its spec and the answer expected.
WORKFLOW_FAILURES = {
    "manifest": (None, 400, "MANIFEST.json"),
    "spec": ("models: [\n", 400, "malformed YAML"),
    "dag": ("dag:\n  pre: [ghost]\n", 400, "ghost"),
    "node": ("models:\n  m:\n    url: missing.mar\ndag:\n  pre: [m]\n", 500, "missing.mar"),
}


@pytest.mark.parametrize("failure", list(WORKFLOW_FAILURES))
def test_refused_workflows_leave_nothing_unpacked(server, failure):
    spec, code, reason = WORKFLOW_FAILURES[failure]
    name = f"wfail{failure}"
    if spec is None:
        zeros_archive(server.store, name, 64 * MiB, "this is not JSON", "zip",
                      manifest_path="WAR-INF/MANIFEST.json")
    else:
        build_war(server.store, name, {"spec.yaml": spec, "h.py": FUNCTIONS,
                                       "zeros.bin": bytes(16 * MiB)})
    for _ in range(2):
        answer = register_workflow(server, f"{name}.war")
        assert reason in assert_error(answer, code, answer.json().get("type"))["message"]
        assert unpacked(server) == []


@pytest.mark.parametrize("fmt", ["zip", "tgz"])
def test_archives_over_the_caps_are_refused_naming_the_limit(server, fmt):
    ext = "mar" if fmt == "zip" else "tar.gz"
    text = json.dumps(manifest("big", "h.py"))
    zeros_archive(server.store, f"big{fmt}", MAX_BYTES + MiB, text, fmt)
    assert "max_archive_unpacked_bytes" in refused(register(server, url=f"big{fmt}.{ext}"))
    assert unpacked(server) == []
    files = {f"f{i}.txt": "x" for i in range(MAX_ENTRIES + 1)}
    build_mar(server.store, f"many{fmt}", files, manifest(f"many{fmt}", "h.py"), fmt=fmt)
    assert "max_archive_entries" in refused(register(server, url=f"many{fmt}.{ext}"))
    assert unpacked(server) == []
