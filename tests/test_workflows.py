"""Workflows end to end: real server, real Python workers, real TorchScript models."""

import concurrent.futures
import re
import time
from xml.etree import ElementTree

import pytest
import requests

from support.archives import scale_mar, war

FUNCTIONS = '''
import json
import time

_calls = {"flaky": 0}


def _num(row):
    value = row.get("data")
    if value is None:
        value = row.get("body")
    if isinstance(value, (bytes, bytearray)):
        value = value.decode()
    return float(json.loads(value) if isinstance(value, str) else value)


def pre_processing(data, context):
    if data is None:
        return None
    return [str(_num(row)) for row in data]


def postprocessing(data, context):
    if data is None:
        return None
    return [{"result": _num(row)} for row in data]


def aggregate(data, context):
    if data is None:
        return None
    return [{name: float(bytes(value).decode()) for name, value in sorted(row.items())}
            for row in data]


def _adder(amount):
    def add(data, context):
        if data is None:
            return None
        return [str(_num(row) + amount) for row in data]
    return add


add_one, add_two, add_three = _adder(1), _adder(2), _adder(3)


def batch_size(data, context):
    if data is None:
        return None
    time.sleep(0.05)
    return [len(data)] * len(data)


def flaky(data, context):
    if data is None:
        return None
    _calls["flaky"] += 1
    if _calls["flaky"] == 1:
        raise RuntimeError("first call fails")
    return ["recovered"] * len(data)


def slow(data, context):
    if data is None:
        return None
    time.sleep(3)
    return ["late"] * len(data)


def emit(data, context):
    if data is None:
        return None
    import numpy
    import torch
    values = {
        "str": "abc", "int": 3, "float": 2.5, "list": [1, "a"], "dict": {"a": 1},
        "bytes": b"\\x00\\xffraw", "numpy": numpy.arange(3), "tensor": torch.tensor([1.5, 2.5]),
    }
    return [values[row["body"]] for row in data]


def inspect(data, context):
    if data is None:
        return None
    return [{"type": type(row["body"]).__name__, "hex": bytes(row["body"]).hex()}
            for row in data]


def seen(data, context):
    if data is None:
        return None
    return [{"node": context.model_name.split("__")[1], "keys": sorted(row),
             "type": type(row["body"]).__name__, "body": bytes(row["body"]).decode(),
             "probe": context.get_request_header(idx, "x-probe"),
             "id": bool(context.get_request_id(idx))} for idx, row in enumerate(data)]


def picky(data, context):
    if data is None:
        return None
    for idx, row in enumerate(data):
        if bytes(row["body"]) == b"13.0":
            context.set_response_status(418, "unlucky", idx)
    return [str(_num(row)) for row in data]


def gate(data, context):
    """Fails on "pre", passes "model" on as text the model cannot read, "post" as -1."""
    if data is None:
        return None
    values = [row["data"].decode() if isinstance(row["data"], (bytes, bytearray))
              else str(row["data"]) for row in data]
    if "pre" in values:
        raise ValueError("gate refuses pre")
    return [{"model": "not a number", "post": "-1"}.get(v, v) for v in values]


def check(data, context):
    if data is None:
        return None
    numbers = [_num(row) for row in data]
    if any(n < 0 for n in numbers):
        raise ValueError("negative")
    return [{"checked": n} for n in numbers]


def fails_twice(data, context):
    if data is None:
        return None
    _calls["fails_twice"] = _calls.get("fails_twice", 0) + 1
    if _calls["fails_twice"] <= 2:
        raise ValueError(f"call {_calls['fails_twice']} fails")
    return [row["body"] for row in data]
'''


@pytest.fixture(scope="module")
def server(start_module_server):
    server = start_module_server()
    scale_mar(server.store, "double", 2.0)
    scale_mar(server.store, "triple", 3.0)
    return server


def register(server, name, spec, handler=FUNCTIONS, version="1.0"):
    war(server.store, name, spec, handler, version)
    return requests.post(f"{server.management}/workflows", params={"url": f"{name}.war"})


def predict(server, name, value, version=None, timeout=30):
    path = f"{name}/{version}" if version else name
    return requests.post(f"{server.inference}/wfpredict/{path}", data={"data": str(value)},
                         timeout=timeout)


def model_names(server):
    return {m["modelName"] for m in requests.get(f"{server.management}/models").json()["models"]}


def metric(server, name, **labels):
    """The value of one series on /metrics, 0 when absent."""
    text = requests.get(f"{server.metrics}/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    # Labels end with a comma, as in TorchServe's exposition.
    match = re.search(rf"^{name}\{{{re.escape(want)},\}} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


SEQUENTIAL = """
models:
  double:
    url: double.mar
  triple:
    url: triple.mar
dag:
  pre_processing: [double]
  double: [triple]
  triple: [postprocessing]
"""


def test_sequential_dag_runs_function_model_model_function(server):
    response = register(server, "seq", SEQUENTIAL)
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "Workflow seq has been registered and scaled successfully."}
    answer = predict(server, "seq", 5)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"result": 30.0}
    # The functions run in the models' workers (see the fused tests below).
    assert {"seq__double", "seq__triple"} <= model_names(server)
    assert not {"seq__pre_processing", "seq__postprocessing"} & model_names(server)
    assert metric(server, "torchyard_workflow_node_requests_total", workflow="seq",
                  node="triple") == 1


PARALLEL = """
models:
  double:
    url: double.mar
  triple:
    url: triple.mar
dag:
  pre_processing: [double, triple]
  double: [aggregate]
  triple: [aggregate]
"""


def test_parallel_dag_gives_each_parent_output_by_name(server):
    assert register(server, "par", PARALLEL).status_code == 200
    answer = predict(server, "par", 4)
    assert answer.json() == {"double": 8.0, "triple": 12.0}


def test_three_way_fan_in(server):
    spec = """
    dag:
      pre_processing: [add_one, add_two, add_three]
      add_one: [aggregate]
      add_two: [aggregate]
      add_three: [aggregate]
    """
    assert register(server, "fan", spec).status_code == 200
    assert predict(server, "fan", 10).json() == {"add_one": 11.0, "add_three": 13.0,
                                                  "add_two": 12.0}


def test_global_properties_and_per_model_overrides_show_in_describe(server):
    spec = """
    models:
      min-workers: 1
      max-workers: 3
      batch-size: 4
      max-batch-delay: 20
      retry-attempts: 2
      timeout-ms: 7000
      double:
        url: double.mar
        batch-size: 2
        max-workers: 2
      triple:
        url: triple.mar
    dag:
      pre_processing: [double, triple]
      double: [aggregate]
      triple: [aggregate]
    """
    assert register(server, "props", spec).status_code == 200
    described = requests.get(f"{server.management}/workflows/props").json()[0]
    assert (described["workflowName"], described["minWorkers"], described["maxWorkers"],
            described["batchSize"], described["maxBatchDelay"]) == ("props", 1, 3, 4, 20)
    assert "workflowDag" in described and described["workflowUrl"] == "props.war"
    double = requests.get(f"{server.management}/models/props__double").json()[0]
    triple = requests.get(f"{server.management}/models/props__triple").json()[0]
    pre = requests.get(f"{server.management}/models/props__pre_processing").json()[0]
    assert (double["batchSize"], double["maxWorkers"]) == (2, 2)
    assert (triple["batchSize"], triple["maxWorkers"], triple["maxBatchDelay"]) == (4, 3, 20)
    assert (pre["batchSize"], pre["maxWorkers"]) == (4, 3)


def test_format_draws_the_dag_as_dot_mermaid_and_svg(server):
    """Uses the fan-out/fan-in workflow "props" of the test above."""
    base = f"{server.management}/workflows/props"
    predict(server, "props", 1)
    dot = requests.get(f"{base}?format=dot&stats=true")
    assert dot.status_code == 200 and dot.headers["content-type"].startswith("text/vnd.graphviz")
    lines = dot.text.strip().splitlines()
    assert lines[0] == 'digraph "props" {' and lines[-1] == "}"
    nodes = {l.split('"')[1] for l in lines if "[label=" in l and "->" not in l}
    assert nodes == {"pre_processing", "double", "triple", "aggregate"}
    edges = {tuple(l.split('"')[1::2][:2]) for l in lines if "->" in l}
    assert edges == {("pre_processing", "double"), ("pre_processing", "triple"),
                     ("double", "aggregate"), ("triple", "aggregate")}
    assert "double\\n[model]\\nworkers 1-2\\nbatch 2 / 20 ms\\ncalls 1, p50 <=" in dot.text
    mermaid = requests.get(f"{base}?format=mermaid")
    assert mermaid.status_code == 200 and mermaid.text.startswith("flowchart TD\n")
    assert mermaid.text.count(" --> ") == 4 and "[function]" in mermaid.text
    svg = requests.get(f"{base}?format=svg&stats=true")
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    root = ElementTree.fromstring(svg.content)  # well-formed XML
    assert root.tag.endswith("svg")
    texts = " ".join(root.itertext())  # labels are <text> of <tspan> lines
    for node in ("pre_processing", "double", "triple", "aggregate", "calls 1"):
        assert node in texts, (node, texts)
    bad = requests.get(f"{base}?format=png")
    assert bad.status_code == 400 and "dot, mermaid, svg" in bad.json()["message"]
    assert requests.get(base).json()[0]["workflowName"] == "props"


def test_function_node_batches_concurrent_requests(server):
    spec = """
    models:
      batch-size: 8
      max-batch-delay: 300
    dag:
      batch_size: []
    """
    assert register(server, "batching", spec).status_code == 200
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        sizes = list(pool.map(lambda i: predict(server, "batching", i).json(), range(16)))
    assert max(sizes) > 1, sizes
    assert all(1 <= s <= 8 for s in sizes), sizes


def test_retry_recovers_a_node_that_fails_once(server):
    spec = """
    models:
      retry-attempts: 1
    dag:
      flaky: []
    """
    assert register(server, "retry", spec).status_code == 200
    answer = predict(server, "retry", 1)
    assert answer.status_code == 200, answer.text
    assert answer.text == "recovered"
    assert metric(server, "torchyard_workflow_node_retries_total", workflow="retry",
                  node="flaky") == 1


def test_node_failing_every_attempt_gives_json_error_naming_it(server):
    spec = """
    models:
      retry-attempts: 0
    dag:
      flaky: []
    """
    assert register(server, "noretry", spec).status_code == 200
    answer = predict(server, "noretry", 1)
    assert answer.status_code == 500
    body = answer.json()
    assert body["code"] == 500 and "flaky" in body["message"] and "first call" in body["message"]
    assert predict(server, "noretry", 1).text == "recovered"
    # The workflow's own series count both requests, the first as an error.
    assert [metric(server, f"torchyard_workflow_{name}_total", workflow="noretry")
            for name in ("requests", "errors")] == [2, 1]
    assert metric(server, "torchyard_workflow_latency_seconds_count", workflow="noretry") == 2


def test_timeout_bounds_latency_and_the_node_recovers(server):
    spec = """
    models:
      retry-attempts: 1
      timeout-ms: 300
    dag:
      pre_processing: [slow, add_one]
      slow: [aggregate]
      add_one: [aggregate]
    """
    assert register(server, "timeout", spec).status_code == 200
    started = time.monotonic()
    answer = predict(server, "timeout", 1)
    elapsed = time.monotonic() - started
    assert answer.status_code == 500
    assert "slow" in answer.json()["message"] and "timed out" in answer.json()["message"]
    assert elapsed < 2.5, f"a 300 ms timeout with one retry took {elapsed:.1f}s"
    workers = requests.get(f"{server.management}/models/timeout__slow").json()[0]["workers"]
    assert len(workers) == 1


@pytest.mark.parametrize("kind, expected", [
    ("str", b"abc"), ("int", b"3"), ("float", b"2.5"), ("list", b'[1, "a"]'),
    ("dict", b'{"a": 1}'), ("bytes", b"\x00\xffraw"), ("numpy", b"[0, 1, 2]"),
    ("tensor", b"[1.5, 2.5]"),
])
def test_each_output_type_reaches_the_next_node_as_bytes(server, kind, expected):
    if "types" not in {w["workflowName"] for w in
                       requests.get(f"{server.management}/workflows").json()["workflows"]}:
        assert register(server, "types", "dag:\n  emit: [inspect]\n").status_code == 200
    answer = requests.post(f"{server.inference}/wfpredict/types", data=kind,
                           headers={"Content-Type": "text/plain"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["type"] == "bytearray"
    assert bytes.fromhex(answer.json()["hex"]) == expected


INVALID_SPECS = [
    ("cycle", "models:\n  double:\n    url: double.mar\n  triple:\n    url: triple.mar\n"
              "dag:\n  pre_processing: [double]\n  double: [triple]\n  triple: [double]\n",
     "cycle"),
    ("unknown", "dag:\n  pre_processing: [ghost]\n", "ghost"),
    ("nofunction", "dag:\n  missing_fn: [add_one]\n", "missing_fn"),
    ("nourl", "models:\n  double:\n    batch-size: 2\ndag:\n  double: []\n", "has no url"),
    ("malformed", "models: [\n", "malformed YAML"),
    ("wrongtype", "models:\n  batch-size: many\ndag:\n  add_one: []\n", "batch-size"),
    ("twoentries", "dag:\n  add_one: [aggregate]\n  add_two: [aggregate]\n",
     "exactly one entry node"),
]


@pytest.mark.parametrize("name, spec, reason", INVALID_SPECS, ids=[c[0] for c in INVALID_SPECS])
def test_invalid_specs_are_rejected_naming_the_problem(server, name, spec, reason):
    before = model_names(server)
    answer = register(server, f"bad{name}", spec)
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["code"] == 400 and body["type"] == "BadRequestException"
    assert reason in body["message"]
    assert model_names(server) == before
    assert requests.get(f"{server.management}/workflows/bad{name}").status_code == 404


def test_failed_node_load_rolls_back_the_whole_registration(server):
    from support.archives import archive, write_files

    write_files(server.workdir, {"broken/handler.py": "raise ImportError('broken on purpose')\n"})
    archive("model", "--model-name", "broken", "--handler",
            str(server.workdir / "broken" / "handler.py"), "--export-path", str(server.store),
            "-f")
    before = model_names(server)
    spec = ("models:\n  double:\n    url: double.mar\n  broken:\n    url: broken.mar\n"
            "dag:\n  pre_processing: [double, broken]\n  double: [aggregate]\n"
            "  broken: [aggregate]\n")
    answer = register(server, "rollback", spec)
    assert answer.status_code == 500, answer.text
    assert "broken" in answer.json()["message"]
    assert model_names(server) == before
    answer = register(server, "missingmar", "models:\n  m:\n    url: nothing.mar\ndag:\n  m: []\n")
    assert answer.status_code == 500 and answer.json()["message"] == (  # as TorchServe
        "Workflow missingmar has failed to register. Failures: [Workflow Node missingmar__m "
        "failed to register. Details: Model not found in model store: nothing.mar]")
    assert model_names(server) == before


def test_duplicate_registration_conflicts_and_unregister_removes_node_models(server):
    assert register(server, "dup", "dag:\n  add_one: []\n").status_code == 200
    again = requests.post(f"{server.management}/workflows", params={"url": "dup.war"})
    assert again.status_code == 409 and again.json()["type"] == "ConflictStatusException"
    assert "dup__add_one" in model_names(server)
    node = requests.delete(f"{server.management}/models/dup__add_one")
    assert node.status_code == 400
    gone = requests.delete(f"{server.management}/workflows/dup")
    assert gone.json() == {"status": 'Workflow "dup" unregistered'}
    assert "dup__add_one" not in model_names(server)
    missing = predict(server, "dup", 1)
    assert missing.status_code == 404 and missing.json()["type"] == "WorkflowNotFoundException"


def test_workflow_list_pages(server):
    for name in ("pagea", "pageb"):
        assert register(server, name, "dag:\n  add_one: []\n").status_code == 200
    first = requests.get(f"{server.management}/workflows", params={"limit": 1}).json()
    assert len(first["workflows"]) == 1 and "nextPageToken" in first
    rest = requests.get(f"{server.management}/workflows",
                        params={"limit": 100, "next_page_token": first["nextPageToken"]}).json()
    names = [w["workflowName"] for w in first["workflows"] + rest["workflows"]]
    assert {"pagea", "pageb"} <= set(names) and len(names) == len(set(names))


def test_500_concurrent_requests_all_answered_correctly(server):
    if requests.get(f"{server.management}/workflows/par").status_code != 200:
        assert register(server, "par", PARALLEL).status_code == 200

    def one(i):
        answer = predict(server, "par", i, timeout=60)
        return i, answer.status_code, answer.json()

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, range(500)))
    wrong = [r for r in results if r[1] != 200 or r[2] != {"double": 2.0 * r[0],
                                                            "triple": 3.0 * r[0]}]
    assert not wrong, wrong[:5]


def worker_pids(server, model):
    return [w["pid"] for w in
            requests.get(f"{server.management}/models/{model}").json()[0]["workers"]]


def node_series(server, workflow, *nodes, name="requests"):
    return [metric(server, f"torchyard_workflow_node_{name}_total", workflow=workflow, node=n)
            for n in nodes]


def test_fused_chain_answers_as_the_chain_broken_by_a_model(server):
    scale_mar(server.store, "one", 1.0)
    fused = "dag:\n  pre_processing: [add_one]\n  add_one: [add_two]\n  add_two: [seen]\n"
    broken = ("models:\n  one:\n    url: one.mar\n    fuse: false\n"
              "dag:\n  pre_processing: [add_one]\n  add_one: [one]\n  one: [add_two]\n"
              "  add_two: [seen]\n")
    answers = []
    for name, spec in (("fused", fused), ("broken", broken)):
        assert register(server, name, spec).status_code == 200
        answer = requests.post(f"{server.inference}/wfpredict/{name}", data={"data": "4"},
                               headers={"X-Probe": "p"})
        assert answer.status_code == 200, answer.text
        answers.append(answer.json())
    assert answers[0] == answers[1] == {"node": "seen", "keys": ["body"], "type": "bytearray",
                                        "body": "7.0", "probe": "p", "id": True}
    nodes = {n["name"]: n for n in
             requests.get(f"{server.management}/workflows/fused").json()[0]["nodes"]}
    chain = ["pre_processing", "add_one", "add_two", "seen"]
    assert all(nodes[n]["segment"] == chain for n in chain)
    assert {nodes[n]["modelName"] for n in chain} == {"fused__pre_processing"}
    assert "fused__add_one" not in model_names(server)
    broken_nodes = requests.get(f"{server.management}/workflows/broken").json()[0]["nodes"]
    assert [n.get("segment") for n in broken_nodes if n["name"] in ("add_one", "add_two")] == [
        ["pre_processing", "add_one"], ["add_two", "seen"]]
    assert node_series(server, "fused", *chain) == [1, 1, 1, 1]
    assert node_series(server, "fused", *chain, name="errors") == [0, 0, 0, 0]


def test_fused_chain_retries_a_node_and_names_the_one_that_failed(server):
    spec = ("models:\n  retry-attempts: 1\n"
            "dag:\n  pre_processing: [fails_twice]\n  fails_twice: [postprocessing]\n")
    assert register(server, "midfail", spec).status_code == 200
    failed = predict(server, "midfail", 2)
    assert failed.status_code == 500
    assert failed.json()["message"] == (
        'Workflow node "fails_twice" failed after 2 attempt(s): ValueError: call 2 fails')
    recovered = predict(server, "midfail", 2)
    assert recovered.status_code == 200 and recovered.json() == {"result": 2.0}
    nodes = ("pre_processing", "fails_twice", "postprocessing")
    assert node_series(server, "midfail", *nodes) == [2, 2, 1]
    assert node_series(server, "midfail", *nodes, name="errors") == [0, 1, 0]
    assert node_series(server, "midfail", *nodes, name="retries") == [0, 1, 0]


def test_fused_chain_times_out_a_node_without_restarting_its_worker(server):
    spec = ("models:\n  retry-attempts: 1\n  timeout-ms: 300\n"
            "dag:\n  pre_processing: [slow]\n  slow: [postprocessing]\n")
    assert register(server, "midslow", spec).status_code == 200
    pids = worker_pids(server, "midslow__pre_processing")
    started = time.monotonic()
    answer = predict(server, "midslow", 1)
    elapsed = time.monotonic() - started
    assert answer.status_code == 500
    assert answer.json()["message"] == (
        'Workflow node "slow" failed after 2 attempt(s): timed out after 300 ms')
    assert elapsed < 2.5, f"two 300 ms tries took {elapsed:.1f}s"
    assert worker_pids(server, "midslow__pre_processing") == pids


def test_fused_chain_fails_one_request_of_a_batch_alone(server):
    spec = ("models:\n  batch-size: 4\n  max-batch-delay: 500\n  retry-attempts: 1\n"
            "dag:\n  pre_processing: [picky]\n  picky: [postprocessing]\n")
    assert register(server, "picky", spec).status_code == 200
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda v: predict(server, "picky", v), (11, 12, 13, 14)))
    assert [a.status_code for a in answers] == [200, 200, 500, 200]
    assert answers[2].json()["message"] == (
        'Workflow node "picky" failed after 2 attempt(s): handler answered 418: 13.0')
    assert {a.json()["result"] for a in answers if a.ok} == {11.0, 12.0, 14.0}
    assert node_series(server, "picky", "picky", name="retries") == [1]


def server_timing_nodes(answer):
    return [e.split(";")[0].strip() for e in answer.headers["Server-Timing"].split(",")]


def test_a_model_runs_its_prelude_and_postlude_in_its_worker_with_the_same_answer(server):
    """seq4: pre -> double -> triple -> post is two stages, [pre, double] and [triple, post],
    and answers what it answers with `fuse: false` (four stages), byte for byte."""
    for name, spec in (("fuseon", SEQUENTIAL), ("fuseoff", "models:\n  fuse: false" + SEQUENTIAL[8:])):
        assert register(server, name, spec).status_code == 200
    chain = ["pre_processing", "double", "triple", "postprocessing"]
    for value in (5, "2.5", -1):
        on, off = predict(server, "fuseon", value), predict(server, "fuseoff", value)
        assert on.status_code == off.status_code == 200, (on.text, off.text)
        assert (on.content, on.headers["content-type"]) == (off.content,
                                                            off.headers["content-type"])
        for answer in (on, off):
            assert server_timing_nodes(answer)[:5] == [f"node.{n}" for n in chain] + ["workflow"]
    assert predict(server, "fuseon", 5).json() == {"result": 30.0}
    segments = {n["name"]: (n.get("segment"), n["modelName"]) for n in
                requests.get(f"{server.management}/workflows/fuseon").json()[0]["nodes"]}
    first, second = (["pre_processing", "double"], "fuseon__double"), (
        ["triple", "postprocessing"], "fuseon__triple")
    assert segments == {"pre_processing": first, "double": first, "triple": second,
                        "postprocessing": second}
    off_nodes = requests.get(f"{server.management}/workflows/fuseoff").json()[0]["nodes"]
    assert [n.get("segment") for n in off_nodes] == [["pre_processing"], None, None,
                                                      ["postprocessing"]]
    names = model_names(server)
    assert "fuseon__pre_processing" not in names and "fuseoff__pre_processing" in names
    assert node_series(server, "fuseon", *chain) == [4, 4, 4, 4]
    # A request to the node model runs its handler only.
    direct = requests.post(f"{server.inference}/predictions/fuseon__double", data={"data": "5"})
    assert direct.status_code == 200 and direct.json() == 10.0
    assert node_series(server, "fuseon", *chain) == [4, 4, 4, 4]


def test_a_batch_mixes_workflow_requests_and_requests_to_the_node_model(server):
    spec = ("models:\n  double:\n    url: double.mar\n    batch-size: 6\n"
            "    max-batch-delay: 400\n"
            "dag:\n  pre_processing: [double]\n  double: [postprocessing]\n")
    assert register(server, "fusemix", spec).status_code == 200

    def one(i):
        if i % 2:
            return requests.post(f"{server.inference}/predictions/fusemix__double",
                                 data={"data": str(i)}, timeout=30).json()
        return predict(server, "fusemix", i).json()

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(one, range(6)))
    assert answers == [{"result": 0.0}, 2.0, {"result": 4.0}, 6.0, {"result": 8.0}, 10.0]
    assert len(worker_pids(server, "fusemix__double")) == 1


def test_a_failing_prelude_model_or_postlude_node_fails_the_request_naming_it(server):
    spec = ("models:\n  retry-attempts: 1\n  double:\n    url: double.mar\n"
            "dag:\n  gate: [double]\n  double: [check]\n")
    assert register(server, "fusefail", spec).status_code == 200
    pids = worker_pids(server, "fusefail__double")
    messages = {}
    for value in ("pre", "model", "post"):
        answer = predict(server, "fusefail", value)
        assert answer.status_code == 500, answer.text
        messages[value] = answer.json()["message"]
    assert messages["pre"] == (
        'Workflow node "gate" failed after 2 attempt(s): ValueError: gate refuses pre')
    assert messages["model"].startswith(
        'Workflow node "double" failed after 2 attempt(s): JSONDecodeError: '), messages
    assert messages["post"] == (
        'Workflow node "check" failed after 2 attempt(s): ValueError: negative')
    assert predict(server, "fusefail", 4).json() == {"checked": 8.0}
    nodes = ("gate", "double", "check")
    assert node_series(server, "fusefail", *nodes) == [4, 3, 2]
    assert node_series(server, "fusefail", *nodes, name="errors") == [1, 1, 1]
    assert node_series(server, "fusefail", *nodes, name="retries") == [1, 1, 1]
    assert worker_pids(server, "fusefail__double") == pids


def test_concurrent_registrations_of_one_name_give_one_200_and_409s(server):
    """Registrations racing for one name: one registers, the others get TorchServe's 409 for a
    registered workflow (not a 500 from a node model the winner holds)."""
    war(server.store, "racer", SEQUENTIAL, FUNCTIONS)
    url = f"{server.management}/workflows"
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: requests.post(url, params={"url": "racer.war"}),
                                range(4)))
    codes = sorted(a.status_code for a in answers)
    assert codes == [200, 409, 409, 409], [a.text for a in answers]
    for answer in answers:
        if answer.status_code == 409:
            assert answer.json() == {"code": 409, "type": "ConflictStatusException",
                                     "message": "Workflow racer is already registered."}
    assert predict(server, "racer", 5).json() == {"result": 30.0}
    assert requests.delete(f"{url}/racer").status_code == 200
