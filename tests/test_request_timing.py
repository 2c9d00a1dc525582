"""Where the time went: every inference answer carries `Server-Timing` (queue and handler for
a model, each node and the whole for a workflow), and a W3C `traceparent` reaches the handler
and every workflow node, while a malformed one is dropped. One server for the module."""

import json
import sys

import pytest
import requests

from support.archives import build_mar, manifest, war
from support.server import OPEN_FLAGS

#: Answers the traceparent the handler sees (None when it got none).
PROBE = """
import json


def handle(data, context):
    if data is None:
        return None
    return [json.dumps(context.get_request_header(i, "traceparent")) for i in range(len(data))]
"""

#: The leaf after the model: answers [what the model saw, what this node saw]; every first try
#: fails, so each request needs two attempts (retry-attempts defaults to 1).
FUNCTIONS = """
import json

_calls = 0


def last(data, context):
    global _calls
    if data is None:
        return None
    _calls += 1
    if _calls % 2:
        raise RuntimeError("first tries fail")
    return [json.dumps([json.loads(row.get("probe") or row.get("data") or row.get("body")),
                        context.get_request_header(i, "traceparent")])
            for i, row in enumerate(data)]
"""
SPEC = "models:\n  probe:\n    url: probe.mar\ndag:\n  probe: [last]\n"

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture(scope="module")
def server(start_module_server, tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    build_mar(store, "probe", {"probe.py": PROBE}, manifest("probe", "probe.py"))
    war(store, "traced", SPEC, FUNCTIONS)
    return start_module_server({"default_workers_per_model": 1}, store=store, args=(
        *OPEN_FLAGS, "--models", "probe=probe.mar", "--workflows", "traced.war"))


def timing_entries(answer):
    """The Server-Timing entries of an answer: {name: {param: value}}."""
    entries = {}
    for entry in answer.headers["server-timing"].split(","):
        name, *params = entry.strip().split(";")
        entries[name] = dict(p.split("=", 1) for p in params)
    return entries


def timings(answer):
    """The Server-Timing durations of an answer: {name: milliseconds}."""
    return {name: float(params["dur"]) for name, params in timing_entries(answer).items()}


def test_a_model_answer_says_queue_and_handler_time(server):
    answer = requests.post(f"{server.inference}/predictions/probe", data="x")
    assert answer.status_code == 200, answer.text
    spent = timings(answer)
    assert list(spent) == ["queue", "handler", "total"], spent
    assert all(ms >= 0 for ms in spent.values())
    assert spent["total"] >= spent["handler"]


def test_error_answers_say_the_total(server):
    for path in ("predictions/nope", "wfpredict/nope", "v2/models/nope/infer"):
        answer = requests.post(f"{server.inference}/{path}", data="x")
        assert answer.status_code == 404, answer.text
        assert list(timings(answer)) == ["total"], answer.headers


def test_a_workflow_answer_says_each_node_and_the_whole(server):
    answer = requests.post(f"{server.inference}/wfpredict/traced", data="x")
    assert answer.status_code == 200, answer.text
    spent = timings(answer)
    assert list(spent) == ["node.probe", "node.last", "workflow", "total"], spent
    assert spent["total"] >= spent["workflow"] >= spent["node.probe"]
    entries = timing_entries(answer)
    assert entries["node.probe"]["desc"] == '"attempts=1"'
    assert entries["node.last"]["desc"] == '"attempts=2"', entries
    assert "desc" not in entries["workflow"]


def test_traceparent_reaches_the_handler_and_every_node(server):
    answer = requests.post(f"{server.inference}/predictions/probe", data="x",
                           headers={"traceparent": VALID})
    assert json.loads(answer.text) == VALID
    answer = requests.post(f"{server.inference}/wfpredict/traced", data="x",
                           headers={"traceparent": VALID})
    assert answer.status_code == 200, answer.text
    assert json.loads(answer.text) == [VALID, VALID]  # the model node's, the function node's


def test_grpc_answers_carry_server_timing_and_pass_traceparent(server, tmp_path):
    import grpc

    from support import grpc_stubs

    pb = grpc_stubs.generate(tmp_path)
    sys.path.remove(str(tmp_path))
    channel = grpc.insecure_channel(server.grpc_inference)
    predictions = pb["inference_pb2_grpc"].InferenceAPIsServiceStub(channel).Predictions
    answer, call = predictions.with_call(
        pb["inference_pb2"].PredictionsRequest(model_name="probe", input={"data": b"x"}),
        metadata=[("traceparent", VALID)])
    assert json.loads(answer.prediction) == VALID
    timing = dict(call.initial_metadata())["server-timing"]
    assert timing.startswith("queue;dur=") and ", handler;dur=" in timing
    workflow = pb["workflow_pb2_grpc"].WorkflowInferenceServiceStub(channel).Predict
    answer, call = workflow.with_call(
        pb["workflow_pb2"].WorkflowPredictRequest(workflow_name="traced", input={"data": b"x"}),
        metadata=[("traceparent", VALID)])
    assert json.loads(answer.prediction) == [VALID, VALID]
    timing = dict(call.initial_metadata())["server-timing"]
    assert 'node.last;dur=' in timing and 'desc="attempts=2"' in timing, timing


@pytest.mark.parametrize("bad", [
    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
])
def test_a_malformed_traceparent_is_dropped_not_refused(server, bad):
    answer = requests.post(f"{server.inference}/predictions/probe", data="x",
                           headers={"traceparent": bad})
    assert answer.status_code == 200, answer.text
    assert json.loads(answer.text) is None
