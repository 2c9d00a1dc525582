"""Streams with bounds, end to end on one server whose models have one worker each: a client
that leaves a stream (chunked HTTP, gRPC StreamPredictions) stops the handler, so the model's
next request is answered at once; a client that reads nothing holds the worker back instead of
the server buffering the whole stream, then gets all of it; a client that reads nothing for
longer than the model's responseTimeout gets the stream cut short, and the worker serves on."""

import json
import time

import pytest
import requests

from support.archives import build_mar, manifest
from support.processes import PeakMemory
from support.server import OPEN_FLAGS

MIB = 1 << 20

#: Sends `n` partial results `tick{i} `, `gap` seconds apart, or `mib` partial results of 1 MiB
#: each, then returns `end`.
STREAMER = """
import json
import time

from ts.protocol.otf_message_handler import send_intermediate_predict_response


def handle(data, context):
    if data is None:
        return None
    body = data[0].get("body") or data[0].get("data")
    ask = json.loads(body) if isinstance(body, (bytes, bytearray)) else body
    for i in range(ask.get("n", 0)):
        send_intermediate_predict_response([f"tick{i} "], context.request_ids, "ok", 200,
                                           context)
        time.sleep(ask["gap"])
    for _ in range(ask.get("mib", 0)):
        send_intermediate_predict_response([b"x" * (1 << 20)], context.request_ids, "ok", 200,
                                           context)
    return ["end"]
"""

#: The handler goes on for 10 s (100 chunks 0.1 s apart) unless it is stopped.
LONG = {"n": 100, "gap": 0.1}
SHORT = {"n": 1, "gap": 0}


@pytest.fixture(scope="module")
def server(start_module_server, tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    build_mar(store, "ticker", {"ticker.py": STREAMER}, manifest("ticker", "ticker.py"))
    return start_module_server({"default_workers_per_model": 1}, store=store,
                               args=(*OPEN_FLAGS, "--models", "ticker=ticker.mar"))


def assert_answered_at_once(server, model="ticker"):
    """The model's single worker serves a new request at once: the one before was stopped."""
    started = time.monotonic()
    answer = requests.post(f"{server.inference}/predictions/{model}", json=SHORT, timeout=30)
    took = time.monotonic() - started
    assert answer.status_code == 200 and answer.text == "tick0 end", answer.text
    # The abandoned handler would hold the worker for up to 10 s more.
    assert took < 3, f"the next request waited {took:.1f}s"


def test_a_client_leaving_an_http_stream_stops_the_handler(server):
    with requests.post(f"{server.inference}/predictions/ticker", json=LONG, stream=True,
                       timeout=30) as answer:
        chunks = answer.iter_content(chunk_size=None)
        assert [next(chunks), next(chunks)] == [b"tick0 ", b"tick1 "]
    assert_answered_at_once(server)


def test_a_client_cancelling_a_grpc_stream_stops_the_handler(server, inference_pb):
    import grpc

    ip = inference_pb["inference_pb2"]
    stub = inference_pb["inference_pb2_grpc"].InferenceAPIsServiceStub(
        grpc.insecure_channel(server.grpc_inference))
    call = stub.StreamPredictions(ip.PredictionsRequest(
        model_name="ticker", input={"data": json.dumps(LONG).encode()}))
    assert [next(call).prediction, next(call).prediction] == [b"tick0 ", b"tick1 "]
    call.cancel()
    assert_answered_at_once(server)


def test_a_client_leaving_a_grpc_bidirectional_stream_stops_the_handler(server, inference_pb):
    import grpc

    ip = inference_pb["inference_pb2"]
    stub = inference_pb["inference_pb2_grpc"].InferenceAPIsServiceStub(
        grpc.insecure_channel(server.grpc_inference))
    ask = ip.PredictionsRequest(model_name="ticker", input={"data": json.dumps(LONG).encode()})
    call = stub.StreamPredictions2(iter([ask]))
    assert [next(call).prediction for _ in range(2)] == [b"tick0 ", b"tick1 "]
    call.cancel()
    assert_answered_at_once(server)


def test_a_client_that_reads_nothing_holds_the_worker_back(server):
    with PeakMemory(server.process.pid) as memory:
        with requests.post(f"{server.inference}/predictions/ticker", json={"mib": 100},
                           stream=True, timeout=60) as answer:
            assert answer.status_code == 200
            time.sleep(3)  # the handler could send all 100 MiB meanwhile
            received = sum(len(c) for c in answer.iter_content(chunk_size=MIB))
    print(f"server peak RSS grew by {memory.grown_mib:.1f} MiB streaming 100 MiB")
    assert received == 100 * MIB + len("end")
    # Buffering the stream cost over 100 MiB; now a few chunks wait, in the server and in the
    # sockets' buffers.
    assert memory.grown_mib < 32, memory.grown_mib


def test_a_client_that_reads_nothing_past_the_response_timeout_is_cut_off(server):
    registered = requests.post(f"{server.management}/models", params={
        "url": "ticker.mar", "model_name": "patient", "response_timeout": 2,
        "initial_workers": 1, "synchronous": "true"}, timeout=60)
    assert registered.status_code == 200, registered.text
    with requests.post(f"{server.inference}/predictions/patient", json={"mib": 100},
                       stream=True, timeout=60) as answer:
        assert answer.status_code == 200
        time.sleep(5)  # past the model's 2 s responseTimeout
        received = 0
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            for chunk in answer.iter_content(chunk_size=MIB):
                received += len(chunk)
    # What was buffered arrived, then the answer was cut short, not ended as if complete.
    assert 0 < received < 100 * MIB
    assert_answered_at_once(server, "patient")
