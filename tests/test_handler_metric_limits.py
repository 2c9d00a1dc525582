"""Handler metrics with bounds, end to end: a handler that records a metric under 100k label
values makes at most `handler_metric_max_series` series of it, the scrape says how many updates
were dropped (and stays valid Prometheus text), and the server's memory stays bounded; a
model's handler metric series go when it is unregistered."""

import json

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from support.api import register
from support.archives import build_mar, manifest
from support.processes import PeakMemory
from support.server import OPEN_FLAGS

MAX_SERIES = 200
DROPPED = "torchyard_handler_metric_updates_dropped_total"

#: Counts each request under `Calls`, and under `Flood` once per label value `Key` from
#: `start` to `start + count`.
HANDLER = """
import json

from ts.metrics.dimension import Dimension


def handle(data, context):
    if data is None:
        return None
    for idx, row in enumerate(data):
        body = row.get("body") or row.get("data")
        ask = json.loads(body) if isinstance(body, (bytes, bytearray)) else body
        context.metrics.add_counter("Calls", 1, idx)
        for key in range(ask.get("start", 0), ask.get("start", 0) + ask.get("count", 0)):
            context.metrics.add_counter("Flood", 1, idx, [Dimension("Key", str(key))])
    return ["ok"] * len(data)
"""


@pytest.fixture(scope="module")
def server(start_module_server, tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    build_mar(store, "flood", {"flood.py": HANDLER}, manifest("flood", "flood.py"))
    build_mar(store, "calls", {"calls.py": HANDLER}, manifest("calls", "calls.py"))
    return start_module_server(
        {"default_workers_per_model": 1, "handler_metric_max_series": MAX_SERIES},
        store=store, args=(*OPEN_FLAGS, "--models", "flood=flood.mar"))


def scrape(server):
    """The metric families of /metrics, parsed as Prometheus' client parses them."""
    text = requests.get(f"{server.metrics}/metrics", timeout=30).text
    return text, {family.name: family for family in text_string_to_metric_families(text)}


def predict(server, model, ask):
    answer = requests.post(f"{server.inference}/predictions/{model}", data=json.dumps(ask),
                           headers={"content-type": "application/json"}, timeout=120)
    assert answer.status_code == 200 and answer.text == "ok", answer.text


def test_a_flood_of_label_values_is_capped_and_reported(server):
    batches, per_batch = 20, 5000
    with PeakMemory(server.process.pid) as memory:
        for i in range(batches):
            predict(server, "flood", {"start": i * per_batch, "count": per_batch})
        text, families = scrape(server)
    print(f"server peak RSS grew by {memory.grown_mib:.1f} MiB for 100k label values; "
          f"the scrape is {len(text) / 1024:.0f} KiB")
    flood = [s for s in families["Flood"].samples if s.labels.get("ModelName") == "flood"]
    assert len(flood) == MAX_SERIES
    dropped = [s.value for s in families["torchyard_handler_metric_updates_dropped"].samples
               if s.labels == {"model_name": "flood", "model_version": "1.0"}]
    assert dropped == [batches * per_batch - MAX_SERIES]
    # Series the metric has keep counting.
    predict(server, "flood", {"start": 0, "count": 1})
    _, families = scrape(server)
    first = [s.value for s in families["Flood"].samples if s.labels["Key"] == "0"]
    assert first == [2.0]
    # 100k series cost 56 MB and 7.9 MB a scrape (peak +48 MiB); capped, the peak grows 12-14
    # MiB (parsing the worker's replies), in the allocator's 4 MiB steps: 32 leaves room.
    assert len(text) < 512 * 1024, len(text)
    assert memory.grown_mib < 32, memory.grown_mib


def test_a_models_handler_metric_series_go_when_it_is_unregistered(server):
    assert register(server, url="calls.mar").status_code == 200
    predict(server, "calls", {"count": 0})
    predict(server, "flood", {"count": 0})
    _, families = scrape(server)
    assert {s.labels["ModelName"] for s in families["Calls"].samples} == {"calls", "flood"}
    assert requests.delete(f"{server.management}/models/calls", timeout=60).status_code == 200
    _, families = scrape(server)
    # The other model's series stay.
    assert [s.labels["ModelName"] for s in families["Calls"].samples] == ["flood"]
