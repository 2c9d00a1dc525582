"""Continuous batching (`continuousBatching: true` in model-config.yaml): after each step the
handler's `context.stopping_criteria` says which requests go on. Those the worker marks with
TorchServe's `ts_stream_next: true` response header; the server keeps them in the running batch
and sends them again, without their parameters, with the next step (docs/protocol.md)."""

from __future__ import annotations

from typing import Any, Sequence

#: The response header that marks a request as going on (TorchServe's name).
STREAM_NEXT = "ts_stream_next"


def enabled(model_yaml_config: Any) -> bool:
    """Whether a model's configuration turns continuous batching on."""
    return isinstance(model_yaml_config, dict) and model_yaml_config.get("continuousBatching") is True


def mark_continuing(context: Any, outputs: Sequence[Any]) -> None:
    """Sets `ts_stream_next: true` on each request whose stopping criterion, called with its
    output, answers false (not None), as TorchServe's backend does; a true answer, None or no
    criteria end the request, and the header is removed."""
    criteria = getattr(context, "stopping_criteria", None)
    for idx, processor in enumerate(context.request_processor):
        headers = processor.get_response_headers()
        headers.pop(STREAM_NEXT, None)
        stop = criteria[idx](outputs[idx]) if criteria else True
        if stop is not None and not stop:
            headers[STREAM_NEXT] = "true"
