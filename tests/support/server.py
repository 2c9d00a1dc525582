"""Starting and stopping a real torchyard server for a test, on free loopback ports."""

import os
import random
import resource
import signal
import socket
import subprocess
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("TORCHYARD_BINARY", REPO / "target" / "release" / "torchyard"))
PYTHON = Path(os.environ.get("TORCHYARD_TEST_PYTHON", REPO / ".venv" / "bin" / "python"))


def _ephemeral_range() -> range:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


#: Ports the kernel never hands out on its own: a port picked from here cannot be taken by an
#: outgoing connection (a worker, a client) between the pick and the server's bind.
_QUIET_PORTS = [p for p in range(10000, 30000) if p not in _ephemeral_range()]


#: Ports `free_port` handed out: a server may not have bound the last one yet when the next is
#: picked (a container given five at once), so none is handed out twice.
_HANDED_OUT = set()


def free_port() -> int:
    """A loopback port that is free now, outside the kernel's ephemeral range, and not handed
    out before by this process."""
    while True:
        port = random.choice(_QUIET_PORTS)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _HANDED_OUT.add(port)
            return port


def listening_hosts(port):
    """The IPv4 addresses a TCP listener on `port` is bound to (from /proc/net/tcp)."""
    hosts = set()
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, local_port = local.split(":")
        if state == "0A" and int(local_port, 16) == port:
            hosts.add(".".join(str(b) for b in reversed(bytes.fromhex(address))))
    return hosts


def wait_for_log(server, text, count=1, seconds=120):
    """Waits until `text` appears `count` times in `server`'s log."""
    deadline = time.monotonic() + seconds
    while server.log_text().count(text) < count:
        assert time.monotonic() < deadline, f"{text!r} did not appear {count} times in the log"
        time.sleep(0.1)


class PortTaken(RuntimeError):
    """The server could not bind a port that was free when it was picked."""


#: What most tests run with, as TorchServe users do in development: no tokens, model API on.
OPEN_FLAGS = ("--disable-token-auth", "--enable-model-api")


#: The HTTP listeners, in the order of their ports.
LISTENERS = ("inference", "management", "metrics")


class Server:
    """A running `torchyard serve` with its three base URLs, its two gRPC addresses, model
    store and log."""

    def __init__(self, workdir: Path, store: Path, properties=None, args=OPEN_FLAGS,
                 fd_limit=None, env=None, https=None):
        #: The open-file limit (soft and hard) to start the server under, if any.
        self.fd_limit = fd_limit
        #: Environment variables set for the server (and so its workers) beyond the test's.
        self.env = env or {}
        self.workdir = workdir
        self.store = store
        self.log_path = workdir / "server.log"
        self.properties = properties or {}
        #: The certificate to trust when the server speaks HTTPS, else True.
        self.verify = self.properties.get("certificate_file", True)
        #: The listeners ("inference", "management", "metrics") whose address is https://: all
        #: of them by default when certificate_file is set.
        self.https = LISTENERS if https is None and self.verify is not True else (https or ())
        self._pick_ports()
        self.args = [str(BINARY), "serve", "--model-store", str(store), "--config",
                     str(workdir / "config.properties"), "--python", str(PYTHON), *args]
        self.process = None

    def _pick_ports(self):
        """Chooses five free ports and writes config.properties with them."""
        ports = [free_port() for _ in range(5)]
        self.inference, self.management, self.metrics = (
            f"{'https' if name in self.https else 'http'}://127.0.0.1:{port}"
            for name, port in zip(LISTENERS, ports))
        #: `host:port` of the gRPC inference and management listeners.
        self.grpc_inference, self.grpc_management = (f"127.0.0.1:{p}" for p in ports[3:])
        config = {
            "inference_address": self.inference,
            "management_address": self.management,
            "metrics_address": self.metrics,
            "grpc_inference_port": ports[3],
            "grpc_management_port": ports[4],
            **self.properties,
        }
        # config.properties is read as Java properties (as TorchServe does): a backslash, as in
        # an allowed_urls regex, is written doubled.
        (self.workdir / "config.properties").write_text(
            "".join(f"{k}={str(v).replace(chr(92), chr(92) * 2)}\n" for k, v in config.items())
        )

    def start(self, timeout=60.0, healthy=True):
        """Starts the server and waits until `/ping` answers Healthy (start-up models and
        workflows loaded, workers ready) or, with `healthy=False`, answers at all."""
        if not BINARY.exists():
            raise RuntimeError(f"{BINARY} is missing: run cargo build --release first")
        for _ in range(3):
            try:
                return self._start(timeout, healthy)
            except PortTaken:
                self._pick_ports()
        return self._start(timeout, healthy)

    def _start(self, timeout, healthy):
        self.log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.args, cwd=self.workdir, stdout=self.log,
                                        stderr=subprocess.STDOUT,
                                        env={**os.environ, "NO_COLOR": "1", **self.env},
                                        preexec_fn=self._limit_fds if self.fd_limit else None)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.close()
                log = self.log_text()
                if "Address already in use" in log:
                    # Another process on the machine bound a port between pick and bind.
                    self.log_path.write_text("")
                    raise PortTaken(log)
                raise RuntimeError(f"server exited at start:\n{log}")
            if self.ping() in ((200,) if healthy else (200, 500)):
                return self
            time.sleep(0.05)
        want = "Healthy" if healthy else "anything"
        raise RuntimeError(f"/ping did not answer {want} in {timeout}s:\n{self.log_text()}")

    def _limit_fds(self):
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.fd_limit, self.fd_limit))

    def ping(self):
        """`/ping`'s status code, or None while the server does not answer. 500 "Unhealthy"
        means the server is up but still loading its start-up models or missing workers."""
        try:
            answer = requests.get(f"{self.inference}/ping", timeout=1, verify=self.verify)
        except (requests.ConnectionError, requests.Timeout):
            return None
        try:
            body = answer.json()
        except ValueError:
            return None
        return answer.status_code if answer.status_code in (200, 500) and "status" in body else None

    def stop(self, sig=signal.SIGTERM, timeout=30.0):
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
