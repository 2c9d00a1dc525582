"""Stateful sequences (`sequenceBatching` in model-config.yaml) as TorchServe's sequence
batching: the server issues a sequence id (`ts_request_sequence_id`) to a request that names
none, pins each sequence to one worker whose handler keeps its state, closes a sequence on
`ts_request_sequence_end: true` or after `sequenceMaxIdleMSec` idle, and refuses sequences past
`maxNumSequence` (test_example_stateful_sequence_batching_http.py, examples/stateful)."""

import json
import threading
import time

import pytest
import requests

from support.archives import build_mar, manifest

#: TorchServe's stateful example (examples/stateful/sequence_batching) with a dict for its LRU
#: cache: adds each request's number to its sequence's running sum; answers with the sum and
#: what it saw of the sequence.
HANDLER = """
import json
import os

from ts.torch_handler.base_handler import BaseHandler


class Stateful(BaseHandler):
    def initialize(self, context):
        self.context = context
        self.sums = {}
        self.initialized = True

    def preprocess(self, data):
        rows = []
        for idx, row in enumerate(data):
            sequence_id = self.context.get_sequence_id(idx)
            value = self.sums.get(sequence_id, 0) + int(row.get("data") or row.get("body"))
            self.sums[sequence_id] = value
            start = self.context.get_request_header(idx, self.context.header_key_sequence_start)
            rows.append(json.dumps({"sum": value, "id": sequence_id, "start": start,
                                    "pid": os.getpid()}))
        return rows

    def inference(self, data, *args, **kwargs):
        return data

    def postprocess(self, data):
        return data
"""

CONFIG = """
minWorkers: 2
maxWorkers: 2
batchSize: 1
maxNumSequence: 2
sequenceMaxIdleMSec: 3000
maxSequenceJobQueueSize: 2
sequenceBatching: true
"""

ID, START, END = "ts_request_sequence_id", "ts_request_sequence_start", "ts_request_sequence_end"


@pytest.fixture(scope="module")
def url(start_module_server, tmp_path_factory):
    store = tmp_path_factory.mktemp("sequences") / "store"
    build_mar(store, "stateful", {"handler.py": HANDLER, "model-config.yaml": CONFIG},
              manifest("stateful", "handler.py", configFile="model-config.yaml"))
    server = start_module_server(store=store)
    answer = requests.post(f"{server.management}/models",
                           params={"url": "stateful.mar", "initial_workers": 2,
                                   "synchronous": "true"})
    assert answer.status_code == 200, answer.text
    assert "sequenceBatching" not in server.log_text()
    return f"{server.inference}/predictions/stateful"


def infer(url, value, sequence=None, end=False):
    headers = {ID: sequence} if sequence else {}
    if end:
        headers[END] = "true"
    return requests.post(url, data=str(value), headers=headers)


def test_first_request_gets_a_sequence_id(url):
    first = infer(url, 5)
    assert first.status_code == 200, first.text
    sequence = first.headers[ID]
    assert sequence.startswith("ts-seq-")
    seen = first.json()
    assert (seen["sum"], seen["id"], seen["start"]) == (5, sequence, "true")
    last = infer(url, 3, sequence, end=True)
    assert last.headers[ID] == sequence
    assert (last.json()["sum"], last.json()["start"]) == (8, None)


def test_sequences_keep_their_worker_and_their_order(url):
    """TorchServe's test: two sequences, interleaved, each on its own running sum."""
    answers = {}

    def run(sequence, offset):
        answers[sequence] = [infer(url, 2 * i + offset, sequence) for i in range(5)]

    threads = [threading.Thread(target=run, args=(s, o)) for s, o in (("seq_0", 1), ("seq_1", 2))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seen = {s: [a.json() for a in answers[s]] for s in answers}
    assert [r["sum"] for r in seen["seq_0"]] == [1, 4, 9, 16, 25]
    assert [r["sum"] for r in seen["seq_1"]] == [2, 6, 12, 20, 30]
    pids = {s: {r["pid"] for r in rows} for s, rows in seen.items()}
    assert len(pids["seq_0"]) == len(pids["seq_1"]) == 1
    assert pids["seq_0"] != pids["seq_1"], "two open sequences share a worker"
    assert all(a.headers[ID] == s for s in answers for a in answers[s])
    for sequence in answers:
        assert infer(url, 0, sequence, end=True).status_code == 200


def test_open_sequences_are_capped_at_max_num_sequence(url):
    assert infer(url, 1, "cap_a").status_code == 200
    assert infer(url, 1, "cap_b").status_code == 200
    refused = infer(url, 1, "cap_c")
    assert refused.status_code == 503
    assert refused.json() == {
        "code": 503, "type": "ServiceUnavailableException",
        "message": 'Model "stateful" has no worker to serve inference request. Please use scale '
                   "workers API to add workers. If this is a sequence inference, please check "
                   "if it is closed, or expired; or exceeds maxSequenceJobQueueSize"}
    # An open sequence still takes requests; ending one makes room.
    assert infer(url, 1, "cap_a", end=True).json()["sum"] == 2
    assert infer(url, 1, "cap_c", end=True).status_code == 200
    assert infer(url, 1, "cap_b", end=True).status_code == 200


def test_idle_sequences_expire_after_sequence_max_idle_msec(url):
    assert infer(url, 1, "idle_a").status_code == 200
    assert infer(url, 1, "idle_b").status_code == 200
    assert infer(url, 1, "idle_c").status_code == 503
    time.sleep(3.5)
    assert infer(url, 1, "idle_c", end=True).status_code == 200
    # An expired sequence is not reopened: its handler state may be gone.
    expired = infer(url, 1, "idle_a")
    assert expired.status_code == 400 and expired.json()["type"] == "BadRequestException"
    assert "idle_a has expired" in expired.json()["message"]
