"""Handlers that stream (TorchServe's send_intermediate_predict_response): each partial result
reaches the client as it is sent, as HTTP/1.1 chunks and as gRPC stream messages; a client
that goes away mid-stream stops nothing else; a workflow whose leaf streams streams too. Each
test runs with torchyard's stand-in `ts` and with TorchServe's own package in the workers'
Python, one server for each."""

import json
import time

import pytest
import requests

from support.archives import build_mar, manifest, scale_mar, war
from support.server import OPEN_FLAGS
from support.ts_packages import REFERENCE, worker_env

#: How long the handler sleeps after each partial result.
GAP = 0.4

#: Sends `n` partial results `tok{i} ` GAP (or `gap`) apart, then returns `end` (or raises with
#: `fail`); the response header `x-ts-package` names the `ts` package it imported. It sends
#: with `ts.protocol`'s helper, or with `ts.handler_utils`' when asked `via_utils`.
STREAMER = f"""
import json
import time

import ts
from ts.handler_utils import utils
from ts.protocol.otf_message_handler import send_intermediate_predict_response


def handle(data, context):
    if data is None:
        return None
    context.set_response_header(0, "x-ts-package", ts.__file__)
    body = data[0].get("body") or data[0].get("data")
    ask = json.loads(body) if isinstance(body, (bytes, bytearray)) else body
    send = (utils.send_intermediate_predict_response if ask.get("via_utils")
            else send_intermediate_predict_response)
    for i in range(ask["n"]):
        send([f"tok{{i}} "], context.request_ids, "Intermediate Prediction success", 200,
             context)
        time.sleep(ask.get("gap", {GAP}))
    if ask.get("fail"):
        raise ValueError("failed after the partial results")
    return ["end"]
"""

#: A function node handing each request's body on to the streaming model.
PRE = "def pre(data, context):\n    return [row.get('body') for row in data] if data else None\n"
SPEC = "models:\n  streamer:\n    url: streamer.mar\ndag:\n  pre: [streamer]\n"


@pytest.fixture(scope="module")
def server(start_module_server, tmp_path_factory, ts_package):
    store = tmp_path_factory.mktemp("store")
    build_mar(store, "streamer", {"streamer.py": STREAMER}, manifest("streamer", "streamer.py"))
    scale_mar(store, "double", 2.0)
    war(store, "streamflow", SPEC, PRE)
    return start_module_server({"default_workers_per_model": 1}, store=store, args=(
        *OPEN_FLAGS, "--models", "streamer=streamer.mar", "double=double.mar",
        "--workflows", "streamflow.war"), env=worker_env(ts_package))


def stream(url, ask, headers=None):
    """POSTs `ask` and returns the response's chunks with the time each arrived; `headers`, a
    dict, gets the response's headers."""
    with requests.post(url, json=ask, stream=True, timeout=30) as answer:
        assert answer.status_code == 200, answer.text
        assert answer.headers["transfer-encoding"] == "chunked"
        if headers is not None:
            headers.update(answer.headers)
        return [(chunk.decode(), time.monotonic())
                for chunk in answer.iter_content(chunk_size=None) if chunk]


def assert_spaced(chunks, n):
    """The chunks are the handler's, each arriving about GAP after the one before."""
    assert [text for text, _ in chunks] == [f"tok{i} " for i in range(n)] + ["end"]
    gaps = [b - a for (_, a), (_, b) in zip(chunks, chunks[1:])]
    assert all(gap > GAP / 2 for gap in gaps), gaps


def test_http_chunks_arrive_as_the_handler_sends_them(server):
    assert_spaced(stream(f"{server.inference}/predictions/streamer", {"n": 3}), 3)


@pytest.mark.parametrize("ts_package", ["torchserve"], indirect=True)
def test_streaming_answers_in_chunks_with_torchserves_package_installed(server):
    # TorchServe's own send_intermediate_predict_response writes its encoded frame to
    # context.cl_socket: each partial result still goes out as it is sent, with the headers
    # the handler set and without TorchServe's internal `ts_stream_next` marker.
    for ask in ({"n": 3}, {"n": 2, "via_utils": True}):
        headers = {}
        assert_spaced(stream(f"{server.inference}/predictions/streamer", ask, headers),
                      ask["n"])
        assert headers["x-ts-package"] == str(REFERENCE / "ts" / "__init__.py")
        assert "ts_stream_next" not in headers
        # The chunks are TorchServe's encoding of str: no content type, as TorchServe sends.
        assert "content-type" not in headers, headers


def test_chunks_sent_back_to_back_all_arrive(server):
    # The worker's frames then reach the server's socket together: none may be lost or break
    # the connection.
    for _ in range(10):
        chunks = stream(f"{server.inference}/predictions/streamer", {"n": 5, "gap": 0})
        assert "".join(text for text, _ in chunks) == "tok0 tok1 tok2 tok3 tok4 end"


def test_workflow_with_a_streaming_leaf_streams(server):
    assert_spaced(stream(f"{server.inference}/wfpredict/streamflow", {"n": 2}), 2)


def test_non_streaming_handlers_answer_in_one_body(server):
    answer = requests.post(f"{server.inference}/predictions/double", data="21")
    assert answer.status_code == 200 and float(answer.text) == 42.0
    assert "transfer-encoding" not in answer.headers
    assert answer.headers["content-length"] == str(len(answer.content))


def test_a_failure_after_partial_results_cuts_the_response_short(server):
    with requests.post(f"{server.inference}/predictions/streamer", json={"n": 1, "fail": True},
                       stream=True, timeout=30) as answer:
        chunks = answer.iter_content(chunk_size=None)
        assert next(chunks) == b"tok0 "
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            list(chunks)


def test_a_client_leaving_mid_stream_stops_nothing_else(server):
    with requests.post(f"{server.inference}/predictions/streamer", json={"n": 5},
                       stream=True, timeout=30) as answer:
        assert next(answer.iter_content(chunk_size=None)) == b"tok0 "
    # Gone after the first chunk: other models answer at once, and the streaming model's
    # worker, once it has finished that batch, streams the next request whole.
    started = time.monotonic()
    assert float(requests.post(f"{server.inference}/predictions/double", data="1").text) == 2.0
    assert time.monotonic() - started < 5 * GAP
    assert_spaced(stream(f"{server.inference}/predictions/streamer", {"n": 1}), 1)


def test_grpc_stream_predictions_yields_each_chunk(server, inference_pb):
    import grpc

    ip = inference_pb["inference_pb2"]
    stub = inference_pb["inference_pb2_grpc"].InferenceAPIsServiceStub(
        grpc.insecure_channel(server.grpc_inference))
    ask = ip.PredictionsRequest(model_name="streamer",
                                input={"data": json.dumps({"n": 2}).encode()})
    chunks = [(m.prediction.decode(), time.monotonic()) for m in stub.StreamPredictions(ask)]
    assert_spaced(chunks, 2)
    # The unary call answers once, with the chunks joined.
    assert stub.Predictions(ask).prediction == b"tok0 tok1 end"
    once = ip.PredictionsRequest(model_name="double", input={"data": b"4"})
    assert [float(m.prediction) for m in stub.StreamPredictions(once)] == [8.0]
