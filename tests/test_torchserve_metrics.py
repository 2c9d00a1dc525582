"""The metrics API as TorchServe 0.12 defines it (docs/metrics.md, docs/metrics_api.md, and
ModelServerTest's testModelMetrics, testMetricManager and testRootMetrics): the series names,
types, labels and values, the `name[]` filter, the host metrics, `metrics_mode` and
`OPTIONS /`, read with prometheus_client's parser as a scraper would."""

import re
import shutil
import socket

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from support.api import describe, register
from support.archives import scale_mar

REQUEST_SERIES = ["ts_inference_requests_total", "ts_inference_latency_microseconds",
                  "ts_queue_latency_microseconds"]
#: TorchServe's host metrics: name → unit (docs/metrics.md, "Default Frontend Metrics").
HOST_METRICS = {"CPUUtilization": "Percent", "MemoryUsed": "Megabytes",
                "MemoryAvailable": "Megabytes", "MemoryUtilization": "Percent",
                "DiskUsage": "Gigabytes", "DiskUtilization": "Percent",
                "DiskAvailable": "Gigabytes"}
GPU_METRICS = {"GPUMemoryUtilization": "Percent", "GPUMemoryUsed": "Megabytes",
               "GPUUtilization": "Percent"}
#: TestUtils.tsInferLatencyPattern, TorchServe's own check of the exposition.
LATENCY_PATTERN = (r'ts_inference_latency_microseconds\{model_name="%s",model_version="%s",'
                   r'hostname=".+",\}\s\d+(\.\d+)')


def scrape(server, query=""):
    answer = requests.get(f"{server.metrics}/metrics{query}")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return answer.text


def families(text):
    """{family name as written in `# TYPE`: parsed family}; the parser drops a counter's
    `_total`, TorchServe's names keep it."""
    declared = re.findall(r"^# TYPE (\S+) ", text, re.M)
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    return {name: parsed[name.removesuffix("_total")] for name in declared}


def value(family, **labels):
    """The value of the one sample of `family` whose labels include `labels`."""
    found = [s.value for s in family.samples if labels.items() <= s.labels.items()]
    assert len(found) == 1, (labels, family.samples)
    return found[0]


@pytest.fixture(scope="module")
def server(start_module_server):
    server = start_module_server(properties={"metric_time_interval": 1})
    scale_mar(server.store, "double", 2.0)
    assert register(server, url="double.mar").status_code == 200
    return server


def predict(server, path):
    answer = requests.post(f"{server.inference}/predictions/{path}", data={"data": "4"})
    assert answer.status_code == 200 and answer.json() == 8.0
    return answer


def test_request_series_count_requests_by_the_version_they_name(server):
    before = families(scrape(server))
    for _ in range(3):
        predict(server, "double")
    for _ in range(2):
        predict(server, "double/1.0")
    text = scrape(server)
    for version in ("default", "1.0"):
        assert re.search(LATENCY_PATTERN % ("double", version), text), text
    for name in REQUEST_SERIES:
        unit = "Count" if name == "ts_inference_requests_total" else "Microseconds"
        assert f"# HELP {name} Torchserve prometheus counter metric with unit: {unit}\n" in text
        assert f"# TYPE {name} counter\n" in text
    after = families(text)
    hostname = socket.gethostname()

    def grew(name, version):
        labels = {"model_name": "double", "model_version": version}
        old = [s for s in before.get(name, after[name]).samples
               if labels.items() <= s.labels.items()]
        return value(after[name], **labels) - (old[0].value if old else 0)

    assert grew("ts_inference_requests_total", "default") == 3
    assert grew("ts_inference_requests_total", "1.0") == 2
    for name in REQUEST_SERIES[1:]:
        assert grew(name, "1.0") >= 0 and grew(name, "default") > 0
        for sample in after[name].samples:
            assert set(sample.labels) == {"model_name", "model_version", "hostname"}
            assert sample.labels["hostname"] == hostname
    # Five answers took more than nothing, and far less than the minute it would take to exceed.
    assert 0 < grew("ts_inference_latency_microseconds", "default") < 60e6


def test_requests_not_answered_by_a_worker_count_but_add_no_latency(server):
    scale_mar(server.store, "idle", 3.0)
    assert register(server, url="idle.mar", initial_workers=0).status_code == 200
    refused = requests.post(f"{server.inference}/predictions/idle", data={"data": "1"})
    assert refused.status_code == 503
    metrics = families(scrape(server))
    assert value(metrics["ts_inference_requests_total"], model_name="idle") == 1
    for name in REQUEST_SERIES[1:]:
        assert [s for s in metrics[name].samples if s.labels["model_name"] == "idle"] == []


def test_queue_worker_thread_and_worker_load_times(server):
    predict(server, "double")
    metrics = families(scrape(server))
    hostname = socket.gethostname()
    for name in ("QueueTime", "WorkerThreadTime"):
        assert metrics[name].type == "gauge"
        assert [s.labels for s in metrics[name].samples] == [{"Level": "Host", "Hostname": hostname}]
        assert 0 <= metrics[name].samples[0].value < 60_000
    worker = describe(server, "double")["workers"][0]["id"]
    load = metrics["WorkerLoadTime"]
    assert load.documentation == "Torchserve prometheus gauge metric with unit: Milliseconds"
    assert value(load, WorkerName=f"W-{worker}-double_1.0", Level="Host",
                 Hostname=hostname) > 0


def test_responses_are_counted_by_status_class(server):
    def counts():
        metrics = families(scrape(server))
        return [sum(s.value for s in metrics[f"Requests{c}"].samples) for c in ("2XX", "4XX", "5XX")]

    before = counts()
    predict(server, "double")
    assert requests.post(f"{server.inference}/predictions/missing", data="1").status_code == 404
    assert requests.get(f"{server.management}/models").status_code == 200
    after = counts()
    # 2xx: the prediction, the model list and the first scrape itself.
    assert [a - b for a, b in zip(after, before)] == [3, 1, 0]
    sample = families(scrape(server))["Requests2XX"].samples[0]
    assert sample.labels == {"Level": "Host", "Hostname": socket.gethostname()}


def test_name_filter_keeps_only_the_named_families(server):
    predict(server, "double")
    one = scrape(server, "?name[]=ts_inference_latency_microseconds")
    assert re.search(LATENCY_PATTERN % ("double", "default"), one)
    assert "ts_inference_requests_total" not in one
    assert list(families(one)) == ["ts_inference_latency_microseconds"]
    two = requests.get(f"{server.metrics}/metrics", params=[
        ("name[]", "ts_queue_latency_microseconds"), ("name[]", "MemoryUsed")]).text
    assert sorted(families(two)) == ["MemoryUsed", "ts_queue_latency_microseconds"]
    assert families(scrape(server, "?name[]=NoSuchMetric")) == {}


def test_host_metrics_have_torchserve_names_units_labels_and_plausible_values(server):
    text = scrape(server)
    metrics = families(text)
    hostname = socket.gethostname()
    for name, unit in {**HOST_METRICS, **GPU_METRICS}.items():
        assert metrics[name].type == "gauge"
        assert metrics[name].documentation == f"Torchserve prometheus gauge metric with unit: {unit}"
    for name in HOST_METRICS:
        assert [s.labels for s in metrics[name].samples] == [{"Level": "Host", "Hostname": hostname}]
    reading = {name: metrics[name].samples[0].value for name in HOST_METRICS}
    for name in ("CPUUtilization", "MemoryUtilization", "DiskUtilization"):
        assert 0 <= reading[name] <= 100, reading
    meminfo = dict(line.split(":") for line in open("/proc/meminfo"))
    total_mb = int(meminfo["MemTotal"].split()[0]) / 1024
    assert 0 < reading["MemoryUsed"] < total_mb
    assert 0 < reading["MemoryAvailable"] < total_mb
    disk = shutil.disk_usage("/")
    assert reading["DiskUsage"] == pytest.approx(disk.used / 2**30, rel=0.1)
    assert reading["DiskAvailable"] == pytest.approx(disk.free / 2**30, rel=0.1)
    gpus = [s.labels["DeviceId"] for s in metrics["GPUUtilization"].samples]
    if shutil.which("nvidia-smi"):
        assert gpus, text
        for name in GPU_METRICS:
            for sample in metrics[name].samples:
                assert set(sample.labels) == {"Level", "DeviceId", "Hostname"}
                assert sample.value >= 0
    else:
        assert gpus == []


def test_options_root_answers_torchserve_metrics_description(server):
    answer = requests.options(f"{server.metrics}/")
    assert answer.status_code == 200
    description = answer.json()
    assert description["openapi"] == "3.0.1"
    assert description["info"]["title"] == "TorchServe APIs"
    assert list(description["paths"]) == ["/metrics"]
    get = description["paths"]["/metrics"]["get"]
    assert get["operationId"] == "metrics"
    assert [(p["in"], p["name"], p["required"]) for p in get["parameters"]] == [
        ("query", "name[]", False)]
    assert list(get["responses"]["200"]["content"]) == ["text/plain; version=0.0.4; charset=utf-8"]
    assert get["responses"]["500"]["content"]["application/json"]["schema"]["required"] == [
        "code", "type", "message"]


def test_legacy_mode_serves_only_the_request_series(start_server):
    server = start_server(properties={"metrics_mode": "legacy"})
    scale_mar(server.store, "double", 2.0)
    assert register(server, url="double.mar").status_code == 200
    predict(server, "double")
    text = scrape(server)
    assert sorted(families(text)) == sorted(REQUEST_SERIES)
    assert re.search(LATENCY_PATTERN % ("double", "default"), text)
    assert "metrics_mode=legacy" in server.log_text()


def test_log_mode_is_named_at_start_and_system_metrics_can_be_off(start_server):
    server = start_server(properties={"metrics_mode": "log", "disable_system_metrics": "true"})
    metrics = families(scrape(server))
    assert "metrics_mode=log" in server.log_text()
    for name in REQUEST_SERIES + list(HOST_METRICS) + ["Requests2XX", "QueueTime"]:
        assert name in metrics
    for name in HOST_METRICS:
        assert metrics[name].samples == []
