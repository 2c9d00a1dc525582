"""Handler metrics (TorchServe's custom metrics API, docs/metrics.md "Custom Metrics API"): what a
handler records through `context.metrics` reaches `/metrics` with TorchServe's names, types and
labels (the handler's dimensions, `ModelName`, `Level`, `Hostname`); `metrics_config` declares
metrics up front and trims the frontend series; `model_metrics_auto_detect=false` drops what it
does not declare; log and legacy modes write TorchServe's metric lines to the log."""

import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from support.api import register
from support.archives import archive, build_mar, manifest, torchscript_scale, write_files
from support.ts_packages import worker_env

HOST = socket.gethostname()
REQUESTS = 5

HANDLER = """
    import torch
    from ts.metrics.dimension import Dimension
    from ts.metrics.metric_type_enum import MetricTypes
    from ts.torch_handler.base_handler import BaseHandler


    class MetricsHandler(BaseHandler):
        def initialize(self, context):
            super().initialize(context)
            context.metrics.add_counter("ModelLoads", 1)
            self.sizes = context.metrics.add_metric_to_cache(
                "BodyBytes", "B", ["ModelName", "Level"], MetricTypes.HISTOGRAM)

        def preprocess(self, data):
            self.bodies = [bytes(row.get("body") or row.get("data")) for row in data]
            return torch.tensor([float(b) for b in self.bodies])

        def postprocess(self, output):
            m = self.context.metrics
            for idx, body in enumerate(self.bodies):
                m.add_counter("InferenceCount", 1, idx, [Dimension("Route", "predict")])
                m.add_time("InferenceTime", 2.5, idx)
                m.add_size("PayloadSize", len(body), idx, "B")
                m.add_percent("Confidence", 42.0, idx)
                m.add_metric("Items", 3, "items", idx)
                self.sizes.add_or_update(len(body), [self.context.model_name, "Model"],
                                         self.context.get_request_id(idx))
                m.get_metric("Pending", MetricTypes.GAUGE).update(
                    7, dimensions=[Dimension("Kind", "queue")])
                m.add_counter("Negative", -1, idx)
            m.add_error("HandlerWarnings", 1)
            return output.tolist()
"""

METRICS_CONFIG = """
dimensions:
  - &model_name "ModelName"
  - &level "Level"
ts_metrics:
  counter:
    - name: ts_inference_requests_total
      unit: Count
      dimensions: ["model_name", "model_version", "hostname"]
model_metrics:
  counter:
    - name: InferenceCount
      unit: count
      dimensions: ["Route", *model_name, *level]
  gauge:
    - name: DeclaredNeverUsed
      unit: ms
      dimensions: [*model_name, *level]
"""


#: A function handler taking SLOW_S per batch, which records under names of the server's own
#: metrics (refused) and changes a metric's dimension names between two updates.
SLOW_S = 0.2
SLOW = f"""
import time
from ts.metrics.dimension import Dimension


def handle(data, context):
    if data is None:
        return None
    time.sleep({SLOW_S})
    m = context.metrics
    m.add_counter("Requests2XX", 1)
    m.add_counter("torchyard_batch_size_count", 1)
    shifted = m.get_metric("Shifted", "gauge")
    shifted.update(1, dimensions=[Dimension("Kind", "a")])
    shifted.update(2, dimensions=[Dimension("Kind", "b"), Dimension("Shard", "1")])
    return [len(row["body"]) for row in data]
"""


def metrics_mar(store: Path) -> Path:
    """A .mar of a TorchScript model (doubling each number) whose BaseHandler records metrics."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_files(tmp, {"metrics_handler.py": HANDLER})
        pt = torchscript_scale(tmp / "m.pt", 2.0)
        return archive("model", "--model-name", "m", "--serialized-file", str(pt), "--handler",
                       str(tmp / "metrics_handler.py"), "--export-path", str(store), "-f")


def served(server) -> None:
    """Registers the model and sends it REQUESTS predictions."""
    metrics_mar(server.store)
    assert register(server, url="m.mar").status_code == 200
    for n in range(REQUESTS):
        answer = requests.post(f"{server.inference}/predictions/m", data=str(n))
        assert answer.status_code == 200 and answer.json() == 2.0 * n


def scrape(server, query=""):
    answer = requests.get(f"{server.metrics}/metrics{query}")
    assert answer.status_code == 200
    return answer.text


def parsed(text):
    """{name as in `# TYPE`: (type, samples)}."""
    out = {}
    for family in text_string_to_metric_families(text):
        name = family.name + ("_total" if f"# TYPE {family.name}_total " in text else "")
        out[name] = (family.type, family.samples)
    return out


def sample(families, name, suffix="", **labels):
    """The one sample of `name` (its `suffix` series) whose labels include `labels`; the parser
    names a counter's samples with `_total`."""
    kind, samples = families[name]
    base = name.removesuffix("_total")
    wanted = base + ("_total" if kind == "counter" and not suffix else suffix)
    found = [s for s in samples if s.name == wanted and labels.items() <= s.labels.items()]
    assert len(found) == 1, (name, labels, samples)
    return found[0]


@pytest.fixture(scope="module")
def default_server(start_module_server, ts_package):
    """Runs with torchyard's stand-in `ts` and with TorchServe's own package in the workers'
    Python."""
    server = start_module_server(env=worker_env(ts_package))
    served(server)
    return server


def test_every_api_method_reaches_prometheus_with_torchserve_labels(default_server):
    text = scrape(default_server)
    families = parsed(text)
    model = {"ModelName": "m", "Level": "Model", "Hostname": HOST}
    count = sample(families, "InferenceCount", Route="predict", **model)
    assert families["InferenceCount"][0] == "counter" and count.value == REQUESTS
    assert list(count.labels) == ["Route", "ModelName", "Level", "Hostname"]
    assert "# HELP InferenceCount Torchserve prometheus counter metric with unit: count" in text
    for name, value in [("InferenceTime", 2.5), ("PayloadSize", 1.0), ("Confidence", 42.0)]:
        assert families[name][0] == "gauge", name
        assert sample(families, name, **model).value == value
    assert families["Items"][0] == "counter"
    assert sample(families, "Items", **model).value == 3 * REQUESTS
    histogram = sample(families, "BodyBytes", "_count", **model)
    assert families["BodyBytes"][0] == "histogram" and histogram.value == REQUESTS
    assert sample(families, "BodyBytes", "_sum", **model).value == float(REQUESTS)
    assert sample(families, "Pending", Kind="queue", Hostname=HOST).value == 7
    # The load has a request id of its own in TorchServe, so initialize gets the model's
    # dimensions; add_error's default is Level=Error.
    assert sample(families, "ModelLoads", **model).value == 1
    errors = sample(families, "HandlerWarnings", Level="Error", Hostname=HOST)
    assert errors.value == REQUESTS and "ModelName" not in errors.labels
    # A negative counter update is dropped, as TorchServe drops it.
    assert "Negative" not in families or families["Negative"][1] == []


def test_torchserve_default_backend_metrics_are_exported(default_server):
    families = parsed(scrape(default_server))
    model = {"ModelName": "m", "Level": "Model", "Hostname": HOST}
    for name in ("HandlerTime", "PredictionTime"):
        assert families[name][0] == "gauge"
        assert sample(families, name, **model).value > 0


def test_name_filter_selects_handler_metrics(default_server):
    families = parsed(scrape(default_server, "?name[]=InferenceCount&name[]=HandlerTime"))
    assert sorted(families) == ["HandlerTime", "InferenceCount"]


@pytest.fixture(scope="module")
def slow_served(default_server):
    """The module server after four concurrent requests to the slow model: with batch size 1
    each batch after the first goes to the worker while the one before still runs."""
    build_mar(default_server.store, "slow", {"slow.py": SLOW}, manifest("slow", "slow.py"))
    assert register(default_server, url="slow.mar").status_code == 200
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(
            lambda n: requests.post(f"{default_server.inference}/predictions/slow", data=b"x" * n),
            range(1, 5)))
    assert [a.json() for a in answers] == [1, 2, 3, 4]
    return default_server


def test_handler_metrics_under_the_servers_names_are_refused_once(slow_served):
    text = scrape(slow_served)
    families = parsed(text)  # the whole exposition still parses
    assert text.count("# TYPE Requests2XX ") == 1
    assert [s.labels for s in families["Requests2XX"][1]] == [{"Level": "Host",
                                                              "Hostname": HOST}]
    assert "torchyard_batch_size_count{ModelName" not in text
    log = slow_served.log_text()
    for name in ("Requests2XX", "torchyard_batch_size_count"):
        assert log.count(f'metric "{name}" is dropped: {name} is taken by one of the server') == 1


def test_updates_keep_the_dimension_names_they_were_recorded_with(slow_served):
    # `update` with new dimension names left the updates made under the old ones alone.
    shifted = sample(parsed(scrape(slow_served)), "Shifted", Kind="a")
    assert shifted.labels == {"Kind": "a", "Hostname": HOST} and shifted.value == 1


def test_prediction_time_leaves_out_the_wait_behind_the_batch_before(slow_served):
    families = parsed(scrape(slow_served, "?name[]=PredictionTime"))
    took = sample(families, "PredictionTime", ModelName="slow").value
    # Timed from the batch going out, a batch sent ahead counted the one before's tail: ~2x.
    assert SLOW_S * 1000 <= took < SLOW_S * 1000 * 1.7, took


def test_metrics_config_declares_trims_and_logs(start_server, tmp_path):
    config = tmp_path / "metrics.yaml"
    config.write_text(METRICS_CONFIG)
    server = start_server(properties={"metrics_config": str(config), "metrics_mode": "log",
                                      "model_metrics_auto_detect": "false"})
    before = parsed(scrape(server))
    # Declared metrics exist before any handler records them.
    assert before["DeclaredNeverUsed"] == ("gauge", [])
    served(server)
    text = scrape(server)
    families = parsed(text)
    assert sample(families, "InferenceCount", Route="predict", ModelName="m").value == REQUESTS
    # Not declared and auto-detection off: dropped, as in TorchServe.
    for name in ("InferenceTime", "BodyBytes", "HandlerTime", "PredictionTime"):
        assert name not in families, name
    # Only the frontend series the file lists, and torchyard's own.
    assert "ts_inference_requests_total" in families
    for name in ("Requests2XX", "ts_queue_latency_microseconds", "CPUUtilization"):
        assert name not in families, name
    assert any(name.startswith("torchyard_") for name in families)
    # Log mode writes TorchServe's model_metrics lines into logs/model_metrics.log.
    lines = [f"InferenceCount.count:1.0|#Route:predict,ModelName:m,Level:Model|#hostname:{HOST},",
             "InferenceTime.ms:2.5|#ModelName:m,Level:Model"]
    log = server.workdir / "logs" / "model_metrics.log"
    deadline = time.monotonic() + 10
    while not all(line in log.read_text() for line in lines):
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)


@pytest.mark.parametrize("name, reason", [
    ("'not valid'", "not valid"),
    ("ts_queue_latency_microseconds",
     "ts_queue_latency_microseconds.: ts_queue_latency_microseconds is taken by one of the server"),
])
def test_a_bad_metrics_config_stops_the_start(start_server, tmp_path, name, reason):
    config = tmp_path / "metrics.yaml"
    config.write_text(f"model_metrics:\n  gauge:\n    - name: {name}\n")
    with pytest.raises(RuntimeError, match=reason):
        start_server(properties={"metrics_config": str(config)})
