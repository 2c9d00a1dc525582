"""A fused segment: a chain of workflow function nodes that one worker runs in turn on every
request, each node with its own tries and timeout, as if each were a node model of its own
(docs/protocol.md, `segment`)."""

from __future__ import annotations

import logging
import signal
import time
import traceback
from typing import Any, Callable, List, Optional, Sequence, Tuple

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
    """SIGALRM as the timeout of the try in progress: it raises NodeTimeout only while armed,
    so a signal that lands after the try ended is ignored."""

    armed = False

    @classmethod
    def install(cls) -> None:
        signal.signal(signal.SIGALRM, cls._fire)

    @classmethod
    def _fire(cls, _signum: int, _frame: Any) -> None:
        if cls.armed:
            cls.armed = False
            raise NodeTimeout()

    @classmethod
    def arm(cls, seconds: float) -> None:
        """Starts a try: the timer is set anew, whatever an earlier try left of it."""
        cls.armed = True
        signal.setitimer(signal.ITIMER_REAL, seconds)

    @classmethod
    def stop(cls) -> None:
        """Stops the timer once the segment is done (a try only clears `armed`)."""
        cls.armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)


class Node:
    """One function node: the handler file's function, its own context, tries and timeout."""

    def __init__(self, entry: Entry, context: Context, attempts: int, timeout_ms: int):
        self.entry = entry
        self.context = context
        self.attempts = max(1, attempts)
        self.timeout_ms = timeout_ms
        self.timeout = timeout_ms / 1000

    def run(self, requests: Sequence[dict], inputs: Sequence[dict]) -> List[Tuple[Answer, int, int]]:
        """Per request: its last answer, its retries, and the microseconds its tries took.
        A try runs on the requests that have no answer yet, as one batch."""
        answers, took = self.attempt(requests, inputs)
        micros = int(took * 1e6)
        results = [(answer, 0, micros) for answer in answers]
        pending = [i for i, answer in enumerate(answers) if answer[2] is not None]
        for attempt in range(1, self.attempts):
            if not pending:
                break
            answers, took = self.attempt([requests[i] for i in pending],
                                         [inputs[i] for i in pending])
            for i, answer in zip(pending, answers):
                results[i] = (answer, attempt, results[i][2] + int(took * 1e6))
            pending = [i for i, answer in zip(pending, answers) if answer[2] is not None]
        return results

    def attempt(self, requests: Sequence[dict], inputs: List[dict]) -> Tuple[List[Answer], float]:
        """One try on a batch: the function's answer per request (or the failure of all), and
        the seconds the function took."""
        count = len(requests)
        context = self.context
        context.start_batch(requests)
        started = time.perf_counter()
        try:
            _Alarm.arm(self.timeout)
            try:
                outputs = self.entry(inputs, context)
            finally:
                _Alarm.armed = False
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
        return [(response, body, None if response["status"] < 400 else (response["status"], None))
                for response, body in entries], took


class Segment:
    """The nodes of a segment, in chain order."""

    def __init__(self, nodes: List[Node]):
        self.nodes = nodes

    @classmethod
    def load(cls, specs: Sequence[dict], model_dir: str,
             make_context: Callable[[str, Optional[dict]], Context]) -> "Segment":
        """Loads each node's function as a node model would (called once with `None`), with a
        context and a fresh copy of the handler module of its own."""
        nodes = []
        for spec in specs:
            context = make_context(spec["model_name"], spec.get("manifest"))
            entry = load_entry_point(spec["handler"], model_dir, context, fresh=True)
            nodes.append(Node(entry, context, spec["attempts"], spec["timeout_ms"]))
        _Alarm.install()
        return cls(nodes)

    def run(self, requests: Sequence[dict], data: List[dict]) -> Reply:
        """Runs each request through the chain: a node gets the previous node's output as
        the bytes of `body`, as a node model would. A request whose node failed every try
        leaves the chain; its response says which node failed and why."""
        count = len(requests)
        traces: List[List[List[int]]] = [[] for _ in range(count)]
        finals: List[Tuple[dict, Any]] = [({}, b"")] * count
        inputs = list(data)
        alive = list(range(count))
        last = len(self.nodes) - 1
        for k, node in enumerate(self.nodes):
            ran = node.run([requests[i] for i in alive], [inputs[i] for i in alive])
            still = []
            for i, ((response, body, failure), retries, micros) in zip(alive, ran):
                traces[i].append([micros, retries])
                if failure is not None:
                    status, message = failure
                    finals[i] = ({"status": status, "content_type": None,
                                  "failed": {"message": message}}, body)
                elif k == last:
                    finals[i] = (response, body)
                else:
                    inputs[i] = {"body": bytearray(body)}
                    still.append(i)
            alive = still
        _Alarm.stop()
        responses, bodies = [], []
        for idx, ((response, body), trace) in enumerate(zip(finals, traces)):
            response = dict(response, blob=idx)
            response["trace"] = {"nodes": trace, "failed": response.pop("failed", None)}
            responses.append(response)
            bodies.append(body)
        return {"kind": "predicted", "responses": responses}, bodies
