"""The server's side of the worker protocol, for tests: start a real worker process on a real
Unix socket and exchange frames with it."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from torchyard.framing import FrameReader, write_frame
from torchyard.regions import Regions

#: (name, content type or None, value) of one request parameter.
Param = Tuple[str, Optional[str], bytes]


def write_source(folder: Path, name: str, source: str) -> Path:
    """Writes dedented `source` to `folder/name` (creating sub-folders) and returns the path."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


def request(*params: Param, headers: Sequence[Tuple[str, str]] = (),
            request_id: str = "", segment: bool = False) -> dict:
    """One request of a batch, for WorkerConnection.predict; `segment` asks for the worker's
    fused workflow segment."""
    return {"id": request_id, "headers": [list(h) for h in headers], "params": list(params),
            "segment": segment}


def body(value: bytes, content_type: Optional[str] = None) -> Param:
    """A raw request body."""
    return ("body", content_type, value)


class WorkerConnection:
    """A worker process connected to a socket this test listens on."""

    def __init__(self, process: subprocess.Popen, sock: socket.socket, log_path: Path):
        self.process = process
        self.sock = sock
        self.log_path = log_path
        #: The worker's regions, as the server maps them, and the server's own.
        self.regions = Regions()
        self.frames = FrameReader(sock, self.regions)

    @classmethod
    def start(cls, python_dir: Path, log_path: Path, timeout: float = 30) -> "WorkerConnection":
        """Binds a socket, runs `python -m torchyard.worker --socket PATH`, accepts it."""
        socket_dir = tempfile.mkdtemp(prefix="tyw")  # short: socket paths are limited to ~100
        path = os.path.join(socket_dir, "w.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(python_dir), *filter(None, [os.environ.get("PYTHONPATH")])]))
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "torchyard.worker", "--socket", path],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        listener.settimeout(0.1)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    sock, _ = listener.accept()
                    break
                except socket.timeout:
                    if process.poll() is not None or time.monotonic() > deadline:
                        process.kill()
                        raise RuntimeError(f"worker did not connect:\n{log_path.read_text()}")
        finally:
            listener.close()
            shutil.rmtree(socket_dir)
        sock.settimeout(60)
        return cls(process, sock, log_path)

    def call(self, header: dict, blobs=(), share_above: int = 0) -> Tuple[dict, List[bytearray]]:
        """Sends one message (blobs of at least `share_above` bytes in a region of the
        server's, when not 0) and returns the reply (header, blobs)."""
        write_frame(self.sock, header, blobs, share_above, self.regions)
        return self.frames.read()

    def load(self, handler: str, model_dir: Path, **fields) -> dict:
        """Sends `load` (fields override the defaults) and returns the reply header."""
        message = {
            "kind": "load", "model_name": "m", "model_version": "1.0",
            "model_dir": str(model_dir), "handler": handler,
            "manifest": {"model": {"modelName": "m", "handler": handler}},
            "batch_size": 4, "gpu_id": None, "limit_max_image_pixels": True,
            "model_yaml_config": {}, "server_name": "torchyard", "server_version": "0.1.0",
            **fields,
        }
        reply, blobs = self.call(message)
        assert blobs == []
        return reply

    def predict(self, *requests: dict) -> Tuple[dict, List[bytearray]]:
        """Sends one batch (see `request`) and returns the reply."""
        entries, blobs = [], []
        for idx, req in enumerate(requests):
            params = []
            for name, content_type, value in req["params"]:
                params.append({"name": name, "content_type": content_type, "blob": len(blobs)})
                blobs.append(value)
            entries.append({"id": req["id"] or f"req-{idx}", "headers": req["headers"],
                            "params": params, **({"segment": True} if req["segment"] else {})})
        return self.call({"kind": "predict", "requests": entries}, blobs)

    def log(self) -> str:
        """Everything the worker wrote to stdout and stderr so far."""
        return self.log_path.read_text()

    def close(self, timeout: float = 10) -> int:
        """Closes the socket and returns the worker's exit status."""
        self.sock.close()
        return self.process.wait(timeout)

    def stop(self) -> None:
        """Closes the socket and kills the worker if it lingers."""
        self.sock.close()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
