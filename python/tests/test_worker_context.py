"""The handler context on its own: TorchServe's constructor, per-batch state and metrics."""

import importlib.util
import logging
import os

from torchyard.context import Context
from torchyard.metrics import drain
from torchyard.worker import COMPAT_PATH


def _stand_in(relative: str):
    """A module of torchyard's `ts` stand-in, loaded from its file under a private name: an
    import of `ts` here would stay in sys.modules and shadow TorchServe's real package, which
    the KServe tests import in the same pytest process."""
    path = os.path.join(COMPAT_PATH, relative)
    spec = importlib.util.spec_from_file_location(f"_stand_in_{relative.replace('/', '_')}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


Dimension = _stand_in("ts/metrics/dimension.py").Dimension


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
    context.start_batch([{"id": "c", "headers": [["Accept", "a"], ["x", "1"], ["accept", "b"]]}])
    assert context.get_all_request_header(0) == {"accept": "a, b", "x": "1"}
    assert context.get_response_status(0) == (200, None)
    assert context.get_response_content_type(0) is None


def test_metrics_are_summed_per_series_with_torchserve_default_dimensions(caplog):
    context = _context()
    metrics = context.metrics
    metrics.add_time("LoadTime", 12.5, None, "ms")  # outside a batch: Level=Error
    context.start_batch([{"id": "a", "headers": []}, {"id": "b", "headers": []}])
    metrics.add_counter("Calls", 1, idx=0)
    metrics.add_counter("Calls", 2, idx=1)
    metrics.add_size("Payload", 3, unit="kB")
    metrics.add_size("Payload", 5, unit="kB")
    metrics.add_percent("Load", 50)
    metrics.add_metric("Custom", 7, "count")
    metrics.add_error("Errors", 1)
    cached = metrics.add_metric_to_cache("Latency", "ms", ["ModelName"], "histogram")
    cached.add_or_update(4, ["m"], "req")
    cached.add_or_update(6, ["m"], "req")
    cached.add_or_update(1, ["other"])
    assert metrics.get_metric("Latency", "histogram") is cached
    with caplog.at_level(logging.ERROR, logger="torchyard.metrics"):
        metrics.add_counter("Calls", -1)
        cached.add_or_update(1, ["m", "extra"])
        cached.add_or_update("many", ["m"])
    assert caplog.text.count("Failed to update metric") == 3
    model = ["ModelName", "Level"]
    assert drain(metrics.pending) == [
        ("gauge", "LoadTime", "ms", ["Level"], ["Error"], [12.5]),
        ("counter", "Calls", "count", model, ["m", "Model"], [3.0]),
        ("gauge", "Payload", "kB", model, ["m", "Model"], [5.0]),
        ("gauge", "Load", "percent", model, ["m", "Model"], [50.0]),
        ("counter", "Custom", "count", model, ["m", "Model"], [7.0]),
        ("counter", "Errors", "", ["Level"], ["Error"], [1.0]),
        ("histogram", "Latency", "ms", ["ModelName"], ["m"], [4.0, 6.0]),
        ("histogram", "Latency", "ms", ["ModelName"], ["other"], [1.0]),
    ]
    assert metrics.pending == [] and drain(metrics.pending) == []


def test_updates_keep_the_dimension_names_they_were_recorded_with():
    """`Metric.update` replaces the dimension names; what was recorded before goes out under
    the old names, as TorchServe, which emits every update at once, sends it."""
    metrics = _context().metrics
    pending = metrics.get_metric("Queue", "gauge")
    pending.update(7, dimensions=[Dimension("Kind", "queue")])
    pending.update(8, dimensions=[Dimension("Kind", "queue"), Dimension("Shard", "1")])
    pending.update(9, dimensions=[Dimension("Kind", "queue")])
    assert pending.dimension_names == ["Kind"]
    assert drain(metrics.pending) == [
        ("gauge", "Queue", "", ["Kind"], ["queue"], [9.0]),
        ("gauge", "Queue", "", ["Kind", "Shard"], ["queue", "1"], [8.0]),
    ]
