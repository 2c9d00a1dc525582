"""A torchyard worker process: `python -m torchyard.worker --socket PATH`.

Connects to the server's socket, loads the handler on `load`, then answers each `predict`
with one output per request until the server closes the socket (docs/protocol.md).
"""

import argparse
import logging
import os
import socket
import sys
import traceback

from .codec import decode, encode
from .context import Context
from .framing import read_frame, write_frame
from .handler_loader import load_entry_point

log = logging.getLogger("torchyard.worker")


def _error(exc: BaseException, default_type: str) -> dict:
    status = getattr(exc, "error_code", None)
    return {
        "kind": "error",
        "status": status if isinstance(status, int) and 400 <= status < 600 else 500,
        "type": default_type,
        "message": f"{type(exc).__name__}: {exc}",
    }


class Worker:
    """Holds the loaded handler and its context between messages."""

    def __init__(self):
        self.entry = None
        self.context = None

    def load(self, msg: dict):
        self.context = Context(
            model_name=msg["model_name"],
            model_dir=msg["model_dir"],
            manifest=msg.get("manifest") or {},
            batch_size=msg.get("batch_size", 1),
            gpu_id=msg.get("gpu_id"),
            server_name=msg.get("server_name", "torchyard"),
            server_version=msg.get("server_version", ""),
            limit_max_image_pixels=msg.get("limit_max_image_pixels", True),
            model_yaml_config=msg.get("model_yaml_config"),
        )
        try:
            self.entry = load_entry_point(msg["handler"], msg["model_dir"], self.context)
        except Exception as exc:  # noqa: BLE001 - any handler failure is reported, not fatal
            log.error("loading %s failed:\n%s", msg["handler"], traceback.format_exc())
            return _error(exc, "InternalServerException"), ()
        log.info("loaded model %s with handler %s", msg["model_name"], msg["handler"])
        return {"kind": "loaded", "pid": os.getpid()}, ()

    def predict(self, msg: dict, blobs):
        requests = msg["requests"]
        data = [
            {p["name"]: decode(blobs[p["blob"]], p.get("content_type")) for p in r["params"]}
            for r in requests
        ]
        self.context.start_batch(requests)
        try:
            outputs = self.entry(data, self.context)
        except Exception as exc:  # noqa: BLE001 - a handler failure fails its batch only
            log.error("handler failed:\n%s", traceback.format_exc())
            return _error(exc, "PredictionException"), ()
        if not isinstance(outputs, (list, tuple)) or len(outputs) != len(requests):
            got = len(outputs) if isinstance(outputs, (list, tuple)) else type(outputs).__name__
            message = f"handler returned {got} outputs for a batch of {len(requests)} requests"
            return {"kind": "error", "status": 500, "type": "PredictionException",
                    "message": message}, ()
        responses, out_blobs = [], []
        for idx, output in enumerate(outputs):
            try:
                body, content_type = encode(output)
            except (TypeError, ValueError) as exc:
                return _error(exc, "PredictionException"), ()
            status, reason, override = self.context.response_for(idx)
            responses.append({"status": status, "reason": reason,
                              "content_type": override or content_type, "blob": idx})
            out_blobs.append(body)
        return {"kind": "predicted", "responses": responses}, out_blobs

    def serve(self, sock: socket.socket) -> None:
        while True:
            try:
                msg, blobs = read_frame(sock)
            except EOFError:
                return
            kind = msg.get("kind")
            if kind == "load":
                reply, out = self.load(msg)
            elif kind == "predict" and self.entry is not None:
                reply, out = self.predict(msg, blobs)
            else:
                reply, out = {"kind": "error", "status": 500, "type": "InternalServerException",
                              "message": f"unexpected message {kind!r}"}, ()
            write_frame(sock, reply, out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--socket", required=True, help="the server's Unix socket path")
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=os.environ.get("TORCHYARD_WORKER_LOG", "INFO"),
        format=f"[pid {os.getpid()}] %(levelname)s %(name)s: %(message)s",
    )
    # TorchServe's `ts` package, when installed, wins over torchyard's stand-in.
    sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), "compat"))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(args.socket)
    Worker().serve(sock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
