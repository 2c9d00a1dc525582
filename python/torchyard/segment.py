"""A fused segment: a chain of workflow nodes that one worker runs in turn on a request, each
node with its own tries and timeout, as if each were a node model of its own
(docs/protocol.md, `segment`): function nodes, and possibly the model node whose worker it is,
with the function chains before and after it."""

from __future__ import annotations

import logging
import signal
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import envelopes
from .context import Context
from .handler_loader import Entry, load_entry_point
from .replies import Reply, exception_status, outputs_problem, response_entry

log = logging.getLogger("torchyard.segment")

#: What one try gives one request: (response entry, body, failure). The failure is None, or
#: (status, message) where a message of None means the handler answered that error status.
Answer = Tuple[Optional[dict], Any, Optional[Tuple[int, Optional[str]]]]


class NodeTimeout(BaseException):
    """Raised in a node's function when its try outlasts the node's timeout. A BaseException,
    so that a handler's `except Exception` does not swallow it."""


class _Alarm:
    """SIGALRM as the timeout of the try in progress, set with as few system calls as possible:
    a try only notes its deadline, and the timer is set only when it would fire too late. When
    it fires before the deadline (it was set for an earlier try), it is set again for the time
    left; when no try is in progress, it does nothing."""

    #: time.monotonic() deadline of the try in progress, None between tries.
    deadline: Optional[float] = None
    #: When the timer is set to fire, 0 when it is not set.
    fires_at = 0.0

    @classmethod
    def install(cls) -> None:
        signal.signal(signal.SIGALRM, cls._fire)

    @classmethod
    def _fire(cls, _signum: int, _frame: Any) -> None:
        cls.fires_at = 0.0
        deadline = cls.deadline
        if deadline is None:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            cls.deadline = None
            raise NodeTimeout()
        cls._set(deadline, left)

    @classmethod
    def _set(cls, fires_at: float, seconds: float) -> None:
        cls.fires_at = fires_at
        signal.setitimer(signal.ITIMER_REAL, seconds)

    @classmethod
    def start(cls, seconds: float) -> None:
        """Starts a try that may last `seconds`."""
        deadline = time.monotonic() + seconds
        cls.deadline = deadline
        if not cls.fires_at or cls.fires_at > deadline:
            cls._set(deadline, seconds)

    @classmethod
    def end(cls) -> None:
        """Ends the try; a timer still set goes off harmlessly."""
        cls.deadline = None


class Node:
    """One node: a function of the handler file, or the worker's model handler, with its own
    context, tries and timeout."""

    def __init__(self, entry: Entry, context: Context, attempts: int, timeout_ms: int):
        self.entry = entry
        self.context = context
        self.attempts = max(1, attempts)
        self.timeout_ms = timeout_ms
        self.timeout = timeout_ms / 1000
        #: For a model node, where its handler's partial results go during a try (its
        #: context's intermediate sink): `collect` when other nodes follow, else `forward`.
        self.sink: Optional[Callable[[Sequence[Any], Dict[int, str]], None]] = None
        #: `collect`'s partial results per request id, which go before the node's output into
        #: the next node, as the server joins a streamed answer that a node takes.
        self.chunks: Optional[Dict[str, List[bytes]]] = None
        #: `forward`'s destination (the worker's sink, which sends them to the server), and
        #: the trace so far per request id that has sent no partial result yet.
        self.send: Optional[Callable[..., None]] = None
        self.traces: Dict[str, List[Tuple[int, int]]] = {}
        #: The try in progress: its number from 0, and when it started.
        self.retries = 0
        self.started = 0.0

    def streams(self, last: bool) -> None:
        """Makes this model node's partial results join its output (`last` False) or go to
        the server (`last` True)."""
        if last:
            self.send, self.sink = self.context.intermediate_sink, self.forward
        else:
            self.chunks, self.sink = {}, self.collect

    def collect(self, outputs: Sequence[Any], req_id_map: Dict[int, str]) -> None:
        """Keeps partial results for the next node."""
        context = self.context
        for idx in req_id_map:
            _, body = response_entry(idx, outputs[idx], context.request_processor[idx])
            self.chunks.setdefault(context.request_ids[idx], []).append(bytes(body))

    def forward(self, outputs: Sequence[Any], req_id_map: Dict[int, str]) -> None:
        """Sends partial results to the server; a request's first one carries its trace so
        far (the nodes before, and this node's tries until now), since the server answers
        with it before the final reply comes."""
        ids = self.context.request_ids
        micros = int((time.perf_counter() - self.started) * 1e6)
        traces = {}
        for idx in req_id_map:
            trace = self.traces.pop(ids.get(idx), None)
            if trace is not None:
                traces[idx] = {"nodes": [*trace, (micros, self.retries)], "failed": None}
        self.send(outputs, req_id_map, traces)

    def run(self, requests: Sequence[dict], inputs: Sequence[dict],
            first: bool) -> List[Tuple[Answer, int, int]]:
        """Per request: its last answer, its retries, and the microseconds its tries took.
        A try runs on the requests that have no answer yet, as one batch. The `first` node of
        the segment takes the requests through their KServe envelope, if they name one."""
        self.retries = 0
        answers, took = self.attempt(requests, inputs, first)
        micros = int(took * 1e6)
        results = [(answer, 0, micros) for answer in answers]
        pending = [i for i, answer in enumerate(answers) if answer[2] is not None]
        for attempt in range(1, self.attempts):
            if not pending:
                break
            self.retries = attempt
            answers, took = self.attempt([requests[i] for i in pending],
                                         [inputs[i] for i in pending], first)
            for i, answer in zip(pending, answers):
                results[i] = (answer, attempt, results[i][2] + int(took * 1e6))
            pending = [i for i, answer in zip(pending, answers) if answer[2] is not None]
        return results

    def attempt(self, requests: Sequence[dict], inputs: List[dict],
                first: bool) -> Tuple[List[Answer], float]:
        """One try on a batch: the function's answer per request (or the failure of all), and
        the seconds the function took."""
        count = len(requests)
        context = self.context
        context.start_batch(requests)
        chunks = self.chunks
        if chunks is not None:
            for request in requests:
                chunks.pop(request["id"], None)  # a failed try's partial results go
        sink = context.intermediate_sink
        if self.sink is not None:
            context.intermediate_sink = self.sink
        self.started = started = time.perf_counter()
        try:
            _Alarm.start(self.timeout)
            try:
                if first:
                    outputs = envelopes.call(self.entry, requests, inputs, context)
                else:
                    outputs = self.entry(inputs, context)
            finally:
                _Alarm.end()
                context.intermediate_sink = sink
            took = time.perf_counter() - started
            timed_out = took > self.timeout
        except NodeTimeout:
            took, timed_out = time.perf_counter() - started, True
        except Exception as exc:  # noqa: BLE001 - a failed try fails its batch only
            log.error("workflow node %s failed:\n%s", context.model_name, traceback.format_exc())
            return [(None, b"", exception_status(exc))] * count, time.perf_counter() - started
        if timed_out:
            return [(None, b"", (500, f"timed out after {self.timeout_ms} ms"))] * count, took
        problem = outputs_problem(outputs, count)
        if problem:
            return [(None, b"", (500, problem))] * count, took
        try:
            entries = [response_entry(idx, output, context.request_processor[idx])
                       for idx, output in enumerate(outputs)]
        except Exception as exc:  # noqa: BLE001 - an unserialisable output fails its batch
            log.error("cannot encode the output of workflow node %s:\n%s", context.model_name,
                      traceback.format_exc())
            return [(None, b"", exception_status(exc))] * count, took
        if chunks:
            entries = [(response, b"".join([*chunks.pop(request["id"], ()), body]))
                       for request, (response, body) in zip(requests, entries)]
        return [(response, body, None if response["status"] < 400 else (response["status"], None))
                for response, body in entries], took


class Segment:
    """The nodes of a segment, in chain order."""

    def __init__(self, nodes: List[Node]):
        self.nodes = nodes

    @classmethod
    def load(cls, specs: Sequence[dict], model_dir: str,
             make_context: Callable[[str, Optional[dict], str], Context],
             model: Optional[Tuple[Entry, Context]] = None) -> "Segment":
        """Loads each node's function as a node model would (called once with `None`), with a
        context and a fresh copy of the handler module of its own, from the node's `model_dir`
        (default `model_dir`); the node marked `model` is the worker's loaded handler `model`
        (entry point and context)."""
        nodes = []
        for spec in specs:
            if spec.get("model"):
                if model is None:
                    raise ValueError(f"segment node {spec['node']} is a model, and none is loaded")
                entry, context = model
            else:
                node_dir = spec.get("model_dir") or model_dir
                context = make_context(spec["model_name"], spec.get("manifest"), node_dir)
                try:
                    entry = load_entry_point(spec["handler"], node_dir, context, fresh=True)
                except Exception:
                    log.error("loading workflow node %s (%s) failed", spec["node"],
                              spec["handler"])
                    raise
            nodes.append(Node(entry, context, spec["attempts"], spec["timeout_ms"]))
            if spec.get("model"):
                nodes[-1].streams(last=spec is specs[-1])
        _Alarm.install()
        return cls(nodes)

    def run(self, requests: Sequence[dict], data: List[dict]) -> Reply:
        """Runs each request through the chain: a node gets the previous node's output as
        the bytes of `body`, as a node model would. A request whose node failed every try
        leaves the chain; its response says which node failed and why."""
        count = len(requests)
        traces: List[List[Tuple[int, int]]] = [[] for _ in range(count)]
        responses: List[Optional[dict]] = [None] * count
        bodies: List[Any] = [b""] * count
        inputs = list(data)
        alive = list(range(count))
        last = len(self.nodes) - 1
        for k, node in enumerate(self.nodes):
            if node.send is not None:
                node.traces = {requests[i]["id"]: traces[i] for i in alive}
            if len(alive) < count:
                ran = node.run([requests[i] for i in alive], [inputs[i] for i in alive], k == 0)
            else:
                ran = node.run(requests, inputs, k == 0)
            still = []
            for i, ((response, body, failure), retries, micros) in zip(alive, ran):
                trace = traces[i]
                trace.append((micros, retries))
                if failure is not None:
                    status, message = failure
                    responses[i] = {"status": status, "blob": i,
                                    "trace": {"nodes": trace, "failed": {"message": message}}}
                    bodies[i] = body
                elif k == last:
                    response["blob"] = i
                    response["trace"] = {"nodes": trace, "failed": None}
                    responses[i], bodies[i] = response, body
                else:
                    inputs[i] = {"body": bytearray(body)}
                    still.append(i)
            alive = still
        return {"kind": "predicted", "responses": responses}, bodies
