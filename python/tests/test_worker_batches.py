"""Serving batches: decoding params, the context, responses, handler errors, output encoding."""

import json

import pytest
from worker_harness import body, request

DESCRIBE = """
def _describe(value):
    if isinstance(value, (bytes, bytearray)):
        return [type(value).__name__, value.decode("latin-1")]
    return [type(value).__name__, value]


def handle(data, context):
    if data is None:
        return None
    return [{"params": {name: _describe(value) for name, value in row.items()},
             "id": context.get_request_id(idx),
             "probe": context.get_request_header(idx, "X-Probe"),
             "headers": context.get_all_request_header(idx)}
            for idx, row in enumerate(data)]
"""


def test_batch_of_three_with_json_text_binary_and_form_params(loaded):
    worker = loaded(DESCRIBE)
    reply, blobs = worker.predict(
        request(body(b'{"a": [1, 2]}', "application/json"),
                headers=[("x-probe", "one"), ("accept", "a"), ("accept", "b")],
                request_id="id-1"),
        request(body("héllo".encode("latin-1"), "text/plain; charset=ISO-8859-1"),
                ("note", "text/csv", b"x,y"), request_id="id-2"),
        request(("data", None, b"5"), ("img", "application/octet-stream", b"\x00\xff"),
                ("broken", "application/json", b"{nope"), ("bad", "text/plain", b"\xff"),
                request_id="id-3"),
    )
    assert reply["kind"] == "predicted"
    assert [r["blob"] for r in reply["responses"]] == [0, 1, 2]
    first, second, third = (json.loads(b) for b in blobs)
    assert first == {"params": {"body": ["dict", {"a": [1, 2]}]}, "id": "id-1", "probe": "one",
                     "headers": {"x-probe": "one", "accept": "a, b"}}
    assert second["params"] == {"body": ["str", "héllo"], "note": ["str", "x,y"]}
    assert second["id"] == "id-2" and second["probe"] is None and second["headers"] == {}
    assert third["params"] == {"data": ["bytearray", "5"], "img": ["bytearray", "\x00\xff"],
                               "broken": ["bytearray", "{nope"], "bad": ["bytearray", "\xff"]}



def test_decode_input_request_false_hands_every_param_over_raw(loaded):
    worker = loaded(DESCRIBE, decode_input_request=False)
    reply, blobs = worker.predict(
        request(body(b'{"data": "test"}', "application/json"), ("note", "text/plain", b"hi"),
                ("data", None, b"\x80\xff")))
    assert reply["kind"] == "predicted"
    assert json.loads(blobs[0])["params"] == {"body": ["bytearray", '{"data": "test"}'],
                                              "note": ["bytearray", "hi"],
                                              "data": ["bytearray", "\x80\xff"]}


RESPONSES = """
def handle(data, context):
    if data is None:
        return None
    for idx, row in enumerate(data):
        wish = row["body"]
        if "status" in wish:
            context.set_response_status(wish["status"], wish.get("phrase", ""), idx)
        if "type" in wish:
            context.set_response_content_type(idx, wish["type"])
        if "header" in wish:
            context.set_response_header(idx, *wish["header"])
        if "seen" in wish:
            wish["seen"] = [context.get_response_status(i) for i in range(len(data))]
    return [row["body"] for row in data]
"""


def _json(value):
    return body(json.dumps(value).encode(), "application/json")


def test_response_status_content_type_and_headers_per_request(loaded):
    worker = loaded(RESPONSES)
    reply, _ = worker.predict(
        request(_json({"type": "application/x-custom"})),
        request(_json({"status": 418, "phrase": "teapot"})),
        request(_json({"header": ["X-Extra", "1"]})),
        request(_json({"header": ["Content-Type", "text/csv"]})),
    )
    assert reply["responses"] == [
        {"status": 200, "reason": None, "content_type": "application/x-custom", "blob": 0},
        {"status": 418, "reason": "teapot", "content_type": "application/json", "blob": 1},
        {"status": 200, "reason": None, "content_type": "application/json", "blob": 2,
         "headers": [["X-Extra", "1"]]},
        {"status": 200, "reason": None, "content_type": "text/csv", "blob": 3},
    ]
    # The next batch starts from 200 and default content types again.
    reply, blobs = worker.predict(request(_json({"seen": True})), request(_json({})))
    assert [r["status"] for r in reply["responses"]] == [200, 200]
    assert json.loads(blobs[0]) == {"seen": [[200, None], [200, None]]}
    assert {r["content_type"] for r in reply["responses"]} == {"application/json"}


def test_invalid_status_fails_the_batch(loaded):
    worker = loaded(RESPONSES)
    reply, _ = worker.predict(request(_json({"status": "418"})))
    assert reply["kind"] == "error" and "invalid response status '418'" in reply["message"]


MISBEHAVING = """
class Custom(Exception):
    error_code = 422


def handle(data, context):
    if data is None:
        return None
    wish = data[0]["body"]
    if wish == "short":
        return ["only one"]
    if wish == "none":
        return None
    if wish == "raise":
        raise KeyError("boom")
    if wish == "custom":
        raise Custom("unprocessable")
    if wish == "unserialisable":
        return [object() for _ in data]
    return [f"ok {i}" for i in range(len(data))]
"""


@pytest.mark.parametrize("wish, status, message", [
    ("short", 500, "handler returned 1 outputs for a batch of 3 requests"),
    ("none", 500, "handler returned NoneType, not a list of outputs for a batch of 3 requests"),
    ("raise", 500, "KeyError: 'boom'"),
    ("custom", 422, "Custom: unprocessable"),
    ("unserialisable", 500, "TypeError: Object of type object is not JSON serializable"),
])
def test_failed_batches_are_errors_and_the_worker_keeps_serving(loaded, wish, status, message):
    worker = loaded(MISBEHAVING)
    batch = [request(body(wish.encode(), "text/plain"))] + [request(body(b"", "text/plain"))] * 2
    reply, blobs = worker.predict(*batch)
    assert (reply, blobs) == ({"kind": "error", "status": status, "type": "PredictionException",
                               "message": message}, [])
    reply, blobs = worker.predict(*batch[1:])
    assert reply["kind"] == "predicted" and blobs == [b"ok 0", b"ok 1"]
    if wish in ("raise", "custom"):
        assert "Traceback" in worker.log()


TENSORS = """
import numpy
{torch_import}

def handle(data, context):
    if data is None:
        return None
    return [{produce}]
"""


def test_numpy_outputs_become_json(loaded):
    pytest.importorskip("numpy")
    produce = ('numpy.arange(6, dtype=numpy.float32).reshape(2, 3), numpy.int64(7), '
               '{"mean": numpy.float32(0.5), "flags": numpy.array([True, False])}')
    worker = loaded(TENSORS.format(torch_import="", produce=produce))
    reply, blobs = worker.predict(*[request(body(b""))] * 3)
    assert {r["content_type"] for r in reply["responses"]} == {"application/json"}
    assert [json.loads(b) for b in blobs] == [
        [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]], 7, {"mean": 0.5, "flags": [True, False]}]


def test_torch_outputs_become_json(loaded):
    pytest.importorskip("torch")
    produce = "torch.tensor([[1.5, 2.5]]), torch.tensor(3), [torch.tensor(1.0), torch.ones(2)]"
    worker = loaded(TENSORS.format(torch_import="import torch", produce=produce))
    reply, blobs = worker.predict(*[request(body(b""))] * 3)
    assert [json.loads(b) for b in blobs] == [[[1.5, 2.5]], 3, [1.0, [1.0, 1.0]]]


def test_output_types_and_their_content_types(loaded):
    worker = loaded("""
        def handle(data, context):
            return data and ["text ✓", b"bytes", bytearray(b"array"), memoryview(b"view"),
                             3.5, None]
    """)
    reply, blobs = worker.predict(*[request(body(b""))] * 6)
    assert [r["content_type"] for r in reply["responses"]] == [
        "text/plain; charset=utf-8", *["application/octet-stream"] * 3, *["application/json"] * 2]
    assert blobs == ["text ✓".encode(), b"bytes", b"array", b"view", b"3.5", b"null"]
