"""A torchyard worker process: `python -m torchyard.worker --socket PATH`.

Connects to the server's Unix socket, loads the handler on `load`, then answers each `predict`
with one output per request, until the server closes the socket (docs/protocol.md).
Logs go to stderr; TORCHYARD_WORKER_LOG sets their level (default INFO).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import traceback
from typing import Any, List, Optional, Sequence, Tuple

from .codec import Blob, decode, encode
from .context import Context, RequestProcessor
from .framing import ProtocolError, read_frame, write_frame
from .handler_loader import Entry, load_entry_point

log = logging.getLogger("torchyard.worker")

Reply = Tuple[dict, Sequence[Blob]]

#: Where torchyard's stand-in for TorchServe's `ts` package lives.
COMPAT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "compat")


def error_reply(message: str, status: int = 500, error_type: str = "PredictionException") -> Reply:
    """An `error` message."""
    return {"kind": "error", "status": status, "type": error_type, "message": message}, ()


def exception_reply(exc: BaseException, error_type: str) -> Reply:
    """An `error` for a handler exception; an `error_code` attribute holding an HTTP error
    status (TorchServe's PredictionException) becomes the status, a `MemoryError` is 507
    (Insufficient Storage, as in TorchServe), anything else 500."""
    status = getattr(exc, "error_code", None)
    if isinstance(exc, MemoryError):
        status = 507
    elif not (isinstance(status, int) and 400 <= status <= 599):
        status = 500
    return error_reply(f"{type(exc).__name__}: {exc}", status, error_type)


class Worker:
    """One model's handler and context, and the replies to the server's messages."""

    def __init__(self) -> None:
        self.entry: Optional[Entry] = None
        self.context: Optional[Context] = None
        #: False (TorchServe's `decode_input_request=false`): handlers get every parameter raw.
        self.decode_input_request = True

    def handle(self, msg: dict, blobs: List[bytearray]) -> Reply:
        """The reply to one message."""
        kind = msg.get("kind")
        if kind == "load" and self.entry is None:
            return self.load(msg)
        if kind == "predict" and self.entry is not None:
            return self.predict(msg, blobs)
        state = "loaded" if self.entry is not None else "not loaded"
        return error_reply(f"unexpected message {kind!r}: the handler is {state}", 500,
                           "InternalServerException")

    def load(self, msg: dict) -> Reply:
        self.context = Context(
            msg["model_name"],
            msg["model_dir"],
            msg.get("manifest") or {},
            msg.get("batch_size", 1),
            msg.get("gpu_id"),
            msg.get("server_version", ""),
            limit_max_image_pixels=msg.get("limit_max_image_pixels", True),
            model_yaml_config=msg.get("model_yaml_config"),
            server_name=msg.get("server_name", "torchyard"),
        )
        self.decode_input_request = msg.get("decode_input_request", True)
        try:
            self.entry = load_entry_point(msg["handler"], msg["model_dir"], self.context)
        except Exception as exc:  # noqa: BLE001 - the server reports the failed load
            log.error("loading handler %s failed:\n%s", msg["handler"], traceback.format_exc())
            return exception_reply(exc, "InternalServerException")
        log.info("loaded model %s with handler %s", msg["model_name"], msg["handler"])
        return {"kind": "loaded", "pid": os.getpid()}, ()

    def predict(self, msg: dict, blobs: List[bytearray]) -> Reply:
        requests = msg["requests"]
        if self.decode_input_request:
            data = [{p["name"]: decode(blobs[p["blob"]], p.get("content_type"))
                     for p in r["params"]} for r in requests]
        else:
            data = [{p["name"]: blobs[p["blob"]] for p in r["params"]} for r in requests]
        context = self.context
        context.start_batch(requests)
        try:
            outputs = self.entry(data, context)
        except Exception as exc:  # noqa: BLE001 - a handler failure fails its batch only
            log.error("handler failed:\n%s", traceback.format_exc())
            return exception_reply(exc, "PredictionException")
        if not isinstance(outputs, (list, tuple)):
            return error_reply(f"handler returned {type(outputs).__name__}, not a list of "
                               f"outputs for a batch of {len(requests)} requests")
        if len(outputs) != len(requests):
            return error_reply(f"handler returned {len(outputs)} outputs for a batch of "
                               f"{len(requests)} requests")
        responses, bodies = [], []
        try:
            for idx, output in enumerate(outputs):
                response, body = _response(idx, output, context.request_processor[idx])
                responses.append(response)
                bodies.append(body)
        except Exception as exc:  # noqa: BLE001 - an unserialisable output fails its batch
            log.error("cannot encode the handler's output:\n%s", traceback.format_exc())
            return exception_reply(exc, "PredictionException")
        return {"kind": "predicted", "responses": responses}, bodies


def _response(idx: int, output: Any, processor: RequestProcessor) -> Tuple[dict, Blob]:
    """The protocol response entry and body of request `idx`."""
    body, content_type = encode(output)
    status = processor.get_response_status_code()
    if not isinstance(status, int) or not 100 <= status <= 599:
        raise ValueError(f"invalid response status {status!r} set for request {idx}")
    phrase = processor.get_response_status_phrase()
    response = {"status": status, "reason": str(phrase) if phrase else None,
                "content_type": content_type, "blob": idx}
    headers = []
    for key, value in processor.get_response_headers().items():
        if str(key).lower() == "content-type":
            response["content_type"] = str(value)
        else:
            headers.append([str(key), str(value)])
    if headers:
        response["headers"] = headers
    return response, body


def serve(sock: socket.socket, worker: Worker) -> None:
    """Answers messages until the server closes the socket."""
    while True:
        try:
            msg, blobs = read_frame(sock)
            header, bodies = worker.handle(msg, blobs)
            del msg, blobs  # free the request bodies before waiting for the next frame
            try:
                write_frame(sock, header, bodies)
            except ProtocolError as exc:  # too large to send; nothing went out
                log.error("%s", exc)
                write_frame(sock, *error_reply(f"{type(exc).__name__}: {exc}"))
            del header, bodies
        except (EOFError, ConnectionError):
            log.info("the server closed the connection; exiting")
            return


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs a worker; returns 0 once the server closes the socket."""
    parser = argparse.ArgumentParser(prog="python -m torchyard.worker",
                                     description="A torchyard model worker.")
    parser.add_argument("--socket", required=True, help="the server's Unix socket path")
    args = parser.parse_args(argv)
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True)
    logging.basicConfig(
        stream=sys.stderr,
        level=os.environ.get("TORCHYARD_WORKER_LOG", "INFO").upper(),
        format=f"%(asctime)s [pid {os.getpid()}] %(levelname)s %(name)s: %(message)s",
        force=True,  # a forked worker replaces whatever the fork server's imports set up
    )
    # TorchServe's `ts` package, when installed, wins over torchyard's stand-in.
    sys.path.append(COMPAT_PATH)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(args.socket)
        try:
            serve(sock, Worker())
        except ProtocolError as exc:
            log.error("protocol error, exiting: %s", exc)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
