"""`ts.handler_utils.timer`: `@timed` records a handler step's duration as a metric."""

import functools
import time

import torch


def _profiling(handler) -> bool:
    """Whether the model's configuration asks for it: `handler: {profile: true}`."""
    context = getattr(handler, "context", None)
    config = getattr(context, "model_yaml_config", None) or {}
    return bool((config.get("handler") or {}).get("profile"))


def timed(func):
    """Wraps a handler method (`preprocess`, `inference`, ...): when the model's YAML sets
    `handler.profile: true`, its duration in ms goes to `context.metrics` as the time metric
    `ts_handler_<method name>`, measured with CUDA events when CUDA is available."""

    @functools.wraps(func)
    def wrap_func(self, *args, **kwargs):
        if not _profiling(self):
            return func(self, *args, **kwargs)
        if torch.cuda.is_available():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            result = func(self, *args, **kwargs)
            end.record()
            torch.cuda.synchronize()
            duration = start.elapsed_time(end)
        else:
            start = time.time()
            result = func(self, *args, **kwargs)
            duration = (time.time() - start) * 1000
        self.context.metrics.add_time("ts_handler_" + func.__name__, duration)
        return result

    return wrap_func
