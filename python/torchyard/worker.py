"""A torchyard worker process: `python -m torchyard.worker --socket PATH`.

Connects to the server's Unix socket, loads the handler on `load`, then answers each `predict`
with one output per request, until the server closes the socket (docs/protocol.md).
Logs go to stderr; TORCHYARD_WORKER_LOG sets their level (default INFO).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import time
import traceback
import uuid
from collections import deque
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from .codec import JSON, Blob, decode
from . import async_loop, continuous as continuous_batching, envelopes, heap, threads
from .context import Context
from .metrics import Metric, Metrics, drain
from .framing import FrameReader, ProtocolError, write_frame
from .regions import Regions
from .handler_loader import Entry, load_entry_point
from .replies import Reply, encode_outputs, error_reply, exception_reply, intermediate_frame
from .segment import Segment

log = logging.getLogger("torchyard.worker")

#: Under load (the next message already waiting), handler metrics go out with a reply at most
#: this often; otherwise with the reply they were recorded for.
METRICS_EVERY_S = 0.1

#: Send and receive buffer of the worker's socket (the server's end asks the same): a megabyte
#: answer crosses in one write.
SOCKET_BUFFER = 4 << 20

#: Where torchyard's stand-in for TorchServe's `ts` package lives.
COMPAT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "compat")


class RequestCancelled(BaseException):
    """Raised by a partial-result send once the server cancelled every request it is for (their
    clients went away): it ends the handler's batch. A BaseException, so that a handler's
    `except Exception` does not swallow it and go on producing for nobody."""


class Worker:
    """One model's handler and context, and the replies to the server's messages."""

    def __init__(self) -> None:
        #: The handler, or the fused workflow functions of a `segment` load.
        self.entry: Optional[Union[Entry, Segment]] = None
        #: The fused workflow segment around the handler that a request may ask for.
        self.segment: Optional[Segment] = None
        self.context: Optional[Context] = None
        #: False (TorchServe's `decode_input_request=false`): handlers get every parameter raw.
        self.decode_input_request = True
        #: TorchServe's `service_envelope`: the envelope of requests that name none.
        self.envelope: Optional[str] = None
        #: Writes a frame to the server, for partial results sent during a batch.
        self.send: Optional[Callable[[dict, Sequence[Blob]], None]] = None
        #: Metrics of every context with updates to send with the next reply.
        self.pending_metrics: List[Metric] = []
        #: The requests of the batch being served, as the frame lists them.
        self.batch: Sequence[dict] = ()
        #: `continuousBatching`: each answer says whether its request goes on.
        self.continuous = False
        #: `asyncCommunication`: batches run concurrently on an asyncio loop (async_loop.py).
        self.asynchronous = False
        #: Forked from the model's template: the handler is loaded already, and `load` only
        #: gives this worker its own identity (see `adopt`).
        self.forked = False
        #: The server's messages, once `serve` runs.
        self.frames: Optional[FrameReader] = None
        #: Messages read while a batch ran (to see its cancels), served before the socket's.
        self.early: "deque[Tuple[dict, List[bytearray]]]" = deque()
        #: Ids of the running batch's requests that the server cancelled.
        self.cancelled: set = set()
        #: Outputs of at least this many bytes go back in shared memory (0: never).
        self.share_above = 0
        #: The connection's shared-memory regions, once `serve` runs.
        self.regions: Optional[Regions] = None

    def handle(self, msg: dict, blobs: List[bytearray]) -> Reply:
        """The reply to one message."""
        kind = msg.get("kind")
        if kind == "load":
            self.share_above = msg.get("shared_memory_threshold") or 0
        if kind == "load" and self.entry is None:
            return self.load(msg)
        if kind == "load" and self.forked:
            return self.adopt(msg)
        if kind == "predict" and self.entry is not None:
            self.cancelled = set()
            try:
                return self.predict(msg, blobs)
            except RequestCancelled:
                log.info("the server cancelled the batch's requests (their clients went away)")
                return error_reply("cancelled: the client went away", 503,
                                   "ServiceUnavailableException")
        state = "loaded" if self.entry is not None else "not loaded"
        return error_reply(f"unexpected message {kind!r}: the handler is {state}", 500,
                           "InternalServerException")

    def load(self, msg: dict) -> Reply:
        def context(model_name: str, manifest: Optional[dict], model_dir: str) -> Context:
            metrics = Metrics(model_name, self.pending_metrics, msg.get("metrics") or ())
            # As TorchServe's loader: the load has a request id of its own, so metrics the
            # handler's `initialize` records get the model's dimensions, not `Level: Error`.
            metrics.set_request_ids({0: str(uuid.uuid4())})
            return Context(
                model_name,
                model_dir,
                manifest or {},
                msg.get("batch_size", 1),
                msg.get("gpu_id"),
                msg.get("server_version", ""),
                limit_max_image_pixels=msg.get("limit_max_image_pixels", True),
                model_yaml_config=msg.get("model_yaml_config"),
                server_name=msg.get("server_name", "torchyard"),
                metrics=metrics,
            )

        self.context = context(msg["model_name"], msg.get("manifest"), msg["model_dir"])
        self.decode_input_request = msg.get("decode_input_request", True)
        self.envelope = msg.get("envelope")
        self.continuous = continuous_batching.enabled(msg.get("model_yaml_config"))
        self.asynchronous = async_loop.enabled(msg.get("model_yaml_config"), msg.get("segment"))
        self.context.intermediate_sink = self.send_intermediate
        segment = msg.get("segment")
        threads.pin(msg.get("cores"))
        threads.apply(msg.get("threads"))
        try:
            if segment and not any(node.get("model") for node in segment):
                self.entry = Segment.load(segment, msg["model_dir"], context)
            else:
                self.entry = load_entry_point(msg["handler"], msg["model_dir"], self.context)
                if segment:
                    self.segment = Segment.load(segment, msg["model_dir"], context,
                                                (self.entry, self.context))
        except Exception as exc:  # noqa: BLE001 - the server reports the failed load
            log.error("loading handler %s failed:\n%s", msg["handler"], traceback.format_exc())
            return exception_reply(exc, "InternalServerException")
        threads.apply(msg.get("threads"))  # torch, if the handler imported it, is told now
        log.info("loaded model %s with handler %s", msg["model_name"], msg["handler"])
        return {"kind": "loaded", "pid": os.getpid()}, ()

    def adopt(self, msg: dict) -> Reply:
        """The reply to `load` in a worker forked from its model's template: the handler stays
        as the template initialised it; the context takes what differs per worker."""
        self.forked = False
        self.context.system_properties["gpu_id"] = msg.get("gpu_id")
        self.context.metrics.set_request_ids({0: str(uuid.uuid4())})
        threads.apply(msg.get("threads"))
        log.info("forked from the template of model %s, handler %s already initialised",
                 msg["model_name"], msg["handler"])
        return {"kind": "loaded", "pid": os.getpid()}, ()

    def predict(self, msg: dict, blobs: List[bytearray]) -> Reply:
        """The reply to a batch; a `predicted` one says in `prediction_us` how long the
        worker took from calling the handler to the reply being ready: TorchServe's
        `PredictionTime`, which the server exports."""
        threads.apply(msg.get("threads"))
        requests = msg["requests"]
        data, refused = [], []
        for i, request in enumerate(requests):
            try:
                data.append(self.row(request, blobs))
            except Exception as exc:  # noqa: BLE001 - fails that request only
                log.warning("cannot decode the parameters of request %s: %s: %s",
                            request.get("id"), type(exc).__name__, exc)
                refused.append((i, f"{type(exc).__name__}: {exc}"))
        if refused:
            return self.predict_decoded(requests, data, refused)
        started = time.perf_counter()
        self.batch = requests
        header, bodies = self.run(requests, data)
        if header["kind"] == "predicted":
            header["prediction_us"] = round((time.perf_counter() - started) * 1e6)
        return header, bodies

    def row(self, request: dict, blobs: List[bytearray]) -> dict:
        """A request's parameters as the handler gets them."""
        if self.decode_input_request:
            return {p["name"]: decoded(p, blobs) for p in request["params"]}
        return {p["name"]: blobs[p["blob"]] for p in request["params"]}

    def predict_decoded(self, requests: List[dict], data: List[dict],
                        refused: List[Tuple[int, str]]) -> Reply:
        """The reply to a batch some of whose requests could not be decoded: each of those
        answers 400 with its reason, the others run as a batch of their own."""
        failed = {i for i, _ in refused}
        kept = [i for i in range(len(requests)) if i not in failed]
        errors = ({"kind": "predicted", "responses": [
            {"status": 400, "reason": None, "content_type": JSON, "blob": n}
            for n in range(len(refused))]},
            [bad_request_body(reason) for _, reason in refused])
        if not kept:
            return errors
        batch = [requests[i] for i in kept]
        started = time.perf_counter()
        self.batch = batch
        reply = self.run(batch, data)
        if reply[0]["kind"] != "predicted":
            return reply
        header, bodies = merge_replies(len(requests), [([i for i, _ in refused], errors),
                                                        (kept, reply)])
        header["prediction_us"] = round((time.perf_counter() - started) * 1e6)
        return header, bodies

    def decode_batch(self, requests: List[dict], blobs: List[bytearray]) -> List[dict]:
        """The handler's `data`: one dict of parameters per request."""
        return [self.row(request, blobs) for request in requests]

    def run(self, requests: List[dict], data: List[dict]) -> Reply:
        """Runs a decoded batch: through the fused segment (all of it when the worker holds
        only functions, else the requests that ask for it), the handler for the rest."""
        if isinstance(self.entry, Segment):
            return self.entry.run(requests, data)
        if self.segment is None:
            return self.run_handler(requests, data)
        fused: List[int] = []
        direct: List[int] = []
        for i, request in enumerate(requests):
            (fused if request.get("segment") else direct).append(i)
        if not fused:
            return self.run_handler(requests, data)
        if not direct:
            return self.segment.run(requests, data)
        segment_reply = self.segment.run([requests[i] for i in fused], [data[i] for i in fused])
        handler_reply = self.run_handler([requests[i] for i in direct], [data[i] for i in direct])
        if handler_reply[0]["kind"] != "predicted":
            return handler_reply  # a handler failure fails its batch, as in any batch
        return merge_replies(len(requests), [(fused, segment_reply), (direct, handler_reply)])

    def run_handler(self, requests: List[dict], data: List[dict]) -> Reply:
        """Calls the handler on a decoded batch and encodes its outputs."""
        context = self.context
        context.start_batch(requests)
        try:
            outputs = envelopes.call(self.entry, requests, data, context, self.envelope)
        except Exception as exc:  # noqa: BLE001 - a handler failure fails its batch only
            log.error("handler failed:\n%s", traceback.format_exc())
            return exception_reply(exc, "PredictionException")
        return encode_outputs(outputs, context, len(requests), self.continuous)

    def send_intermediate(self, outputs: Sequence[Any], req_id_map: Dict[int, str],
                          traces: Optional[Dict[int, dict]] = None) -> None:
        """Sends an `intermediate` frame: the partial result of each request in `req_id_map`,
        with the segment trace `traces` holds for it. The handler may serve part of the frame's
        batch (the rest runs a fused segment, or left it): a request's index is then its place
        in the frame, found by its id. Requests the server cancelled are left out; when that
        leaves none, RequestCancelled ends the batch."""
        self.read_early()
        if self.cancelled and req_id_map:
            ids = self.context.request_ids or {}
            req_id_map = {idx: rid for idx, rid in req_id_map.items()
                          if ids.get(idx, rid) not in self.cancelled}
            if not req_id_map:
                raise RequestCancelled()
        self.send(*intermediate_frame(self.context, self.batch, outputs, req_id_map, traces))

    def read_early(self) -> None:
        """Reads the messages that came while the batch runs: `cancel`s of its requests are
        noted, anything else waits its turn in `early`."""
        while self.frames is not None and self.frames.waiting():
            msg, blobs = self.frames.read()
            if msg.get("kind") == "cancel":
                running = {request.get("id") for request in self.batch}
                self.cancelled.update(i for i in msg.get("ids") or () if i in running)
            else:
                self.early.append((msg, blobs))

    def next_message(self) -> Tuple[dict, List[bytearray]]:
        """The next message to answer: one read early, else the socket's. A `cancel` that
        comes between batches names requests already answered and is skipped."""
        while True:
            msg, blobs = self.early.popleft() if self.early else self.frames.read()
            if msg.get("kind") != "cancel":
                return msg, blobs


def decoded(param: dict, blobs: List[bytearray]) -> Any:
    """A parameter's value as the handler gets it: its `json` as the server sent it in the
    header (the parse of the value), else its blob decoded by its content type."""
    if "json" in param:
        return param["json"]
    return decode(blobs[param["blob"]], param.get("content_type"))


def bad_request_body(message: str) -> bytes:
    """TorchServe's JSON error body of a 400."""
    return json.dumps({"code": 400, "type": "BadRequestException",
                       "message": message}).encode("utf-8")


def merge_replies(count: int, parts: Sequence[Tuple[Sequence[int], Reply]]) -> Reply:
    """One `predicted` reply to a batch of `count` from the replies to parts of it, each with
    the batch indices of its requests."""
    responses: List[Optional[dict]] = [None] * count
    bodies: List[Blob] = []
    for indices, (header, part_bodies) in parts:
        for i, response in zip(indices, header["responses"]):
            bodies.append(part_bodies[response["blob"]])
            responses[i] = {**response, "blob": len(bodies) - 1}
    return {"kind": "predicted", "responses": responses}, bodies


def serve(sock: socket.socket, worker: Worker) -> None:
    """Answers messages until the server closes the socket."""
    regions = worker.regions = Regions()
    worker.send = lambda header, bodies: write_frame(sock, header, bodies, worker.share_above,
                                                     regions)
    frames = worker.frames = FrameReader(sock, regions)
    metrics_sent = 0.0
    while True:
        try:
            msg, blobs = worker.next_message()
            header, bodies = worker.handle(msg, blobs)
            del msg, blobs  # free the request bodies before waiting for the next frame
            if worker.pending_metrics:
                now = time.monotonic()
                waiting = worker.early or frames.waiting()
                if now - metrics_sent >= METRICS_EVERY_S or not waiting \
                        or header.get("kind") != "predicted":
                    header["metrics"] = drain(worker.pending_metrics)
                    metrics_sent = now
            try:
                worker.send(header, bodies)
            except ProtocolError as exc:  # too large to send; nothing went out
                log.error("%s", exc)
                write_frame(sock, *error_reply(f"{type(exc).__name__}: {exc}"))
            if worker.asynchronous and header.get("kind") == "loaded":
                async_loop.serve(sock, frames, worker)
                return
            del header, bodies
        except (EOFError, ConnectionError):
            log.info("the server closed the connection; exiting")
            return


def main(argv: Optional[Sequence[str]] = None, loaded: Optional[Worker] = None) -> int:
    """Runs a worker (`loaded`: one whose handler a model template initialised); returns 0
    once the server closes the socket."""
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
    if not heap.keep_while_busy():
        log.info("the C heap is left as the environment sets it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(args.socket)
        # As the server's end (process.rs, SOCKET_BUFFER): a large answer in one write.
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        try:
            serve(sock, loaded or Worker())
        except ProtocolError as exc:
            log.error("protocol error, exiting: %s", exc)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
