"""Async workers (`asyncCommunication: true` in model-config.yaml), as TorchServe's
`AsyncService`: once the handler is loaded, the worker reads every `predict` as it arrives and
runs it as a task on an asyncio loop, so that many batches are in flight at once and each is
answered when it is done, in any order. Each batch gets a copy of the context and goes through
its envelope (`service_envelope`, KServe's routes) around the call; an `async def` handler is
awaited, a plain one runs on the loop's thread pool (so it must be thread-safe), an awaitable it
returns awaited in turn; every reply names its batch by the `batch` number of its `predict`
(docs/protocol.md)."""

from __future__ import annotations

import asyncio
import copy
import inspect
import logging
import socket
import threading
import time
import traceback
from typing import Any, Optional, Sequence

from . import envelopes, threads
from .codec import Blob
from .framing import FrameReader, ProtocolError, write_frame
from .metrics import drain
from .replies import Reply, encode_outputs, error_reply, exception_reply, intermediate_frame
from .ts_frames import FrameSocket

log = logging.getLogger("torchyard.worker")


def enabled(model_yaml_config: Any, segment: Any) -> bool:
    """Whether a model's configuration asks for an async worker (never a fused segment's)."""
    return (not segment and isinstance(model_yaml_config, dict)
            and model_yaml_config.get("asyncCommunication") is True)


def serve(sock: socket.socket, frames: FrameReader, worker: Any) -> None:
    """Answers `predict` messages concurrently until the server closes the socket; raises
    ProtocolError on a malformed frame."""
    ended = asyncio.run(_serve(sock, frames, worker))
    if isinstance(ended, ProtocolError):
        raise ended
    log.info("the server closed the connection; exiting")


async def _serve(sock: socket.socket, frames: FrameReader, worker: Any) -> BaseException:
    loop = asyncio.get_running_loop()
    ended: asyncio.Future = loop.create_future()
    tasks = set()

    def send(header: dict, bodies: Sequence[Blob], number: Optional[int]) -> None:
        header["batch"] = number
        try:
            write_frame(sock, header, bodies, worker.share_above, worker.regions)
        except ProtocolError as exc:  # too large to send; nothing went out
            log.error("%s", exc)
            write_frame(sock, {**error_reply(f"{type(exc).__name__}: {exc}")[0],
                               "batch": number}, ())

    def arrive(msg: dict, blobs: list) -> None:
        task = loop.create_task(_answer(worker, msg, blobs, send))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def end(exc: BaseException) -> None:
        if not ended.done():
            ended.set_result(exc)

    def read() -> None:
        """Reads frames on a thread of its own, so the loop never blocks on the socket."""
        try:
            while True:
                msg, blobs = frames.read()
                loop.call_soon_threadsafe(arrive, msg, blobs)
        except (EOFError, ConnectionError, ProtocolError) as exc:
            loop.call_soon_threadsafe(end, exc)

    threading.Thread(target=read, name="torchyard-reader", daemon=True).start()
    return await ended


async def _answer(worker: Any, msg: dict, blobs: list, send) -> None:
    """Runs one batch and sends its reply (and the partial results its handler sends)."""
    number = msg.get("batch")
    if msg.get("kind") != "predict":
        header, bodies = error_reply(f"unexpected message {msg.get('kind')!r}: the handler is "
                                     "loaded", 500, "InternalServerException")
    else:
        threads.apply(msg.get("threads"))
        header, bodies = await _run(worker, msg, blobs, number, send)
    if worker.pending_metrics:
        header["metrics"] = drain(worker.pending_metrics)
    send(header, bodies, number)


async def _run(worker: Any, msg: dict, blobs: list, number: Optional[int], send) -> Reply:
    requests = msg["requests"]
    data = worker.decode_batch(requests, blobs)
    # The batch's own context: concurrent batches must not share request ids and statuses.
    context = copy.copy(worker.context)
    context.cl_socket = FrameSocket(context)
    loop = asyncio.get_running_loop()
    loop_thread = threading.get_ident()

    def sink(outputs, req_id_map) -> None:
        frame = intermediate_frame(context, requests, outputs, req_id_map)
        if threading.get_ident() == loop_thread:
            send(*frame, number)
        else:  # a plain handler on the pool: the loop writes it, before the batch's reply
            loop.call_soon_threadsafe(send, *frame, number)

    context.intermediate_sink = sink
    context.start_batch(requests)
    started = time.perf_counter()
    try:
        items, finish = envelopes.plan(requests, data, context, worker.envelope)
        outputs = None if items is None else await _call(worker.entry, items, context)
        outputs = finish(outputs)
    except Exception as exc:  # noqa: BLE001 - a handler failure fails its batch only
        log.error("handler failed:\n%s", traceback.format_exc())
        return exception_reply(exc, "PredictionException")
    header, bodies = encode_outputs(outputs, context, len(requests), worker.continuous)
    if header["kind"] == "predicted":
        header["prediction_us"] = round((time.perf_counter() - started) * 1e6)
    return header, bodies


async def _call(entry: Any, items: list, context: Any) -> Any:
    """The handler's outputs: an `async def handle` is awaited on the loop; a plain one runs on
    the loop's thread pool, so that other batches go on meanwhile (an awaitable it returns is
    awaited in turn)."""
    if inspect.iscoroutinefunction(entry):
        return await entry(items, context)
    outputs = await asyncio.get_running_loop().run_in_executor(None, entry, items, context)
    if inspect.isawaitable(outputs):
        outputs = await outputs
    return outputs
