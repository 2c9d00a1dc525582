"""TorchServe's `torchserve` command as torchyard ships it: the wheel built from this checkout,
installed into a fresh venv next to torch, started and stopped as TorchServe's launcher
(`ts/launcher.py`) and its test harness do it, with TorchServe's messages (`ts/model_server.py`)."""

import os
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import requests

from support.archives import scale_mar
from support.processes import alive, wait_gone
from support.server import BINARY, REPO, free_port

RELEASE = BINARY.parent
STARTED = "Model server started."


def config(workdir: Path, **extra) -> Path:
    """A config.properties on free ports; returns its path. The inference URL is in `.url`."""
    ports = [free_port() for _ in range(5)]
    lines = {
        "inference_address": f"http://127.0.0.1:{ports[0]}",
        "management_address": f"http://127.0.0.1:{ports[1]}",
        "metrics_address": f"http://127.0.0.1:{ports[2]}",
        "grpc_inference_port": ports[3],
        "grpc_management_port": ports[4],
        **extra,
    }
    path = workdir / "config.properties"
    path.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))
    return path


def inference_url(config_path: Path, key: str = "inference_address") -> str:
    """The configuration's inference URL, or the one of another `key`."""
    for line in config_path.read_text().splitlines():
        if line.startswith(f"{key}="):
            return line.split("=", 1)[1]
    raise AssertionError(f"no {key}")


class Command:
    """`torchserve` run from one directory, with its own temporary directory (so its own pid
    file) and a clean environment."""

    def __init__(self, executable: Path, workdir: Path):
        self.executable = str(executable)
        self.workdir = workdir
        self.tmp = workdir / "tmp"
        self.tmp.mkdir(exist_ok=True)
        self.env = {**os.environ, "TMPDIR": str(self.tmp), "NO_COLOR": "1"}
        for name in ("TEMP", "TMP", "TS_CONFIG_FILE", "TORCHYARD_PYTHON"):
            self.env.pop(name, None)
        self.servers = []

    @property
    def pid_file(self) -> Path:
        return self.tmp / ".model_server.pid"

    def run(self, *args, timeout=90) -> subprocess.CompletedProcess:
        return subprocess.run([self.executable, *args], cwd=self.workdir, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def start(self, *args) -> list:
        """`torchserve --start ARGS` as `ts/launcher.py` runs it: reads the server's output
        until "Model server started"; returns the lines read."""
        process = subprocess.Popen([self.executable, "--start", *args], cwd=self.workdir,
                                   env=self.env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        self.servers.append(process)
        lines = []
        deadline = time.monotonic() + 120
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if STARTED in line or time.monotonic() > deadline:
                break
        assert any(STARTED in line for line in lines), "\n".join(lines)
        return lines

    def server_pid(self) -> int:
        return int(self.pid_file.read_text())

    def cleanup(self):
        if self.pid_file.exists():
            pid = self.server_pid()
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
                wait_gone(pid, 10)
        for process in self.servers:
            process.stdout.close()
            process.wait(10)


def predict(url: str, data: str, seconds=60) -> requests.Response:
    """POSTs until the model's first worker has loaded (TorchServe's start line comes once the
    models are registered, not once their workers are up)."""
    deadline = time.monotonic() + seconds
    while True:
        answer = requests.post(f"{url}/predictions/double", data={"data": data}, timeout=30)
        if answer.status_code != 503 or time.monotonic() > deadline:
            return answer
        time.sleep(0.2)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel `pip install .` builds (maturin, reusing the release build), installed into a
    fresh venv whose torch is the one already installed in the test's Python (a `.pth` line):
    a user's venv next to torch. Returns the venv's bin directory."""
    root = tmp_path_factory.mktemp("wheel")
    wheels = root / "wheels"
    maturin = Path(sys.executable).parent / "maturin"
    subprocess.run([str(maturin), "build", "--release", "--out", str(wheels)], cwd=REPO,
                   check=True, capture_output=True)
    (wheel,) = wheels.glob("torchyard-*.whl")
    venv = root / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "torch-from-test-python.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps",
                    "--disable-pip-version-check", str(wheel)], check=True)
    return venv / "bin"


@pytest.fixture
def store(tmp_path) -> Path:
    store = tmp_path / "model_store"
    store.mkdir()
    scale_mar(store, "double", 2.0)
    return store


def test_wheel_installs_both_commands_and_the_worker_package(installed):
    assert (installed / "torchyard").is_file() and (installed / "torchserve").is_file()
    version = subprocess.run([str(installed / "torchserve"), "--version"], capture_output=True,
                             text=True, check=True).stdout
    assert "torchyard" in version and "TorchServe" in version
    imported = subprocess.run([str(installed / "python"), "-c",
                               "import torchyard.worker, torch; print(torchyard.__file__)"],
                              capture_output=True, text=True, check=True).stdout
    assert str(installed.parent) in imported


def test_installed_torchserve_starts_serves_and_stops(installed, store, tmp_path):
    """pip install, `torchserve --start --model-store S --models double.mar --ncs`, a
    prediction, `torchserve --stop`: as a TorchServe user does it."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    command = Command(installed / "torchserve", workdir)
    conf = config(workdir)
    try:
        lines = command.start("--model-store", str(store), "--models", "double.mar", "--ncs",
                              "--ts-config", str(conf), "--disable-token-auth")
        # Workers run the Python of the venv the command was installed into.
        assert f"Python executable: {installed / 'python'}" in lines, lines
        pid = command.server_pid()
        assert alive(pid)
        answer = predict(inference_url(conf), "21")
        assert answer.status_code == 200 and float(answer.text) == 42.0
        again = command.run("--start", "--model-store", str(store))
        assert again.returncode == 1
        assert again.stdout.strip() == ("TorchServe is already running, please use "
                                        "torchserve --stop to stop TorchServe.")
        stopped = command.run("--stop")
        assert stopped.stdout.strip() == "TorchServe has stopped."
        assert wait_gone(pid, 30) and not command.pid_file.exists()
        assert command.run("--stop").stdout.strip() == "TorchServe is not currently running."
    finally:
        command.cleanup()


def test_stop_foreground_waits_and_removes_the_key_file(store, tmp_path):
    """`torchserve --stop --foreground` (TorchServe's test harness stops every server so)
    returns once the server is gone, and removes key_file.json as TorchServe's launcher does."""
    command = Command(RELEASE / "torchserve", tmp_path)
    conf = config(tmp_path)
    try:
        command.start("--model-store", str(store), "--ts-config", str(conf), "--ncs")
        pid = command.server_pid()
        assert (tmp_path / "key_file.json").exists()
        stopped = command.run("--stop", "--foreground")
        assert stopped.returncode == 0 and stopped.stdout == ""
        assert not alive(pid)
        assert not (tmp_path / "key_file.json").exists() and not command.pid_file.exists()
    finally:
        command.cleanup()


def test_startup_snapshot_is_written_before_the_started_line(store, tmp_path):
    """TorchServe's tests count `logs/config/*startup.cfg` as soon as `ts/launcher.py` has read
    "Model server started": the file must be there by then, and `--ncs` adds none."""
    command = Command(RELEASE / "torchserve", tmp_path)
    conf = config(tmp_path)
    startups = lambda: list((tmp_path / "logs" / "config").glob("*-startup.cfg"))  # noqa: E731
    try:
        command.start("--model-store", str(store), "--ts-config", str(conf))
        assert len(startups()) == 1
        assert command.run("--stop", "--foreground").returncode == 0
        command.start("--model-store", str(store), "--ts-config", str(conf), "--ncs")
        assert len(startups()) == 1
        assert command.run("--stop", "--foreground").returncode == 0
    finally:
        command.cleanup()


def test_only_a_start_without_configuration_file_restores_the_newest_snapshot(store, tmp_path):
    """As TorchServe: `torchserve --start` restores the newest snapshot only when no
    configuration file is given (test_handler.py's KServe explain registers `mnist` anew after
    a start with `--ts-config`, the snapshot still holding the previous test's broken `mnist`)."""
    command = Command(RELEASE / "torchserve", tmp_path)
    (tmp_path / "conf").mkdir()
    conf = config(tmp_path / "conf")
    url = inference_url(conf)
    management = inference_url(conf, "management_address")

    def models_once_started():
        deadline = time.monotonic() + 60
        while requests.get(f"{url}/ping", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "start-up loading did not end"
            time.sleep(0.2)
        listed = requests.get(f"{management}/models", timeout=10).json()["models"]
        return [m["modelName"] for m in listed]

    try:
        command.start("--model-store", str(store), "--ts-config", str(conf), "--models",
                      "double.mar", "--dt")
        assert models_once_started() == ["double"]
        assert command.run("--stop", "--foreground").returncode == 0
        # No configuration file: the newest snapshot (the shutdown's) is the configuration.
        command.start("--model-store", str(store), "--dt")
        assert models_once_started() == ["double"]
        assert command.run("--stop", "--foreground").returncode == 0
        command.start("--model-store", str(store), "--ts-config", str(conf), "--dt")
        assert models_once_started() == []
        assert command.run("--stop", "--foreground").returncode == 0
    finally:
        command.cleanup()


def test_foreground_start_runs_in_place(store, tmp_path):
    """`torchserve --start --foreground` is the server itself: the pid file names the command's
    own process, which answers until it is stopped."""
    command = Command(RELEASE / "torchserve", tmp_path)
    conf = config(tmp_path)
    process = subprocess.Popen([command.executable, "--start", "--foreground", "--model-store",
                                str(store), "--ts-config", str(conf), "--ncs", "--dt"],
                               cwd=tmp_path, env=command.env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        for line in process.stdout:
            if STARTED in line:
                break
        assert command.server_pid() == process.pid
        assert requests.get(f"{inference_url(conf)}/ping", timeout=5).status_code == 200
        assert command.run("--stop", "--foreground").returncode == 0
        assert process.wait(30) == 0
    finally:
        process.kill()
        process.wait()
        process.stdout.close()


def test_orphan_pid_file_is_removed(store, tmp_path):
    command = Command(RELEASE / "torchserve", tmp_path)
    # A pid that is not a model server: this test's own process.
    command.pid_file.write_text(str(os.getpid()))
    answer = command.run("--stop")
    assert answer.stdout.splitlines() == ["Removing orphan pid file.",
                                          "TorchServe is not currently running."]
    assert not command.pid_file.exists()


@pytest.mark.parametrize("args, env, message", [
    ((), {}, "Missing mandatory parameter --model-store"),
    (("--model-store", "no/such/store"), {}, "--model-store directory not found: no/such/store"),
    (("--model-store", "."), {"TEMP": "/no/such/dir"},
     "Invalid temp directory: /no/such/dir, please check TEMP environment variable."),
    (("--model-store", ".", "--ts-config", "missing.properties"), {},
     "--ts-config file not found: missing.properties"),
    (("--model-store", "."), {"TS_CONFIG_FILE": "env.properties"},
     "--ts-config file not found: env.properties"),
    (("--model-store", ".", "--workflow-store", "nowhere"), {},
     "--workflow-store directory not found: nowhere"),
    (("--model-store", ".", "--log-config", "log4j2.xml"), {},
     "--log-config file not found: {cwd}/log4j2.xml"),
])
def test_start_refuses_as_torchserve_does(tmp_path, args, env, message):
    command = Command(RELEASE / "torchserve", tmp_path)
    command.env.update(env)
    answer = command.run("--start", *args)
    assert answer.returncode == 1
    assert answer.stdout.strip() == message.format(cwd=tmp_path)
    assert not command.pid_file.exists()


def test_every_torchserve_flag_is_accepted(store, tmp_path):
    """TorchServe 0.12's flags, spelled as its `arg_parser.py` allows (`--ncs`, `--dt`,
    `--ppath`); Java plugins and the C++ log configuration are ignored aloud."""
    command = Command(RELEASE / "torchserve", tmp_path)
    conf = config(tmp_path, model_store=str(store))
    cpp = tmp_path / "cpp-log.config"
    cpp.write_text("")
    (tmp_path / "plugins").mkdir()
    workflows = tmp_path / "wf_store"
    workflows.mkdir()
    try:
        lines = command.start("--ts-config", str(conf), "--workflow-store", str(workflows),
                              "--models", "double=double.mar", "--no-config-snapshots", "--dt",
                              "--enable-model-api", "--ppath", str(tmp_path / "plugins"),
                              "--cpp-log-config", str(cpp))
        text = "\n".join(lines)
        assert "cannot load TorchServe's Java plugins" in text
        assert "ignoring --cpp-log-config" in text
        # model_store came from the configuration file.
        assert f"Model Store: {store}" in text
        assert predict(inference_url(conf), "4").text.strip() == "8.0"
    finally:
        command.run("--stop", "--foreground")
        command.cleanup()
