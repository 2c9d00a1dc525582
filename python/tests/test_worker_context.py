"""The handler context on its own: TorchServe's constructor, per-batch state and metrics."""

import logging

from torchyard.context import Context


def _context():
    # TorchServe's positional order: name, model_dir, manifest, batch_size, gpu, version.
    return Context("m", "/models/m", {"model": {}}, 2, None, "0.1.0")


def test_positional_construction_and_batch_state():
    context = _context()
    assert context.system_properties == {
        "model_dir": "/models/m", "gpu_id": None, "batch_size": 2, "server_name": "torchyard",
        "server_version": "0.1.0", "limit_max_image_pixels": True}
    assert context.model_yaml_config == {} and context.get_request_id() is None
    context.start_batch([{"id": "a", "headers": [["Content-Type", "text/plain"]]},
                         {"id": "b", "headers": []}])
    assert context.request_ids == {0: "a", 1: "b"} and context.get_request_id(1) == "b"
    assert context.get_request_header(0, "content-type") == "text/plain"
    assert context.request_processor[0].get_request_property("CONTENT-TYPE") == "text/plain"
    context.set_all_response_status(503, "busy")
    context.set_response_status(201, idx=1)
    assert [context.get_response_status(i) for i in (0, 1)] == [(503, "busy"), (201, "")]
    context.set_response_content_type(0, "image/png")
    assert context.get_response_content_type(0) == "image/png"
    assert context.get_response_headers(0) == {"content-type": "image/png"}
    context.start_batch([{"id": "c", "headers": []}])
    assert context.get_response_status(0) == (200, None)
    assert context.get_response_content_type(0) is None


def test_metrics_are_recorded_and_logged_at_debug(caplog):
    metrics = _context().metrics
    with caplog.at_level(logging.DEBUG, logger="torchyard.metrics"):
        metrics.add_time("HandlerTime", 12.5, None, "ms")
        metrics.add_counter("Calls", 1, idx=0)
        metrics.add_size("Payload", 3, unit="kB")
        metrics.add_percent("Load", 50)
        metrics.add_metric("Custom", 7, "count")
        metrics.add_error("Errors", 1)
        cached = metrics.add_metric_to_cache("Latency", "ms", ["ModelName"])
        cached.add_or_update(4, ["m"], "req")
        metrics.get_metric("Never added").update(9)
    assert metrics.get_metric("Latency") is cached and cached.value == 4
    assert {name: m.value for name, m in metrics.cache.items()} == {
        "HandlerTime": 12.5, "Calls": 1, "Payload": 3, "Load": 50, "Custom": 7, "Errors": 1,
        "Latency": 4, "Never added": 9}
    assert "[METRICS]HandlerTime.ms:12.5" in caplog.text
    assert "[METRICS]Latency.ms:4|#m|req" in caplog.text
