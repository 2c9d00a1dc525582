"""`ts.handler_utils.micro_batching`: a handler's batch split into micro-batches that flow
through preprocess → inference → postprocess, each step run by its own threads, so that the
steps of different micro-batches overlap."""

import os
import queue
import threading
import time
from copy import copy
from typing import Dict, List, Optional

HANDLER_METHODS = ["preprocess", "inference", "postprocess"]


class _Failed:
    """A step's exception, passed down the remaining steps to `handle`, which raises it."""

    def __init__(self, error: BaseException):
        self.error = error


class _Step:
    """The threads that run one handler method on what arrives on `inbox`."""

    def __init__(self, method, inbox: queue.Queue, outbox: queue.Queue, local: threading.local):
        self.method, self.inbox, self.outbox, self.local = method, inbox, outbox, local
        self.threads: List[tuple] = []

    def resize(self, count: int) -> None:
        if count < 0:
            raise ValueError("a step's parallelism cannot be negative")
        while len(self.threads) < count:
            stop = threading.Event()
            thread = threading.Thread(target=self._run, args=(stop,), daemon=True)
            thread.start()
            self.threads.append((stop, thread))
        while len(self.threads) > count:
            stop, thread = self.threads.pop()
            stop.set()
            thread.join()

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                idx, data = self.inbox.get(timeout=0.5)
            except queue.Empty:
                continue
            self.local.micro_batch_idx = idx
            if not isinstance(data, _Failed):
                try:
                    data = self.method(data)
                except Exception as error:  # raised again by `handle`, in the worker's thread
                    data = _Failed(error)
            self.outbox.put((idx, data))


class MicroBatching:
    """Wraps `parent_handler`: calling it as `handle(data, context)` serves the batch in
    micro-batches of `micro_batch_size` requests; `parallelism` is the number of threads per
    step (`{"preprocess": n, "inference": n, "postprocess": n}`, 1 when absent)."""

    def __init__(self, parent_handler, micro_batch_size: int = 1,
                 parallelism: Optional[Dict] = None):
        self.handler = parent_handler
        self.micro_batch_size = micro_batch_size
        self._parallelism = dict(parallelism or {})
        self.thread_local_data = threading.local()
        queues = [queue.Queue() for _ in range(len(HANDLER_METHODS) + 1)]
        self._input, self._output = queues[0], queues[-1]
        self._steps = {name: _Step(getattr(parent_handler, name), queues[i], queues[i + 1],
                                   self.thread_local_data)
                       for i, name in enumerate(HANDLER_METHODS)}
        self._update_threads()

    def __del__(self):
        self.shutdown()

    @property
    def parallelism(self) -> Dict:
        return copy(self._parallelism)

    @parallelism.setter
    def parallelism(self, parallelism: Dict):
        unknown = set(parallelism) - set(HANDLER_METHODS)
        if unknown:
            raise ValueError(f"unknown handler steps {sorted(unknown)}: {HANDLER_METHODS}")
        self._parallelism.update(parallelism)
        self._update_threads()

    def _update_threads(self) -> None:
        for name, step in self._steps.items():
            step.resize(self._parallelism.get(name, 1))

    def shutdown(self) -> None:
        """Stops every step's threads."""
        for step in getattr(self, "_steps", {}).values():
            step.resize(0)

    def get_micro_batch_idx(self):
        """The index of the micro-batch the calling step thread is working on."""
        return getattr(self.thread_local_data, "micro_batch_idx", None)

    def handle(self, data):
        """Runs `data` through the steps in micro-batches; the outputs in request order."""
        size = self.micro_batch_size
        batches = [data[start:start + size] for start in range(0, len(data), size)]
        for idx, batch in enumerate(batches):
            self._input.put_nowait((idx, batch))
        done = sorted((self._output.get() for _ in batches), key=lambda item: item[0])
        for _, outputs in done:
            if isinstance(outputs, _Failed):
                raise outputs.error
        return [output for _, outputs in done for output in outputs]

    def __call__(self, data, context):
        """The handler entry point, as BaseHandler.handle: describe, explain and the profiler
        run the parent handler's steps whole; predictions go through `handle`."""
        start = time.time()
        handler = self.handler
        handler.context = context
        if os.environ.get("ENABLE_TORCH_PROFILER"):
            output, _ = handler._infer_with_profiler(data=data)
        elif handler._is_describe():
            output = [handler.describe_handle()]
        elif handler._is_explain():
            output = handler.explain_handle(handler.preprocess(data), data)
        else:
            output = self.handle(data)
        context.metrics.add_time("HandlerTime", round((time.time() - start) * 1000, 2), None,
                                 "ms")
        return output
