"""deploy/grafana/torchyard-dashboard.json against a live server: every metric a panel or a
template variable queries, and every label it selects or groups by, is one the server really
exports. The PromQL is read by a small tokenizer (metric selectors, label matchers, `by`/`without`
clauses; functions, strings, numbers and ranges skipped), and the exposition by prometheus_client's
parser, as Prometheus would scrape it.

The server runs a small TorchScript model behind TorchServe's BaseHandler and a workflow (that model, then a function node), gets
a few good, failing and misrouted requests so that every series exists, and a stand-in
`nvidia-smi` on its PATH (with `number_of_gpu=0`, so workers stay on the CPU) so that the GPU
series exist on a machine without one."""

import json
import os
import re
import stat
import time
from dataclasses import dataclass, field

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from support.archives import archive, torchscript_scale, war, write_files
from support.server import OPEN_FLAGS, REPO

DASHBOARD = REPO / "deploy" / "grafana" / "torchyard-dashboard.json"

#: PromQL's aggregation operators: a `by`/`without` clause may stand before their argument.
AGGREGATIONS = {"sum", "avg", "min", "max", "count", "group", "stddev", "stdvar", "topk",
                "bottomk", "quantile", "count_values", "limitk", "limit_ratio"}
#: Clauses followed by a parenthesised list of label names.
LABEL_CLAUSES = {"by", "without", "on", "ignoring", "group_left", "group_right"}
#: Keywords that are neither metrics nor clauses.
KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
#: The series suffixes of a family of each type, beyond its own name (counters keep `_total`
#: in the family name, as TorchServe writes them).
SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}

TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<duration>\d+(?:ms|[smhdwy])\b)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<variable>\$\{?\w+\}?)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=,(){}@])
""", re.X)


@dataclass
class Query:
    """What one PromQL expression reads: its selectors as (metric, labels they match on), and
    the label names each grouping clause uses with the metrics it applies to."""
    selectors: list = field(default_factory=list)
    groupings: list = field(default_factory=list)

    def metrics(self):
        return [metric for metric, _ in self.selectors]


def tokenize(expr):
    """(kind, text) tokens of `expr`, spaces dropped; a character PromQL has no use for fails."""
    tokens, position = [], 0
    while position < len(expr):
        match = TOKEN.match(expr, position)
        assert match, f"cannot read {expr[position:]!r} in {expr!r}"
        if match.lastgroup != "space":
            tokens.append((match.lastgroup, match.group()))
        position = match.end()
    return tokens


def label_list(tokens, i):
    """The label names of the `( a, b )` starting at token `i`, and the token after it."""
    assert tokens[i][1] == "(", tokens[i:]
    labels, i = [], i + 1
    while tokens[i][1] != ")":
        if tokens[i][1] != ",":
            assert tokens[i][0] == "name", tokens[i:]
            labels.append(tokens[i][1])
        i += 1
    return labels, i + 1


def matchers(tokens, i):
    """The label names of the `{a="x", b=~"y"}` starting at token `i`, and the token after."""
    assert tokens[i][1] == "{", tokens[i:]
    labels, i = [], i + 1
    while tokens[i][1] != "}":
        kind, text = tokens[i]
        assert kind == "name" and tokens[i + 1][1] in ("=", "!=", "=~", "!~") \
            and tokens[i + 2][0] == "string", tokens[i:]
        labels.append(text)
        i += 3
        if tokens[i][1] == ",":
            i += 1
    return labels, i + 1


def parse(expr):
    """The [`Query`] of a PromQL expression. A `by`/`without` clause applies to the metrics of
    its aggregation's argument (the parenthesised group after it, or the one just before it);
    `on`/`ignoring`/`group_*` labels to every metric of the expression."""
    tokens = tokenize(expr)
    query = Query()
    open_groups = []    # for each open paren: (index of its first selector, labels waiting)
    waiting = None      # a by-clause's labels met before its aggregation's argument opened
    last_group = None   # the selectors of the paren group closed last
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        after = tokens[i + 1][1] if i + 1 < len(tokens) else None
        if kind == "name" and text in LABEL_CLAUSES and after == "(":
            labels, end = label_list(tokens, i + 1)
            if text not in ("by", "without"):
                query.groupings.append((labels, None))
            elif tokens[i - 1][1] == ")":
                query.groupings.append((labels, last_group))
            else:
                waiting = labels
            i = end
        elif kind == "name" and (text in KEYWORDS or text in LABEL_CLAUSES or after == "("
                                 or (text in AGGREGATIONS and after in ("by", "without"))):
            i += 1
        elif kind == "name":
            labels, i = matchers(tokens, i + 1) if after == "{" else ([], i + 1)
            query.selectors.append((text, labels))
        elif text == "{":
            raise AssertionError(f"a selector without a metric name in {expr!r}")
        elif text == "(":
            open_groups.append((len(query.selectors), waiting))
            waiting = None
            i += 1
        elif text == ")":
            start, labels = open_groups.pop()
            last_group = [metric for metric, _ in query.selectors[start:]]
            if labels is not None:
                query.groupings.append((labels, last_group))
            i += 1
        else:
            i += 1
    assert not open_groups and waiting is None, f"unbalanced {expr!r}"
    for n, (labels, metrics) in enumerate(query.groupings):
        if metrics is None:
            query.groupings[n] = (labels, query.metrics())
    return query


def dashboard_queries(dashboard):
    """{where: Query} for every panel target's `expr` and every query variable."""
    queries = {}
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                queries[f"panel {inner['title']!r} {target['refId']}"] = parse(target["expr"])
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["definition"] == variable["query"], variable
            metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)",
                                         variable["query"]).groups()
            queries[f"variable ${variable['name']}"] = Query([(metric, [label])])
    return queries


def exported(text):
    """{series name: label names} of every sample in a scrape, and {family: type} of every
    `# TYPE` line (a family may have no series yet)."""
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)", text, re.M))
    # prometheus_client names a counter's samples `<name>_total` even when written without
    # (TorchServe's Requests2XX); Prometheus keeps the name as written.
    written = set(re.findall(r"^([A-Za-z_:][\w:]*)[{ ]", text, re.M))
    series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name if sample.name in written else sample.name.removesuffix("_total")
            series.setdefault(name, set()).update(sample.labels)
    return series, types


def family_of(metric, types):
    """The family a series name belongs to: a histogram's `_bucket`, `_sum` and `_count`
    belong to the histogram."""
    for kind, suffixes in SUFFIXES.items():
        for suffix in suffixes:
            stem = metric.removesuffix(suffix)
            if stem != metric and types.get(stem) == kind:
                return stem
    return metric


def problems(queries, text):
    """What the queries read that the scrape `text` does not export: unknown families, series
    with no samples, labels a series does not have."""
    series, types = exported(text)
    found = []
    for where, query in queries.items():
        for metric, labels in query.selectors:
            if family_of(metric, types) not in types:
                found.append(f"{where}: no family {metric}")
            elif metric not in series:
                found.append(f"{where}: no series {metric}")
            else:
                found += [f"{where}: {metric} has no label {label}"
                          for label in labels if label not in series[metric]]
        for labels, metrics in query.groupings:
            for metric in metrics:
                found += [f"{where}: {metric} has no label {label} to group by"
                          for label in labels if label not in series.get(metric, set())]
    return found


# The extractor and the check, without a server.

SCRAPE = """\
# TYPE lat histogram
lat_bucket{model_name="m",le="1",} 1.0
lat_bucket{model_name="m",le="+Inf",} 1.0
lat_count{model_name="m",} 1.0
lat_sum{model_name="m",} 0.5
# TYPE reqs_total counter
reqs_total{model_name="m",hostname="h",} 3.0
# TYPE GPU gauge
# TYPE Requests2XX counter
Requests2XX{Level="Host",} 1.0
"""


def test_the_tokenizer_finds_metrics_labels_and_groupings():
    query = parse('histogram_quantile(0.99, sum by (model_name, le) '
                  '(rate(lat_bucket{model_name=~"$model", x!="a,b}"}[$__rate_interval])))')
    assert query.selectors == [("lat_bucket", ["model_name", "x"])]
    assert query.groupings == [(["model_name", "le"], ["lat_bucket"])]
    query = parse("sum(rate(reqs_total[5m] offset 1h)) without (hostname) / on(model_name) "
                  "group_left max(lat_count) * 1e6 > bool 2")
    assert query.metrics() == ["reqs_total", "lat_count"]
    assert query.groupings == [(["hostname"], ["reqs_total"]),
                               (["model_name"], ["reqs_total", "lat_count"])]
    for broken in ["sum(reqs_total", '{__name__="reqs_total"}', "reqs_total ; 1"]:
        with pytest.raises(AssertionError):
            parse(broken)


def test_a_misspelt_metric_or_label_is_caught():
    def check(expr):
        return problems({"q": parse(expr)}, SCRAPE)

    assert check('sum by (le) (rate(lat_bucket{model_name="m"}[1m])) + reqs_total') == []
    assert check("rate(lat_sum[1m]) / rate(lat_count[1m]) + sum by (Level) (Requests2XX)") == []
    assert check("rate(lat_bucket_typo[1m])") == ["q: no family lat_bucket_typo"]
    assert check("reqs_totl") == ["q: no family reqs_totl"]
    assert check("GPU") == ["q: no series GPU"]
    assert check('lat_count{modelname="m"}') == ["q: lat_count has no label modelname"]
    assert check("sum by (le) (lat_count)") == ["q: lat_count has no label le to group by"]


# The dashboard against a live server.

#: The model's handler: TorchServe's BaseHandler (which records HandlerTime) around a
#: TorchScript model doubling each request's number.
HANDLER = """
import torch
from ts.torch_handler.base_handler import BaseHandler


class Double(BaseHandler):
    def preprocess(self, data):
        return torch.tensor([float(row.get("data") or row.get("body")) for row in data])

    def postprocess(self, output):
        return output.tolist()
"""

#: The function node after the model: adds one, fails on a negative number.
FUNCTIONS = """
def plus_one(data, context):
    if data is None:
        return None
    values = [float(row.get("double") or row.get("body") or row.get("data")) for row in data]
    if any(v < 0 for v in values):
        raise ValueError("negative")
    return [v + 1 for v in values]
"""
SPEC = "models:\n  double:\n    url: double.mar\ndag:\n  double: [plus_one]\n"
#: Answers the query the host sampler makes with one GPU; nothing else is asked with
#: number_of_gpu=0.
FAKE_NVIDIA_SMI = """#!/bin/sh
case "$*" in
  *index,utilization.gpu,memory.used,memory.total*) echo "0, 35, 1024, 81920" ;;
  *) echo 0 ;;
esac
"""


@pytest.fixture(scope="module")
def scrape(start_module_server, tmp_path_factory):
    """The server's /metrics text after good, failing and misrouted requests."""
    workdir = tmp_path_factory.mktemp("dashboard")
    store, bin_dir = workdir / "store", workdir / "bin"
    store.mkdir()
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(FAKE_NVIDIA_SMI)
    smi.chmod(smi.stat().st_mode | stat.S_IXUSR)
    write_files(workdir, {"handler.py": HANDLER})
    archive("model", "--model-name", "double", "--handler", str(workdir / "handler.py"),
            "--serialized-file", str(torchscript_scale(workdir / "double.pt", 2.0)),
            "--export-path", str(store))
    war(store, "pipeline", SPEC, FUNCTIONS)
    server = start_module_server(
        store=store, workdir=workdir,
        properties={"metric_time_interval": 1, "number_of_gpu": 0, "default_workers_per_model": 1},
        env={"PATH": f"{bin_dir}:{os.environ['PATH']}"},
        args=(*OPEN_FLAGS, "--models", "double=double.mar", "--workflows", "pipeline.war"))
    base = server.inference
    for _ in range(3):
        assert requests.post(f"{base}/predictions/double", data="4").json() == 8.0
        assert requests.post(f"{base}/wfpredict/pipeline", data="4").json() == 9.0
    assert requests.post(f"{base}/predictions/double", data="x").status_code >= 500
    assert requests.post(f"{base}/wfpredict/pipeline", data="-1").status_code >= 500
    assert requests.post(f"{base}/predictions/missing", data="4").status_code == 404
    # The host sampler reads every second: wait for a reading that has the GPU.
    for _ in range(50):
        text = requests.get(f"{server.metrics}/metrics").text
        if "GPUUtilization{" in text:
            return text
        time.sleep(0.1)
    raise AssertionError(f"no GPU reading from the stand-in nvidia-smi:\n{text}")


def test_every_dashboard_query_reads_exported_series_and_labels(scrape):
    queries = dashboard_queries(json.loads(DASHBOARD.read_text()))
    read = {metric for query in queries.values() for metric in query.metrics()}
    # The dashboard covers requests, errors, latency, queue, workers, nodes and the host.
    assert {"ts_inference_requests_total", "torchyard_inference_errors_total",
            "torchyard_request_latency_seconds_bucket", "torchyard_queue_depth",
            "torchyard_workers", "torchyard_workers_ready",
            "torchyard_workflow_latency_seconds_bucket",
            "torchyard_workflow_node_latency_seconds_bucket",
            "torchyard_workflow_node_requests_total", "CPUUtilization", "MemoryUsed",
            "GPUUtilization", "PredictionTime", "HandlerTime"} <= read, read
    assert problems(queries, scrape) == []


def test_the_dashboard_is_importable_with_a_prometheus_datasource_and_a_model_variable():
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert "model_name" in variables["model"]["definition"]
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24, panel["title"]
        for label in ("model_name", "ModelName"):  # TorchServe's frontend and handler labels
            per_model = any(label in t["expr"] for t in panel["targets"])
            assert not per_model or all(f'{label}=~"$model"' in t["expr"]
                                        for t in panel["targets"]), panel["title"]
