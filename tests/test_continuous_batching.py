"""Continuous batching (`continuousBatching: true` in model-config.yaml), as TorchServe's
ContinuousBatching: the worker runs a step at a time; a request whose stopping criterion
(`context.stopping_criteria`) says it goes on stays in the running batch and comes back the
next step without its body, new requests join at each step while the batch has room, every
step's answer streams out to its client, and a client that leaves is dropped from the batch.
Each test runs with torchyard's stand-in `ts` and with TorchServe's own package."""

import json
import threading
import time

import pytest
import requests

from support.archives import build_mar, manifest
from support.ts_packages import worker_env

#: Seconds one step of the handler takes.
STEP = 0.15

#: Counts from 0 to n-1 per request, one token `{tag}{i}/{requests in the step} ` a step;
#: a running request must come back without its body; `fail` raises on the request's first
#: step. A request of a stateful sequence adds its `add` to the sequence's sum and is tagged
#: `{sequence id}:{sum}:`; `end` closes the sequence by the response header
#: `ts_request_sequence_end` (TorchServe's SequenceContinuousBatching).
HANDLER = f"""
import json
import time

from ts.torch_handler.base_handler import BaseHandler


class Counter(BaseHandler):
    def initialize(self, context):
        self.context = context
        self.state = {{}}
        self.sums = {{}}
        self.initialized = True

    def preprocess(self, data):
        ids = list(self.context.request_ids.values())
        for idx, (req_id, row) in enumerate(zip(ids, data)):
            if req_id in self.state:
                assert not row, f"running request {{req_id}} came back with {{row!r}}"
                continue
            body = row.get("body") or row.get("data")
            ask = json.loads(body) if isinstance(body, (bytes, bytearray)) else body
            if ask.get("fail"):
                raise ValueError("asked to fail")
            tag = ask.get("tag")
            sequence = self.context.get_sequence_id(idx)
            if sequence:
                self.sums[sequence] = self.sums.get(sequence, 0) + ask["add"]
                tag = f"{{sequence}}:{{self.sums[sequence]}}:"
                if ask.get("end"):
                    self.context.set_response_header(idx, "ts_request_sequence_end", sequence)
            self.state[req_id] = {{"tag": tag, "n": ask["n"], "i": 0}}
        return ids

    def inference(self, ids, *args, **kwargs):
        time.sleep({STEP})
        return ids

    def postprocess(self, ids):
        out = []
        for req_id in ids:
            state = self.state[req_id]
            out.append(f"{{state['tag']}}{{state['i']}}/{{len(ids)}} ")
            state["i"] += 1
        self.context.stopping_criteria = [self.stop(req_id) for req_id in ids]
        return out

    def stop(self, req_id):
        def stopping(output):
            if self.state[req_id]["i"] < self.state[req_id]["n"]:
                return False
            del self.state[req_id]
            return True
        return stopping
"""

CONFIG = """
minWorkers: 1
maxWorkers: 1
batchSize: 2
maxBatchDelay: 50
continuousBatching: true
"""


SEQUENCE_CONFIG = CONFIG + """sequenceBatching: true
maxNumSequence: 2
maxSequenceJobQueueSize: 2
"""


@pytest.fixture(scope="module")
def server(start_module_server, tmp_path_factory, ts_package):
    store = tmp_path_factory.mktemp("continuous") / "store"
    build_mar(store, "counter", {"handler.py": HANDLER, "model-config.yaml": CONFIG},
              manifest("counter", "handler.py", configFile="model-config.yaml"))
    build_mar(store, "summer", {"handler.py": HANDLER,
                                "model-config.yaml": SEQUENCE_CONFIG},
              manifest("summer", "handler.py", configFile="model-config.yaml"))
    server = start_module_server(store=store, env=worker_env(ts_package))
    for name in ("counter", "summer"):
        answer = requests.post(f"{server.management}/models",
                               params={"url": f"{name}.mar", "synchronous": "true"})
        assert answer.status_code == 200, answer.text
    assert "continuousBatching" not in server.log_text()  # no "not supported" warning
    return server


@pytest.fixture(scope="module")
def url(server):
    return f"{server.inference}/predictions/counter"


class Stream(threading.Thread):
    """Posts `ask` and collects the answer's chunks with the time each arrived."""

    def __init__(self, url, ask):
        super().__init__()
        self.url, self.ask = url, ask
        self.chunks, self.status, self.headers, self.cut = [], None, {}, False
        self.first = threading.Event()
        self.start()

    def run(self):
        try:
            with requests.post(self.url, json=self.ask, stream=True, timeout=30) as answer:
                self.status, self.headers = answer.status_code, answer.headers
                for chunk in answer.iter_content(chunk_size=None):
                    if chunk:
                        self.chunks.append((chunk.decode(), time.monotonic()))
                        self.first.set()
        except requests.exceptions.ChunkedEncodingError:
            self.cut = True
        finally:
            self.first.set()

    def texts(self):
        self.join(30)
        return [text for text, _ in self.chunks]


def test_a_request_joins_the_running_batch_and_each_ends_on_its_own(url):
    first = Stream(url, {"tag": "a", "n": 6})
    assert first.first.wait(10)
    second = Stream(url, {"tag": "b", "n": 2})
    a, b = first.texts(), second.texts()
    assert (first.status, second.status, first.cut) == (200, 200, False)
    assert first.headers["transfer-encoding"] == "chunked"
    # Each request's tokens in order, one chunk per step; b ran in a's batch and ended first.
    assert [t.split("/")[0] for t in a] == [f"a{i}" for i in range(6)]
    assert b == ["b0/2 ", "b1/2 "]
    assert a[0] == "a0/1 " and sum(t.endswith("/2 ") for t in a) == 2
    assert second.chunks[-1][1] < first.chunks[-1][1]
    # Steps stream out as they happen.
    gaps = [y - x for (_, x), (_, y) in zip(first.chunks, first.chunks[1:])]
    assert all(gap > STEP / 2 for gap in gaps), gaps


def test_the_running_batch_holds_at_most_batch_size(url):
    streams = [Stream(url, {"tag": tag, "n": 3}) for tag in "xyz"]
    texts = [s.texts() for s in streams]
    assert all(s.status == 200 for s in streams)
    for tag, tokens in zip("xyz", texts):
        assert [t.split("/")[0] for t in tokens] == [f"{tag}{i}" for i in range(3)]
    sizes = {int(t.split("/")[1]) for tokens in texts for t in tokens}
    assert max(sizes) == 2, texts


def test_a_request_that_ends_on_its_first_step_is_one_body(url):
    answer = requests.post(url, json={"tag": "s", "n": 1}, timeout=30)
    assert (answer.status_code, answer.text) == (200, "s0/1 ")
    assert "transfer-encoding" not in answer.headers
    assert "ts_stream_next" not in answer.headers


def test_a_client_that_leaves_is_dropped_from_the_batch(url):
    with requests.post(url, json={"tag": "gone", "n": 200}, stream=True, timeout=30) as answer:
        assert next(answer.iter_content(chunk_size=None)) == b"gone0/1 "
    time.sleep(3 * STEP)
    # The next request runs alone: the one whose client left no longer takes its steps.
    assert Stream(url, {"tag": "c", "n": 3}).texts() == ["c0/1 ", "c1/1 ", "c2/1 "]


def test_a_failing_step_fails_every_request_in_it(url):
    running = Stream(url, {"tag": "r", "n": 50})
    assert running.first.wait(10)
    failing = requests.post(url, json={"tag": "f", "n": 1, "fail": True}, timeout=30)
    assert failing.status_code == 500
    assert "asked to fail" in failing.json()["message"]
    running.join(30)
    # The running request's answer was cut short by the error after its first chunks.
    assert running.cut and 1 <= len(running.chunks) < 50
    # The worker goes on serving.
    assert requests.post(url, json={"tag": "t", "n": 1}, timeout=30).text == "t0/1 "


def test_sequences_stream_with_continuous_batching(server):
    url = f"{server.inference}/predictions/summer"
    first = Stream(url, {"add": 2, "n": 3})
    assert first.first.wait(10)
    other = Stream(url, {"add": 5, "n": 1})  # another sequence joins the running batch
    chunks, joined = first.texts(), other.texts()
    sequence = first.headers["ts_request_sequence_id"]
    assert [c.split("/")[0] for c in chunks] == [f"{sequence}:2:{i}" for i in range(3)]
    assert joined[0].endswith("/2 ") and other.headers["ts_request_sequence_id"] != sequence
    # The sequence's next request finds its state; the handler's end header closes it, which
    # frees its place (maxNumSequence 2): two new sequences open after it.
    more = requests.post(url, json={"add": 1, "n": 1, "end": True}, timeout=30,
                         headers={"ts_request_sequence_id": sequence})
    assert more.status_code == 200 and more.text.startswith(f"{sequence}:3:0"), more.text
    requests.post(url, json={"add": 0, "n": 1, "end": True}, timeout=30,
                  headers={"ts_request_sequence_id": other.headers["ts_request_sequence_id"]})
    for _ in range(2):
        answer = requests.post(url, json={"add": 1, "n": 1}, timeout=30)
        assert answer.status_code == 200, answer.text


def test_grpc_stream_predictions2_carries_each_step(server, inference_pb):
    import grpc

    ip = inference_pb["inference_pb2"]
    stub = inference_pb["inference_pb2_grpc"].InferenceAPIsServiceStub(
        grpc.insecure_channel(server.grpc_inference))
    asks = [ip.PredictionsRequest(model_name="counter",
                                  input={"data": json.dumps({"tag": t, "n": n}).encode()})
            for t, n in (("g", 3), ("h", 1))]
    answers = [m.prediction.decode() for m in stub.StreamPredictions2(iter(asks))]
    # A message per step of each request, the requests in turn.
    assert answers == ["g0/1 ", "g1/1 ", "g2/1 ", "h0/1 "]
